//! RedisBackend on a 3-master Redis Cluster started by the tests
//! (`redis-cli --cluster create`): the conformance suite, and wake-ups
//! for keys whose slots live on every node.
#![cfg(feature = "redis")]

mod conformance;
mod redis_support;
mod support;

use std::sync::LazyLock;

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
    // Which master serves each slot range, as the cluster says.
    let ranges: Vec<(u16, u16, String)> = {
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut admin)
            .await?;
        slots
            .iter()
            .filter_map(|range| {
                let redis::Value::Array(parts) = range else { return None };
                let (redis::Value::Int(start), redis::Value::Int(end), redis::Value::Array(master)) =
                    (&parts[0], &parts[1], &parts[2])
                else {
                    return None;
                };
                let port = match master.get(1) {
                    Some(redis::Value::Int(port)) => port.to_string(),
                    _ => return None,
                };
                Some((u16::try_from(*start).ok()?, u16::try_from(*end).ok()?, port))
            })
            .collect()
    };
    for i in 0..64 {
        let key = format!("}}{{{i}}} node spread {i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(a.redis_key(&key))
            .query_async(&mut admin)
            .await?;
        let master = ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(.., master)| master.clone())
            .ok_or_else(|| anyhow::anyhow!("slot {slot} has no master"))?;
        // One key per master is enough, and each check takes a while.
        if !slots_seen.insert(master) {
            continue;
        }
        conformance::assert_hand_off_is_woken(&holder, waiter.backend().clone(), &key).await;
    }
    assert_eq!(slots_seen.len(), 3, "the keys must cover every master");
    Ok(())
}
