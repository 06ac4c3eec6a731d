//! Keys from a request header, as sent or parsed into its canonical form.

use std::{borrow::Cow, fmt};

use http::{HeaderName, request::Parts};

use super::{
    KeyError, KeyExtractor, Keys, Prefixed, canonical::canonical, extractor::inherent_prefixed,
};

/// Keys requests by the value of the header `name` (its first value).
///
/// A request without the header has no key. A value that is not UTF-8 is
/// read lossily: two such values may then share a lock, which serialises
/// more than needed but never less.
///
/// # Panics
///
/// When `name` is not a valid header name: a programming error, caught on
/// the first run.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let (parts, _) = http::Request::builder()
///     .header("x-tenant-id", "acme")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(key::header("x-tenant-id").extract(&parts), Ok("acme".into()));
/// ```
pub fn header(name: impl AsRef<str>) -> Header {
    let name = name.as_ref();
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => Header {
            source: format!("header {name}").into(),
            name,
        },
        Err(_) => panic!("key::header: {name:?} is not a valid header name"),
    }
}

/// See [`header`].
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
    source: Cow<'static, str>,
}

inherent_prefixed!(Header);

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let Some(value) = parts.headers.get(&self.name) else {
            return Err(KeyError::missing(self.source.clone()));
        };
        Ok(Keys::One(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ))
    }
}

/// Keys requests by the header `name`, parsed as a `T` and locked in its
/// canonical form (`T`'s `Display`), so that every spelling of one value
/// takes one lock: with `T = u64`, `7`, `07` and `+7` all lock `7`. A value
/// that does not parse is [`KeyError::Invalid`] (`400`); a missing header
/// is [`KeyError::Missing`].
///
/// # Panics
///
/// When `name` is not a valid header name, as [`header`].
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let tenant = key::header_as::<u64>("x-tenant-id").prefixed("tenant:");
/// let (parts, _) = http::Request::builder()
///     .header("x-tenant-id", "007")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(tenant.extract(&parts), Ok("tenant:7".into()));
/// ```
pub fn header_as<T>(name: impl AsRef<str>) -> HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    HeaderAs {
        header: header(name),
        _type: std::marker::PhantomData,
    }
}

/// See [`header_as`].
pub struct HeaderAs<T> {
    header: Header,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for HeaderAs<T> {
    fn clone(&self) -> Self {
        HeaderAs {
            header: self.header.clone(),
            _type: std::marker::PhantomData,
        }
    }
}

impl<T> fmt::Debug for HeaderAs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderAs")
            .field("name", &self.header.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    /// This extractor with `prefix` in front of every key it finds; see
    /// [`KeyExtractor::prefixed`].
    pub fn prefixed(self, prefix: impl Into<String>) -> Prefixed<Self> {
        KeyExtractor::prefixed(self, prefix)
    }
}

impl<T> KeyExtractor for HeaderAs<T>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        let Some(value) = parts.headers.get(&self.header.name) else {
            return Err(KeyError::missing(self.header.source.clone()));
        };
        canonical::<T>(value.to_str().ok(), || self.header.source.to_string())
    }
}
