//! What the backend and its listener both act on ([`Store`]): the script
//! invocations for each lease kind, run on the command connection.

use std::{sync::Arc, time::Duration};

use redis::{Script, ScriptInvocation};

use super::{
    client::Conn,
    keys::KeySpace,
    notify::{Handover, Joined},
    scripts,
};
use crate::{
    LockError,
    backend::{AcquireRequest, Lease, LeaseKind, StateLoss, WRITER_CLAIM},
};

/// What the backend and its listener both act on: the connection, the key
/// space and this backend's name in queues. Cheap to clone.
#[derive(Clone)]
pub(super) struct Store {
    pub(super) conn: Conn,
    pub(super) keys: KeySpace,
    /// Where turns are announced: `<prefix>released:<backend id>`, one
    /// channel per backend, so a turn reaches only the backend it is for.
    pub(super) turns: String,
    /// This backend's own turn channel: `turns` and `id`.
    pub(super) channel: String,
    /// Names this backend in waiter queues and turn messages.
    pub(super) id: String,
    /// How long fence counters and queues outlive their key's use, in ms.
    pub(super) retention: u64,
    /// Hears of grants and releases of leases that carry a value.
    pub(super) changed: String,
    /// Noticed when the wake-up connection comes back: the server may have
    /// restarted, or failed over, without the keys.
    pub(super) loss: Arc<StateLoss>,
    /// Wake-ups held for the next waiter to subscribe to a key.
    pub(super) handover: Arc<Handover>,
    /// The keys whose queue this backend may be in.
    pub(super) joined: Arc<Joined>,
    /// The key of the store's epoch (see [`scripts::EPOCH`]).
    pub(super) epoch: String,
}

impl Store {
    /// A failed request; one that lost its connection may mean the server
    /// restarted or failed over without the keys (see `loss`).
    fn failed(&self, err: redis::RedisError) -> LockError {
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            self.loss.notice();
        }
        LockError::unavailable(err)
    }

    /// `script` with every key of `key`'s lock and the arguments every
    /// script starts with (see the `scripts` module).
    pub(super) fn invocation(
        &self,
        script: &'static Script,
        key: &str,
    ) -> ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        for redis_key in KeySpace::script_keys(self.keys.lock_key(key)) {
            invocation.key(redis_key);
        }
        invocation
            .arg(&self.id)
            .arg(&self.turns)
            .arg(millis(TURN_GRACE))
            .arg(self.retention)
            .arg(millis(WRITER_CLAIM));
        invocation
    }

    /// The script of a try for `request`; `proven`: the store is known to
    /// have kept its state for at least the request's ttl (see
    /// [`scripts::EPOCH`]).
    pub(super) fn acquire(
        &self,
        request: &AcquireRequest<'_>,
        proven: bool,
    ) -> ScriptInvocation<'static> {
        let flag = |set: bool| if set { "1" } else { "0" };
        let mut invocation = match request.kind {
            LeaseKind::Exclusive => self.invocation(&scripts::ACQUIRE, request.key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                self.invocation(&scripts::ACQUIRE_SHARED, request.key)
            }
        };
        invocation
            .arg(request.token.to_string())
            .arg(lease_millis(request.ttl))
            .arg(flag(request.waiting))
            .arg(flag(request.queued_behind));
        match request.kind {
            LeaseKind::Exclusive => invocation
                .arg(request.value.unwrap_or(""))
                .arg(&self.changed)
                .arg(flag(proven)),
            LeaseKind::Shared => invocation.arg("s").arg(0),
            LeaseKind::Counted { permits } => invocation.arg("c").arg(permits),
        };
        invocation
    }

    /// How much longer a lease with a value and `ttl`, on a key with no
    /// counter, must wait: until the store's epoch is `ttl` old.
    pub(super) async fn epoch_hold_back(&self, ttl: Duration) -> Result<Duration, LockError> {
        let mut invocation = scripts::EPOCH.prepare_invoke();
        invocation.key(&self.epoch);
        let reply: Vec<i64> = self.run(&invocation).await?;
        let [since, now] = reply[..] else {
            return Ok(ttl);
        };
        let until = since.saturating_add(i64::try_from(lease_millis(ttl)).unwrap_or(i64::MAX));
        let left = u64::try_from(until.saturating_sub(now)).unwrap_or(0);
        Ok(Duration::from_millis(left))
    }

    /// Runs `invocation` on the command connection.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|err| self.failed(err))
    }

    /// Releases `lease` on `key`. `None`: it was no longer held;
    /// `Some(released)`: released.
    pub(super) async fn release(
        &self,
        key: &str,
        lease: &Lease,
    ) -> Result<Option<Released>, LockError> {
        let mut invocation = match lease.kind {
            LeaseKind::Exclusive => self.invocation(&scripts::RELEASE, key),
            LeaseKind::Shared | LeaseKind::Counted { .. } => {
                self.invocation(&scripts::RELEASE_SHARED, key)
            }
        };
        invocation.arg(lease.token.to_string()).arg(&self.changed);
        let reply: Vec<redis::Value> = self.run(&invocation).await?;
        let (others_hold, handed_to) = match reply.split_first() {
            Some((redis::Value::Int(1), handed_to)) => (false, handed_to),
            Some((redis::Value::Int(2), handed_to)) => (true, handed_to),
            _ => return Ok(None),
        };
        let handed_to = handed_to
            .iter()
            .filter_map(|id| match id {
                redis::Value::BulkString(id) => Some(String::from_utf8_lossy(id).into_owned()),
                _ => None,
            })
            .collect();
        Ok(Some(Released {
            others_hold,
            handed_to,
        }))
    }

    /// In the background on `runtime`: takes this backend out of `key`'s
    /// queue, and passes on a turn already given to it, because nobody
    /// here waits for the key any longer.
    pub(super) fn withdraw(self, runtime: &tokio::runtime::Handle, key: String) {
        runtime.spawn(async move {
            let invocation = self.invocation(&scripts::WITHDRAW, &key);
            if let Err(err) = self.run::<i64>(&invocation).await {
                // The turn lapses after its grace instead, and the queue
                // expires after the retention.
                tracing::debug!(?key, error = %err, "could not leave the waiter queue");
            }
            // Forgotten either way, so the map holds only keys waited for.
            self.joined.left(&key);
        });
    }
}

/// What a release did.
pub(super) struct Released {
    /// Other shared or counted holders still hold the key.
    others_hold: bool,
    /// The queued backends given a turn.
    handed_to: Vec<String>,
}

impl Released {
    /// Whether waiters of the backend `id` may now take the key: it is their
    /// turn, or the key was freed with nobody queued.
    pub(super) fn frees_for(&self, id: &str) -> bool {
        self.handed_to.iter().any(|to| to == id) || (self.handed_to.is_empty() && !self.others_hold)
    }
}

/// How long a released lock stays reserved for the first queued backend:
/// long enough for the turn message and the claim to cross the network, and
/// short, because a backend that died while queued costs the queue this.
const TURN_GRACE: Duration = Duration::from_millis(250);

/// Whole milliseconds for Redis, rounded up.
pub(super) fn millis(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX).max(1)
}

/// A lease's ttl for Redis: [`millis`], and one more. A holder counts its
/// lease from before its request, so the store must never keep it for
/// less, and the server counts from the start of the millisecond it runs
/// the request in (`PX` and the scripts' `TIME` both drop the rest), up to
/// a millisecond before it. The fault harness saw the holders of a lease
/// and of the next one overlap by under a millisecond without the extra one
/// (redis seeds 70048, 70063).
pub(super) fn lease_millis(ttl: Duration) -> u64 {
    millis(ttl).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_milliseconds_and_ttls_one_more() {
        assert_eq!(millis(Duration::from_micros(10_900)), 11);
        assert_eq!(millis(Duration::from_millis(10)), 10);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::from_nanos(1_000_001)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(lease_millis(Duration::from_micros(10_900)), 12);
        assert_eq!(lease_millis(Duration::from_millis(10)), 11);
        assert_eq!(lease_millis(Duration::MAX), u64::MAX);
    }
}
