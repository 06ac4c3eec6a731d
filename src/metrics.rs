//! What a [`Locker`](crate::Locker) reports through the [`metrics`] facade
//! (feature `metrics`): one call per event, so call sites stay one line;
//! without the feature every call is a no-op the compiler removes.
//!
//! | metric | kind | labels |
//! |--------|------|--------|
//! | `tower_lock_acquisitions_total` | counter | `backend`, `key_class` |
//! | `tower_lock_wait_seconds` | histogram | `backend`, `key_class` |
//! | `tower_lock_hold_seconds` | histogram | `backend`, `key_class` |
//! | `tower_lock_refusals_total` | counter | `backend`, `key_class`, `reason` |
//! | `tower_lock_leases_lost_total` | counter | `backend`, `key_class` |
//! | `tower_lock_renewals_total` | counter | `backend`, `key_class` |
//! | `tower_lock_renewal_failures_total` | counter | `backend`, `key_class` |
//!
//! `key_class` is there only when the user chose how keys are classed: raw
//! keys can come from requests, and a label per key would grow the
//! exporter without bound.

use crate::LockError;

/// Why a lock was not had, as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A try found the key held.
    Busy,
    /// A wait ran out.
    Timeout,
    /// The store failed or could not be reached.
    Unavailable,
    /// The locker was shut down.
    ShutDown,
    /// A request reached `LockLayer` without its key.
    MissingKey,
}

impl Refusal {
    /// The refusal an error comes to, for a call that waited (`waited`) or
    /// tried once; `None` for errors that are the caller's (bad input).
    pub(crate) fn of(error: &LockError, waited: bool) -> Option<Self> {
        match error {
            LockError::Busy { .. } if waited => Some(Refusal::Timeout),
            LockError::Busy { .. } => Some(Refusal::Busy),
            LockError::Unavailable { .. } | LockError::Misconfigured { .. } => {
                Some(Refusal::Unavailable)
            }
            LockError::ShutDown => Some(Refusal::ShutDown),
            _ => None,
        }
    }

    #[cfg(feature = "metrics")]
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Timeout => "timeout",
            Refusal::Unavailable => "unavailable",
            Refusal::ShutDown => "shut_down",
            Refusal::MissingKey => "missing_key",
        }
    }
}

/// When a timed operation started; without the feature nothing, and no
/// clock read.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started(std::time::Instant);

/// When a timed operation started; without the feature nothing, and no
/// clock read.
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started;

impl Started {
    #[inline]
    pub(crate) fn now() -> Self {
        #[cfg(feature = "metrics")]
        return Started(std::time::Instant::now());
        #[cfg(not(feature = "metrics"))]
        Started
    }

    #[cfg(feature = "metrics")]
    fn elapsed(self) -> std::time::Duration {
        self.0.elapsed()
    }
}

/// The name `Locker::new` gives a backend type in the `backend` label: the
/// built-in stores by their short name, any other by its type's name.
pub(crate) fn backend_name<B>() -> &'static str {
    let full = std::any::type_name::<B>();
    let path = full.split('<').next().unwrap_or(full);
    let name = path.rsplit("::").next().unwrap_or(path);
    match name {
        "MemoryBackend" => "memory",
        "RedisBackend" => "redis",
        "NatsBackend" => "nats",
        other => other,
    }
}

#[cfg(feature = "metrics")]
pub(crate) use self::enabled::{KeyClass, Metrics};

#[cfg(not(feature = "metrics"))]
pub(crate) use self::disabled::Metrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::{Arc, RwLock};

    use metrics::{Label, counter, histogram};

    use super::{Refusal, Started};

    /// How keys are classed in the `key_class` label.
    #[derive(Clone, Default)]
    pub(crate) enum KeyClass {
        /// No `key_class` label.
        #[default]
        None,
        /// The key up to its first `:` (the whole key when it has none).
        Prefix,
        /// The user's function.
        With(Arc<dyn Fn(&str) -> &'static str + Send + Sync>),
    }

    struct Labels {
        backend: &'static str,
        key_class: KeyClass,
    }

    /// One owner's labels; shared by its clones, as its leases are.
    pub(crate) struct Metrics {
        labels: RwLock<Labels>,
    }

    impl Metrics {
        pub(crate) fn new(backend: &'static str) -> Self {
            Metrics {
                labels: RwLock::new(Labels {
                    backend,
                    key_class: KeyClass::None,
                }),
            }
        }

        fn write(&self) -> std::sync::RwLockWriteGuard<'_, Labels> {
            // Each write replaces one field whole: a panic cannot leave it torn.
            self.labels
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        pub(crate) fn set_backend(&self, backend: &'static str) {
            self.write().backend = backend;
        }

        pub(crate) fn set_key_class(&self, key_class: KeyClass) {
            self.write().key_class = key_class;
        }

        /// The labels of an event on `key` (`None`: no key, no class).
        fn labels(&self, key: Option<&str>) -> Vec<Label> {
            let labels = self
                .labels
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut out = vec![Label::from_static_parts("backend", labels.backend)];
            let class = match (&labels.key_class, key) {
                (KeyClass::None, _) | (_, None) => None,
                (KeyClass::Prefix, Some(key)) => {
                    let prefix = key.split_once(':').map_or(key, |(prefix, _)| prefix);
                    Some(Label::new("key_class", prefix.to_owned()))
                }
                (KeyClass::With(class), Some(key)) => {
                    Some(Label::from_static_parts("key_class", class(key)))
                }
            };
            out.extend(class);
            out
        }

        pub(crate) fn acquired(&self, key: &str, started: Started) {
            let labels = self.labels(Some(key));
            counter!("tower_lock_acquisitions_total", labels.iter()).increment(1);
            histogram!("tower_lock_wait_seconds", labels).record(started.elapsed().as_secs_f64());
        }

        pub(crate) fn refused(&self, key: Option<&str>, refusal: Refusal) {
            let mut labels = self.labels(key);
            labels.push(Label::from_static_parts("reason", refusal.as_str()));
            counter!("tower_lock_refusals_total", labels).increment(1);
        }

        pub(crate) fn released(&self, key: &str, held_since: Started) {
            let labels = self.labels(Some(key));
            histogram!("tower_lock_hold_seconds", labels)
                .record(held_since.elapsed().as_secs_f64());
        }

        pub(crate) fn lost(&self, key: &str) {
            counter!("tower_lock_leases_lost_total", self.labels(Some(key))).increment(1);
        }

        pub(crate) fn renewed(&self, key: &str, ok: bool) {
            let labels = self.labels(Some(key));
            if ok {
                counter!("tower_lock_renewals_total", labels).increment(1);
            } else {
                counter!("tower_lock_renewal_failures_total", labels).increment(1);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    use super::{Refusal, Started};

    /// Nothing to report without the feature.
    pub(crate) struct Metrics;

    impl Metrics {
        #[inline]
        pub(crate) fn new(_backend: &'static str) -> Self {
            Metrics
        }

        #[inline]
        pub(crate) fn acquired(&self, _key: &str, _started: Started) {}

        #[inline]
        pub(crate) fn refused(&self, _key: Option<&str>, _refusal: Refusal) {}

        #[inline]
        pub(crate) fn released(&self, _key: &str, _held_since: Started) {}

        #[inline]
        pub(crate) fn lost(&self, _key: &str) {}

        #[inline]
        pub(crate) fn renewed(&self, _key: &str, _ok: bool) {}
    }
}
