//! The [`KeyExtractor`] trait, and the namespace any extractor can put in
//! front of its keys ([`Prefixed`]).

use http::request::Parts;

use super::{KeyError, Keys};

/// Finds the lock key of a request from its head.
///
/// Extraction is synchronous and must be cheap: it runs on every request
/// before the lock is taken. Keys may hold any characters, up to
/// [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes; a longer or empty key is
/// refused with `400`.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The lock key (or keys) of the request, or why it has none.
    ///
    /// # Errors
    ///
    /// A [`KeyError`]: missing, invalid, or an extractor that cannot work
    /// where it is installed.
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError>;

    /// This extractor with `prefix` in front of every key it finds.
    ///
    /// ```
    /// use tower_lock::middleware::{KeyExtractor, key};
    ///
    /// let request = http::Request::builder().header("x-tenant-id", "7").body(()).unwrap();
    /// let (parts, _) = request.into_parts();
    /// let extractor = key::header("x-tenant-id").prefixed("tenant:");
    /// assert_eq!(extractor.extract(&parts), Ok("tenant:7".into()));
    /// ```
    fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self>
    where
        Self: Sized,
    {
        Prefixed {
            prefix: prefix.into(),
            inner: self,
        }
    }
}

/// See [`KeyExtractor::prefixed`].
#[derive(Clone, Debug)]
pub struct Prefixed<K> {
    prefix: String,
    inner: K,
}

impl<K: KeyExtractor> KeyExtractor for Prefixed<K> {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let keys = self.inner.extract(parts)?;
        Ok(keys.map(|key| format!("{}{key}", self.prefix)))
    }
}

/// The ready extractors offer [`KeyExtractor::prefixed`] without importing
/// the trait.
macro_rules! inherent_prefixed {
    ($ty:ty) => {
        impl $ty {
            /// This extractor with `prefix` in front of every key it finds;
            /// see [`KeyExtractor::prefixed`].
            pub fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
                KeyExtractor::prefixed(self, prefix)
            }
        }
    };
}
pub(super) use inherent_prefixed;
