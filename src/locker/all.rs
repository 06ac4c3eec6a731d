//! Several keys at once, deadlock-free: taken one by one in the one order
//! every process uses, all or nothing.

use std::{future::Future, task::Poll, time::Duration};

use smol_str::SmolStr;
use tokio::{runtime::Handle, time::Instant};

use super::{Locker, attempt::Asking, scope};
use crate::{
    LockError, LockGuard, LockSet,
    key::{owned_key, validate_key, validate_ttl},
    lease::any_lost,
    lock_set::release_all,
    metrics::Started,
};

impl Locker {
    /// Waits until every key of `keys` is free, then holds them all, each
    /// for `ttl`.
    ///
    /// Keys are checked first (one bad key: nothing is taken), taken once
    /// each however often they are named, and in ascending order of their
    /// bytes, the one order every process uses: two callers naming the same
    /// keys in any order can never deadlock. Keys already taken are renewed
    /// while the call waits for the rest, whatever the locker's renewal
    /// setting, so every lease of the returned set has at least two thirds
    /// of its ttl left.
    ///
    /// All or nothing: when a key cannot be had (the store fails, a lease
    /// taken is lost meanwhile), the keys already taken are released before
    /// the call returns.
    ///
    /// A handler that already holds one key (from [`LockLayer`](crate::LockLayer))
    /// and then takes another can deadlock with a request holding them the
    /// other way round; take every key in one set instead.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), for any key; [`LockError::Lost`]
    /// when a lease already taken was lost while the call waited.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future releases every key it took and
    /// leaves no waiter, as for [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{future::Future, task::Poll, time::Duration};
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let from_a = locker.acquire_all(["account:a", "account:b"], Duration::from_secs(5)).await?;
    /// let waiter = tokio::spawn({
    ///     let locker = locker.clone();
    ///     // The other way round: no deadlock, it waits its turn.
    ///     async move { locker.acquire_all(["account:b", "account:a"], Duration::from_secs(5)).await }
    /// });
    /// from_a.release().await?;
    /// let from_b = waiter.await.unwrap()?;
    /// # drop(from_b);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_all<I>(&self, keys: I, ttl: Duration) -> Result<LockSet, LockError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.lock_all(keys, ttl, Take::Wait(None)).await
    }

    /// Like [`acquire_all`](Self::acquire_all), but gives up after `wait`
    /// in all with [`LockError::Busy`], holding nothing.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire_all`](Self::acquire_all).
    ///
    /// ```
    /// use std::{future::Future, task::Poll, time::Duration};
    /// use tower_lock::{LockError, Locker};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// let locker = Locker::in_memory();
    /// let _b = locker.acquire("b", Duration::from_secs(30)).await?;
    /// let refused = locker
    ///     .acquire_all_timeout(["a", "b"], Duration::from_secs(5), Duration::from_millis(20))
    ///     .await;
    /// assert!(matches!(refused, Err(LockError::Busy { .. })));
    /// assert!(locker.try_lock("a", Duration::from_secs(5)).await?.is_some(), "a was given back");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_all_timeout<I>(
        &self,
        keys: I,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockSet, LockError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let deadline = Instant::now().checked_add(wait);
        self.lock_all(keys, ttl, Take::Wait(deadline)).await
    }

    /// Takes every key of `keys` if all are free now; never waits. A busy
    /// key is `Ok(None)`, and then nothing is held.
    ///
    /// # Errors
    ///
    /// As for [`acquire_all`](Self::acquire_all).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire_all`](Self::acquire_all).
    ///
    /// ```
    /// use std::{future::Future, task::Poll, time::Duration};
    /// use tower_lock::Locker;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_lock::LockError> {
    /// let locker = Locker::in_memory();
    /// let set = locker.try_lock_all(["x", "y"], Duration::from_secs(5)).await?;
    /// assert!(set.is_some());
    /// assert!(locker.try_lock_all(["y", "z"], Duration::from_secs(5)).await?.is_none());
    /// assert!(locker.try_lock("z", Duration::from_secs(5)).await?.is_some(), "z was given back");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn try_lock_all<I>(
        &self,
        keys: I,
        ttl: Duration,
    ) -> Result<Option<LockSet>, LockError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        match self.lock_all(keys, ttl, Take::Try).await {
            Ok(set) => Ok(Some(set)),
            Err(LockError::Busy { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn lock_all<I>(&self, keys: I, ttl: Duration, take: Take) -> Result<LockSet, LockError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        validate_ttl(ttl)?;
        let keys = canonical(keys)?;
        let backend = self.backend_id();
        for key in &keys {
            scope::refuse_reentry(backend, key)?;
        }
        let started = Started::now();
        let mut held = Vec::with_capacity(keys.len());
        // How many of `held` this set had the scheduler renew (see `take_one`).
        let mut renewing = 0;
        for key in &keys {
            match self.take_one(key, ttl, take, &held, &mut renewing).await {
                Ok(guard) => held.push(guard),
                Err(err) => {
                    let _ = release_all(held).await;
                    let refused = Err(err);
                    self.observe(key, started, &refused, matches!(take, Take::Wait(_)));
                    return refused;
                }
            }
        }
        // On a locker that does not renew, the set's leases are renewed only
        // until it is whole.
        for lease in held[..renewing].iter().filter_map(LockGuard::lease) {
            self.owner.stop_renewing(&lease).await;
        }
        for key in &keys {
            self.observe(key, started, &Ok(()), true);
        }
        Ok(LockSet::new(held))
    }

    /// Takes `key`; [`LockError::Lost`] should a lease in `held` be lost
    /// meanwhile. While it waits, the renewal scheduler keeps `held` (the
    /// first `renewing` of them already are, or the locker renews them).
    async fn take_one(
        &self,
        key: &SmolStr,
        ttl: Duration,
        take: Take,
        held: &[LockGuard],
        renewing: &mut usize,
    ) -> Result<LockGuard, LockError> {
        // Checked already, with every key of the set.
        let taking = async {
            match take {
                Take::Try => self
                    .attempt(key, ttl, Asking::Once)
                    .await?
                    .map_err(|_| LockError::Busy { retry_after: None }),
                Take::Wait(deadline) => self.lock_checked(key.clone(), ttl, deadline).await,
            }
        };
        let mut taking = std::pin::pin!(taking);
        // A key had at once needs no renewal of the others, nor a watch on them.
        let first = std::future::poll_fn(|cx| Poll::Ready(taking.as_mut().poll(cx))).await;
        if let Poll::Ready(taken) = first {
            return taken;
        }
        // A one-off try answers within a request: nothing to keep meanwhile.
        if !self.auto_renew
            && matches!(take, Take::Wait(_))
            && let Ok(runtime) = Handle::try_current()
        {
            for record in held[*renewing..].iter().filter_map(LockGuard::lease) {
                self.owner.renew(&record, &runtime, record.renewed_at());
            }
            *renewing = held.len();
        }
        tokio::select! {
            taken = &mut taking => taken,
            () = any_lost(held.iter().filter_map(LockGuard::lease)) => Err(LockError::Lost),
        }
    }
}

#[derive(Clone, Copy)]
enum Take {
    Try,
    Wait(Option<Instant>),
}

/// Validated, each once, in ascending order of their bytes.
fn canonical<I>(keys: I) -> Result<Vec<SmolStr>, LockError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut keys = keys
        .into_iter()
        .map(|key| {
            let key = key.as_ref();
            validate_key(key).map(|()| owned_key(key))
        })
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    keys.dedup();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_taken_once_each_in_byte_order() {
        let keys = canonical(["b", "a", "é", "B", "a"]).expect("valid");
        assert_eq!(keys, ["B", "a", "b", "é"]);
    }

    #[test]
    fn one_bad_key_refuses_them_all() {
        assert!(matches!(
            canonical(["a", ""]),
            Err(LockError::InvalidKey { .. })
        ));
    }
}
