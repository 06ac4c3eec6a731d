//! Closures as extractors: one that finds a key, and one that finds
//! several.

use std::fmt;

use http::request::Parts;

use super::{KeyError, KeyExtractor, Keys};

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        self(parts)
            .map(Keys::One)
            .ok_or_else(|| KeyError::missing("the key function"))
    }
}

/// A closure as an extractor; the same as passing the closure, with its
/// argument type inferred.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key};
///
/// let by_query = key::from_fn(|parts| parts.uri.query().map(str::to_owned));
/// let (parts, _) = http::Request::get("/x?job=7").body(()).unwrap().into_parts();
/// assert_eq!(by_query.extract(&parts), Ok("job=7".into()));
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    f
}

/// A closure that finds several keys as an extractor: the request is
/// locked on all of them at once (see [`Keys::Several`]). `None` is a
/// missing key.
///
/// ```
/// use tower_lock::middleware::{KeyExtractor, key::{self, Keys}};
///
/// // `POST /transfers?from=7&to=3` locks both accounts.
/// let accounts = key::from_fn_all(|parts| {
///     let query = parts.uri.query()?;
///     let value = |name: &str| {
///         query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
///     };
///     Some(vec![format!("account:{}", value("from")?), format!("account:{}", value("to")?)])
/// });
/// let (parts, _) = http::Request::post("/transfers?from=7&to=3").body(()).unwrap().into_parts();
/// assert_eq!(
///     accounts.extract(&parts),
///     Ok(Keys::Several(vec!["account:7".into(), "account:3".into()])),
/// );
/// ```
pub fn from_fn_all<F>(f: F) -> FromFnAll<F>
where
    F: Fn(&Parts) -> Option<Vec<String>> + Send + Sync + 'static,
{
    FromFnAll(f)
}

/// See [`from_fn_all`].
#[derive(Clone)]
pub struct FromFnAll<F>(F);

impl<F> fmt::Debug for FromFnAll<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFnAll")
    }
}

impl<F> KeyExtractor for FromFnAll<F>
where
    F: Fn(&Parts) -> Option<Vec<String>> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Result<Keys, KeyError> {
        (self.0)(parts)
            .map(Keys::Several)
            .ok_or_else(|| KeyError::missing("the keys function"))
    }
}
