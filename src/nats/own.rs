//! The leases this backend granted, with their local deadlines: a lease
//! that ran out on this backend's own clock is never renewed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use crate::backend::Token;

/// The local deadlines of the leases this backend granted, so that it never
/// renews one that already ran out on its own clock.
#[derive(Debug, Default)]
pub(super) struct OwnLeases {
    leases: Mutex<HashMap<String, Own>>,
}

/// One lease this backend holds: renewals rewrite its value as it is.
#[derive(Clone, Debug)]
pub(super) struct Own {
    pub(super) token: Token,
    pub(super) deadline: Instant,
    pub(super) value: Option<Arc<str>>,
    /// The creation time of the stream it was granted in (its fence base).
    pub(super) created: u64,
}

impl OwnLeases {
    pub(super) fn granted(
        &self,
        key: &str,
        token: Token,
        deadline: Instant,
        value: Option<&str>,
        created: u64,
    ) {
        let mut leases = self.lock();
        if leases.len() >= 4096 {
            // Guards that were leaked never release: drop what ran out.
            let now = Instant::now();
            leases.retain(|_, own| own.deadline > now);
        }
        let value = value.map(Arc::from);
        leases.insert(
            key.to_owned(),
            Own {
                token,
                deadline,
                value,
                created,
            },
        );
    }

    /// `token`'s lease on `key`, while it runs.
    pub(super) fn running(&self, key: &str, token: Token) -> Option<Own> {
        self.lock()
            .get(key)
            .filter(|own| own.token == token && own.deadline > Instant::now())
            .cloned()
    }

    /// The slot `token` holds a counted lease of `key` with.
    pub(super) fn counted_entry(&self, key: &str, token: Token) -> Option<String> {
        let slots = format!("{key}.p.");
        self.lock()
            .iter()
            .find(|(entry, own)| own.token == token && entry.starts_with(&slots))
            .map(|(entry, _)| entry.clone())
    }

    pub(super) fn forget(&self, key: &str, token: Token) -> Option<Own> {
        let mut leases = self.lock();
        if leases.get(key).is_some_and(|own| own.token == token) {
            return leases.remove(key);
        }
        None
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Own>> {
        crate::sync::lock(&self.leases)
    }
}
