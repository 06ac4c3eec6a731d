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

/// All the state of a key held shared or counted (the lock, its holders,
/// their fences, the fence counter, a waiting writer's queue entry and
/// claim, turns) lives in the key's one slot, on one node, for keys spread
/// over every master: a script touching two slots would fail with
/// CROSSSLOT, and the scan finds each key's state on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_counted_state_of_a_key_lives_in_its_slot() -> anyhow::Result<()> {
    use std::{collections::HashMap, time::Duration};
    let h = harness();
    let backend = h.backend().await;
    let (a, b, writer) = (
        Locker::new(backend.clone()),
        Locker::new(h.backend().await),
        Locker::new(h.backend().await),
    );
    let ttl = Duration::from_secs(30);
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    let keys: Vec<String> = (0..12).map(|i| format!("slot {i} {{{i}}}")).collect();
    for (i, key) in keys.iter().enumerate() {
        if i % 2 == 0 {
            held.push(a.acquire_shared(key, ttl).await?);
            held.push(b.acquire_shared(key, ttl).await?);
        } else {
            held.push(a.acquire_permit(key, 2, ttl).await?);
            held.push(b.acquire_permit(key, 2, ttl).await?);
        }
        let (writer, key) = (writer.clone(), key.clone());
        waiting.push(tokio::spawn(async move { writer.acquire(&key, ttl).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Which node holds each Redis key, and in which slot.
    let mut found: HashMap<String, Vec<(String, String, u16)>> = HashMap::new();
    for url in CLUSTER.urls() {
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        for raw in redis_support::scan_keys(&url, &backend.key_pattern()).await {
            let name = String::from_utf8_lossy(&raw).into_owned();
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(&name)
                .query_async(&mut conn)
                .await?;
            let lock = match name.rfind('}') {
                Some(end) => name[..=end].to_owned(),
                None => name.clone(),
            };
            found
                .entry(lock)
                .or_default()
                .push((name, url.clone(), slot));
        }
    }
    let mut nodes = std::collections::HashSet::new();
    for key in &keys {
        let lock = backend.redis_key(key);
        let parts = found.remove(&lock).unwrap_or_default();
        let suffixes: std::collections::BTreeSet<String> = parts
            .iter()
            .map(|(name, ..)| name[lock.len()..].to_owned())
            .collect();
        for suffix in ["", ":fence", ":queue", ":claim", ":holders", ":fences"] {
            assert!(suffixes.contains(suffix), "{key:?}: {suffixes:?}");
        }
        let (_, node, slot) = &parts[0];
        assert!(
            parts.iter().all(|(_, n, s)| n == node && s == slot),
            "{key:?} is spread: {parts:?}"
        );
        nodes.insert(node.clone());
    }
    // The store's epoch, which the harness wrote, is no lock's.
    found.remove(&h.epoch_key());
    assert!(found.is_empty(), "keys of no lock: {found:?}");
    assert_eq!(nodes.len(), 3, "the keys must cover every master");
    for guard in held {
        guard.release().await?;
    }
    for task in waiting {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await??
            .map_err(anyhow::Error::from)?
            .release()
            .await?;
    }
    Ok(())
}
