//! [`Keys`]: the one key, or the set of keys, a request is locked on.

/// The key, or keys, a request is locked on.
///
/// Several keys are taken together, all or nothing, in the one order every
/// process uses (see [`Locker::acquire_all`](crate::Locker::acquire_all)),
/// so requests naming them in opposite orders never deadlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// One key: the common case.
    One(String),
    /// Several keys, taken as one set.
    Several(Vec<String>),
}

impl Keys {
    /// The keys, as given.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        let (one, several) = match self {
            Keys::One(key) => (Some(key.as_str()), &[][..]),
            Keys::Several(keys) => (None, keys.as_slice()),
        };
        one.into_iter().chain(several.iter().map(String::as_str))
    }

    /// Every key changed by `f`.
    pub fn map(self, mut f: impl FnMut(String) -> String) -> Self {
        match self {
            Keys::One(key) => Keys::One(f(key)),
            Keys::Several(keys) => Keys::Several(keys.into_iter().map(f).collect()),
        }
    }
}

impl From<String> for Keys {
    fn from(key: String) -> Self {
        Keys::One(key)
    }
}

impl From<&str> for Keys {
    fn from(key: &str) -> Self {
        Keys::One(key.to_owned())
    }
}
