//! [`KeyError`]: why an extractor found no key, and how the layer answers
//! each reason.

use std::{borrow::Cow, fmt};

/// Why a [`KeyExtractor`](super::KeyExtractor) found no key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// This request carries no key: the header or parameter is absent.
    Missing {
        /// Where the key was looked for (`header x-tenant-id`), for the
        /// `400` body and the log.
        source: Cow<'static, str>,
    },
    /// The request carries its key in a form that is not usable (a path
    /// parameter that does not parse as its type).
    Invalid {
        /// Where the key was looked for.
        source: Cow<'static, str>,
        /// Why the value is refused.
        reason: Cow<'static, str>,
    },
    /// The extractor cannot work where the layer is installed (a path
    /// parameter extractor outside axum's routing): no request would ever
    /// have a key, so this is never passed through.
    Misplaced {
        /// What to change.
        reason: &'static str,
    },
}

impl KeyError {
    /// A missing key, looked for at `source`.
    pub fn missing(source: impl Into<Cow<'static, str>>) -> Self {
        KeyError::Missing {
            source: source.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing { source } => write!(f, "the request carries no lock key ({source})"),
            KeyError::Invalid { source, reason } => {
                write!(f, "the request's lock key ({source}) is invalid: {reason}")
            }
            KeyError::Misplaced { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for KeyError {}
