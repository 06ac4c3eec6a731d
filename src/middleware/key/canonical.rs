//! A key parsed as a type and locked in the type's canonical form, for
//! every extractor that parses its keys.

use std::fmt;

use super::{KeyError, Keys};

/// `raw` parsed as a `T`, in `T`'s canonical form; `Invalid`, naming
/// where it came from, when it does not parse.
pub(super) fn canonical<T>(
    raw: Option<&str>,
    source: impl FnOnce() -> String,
) -> Result<Keys, KeyError>
where
    T: std::str::FromStr + fmt::Display + 'static,
{
    match raw.map(str::parse::<T>) {
        Some(Ok(value)) => Ok(Keys::One(value.to_string())),
        _ => Err(KeyError::Invalid {
            source: source().into(),
            reason: format!("not a valid {}", std::any::type_name::<T>()).into(),
        }),
    }
}
