//! RedisBackend on a 3-master Redis Cluster started by the tests
//! (`redis-cli --cluster create`): the conformance suite, and wake-ups
//! for keys whose slots live on every node.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::{sync::LazyLock, time::Duration};

use redis_support::{Cluster, Deployment, RedisHarness};
use tower_lock::Locker;

static CLUSTER: LazyLock<Cluster> = LazyLock::new(Cluster::start);

fn harness() -> RedisHarness {
    RedisHarness::new(Deployment::Cluster(CLUSTER.urls()), CLUSTER.urls())
}

mod cluster {
    crate::conformance_suite!(async { crate::harness() });
}

/// Keys spread over all three masters: each lock and its fence counter
/// share a slot (or the script would fail with CROSSSLOT), and a release on
/// any node wakes a waiter whose wake-up connection is on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_cross_nodes_and_locks_share_a_slot_with_their_fence() -> anyhow::Result<()> {
    let h = harness();
    let (a, b) = (h.backend().await, h.backend().await);
    let (holder, waiter) = (Locker::new(a.clone()), Locker::new(b));
    let mut slots_seen = std::collections::HashSet::new();
    let urls = CLUSTER.urls();
    let mut admin = redis::Client::open(urls[0].as_str())?
        .get_multiplexed_async_connection()
        .await?;
    for i in 0..24 {
        let key = format!("}}{{{i}}} node spread {i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(a.redis_key(&key))
            .query_async(&mut admin)
            .await?;
        slots_seen.insert(slot / 5462);
        let held = holder.acquire(&key, Duration::from_secs(60)).await?;
        let task = tokio::spawn({
            let (waiter, key) = (waiter.clone(), key.clone());
            async move { waiter.acquire(&key, Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        held.release().await?;
        let next = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .map_err(|_| anyhow::anyhow!("{key:?}: release did not wake the waiter"))??;
        next?.release().await?;
    }
    assert_eq!(slots_seen.len(), 3, "the keys must cover every master");
    Ok(())
}
