//! Why the layer answered a request itself instead of calling the service.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::LockError;

/// Why [`LockLayer`](super::LockLayer) refused a request.
///
/// Each refusal has a precise status ([`status`](Self::status)) and a default
/// response ([`into_response`](Self::into_response)); an
/// [`on_rejection`](super::LockLayer::on_rejection) hook receives the value
/// to build its own. The inner service never runs for a refused request.
///
/// | variant | status |
/// |---------|--------|
/// | [`Busy`](Self::Busy) | `423 Locked`, with `Retry-After` |
/// | [`Unavailable`](Self::Unavailable) | `503 Service Unavailable` |
/// | [`InvalidKey`](Self::InvalidKey), [`MissingKey`](Self::MissingKey) | `400 Bad Request` |
/// | [`Failed`](Self::Failed) | `500 Internal Server Error` |
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
/// let response = busy.into_response();
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
    /// The lock store could not be reached. The request is refused rather
    /// than run unlocked.
    Unavailable {
        /// The key that was asked for.
        key: String,
        /// The store's error.
        source: LockError,
    },
    /// The request's key is not a valid lock key (empty, or longer than
    /// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN)).
    InvalidKey {
        /// The key that was refused.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The request carries no key and the layer is set to
    /// [`MissingKey::Reject`].
    MissingKey,
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
            LockError::InvalidKey { reason } => LockRejection::InvalidKey { key, reason },
            source @ LockError::Unavailable { .. } => LockRejection::Unavailable { key, source },
            source => LockRejection::Failed { key, source },
        }
    }

    /// The status code of the default response.
    pub fn status(&self) -> StatusCode {
        match self {
            LockRejection::Busy { .. } => StatusCode::LOCKED,
            LockRejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            LockRejection::InvalidKey { .. } | LockRejection::MissingKey => StatusCode::BAD_REQUEST,
            LockRejection::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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

    /// The plain-text body of the default response. It names no key and no
    /// store error: those go to the log, not to the client.
    pub fn body_text(&self) -> &'static str {
        match self {
            LockRejection::Busy { .. } => "The resource is locked by another request; retry later.",
            LockRejection::Unavailable { .. } => "The lock service is unavailable.",
            LockRejection::InvalidKey { .. } => "The request's lock key is invalid.",
            LockRejection::MissingKey => "The request carries no lock key.",
            LockRejection::Failed { .. } => "The lock could not be taken.",
        }
    }

    /// The default response: [`status`](Self::status), a text body, and
    /// `Retry-After` for [`Busy`](Self::Busy).
    pub fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(self.body_text().as_bytes()));
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
            LockRejection::MissingKey => f.write_str("the request carries no lock key"),
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
/// [`KeyExtractor`](super::KeyExtractor) finds no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingKey {
    /// Call the service without a lock (the default): the key is optional,
    /// and requests without one need no serialisation.
    #[default]
    PassThrough,
    /// Refuse with [`LockRejection::MissingKey`] (`400`).
    Reject,
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
        assert_eq!(LockRejection::MissingKey.retry_after_secs(), None);
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
    }
}
