//! NatsBackend on a three-node JetStream cluster the test starts, with an R3
//! bucket: locking goes on, exclusively, while one node is killed.
#![cfg(feature = "nats")]

mod conformance;
mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use support::nats;
use tower_lock::{Locker, nats::NatsBackend};

async fn r3_backend(ports: &[u16]) -> NatsBackend {
    r3_backend_in(ports, "locks").await
}

async fn r3_backend_in(ports: &[u16], bucket: &str) -> NatsBackend {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let js = nats::jetstream(nats::connect(ports).await, Duration::from_secs(2));
        // Right after start-up the cluster may still be electing its
        // JetStream leader.
        match NatsBackend::builder(js, bucket).replicas(3).build().await {
            Ok(backend) => return backend,
            Err(err) => {
                assert!(Instant::now() < deadline, "no R3 bucket: {err}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locking_survives_a_killed_node_and_stays_exclusive() {
    let mut nodes = tokio::task::spawn_blocking(nats::cluster)
        .await
        .expect("start the cluster");
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(Locker::new(r3_backend(&ports).await));
    }
    let (replicas, leader) = bucket_placement(&ports).await;
    assert_eq!(
        replicas, 3,
        "the bucket must be replicated on all three nodes"
    );

    let checker = Arc::new(conformance::OverlapChecker::default());
    let counter = Arc::new(std::sync::Mutex::new(0u64));
    let sections = Arc::new(AtomicU64::new(0));
    // Store errors seen by the tasks (failed acquires and releases).
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let locker = lockers[task % lockers.len()].clone();
            let (checker, counter) = (checker.clone(), counter.clone());
            let (sections, stop, errors) = (sections.clone(), stop.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // Short leases, so one whose release was lost in the
                    // failover frees itself soon.
                    let Ok(guard) = locker.acquire("shared", Duration::from_secs(2)).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let section = checker.enter(guard.fence());
                    let read = *counter.lock().expect("counter");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    *counter.lock().expect("counter") = read + 1;
                    drop(section);
                    sections.fetch_add(1, Ordering::Relaxed);
                    if guard.release().await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    wait_for_progress(&sections, 30, Duration::from_secs(30)).await;
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no store error may happen while every node is up"
    );
    // Kill the bucket's stream leader: the hardest node to lose.
    let killed = tokio::task::spawn_blocking(move || {
        nodes[leader].kill();
        nodes
    });
    let nodes = killed.await.expect("kill a node");
    let before = sections.load(Ordering::Relaxed);
    wait_for_progress(&sections, before + 50, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("tasks stop")
            .expect("task");
    }
    let done = sections.load(Ordering::Relaxed);
    assert_eq!(*counter.lock().expect("counter"), done, "lost updates");
    checker.assert_exclusive(done as usize);
    drop(nodes);
}

async fn wait_for_progress(sections: &AtomicU64, target: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while sections.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "only {} critical sections within {within:?}, wanted {target}",
            sections.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bucket's replica count and the index of the node leading it.
async fn bucket_placement(ports: &[u16]) -> (usize, usize) {
    let js = async_nats::jetstream::new(nats::connect(ports).await);
    let mut stream = js.get_stream("KV_locks").await.expect("bucket stream");
    let info = stream.info().await.expect("stream info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.as_deref())
        .and_then(|name| name.strip_prefix("node-"))
        .and_then(|n| n.parse().ok())
        .expect("the bucket has a leader");
    (info.config.num_replicas, leader)
}

/// An R3 bucket of its own on a three-node cluster the test process shares,
/// older than the checks' longest ttl ([`nats::AgedBuckets`]: leases with
/// a value wait until their stream is one ttl old); every locker connects
/// to all three nodes.
struct Cluster {
    ports: Vec<u16>,
    bucket: String,
    /// Plays an outsider who may publish on the servers.
    forger: async_nats::Client,
    recorder: nats::Recorder,
}

/// More than the conformance checks this file runs.
const AGED_BUCKETS: usize = 24;

impl Cluster {
    async fn start() -> Self {
        static AGED: std::sync::OnceLock<nats::AgedBuckets> = std::sync::OnceLock::new();
        let aged = AGED.get_or_init(|| {
            let nodes = nats::lasting_cluster();
            nats::AgedBuckets::new(nodes, AGED_BUCKETS, 3, Duration::from_secs(31))
        });
        let bucket = aged.take().await;
        let ports = aged.ports.clone();
        let forger = nats::connect(&ports).await;
        let recorder = nats::Recorder::start(&forger, &bucket).await;
        Cluster {
            ports,
            bucket,
            forger,
            recorder,
        }
    }

    /// The bucket's keys with a message, from the stream leader's state.
    async fn keys(&self) -> Vec<String> {
        let js = async_nats::jetstream::new(nats::connect(&self.ports).await);
        let stream = js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .expect("bucket stream");
        let prefix = format!("$KV.{}.", self.bucket);
        let subjects = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .expect("stream info");
        let subjects: Vec<(String, usize)> = futures_util::TryStreamExt::try_collect(subjects)
            .await
            .expect("subjects");
        // `info_with_subjects` asks for a second page, which may repeat some.
        let mut keys: Vec<String> = subjects
            .into_iter()
            .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// A waiting writer's claim on a lock (`<key>.w`).
fn is_claim(key: &str) -> bool {
    key.split_once('.').is_some_and(|(_, rest)| rest == "w")
}

impl conformance::Harness for Cluster {
    async fn locker(&self) -> Locker {
        Locker::new(r3_backend_in(&self.ports, &self.bucket).await)
    }

    async fn stored_locks(&self) -> usize {
        let locks: std::collections::HashSet<String> = self
            .keys()
            .await
            .into_iter()
            .filter(|key| !is_claim(key))
            .map(|key| key.split('.').next().unwrap_or_default().to_owned())
            .collect();
        locks.len()
    }

    async fn leftovers(&self) -> Vec<String> {
        let keys = self.keys().await.into_iter();
        keys.filter(|key| is_claim(key)).collect()
    }

    fn measures_from_first_sight(&self) -> bool {
        true
    }

    async fn forge(&self, key: &str) -> usize {
        nats::forge(&self.forger, &self.bucket, key, &self.recorder).await
    }
}

// The election checks, and those of shared and counted locks (32 tasks
// over 4 lockers mixing readers and writers under an overlap checker;
// permits never exceeded), on the replicated bucket.
crate::conformance_suite!(@tests Cluster::start();
    one_candidate_leads_at_a_time_with_rising_terms,
    observers_see_every_change_of_leader,
    a_crashed_leader_is_replaced_after_its_ttl,
    shared_holders_coexist_and_an_exclusive_holder_excludes_all,
    readers_share_and_writers_exclude_under_contention,
    a_stream_of_readers_does_not_starve_a_writer,
    permits_are_never_exceeded_and_are_all_used,
    another_permit_count_is_refused_naming_both,
    abandoned_shared_and_counted_leases_expire_after_their_ttl,
    another_token_with_the_holders_revision_changes_nothing,
    another_token_with_a_shared_or_counted_holders_revision_changes_nothing,
    forged_messages_grant_create_and_delete_nothing,
    a_switch_between_kinds_is_woken,
);
