//! The locks the current request holds, so that a locker asked from inside
//! the request for one of them answers at once, instead of waiting for the
//! request itself to let go.
//!
//! [`LockLayer`](crate::LockLayer) enters the scope for every poll of the
//! handler's future and of the response body. Tasks spawned from the
//! handler do not inherit it.

use std::sync::Arc;

use smol_str::SmolStr;

use crate::{LockError, Locker};

tokio::task_local! {
    static HELD: Held;
}

/// A request's locks: its keys on one backend, and those of the requests
/// (layers) around it.
#[derive(Clone, Debug)]
pub(crate) struct Held(Arc<Link>);

#[derive(Debug)]
struct Link {
    backend: usize,
    keys: Vec<SmolStr>,
    outer: Option<Held>,
}

impl Held {
    /// `keys`, held through `locker`, inside whatever the current scope
    /// already holds.
    pub(crate) fn new(locker: &Locker, keys: Vec<SmolStr>) -> Self {
        let outer = HELD.try_with(Held::clone).ok();
        Held(Arc::new(Link {
            backend: locker.backend_id(),
            keys,
            outer,
        }))
    }

    /// Runs `f` inside this scope.
    pub(crate) fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        HELD.sync_scope(self.clone(), f)
    }

    fn holds(&self, backend: usize, key: &str) -> bool {
        let mut link = Some(self);
        while let Some(held) = link {
            if held.0.backend == backend && held.0.keys.iter().any(|held| held == key) {
                return true;
            }
            link = held.0.outer.as_ref();
        }
        false
    }
}

/// Refuses `key` on `backend` when the current request already holds it.
pub(crate) fn refuse_reentry(backend: usize, key: &str) -> Result<(), LockError> {
    match HELD.try_with(|held| held.holds(backend, key)) {
        Ok(true) => Err(LockError::HeldByThisRequest {
            key: key.to_owned(),
        }),
        _ => Ok(()),
    }
}
