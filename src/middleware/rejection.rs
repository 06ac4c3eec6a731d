//! Why the layer answered a request itself instead of calling the service.

use std::{borrow::Cow, fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::key::KeyError;
use crate::LockError;

/// Why [`LockLayer`](super::LockLayer) refused a request.
///
/// Each refusal has a precise status ([`status`](Self::status)) and a default
/// response ([`into_http_response`](Self::into_http_response)); an
/// [`on_rejection_response`](super::LockLayer::on_rejection_response) hook
/// receives the value to build its own. The inner service never runs for a
/// refused request, and stops (its future is dropped) for one whose lease
/// is lost or held too long.
///
/// | variant | status |
/// |---------|--------|
/// | [`Busy`](Self::Busy) | `423 Locked` (or the layer's [`busy_status`](super::LockLayer::busy_status)), with `Retry-After` |
/// | [`Unavailable`](Self::Unavailable) | `503 Service Unavailable` |
/// | [`Lost`](Self::Lost), [`HeldTooLong`](Self::HeldTooLong) | `503 Service Unavailable` |
/// | [`InvalidKey`](Self::InvalidKey), [`MissingKey`](Self::MissingKey) | `400 Bad Request` |
/// | [`Misplaced`](Self::Misplaced), [`Failed`](Self::Failed) | `500 Internal Server Error` |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_lock::middleware::LockRejection;
///
/// let busy = LockRejection::Busy {
///     key: "account:7".into(),
///     retry_after: Some(Duration::from_millis(1_200)),
/// };
/// assert_eq!(busy.status(), StatusCode::LOCKED);
/// let response = busy.into_http_response();
/// assert_eq!(response.headers()["retry-after"], "2"); // seconds, rounded up
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LockRejection {
    /// The key stayed held by someone else for the whole wait.
    Busy {
        /// The key that was busy.
        key: String,
        /// The holder's remaining lease when the store reported it.
        retry_after: Option<Duration>,
    },
    /// The lock store could not be reached, or the locker was
    /// [shut down](crate::Locker::shutdown). The request is refused rather
    /// than run unlocked.
    Unavailable {
        /// The key that was asked for.
        key: String,
        /// The store's error.
        source: LockError,
    },
    /// The request's key is not a valid lock key (empty, longer than
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN), or not parsing as its type).
    InvalidKey {
        /// The key that was refused, or where it was looked for.
        key: String,
        /// Why it was refused.
        reason: Cow<'static, str>,
    },
    /// The request carries no key and the layer refuses such requests
    /// ([`MissingKey::Reject`], the default).
    MissingKey {
        /// Where the key was looked for (`header x-tenant-id`).
        source: Cow<'static, str>,
    },
    /// The key extractor cannot work where the layer is installed (a path
    /// parameter key on a layer outside axum's routing). Never passed
    /// through: no request would ever be locked.
    Misplaced {
        /// What to change.
        reason: &'static str,
    },
    /// The request's lease was lost (a renewal failed past its deadline, or
    /// the store no longer held it) before the response head was sent: the
    /// handler was stopped, since another replica may hold the key now.
    Lost {
        /// The key whose lease was lost.
        key: String,
        /// The lost lease's fence.
        fence: u64,
    },
    /// The request held its key for the layer's
    /// [`max_hold`](super::LockLayer::max_hold) before its response head
    /// was sent: the handler was stopped and the key released.
    HeldTooLong {
        /// The key.
        key: String,
        /// The longest hold.
        max_hold: Duration,
    },
    /// The lock could not be taken for another reason: a misconfigured layer
    /// (a ttl out of bounds) or no tokio runtime.
    Failed {
        /// The key that was asked for.
        key: String,
        /// What went wrong.
        source: LockError,
    },
}

impl LockRejection {
    /// Sorts a [`Locker`](crate::Locker) error for `key` into a rejection.
    pub fn from_error(key: impl Into<String>, error: LockError) -> Self {
        let key = key.into();
        match error {
            LockError::Busy { retry_after } => LockRejection::Busy { key, retry_after },
            LockError::InvalidKey { reason } => LockRejection::InvalidKey {
                key,
                reason: reason.into(),
            },
            source @ (LockError::Unavailable { .. } | LockError::ShutDown) => {
                LockRejection::Unavailable { key, source }
            }
            source => LockRejection::Failed { key, source },
        }
    }

    /// Sorts an extractor's [`KeyError`] into a rejection.
    pub fn from_key_error(error: KeyError) -> Self {
        match error {
            KeyError::Missing { source } => LockRejection::MissingKey { source },
            KeyError::Invalid { source, reason } => LockRejection::InvalidKey {
                key: source.into_owned(),
                reason,
            },
            KeyError::Misplaced { reason } => LockRejection::Misplaced { reason },
        }
    }

    /// The status code of the default response.
    pub fn status(&self) -> StatusCode {
        match self {
            LockRejection::Busy { .. } => StatusCode::LOCKED,
            LockRejection::Unavailable { .. }
            | LockRejection::Lost { .. }
            | LockRejection::HeldTooLong { .. } => StatusCode::SERVICE_UNAVAILABLE,
            LockRejection::InvalidKey { .. } | LockRejection::MissingKey { .. } => {
                StatusCode::BAD_REQUEST
            }
            LockRejection::Misplaced { .. } | LockRejection::Failed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `Retry-After` a busy refusal carries: the holder's remaining lease
    /// in whole seconds, rounded up, or 1 second when the store did not say.
    /// `None` for other refusals.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            LockRejection::Busy { retry_after, .. } => Some(
                retry_after
                    .map(|left| {
                        left.as_secs()
                            .saturating_add(u64::from(left.subsec_nanos() > 0))
                    })
                    .unwrap_or(1)
                    .max(1),
            ),
            _ => None,
        }
    }

    /// The plain-text body of the default response. It names no key value
    /// and no store error: those go to the log, not to the client. A missing
    /// key names where it was looked for, and a misplaced extractor what to
    /// change.
    pub fn body_text(&self) -> Cow<'static, str> {
        match self {
            LockRejection::Busy { .. } => {
                "The resource is locked by another request; retry later.".into()
            }
            LockRejection::Unavailable { .. } => "The lock service is unavailable.".into(),
            LockRejection::InvalidKey { .. } => "The request's lock key is invalid.".into(),
            LockRejection::MissingKey { source } => {
                format!("The request carries no lock key ({source}).").into()
            }
            LockRejection::Misplaced { reason } => format!("Misconfigured lock: {reason}.").into(),
            LockRejection::Lost { .. } => {
                "The request's lock was lost before it finished; retry.".into()
            }
            LockRejection::HeldTooLong { .. } => {
                "The request held its lock for longer than allowed.".into()
            }
            LockRejection::Failed { .. } => "The lock could not be taken.".into(),
        }
    }

    /// The default response: [`status`](Self::status), a text body, and
    /// `Retry-After` for [`Busy`](Self::Busy).
    pub fn into_http_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from(self.body_text().into_owned()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl fmt::Display for LockRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockRejection::Busy { key, .. } => write!(f, "lock {key:?} is busy"),
            LockRejection::Unavailable { key, source } | LockRejection::Failed { key, source } => {
                write!(f, "could not lock {key:?}: {source}")
            }
            LockRejection::InvalidKey { key, reason } => {
                write!(f, "invalid lock key {key:?}: {reason}")
            }
            LockRejection::MissingKey { source } => {
                write!(f, "the request carries no lock key ({source})")
            }
            LockRejection::Misplaced { reason } => f.write_str(reason),
            LockRejection::Lost { key, fence } => {
                write!(f, "the lease on {key:?} (fence {fence}) was lost")
            }
            LockRejection::HeldTooLong { key, max_hold } => {
                write!(
                    f,
                    "the request held {key:?} for its longest hold, {max_hold:?}"
                )
            }
        }
    }
}

impl std::error::Error for LockRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockRejection::Unavailable { source, .. } | LockRejection::Failed { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// What [`LockLayer`](super::LockLayer) does with a request whose
/// [`KeyExtractor`](super::KeyExtractor) finds no key
/// ([`KeyError::Missing`]). A misplaced extractor is never passed through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingKey {
    /// Refuse with [`LockRejection::MissingKey`] (`400`), naming where the
    /// key was looked for (the default: a request without its key must not
    /// skip the lock).
    #[default]
    Reject,
    /// Call the service without a lock: the key is optional, and requests
    /// without one need no serialisation. The layer logs a warning the first
    /// time it lets such a request through.
    PassThrough,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let busy = |retry_after| LockRejection::Busy {
            key: "k".into(),
            retry_after,
        };
        assert_eq!(
            busy(Some(Duration::from_secs(3))).retry_after_secs(),
            Some(3)
        );
        assert_eq!(
            busy(Some(Duration::from_millis(3_001))).retry_after_secs(),
            Some(4)
        );
        assert_eq!(
            busy(Some(Duration::from_millis(1))).retry_after_secs(),
            Some(1)
        );
        assert_eq!(busy(Some(Duration::ZERO)).retry_after_secs(), Some(1));
        assert_eq!(busy(None).retry_after_secs(), Some(1));
        let missing = LockRejection::MissingKey {
            source: "header x".into(),
        };
        assert_eq!(missing.retry_after_secs(), None);
    }

    #[test]
    fn errors_sort_into_statuses() {
        let status = |e| LockRejection::from_error("k", e).status();
        assert_eq!(
            status(LockError::Busy { retry_after: None }),
            StatusCode::LOCKED
        );
        assert_eq!(
            status(LockError::unavailable("down")),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(LockError::InvalidKey { reason: "empty" }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(LockError::InvalidTtl {
                ttl: Duration::ZERO
            }),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let keyed = |e| LockRejection::from_key_error(e).status();
        assert_eq!(
            keyed(KeyError::missing("header x")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            keyed(KeyError::Invalid {
                source: "path parameter id".into(),
                reason: "not a u64".into()
            }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            keyed(KeyError::Misplaced { reason: "outside" }),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
