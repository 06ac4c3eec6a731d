//! NatsBackend against real nats-server processes the tests start: the
//! conformance suite, bucket creation, and faults (a killed holder, a
//! restarted server, a paused holder).
#![cfg(feature = "nats")]

mod conformance;
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use support::{ServerProcess, nats};
use tower_lock::{LockError, Locker, nats::NatsBackend};

const BUCKET: &str = "locks";

/// A bucket and the server it is on; every locker gets its own connection
/// and backend (and so its own watch).
pub struct Nats {
    /// The test's own server; `None` on the one the process shares.
    _server: Option<ServerProcess>,
    port: u16,
    bucket: String,
    store: async_nats::jetstream::kv::Store,
    /// Plays an outsider who may publish on the server.
    forger: async_nats::Client,
    recorder: nats::Recorder,
}

/// More than the conformance checks this file runs.
const AGED_BUCKETS: usize = 64;

impl Nats {
    /// A server of the test's own, with the bucket [`BUCKET`] just created.
    async fn start() -> Self {
        let server = nats::server();
        let port = server.port;
        Self::open(Some(server), port, BUCKET.to_owned()).await
    }

    /// The conformance checks' store: a bucket of its own on a server the
    /// test process shares ([`nats::AgedBuckets`]), older than the checks'
    /// longest ttl, so that leases with a value are not held back.
    async fn aged() -> Self {
        static AGED: std::sync::OnceLock<nats::AgedBuckets> = std::sync::OnceLock::new();
        let aged = AGED.get_or_init(|| {
            let server = nats::lasting_server();
            nats::AgedBuckets::new(vec![server], AGED_BUCKETS, 1, Duration::from_secs(31))
        });
        let bucket = aged.take().await;
        Self::open(None, aged.ports[0], bucket).await
    }

    async fn open(server: Option<ServerProcess>, port: u16, bucket: String) -> Self {
        let backend = backend_in(port, &bucket).await;
        let forger = nats::connect(&[port]).await;
        let recorder = nats::Recorder::start(&forger, &bucket).await;
        Nats {
            _server: server,
            port,
            store: backend.store().clone(),
            bucket,
            forger,
            recorder,
        }
    }
}

async fn backend(port: u16) -> NatsBackend {
    backend_in(port, BUCKET).await
}

async fn backend_in(port: u16, bucket: &str) -> NatsBackend {
    let js = async_nats::jetstream::new(nats::connect(&[port]).await);
    NatsBackend::builder(js, bucket)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("open the bucket")
}

/// The bucket stream's creation time, in microseconds since the epoch.
async fn created_micros(store: &async_nats::jetstream::kv::Store) -> u64 {
    let info = store.stream.get_info().await.expect("stream info");
    let created = std::time::SystemTime::from(info.created);
    let since = created
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    since.as_micros() as u64
}

async fn all_keys(store: &async_nats::jetstream::kv::Store) -> Vec<String> {
    store
        .keys()
        .await
        .expect("list keys")
        .try_collect()
        .await
        .expect("list keys")
}

/// The keys with a message, sorted, from the stream's state.
async fn stored_keys(store: &async_nats::jetstream::kv::Store) -> Vec<String> {
    let prefix = format!("$KV.{}.", store.name);
    let subjects = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .expect("stream info");
    let subjects: Vec<(String, usize)> = subjects.try_collect().await.expect("subjects");
    let mut keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    // `info_with_subjects` asks for a second page, which may repeat some.
    keys.sort();
    keys.dedup();
    keys
}

async fn live_keys(store: &async_nats::jetstream::kv::Store) -> usize {
    all_keys(store).await.len()
}

/// A waiting writer's claim on a lock (`<key>.w`; see the module docs).
fn is_claim(key: &str) -> bool {
    key.split_once('.').is_some_and(|(_, rest)| rest == "w")
}

/// The locks with a lease in the bucket: a lock's own key, or the entries
/// of its shared and counted holders. Claims are waiters' state, reported
/// as leftovers instead.
async fn stored_locks(store: &async_nats::jetstream::kv::Store) -> usize {
    let locks: std::collections::HashSet<String> = all_keys(store)
        .await
        .into_iter()
        .filter(|key| !is_claim(key))
        .map(|key| key.split('.').next().unwrap_or_default().to_owned())
        .collect();
    locks.len()
}

async fn claims_left(store: &async_nats::jetstream::kv::Store) -> Vec<String> {
    all_keys(store)
        .await
        .into_iter()
        .filter(|key| is_claim(key))
        .map(|key| format!("claim {key}"))
        .collect()
}

impl conformance::Harness for Nats {
    async fn locker(&self) -> Locker {
        Locker::new(backend_in(self.port, &self.bucket).await)
    }

    async fn stored_locks(&self) -> usize {
        stored_locks(&self.store).await
    }

    async fn leftovers(&self) -> Vec<String> {
        claims_left(&self.store).await
    }

    fn measures_from_first_sight(&self) -> bool {
        true
    }

    async fn forge(&self, key: &str) -> usize {
        nats::forge(&self.forger, &self.bucket, key, &self.recorder).await
    }
}

conformance_suite!(Nats::aged());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creators_of_one_bucket_all_succeed() {
    let server = nats::server();
    let client = nats::connect(&[server.port]).await;
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let js = async_nats::jetstream::new(client.clone());
            tokio::spawn(async move { NatsBackend::new(js, "fresh").await })
        })
        .collect();
    let mut backends = Vec::new();
    for open in opens {
        backends.push(open.await.expect("task").expect("every creator succeeds"));
    }
    // They all share the one bucket.
    let (a, b) = (
        Locker::new(backends[0].clone()),
        Locker::new(backends[5].clone()),
    );
    let held = a
        .try_lock("k", Duration::from_secs(30))
        .await
        .expect("try_lock");
    assert!(held.is_some());
    assert!(
        b.try_lock("k", Duration::from_secs(30))
            .await
            .expect("try_lock")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_bucket_is_used_as_it_is() {
    let server = nats::server();
    let client = nats::connect(&[server.port]).await;
    let first = NatsBackend::builder(async_nats::jetstream::new(client.clone()), "kept")
        .replicas(1)
        .build()
        .await
        .expect("create");
    let guard = Locker::new(first)
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("acquire");
    let second = NatsBackend::new(async_nats::jetstream::new(client), "kept")
        .await
        .expect("open");
    assert!(
        Locker::new(second)
            .try_lock("k", Duration::from_secs(30))
            .await
            .expect("try_lock")
            .is_none(),
        "reopening must keep the locks"
    );
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bucket_names_are_refused() {
    let server = nats::server();
    let client = nats::connect(&[server.port]).await;
    for bad in ["", "a.b", "a b", "a*"] {
        let err = NatsBackend::new(async_nats::jetstream::new(client.clone()), bad)
            .await
            .expect_err(bad);
        assert!(
            matches!(err, LockError::Unavailable { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_stored_readably_and_reversibly() {
    let nats = Nats::start().await;
    let locker = nats.locker_for_test().await;
    let guard = locker
        .acquire("invoice:42 é", Duration::from_secs(30))
        .await
        .expect("acquire");
    let keys: Vec<String> = nats
        .store
        .keys()
        .await
        .expect("keys")
        .try_collect()
        .await
        .expect("keys");
    assert_eq!(keys, ["invoice=3A42=20=C3=A9"]);
    assert_eq!(
        tower_lock::nats::decode_key(&keys[0]).as_deref(),
        Some("invoice:42 é")
    );
    // The fence is the stream's creation time in µs plus the revision.
    let entry = nats
        .store
        .entry(&keys[0])
        .await
        .expect("entry")
        .expect("live");
    let created = created_micros(&nats.store).await;
    assert_eq!(created + entry.revision, guard.fence());
    guard.release().await.expect("release");
    assert_eq!(live_keys(&nats.store).await, 0);
}

impl Nats {
    async fn locker_for_test(&self) -> Locker {
        conformance::Harness::locker(self).await
    }
}

// ---------------------------------------------------------------------------
// Faults. A holder is a child process (this test binary, re-run as
// `fault_child`) so that it can really be killed or paused.

const CHILD_ENV: &str = "TOWER_LOCK_NATS_FAULT_CHILD";

/// Not a test: the holder process the fault tests start. It takes the lock
/// (renewing it while it runs), prints `acquired <fence>`, then on a line
/// `release` on stdin releases and prints the outcome.
#[tokio::test]
#[ignore = "run only as a child process by the fault tests"]
async fn fault_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(' ');
    let port: u16 = parts.next().and_then(|p| p.parse().ok()).expect("port");
    let key = parts.next().expect("key").to_owned();
    let ttl = Duration::from_millis(parts.next().and_then(|t| t.parse().ok()).expect("ttl"));
    let locker = Locker::new(backend(port).await).auto_renew(true);
    let guard = locker.acquire(&key, ttl).await.expect("child acquire");
    println!("acquired {}", guard.fence());
    let mut line = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line))
        .await
        .expect("stdin")
        .expect("stdin");
    match guard.release().await {
        Ok(()) => println!("released"),
        Err(LockError::Lost) => println!("lost"),
        Err(err) => println!("error {err}"),
    }
}

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    fence: u64,
}

impl Holder {
    fn start(port: u16, key: &str, ttl: Duration) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "fault_child",
                "--nocapture",
                "--quiet",
            ])
            .env(CHILD_ENV, format!("{port} {key} {}", ttl.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let fence = loop {
            let line = read_line(&mut stdout);
            if let Some(fence) = line.strip_prefix("acquired ") {
                break fence.trim().parse().expect("fence");
            }
        };
        Holder {
            child,
            stdin,
            stdout,
            fence,
        }
    }

    /// Asks the holder to release and returns what it printed.
    fn release(&mut self) -> String {
        writeln!(self.stdin, "release").expect("write to holder");
        loop {
            let line = read_line(&mut self.stdout);
            let line = line.trim();
            if ["released", "lost"].contains(&line) || line.starts_with("error") {
                return line.to_owned();
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A paused process can not die until it is continued.
            support::signal(self.child.id(), "CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    let read = stdout.read_line(&mut line).expect("read holder output");
    assert!(read > 0, "the holder process exited early");
    line
}

/// A waiter in this process over a holder process that renews: the key
/// stays held for several ttls.
async fn held_for_several_ttls(
    port: u16,
    key: &'static str,
    ttl: Duration,
) -> (Holder, WaitingTask) {
    let holder = tokio::task::spawn_blocking(move || Holder::start(port, key, ttl))
        .await
        .expect("holder");
    let waiter = Locker::new(backend(port).await);
    let waiting = tokio::spawn(async move {
        let guard = waiter.acquire(key, Duration::from_secs(30)).await;
        (guard, Instant::now())
    });
    tokio::time::sleep(ttl * 3).await;
    assert!(
        !waiting.is_finished(),
        "the holder renews its lease: the key is still held after three ttls"
    );
    (holder, waiting)
}

type WaitingTask = tokio::task::JoinHandle<(Result<tower_lock::LockGuard, LockError>, Instant)>;

/// The waiter takes over once the holder's last renewed lease has run out
/// on the waiter's clock: after the holder stopped, at least the two thirds
/// of a ttl that a renewal leaves, and at most a ttl and 500 ms.
async fn taken_over_after(
    stopped_at: Instant,
    waiting: WaitingTask,
    ttl: Duration,
    fence: u64,
) -> tower_lock::LockGuard {
    let (guard, acquired_at) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the stopped holder's lock must be taken over")
        .expect("task");
    let guard = guard.expect("acquire");
    let after = acquired_at - stopped_at;
    assert!(
        after >= ttl * 2 / 3 - Duration::from_millis(50),
        "taken over {after:?} after the holder stopped, before its renewed lease could end"
    );
    assert!(
        after <= ttl + Duration::from_millis(500),
        "taken over only {after:?} after the holder stopped"
    );
    assert!(guard.fence() > fence);
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lock_is_taken_within_ttl_and_500ms_of_first_sight() {
    let server = nats::server();
    let ttl = Duration::from_millis(1500);
    let (mut holder, waiting) = held_for_several_ttls(server.port, "killed", ttl).await;
    let _ = holder.child.kill();
    let killed_at = Instant::now();
    let _ = holder.child.wait();
    let guard = taken_over_after(killed_at, waiting, ttl, holder.fence).await;
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_past_its_ttl_loses_to_a_higher_fence() {
    let server = nats::server();
    let ttl = Duration::from_millis(1500);
    let (mut holder, waiting) = held_for_several_ttls(server.port, "paused", ttl).await;
    support::signal(holder.child.id(), "STOP");
    let stopped_at = Instant::now();
    let guard = taken_over_after(stopped_at, waiting, ttl, holder.fence).await;
    support::signal(holder.child.id(), "CONT");
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = holder.release();
        drop(holder);
        outcome
    })
    .await
    .expect("holder");
    assert_eq!(outcome, "lost", "the paused holder's release");
    assert!(
        Locker::new(backend(server.port).await)
            .try_lock("paused", Duration::from_secs(30))
            .await
            .expect("try_lock")
            .is_none(),
        "the stale release must not free the new holder's lock"
    );
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_recover_when_the_server_restarts() {
    let mut server = nats::server();
    let port = server.port;
    let holder_js = nats::jetstream(nats::connect(&[port]).await, Duration::from_secs(1));
    let holder = Locker::new(
        NatsBackend::new(holder_js.clone(), BUCKET)
            .await
            .expect("open"),
    );
    let guard = holder
        .acquire("restart", Duration::from_secs(30))
        .await
        .expect("acquire");
    let checker = Arc::new(conformance::OverlapChecker::default());
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let locker = Locker::new(backend(port).await);
        let checker = checker.clone();
        waiters.push(tokio::spawn(async move {
            let guard = locker
                .acquire("restart", Duration::from_secs(30))
                .await
                .expect("a waiter retries through the outage");
            let section = checker.enter(guard.fence());
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(section);
            guard.release().await.expect("release");
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .map(|restarted| {
        // Keep the server alive for the rest of the test.
        let deadline = Instant::now() + Duration::from_secs(15);
        (restarted, deadline)
    })
    .map(|(restarted, deadline)| async move {
        // The bucket persisted; wait until JetStream answers again.
        while holder_js.get_key_value(BUCKET).await.is_err() {
            assert!(Instant::now() < deadline, "JetStream did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!guard.is_lost());
        guard
            .release()
            .await
            .expect("the holder's lease survived the restart");
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(15), waiter)
                .await
                .expect("every waiter gets the lock after the restart")
                .expect("task");
        }
        checker.assert_exclusive(3);
        drop(restarted);
    })
    .expect("restart")
    .await;
}

/// A bucket made the classic KV way (`nats kv add`: deleting single
/// messages denied) works through delete markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_kv_bucket_works_through_delete_markers() {
    let server = nats::server();
    let client = nats::connect(&[server.port]).await;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_classic".into(),
        subjects: vec!["$KV.classic.>".into()],
        max_messages_per_subject: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("classic bucket");
    let (a, b) = (
        Locker::new(NatsBackend::new(js.clone(), "classic").await.expect("open")),
        Locker::new(NatsBackend::new(js.clone(), "classic").await.expect("open")),
    );
    // A release leaves a delete marker; the waiter is woken and takes the
    // key over it.
    conformance::assert_hand_off_is_woken(&a, b.backend().clone(), "k").await;
    let first = a
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("acquire over the marker");
    let first_fence = first.fence();
    first.release().await.expect("release");
    let second = b
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("acquire over the marker");
    assert!(second.fence() > first_fence);
    // A stale lease taken over through the marker path is lost.
    second.release().await.expect("release");
    let stale = a
        .acquire("k", Duration::from_millis(200))
        .await
        .expect("acquire");
    let stale_fence = stale.fence();
    let current = b
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("take over");
    assert!(current.fence() > stale_fence);
    assert!(matches!(stale.release().await, Err(LockError::Lost)));
    assert!(
        a.try_lock("k", Duration::from_secs(30))
            .await
            .expect("try_lock")
            .is_none(),
        "the stale release must not free the new holder's lock"
    );
    current.release().await.expect("release");
    let store = js.get_key_value("classic").await.expect("bucket");
    assert_eq!(live_keys(&store).await, 0);
}

/// A bucket deleted and created again starts its sequences at 1; fences go
/// on growing, for a new backend and for one that lived through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_growing_when_the_bucket_is_created_again() {
    let server = nats::server();
    let survivor = Locker::new(backend(server.port).await);
    let mut last = 0;
    for _ in 0..40 {
        let guard = survivor.acquire("k", Duration::from_secs(30)).await;
        let guard = guard.expect("acquire");
        last = last.max(guard.fence());
        guard.release().await.expect("release");
    }
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    js.delete_stream(format!("KV_{BUCKET}"))
        .await
        .expect("delete the bucket");
    // A restart takes its time; so does recreating a bucket.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newcomer = Locker::new(backend(server.port).await);
    let first = newcomer
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("acquire");
    assert!(
        first.fence() > last,
        "new bucket: {} after {last}",
        first.fence()
    );
    let first_fence = first.fence();
    first.release().await.expect("release");
    let survived = survivor.acquire("k", Duration::from_secs(30)).await;
    let survived = survived.expect("the old backend works on the new bucket");
    assert!(
        survived.fence() > first_fence,
        "a backend that lived through it: {} after {first_fence}",
        survived.fence()
    );
    survived.release().await.expect("release");
}

/// A stream like a KV bucket's, with `tune` applied, for the refusal tests.
async fn bucket_stream(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    tune: impl FnOnce(&mut async_nats::jetstream::stream::Config),
) {
    let mut config = async_nats::jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    };
    tune(&mut config);
    js.create_stream(config).await.expect("create the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_that_could_drop_or_keep_leases_wrongly_are_refused() {
    use async_nats::jetstream::stream::DiscardPolicy;

    let server = nats::server();
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    bucket_stream(&js, "history", |c| c.max_messages_per_subject = 5).await;
    bucket_stream(&js, "evicting", |c| {
        c.discard = DiscardPolicy::Old;
        c.max_bytes = 1 << 20;
    })
    .await;
    bucket_stream(&js, "bounded", |c| c.max_messages = 1000).await;
    for (bucket, setting) in [("history", "history"), ("evicting", "discard")] {
        match NatsBackend::new(js.clone(), bucket).await {
            Err(LockError::Misconfigured {
                setting: named,
                reason,
            }) => {
                assert_eq!(named, setting, "{reason}");
                assert!(reason.contains(bucket), "{reason}");
            }
            other => panic!("bucket {bucket:?} was not refused: {other:?}"),
        }
    }
    // A limit with discard new refuses new leases, never drops one.
    NatsBackend::new(js, "bounded")
        .await
        .expect("discard new is safe");
}

/// `nats kv add --ttl 1s` makes a bucket whose server drops any message
/// after a second: a longer lease is refused, naming both, and nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_longer_than_the_buckets_max_age_is_refused() {
    let server = nats::server();
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    bucket_stream(&js, "short", |c| c.max_age = Duration::from_secs(1)).await;
    let backend = NatsBackend::new(js, "short")
        .await
        .expect("a max_age is allowed");
    let store = backend.store().clone();
    let locker = Locker::new(backend);
    match locker.try_lock("k", Duration::from_secs(2)).await {
        Err(LockError::Misconfigured { setting, reason }) => {
            assert_eq!(setting, "max_age");
            assert!(reason.contains("2s") && reason.contains("1s"), "{reason}");
        }
        other => panic!("a 2 s lease on a 1 s bucket: {other:?}"),
    }
    assert_eq!(live_keys(&store).await, 0, "the refused lease was written");
    let guard = locker.try_lock("k", Duration::from_millis(900)).await;
    let guard = guard.expect("try_lock").expect("a lease within max_age");
    assert!(matches!(
        guard.extend(Duration::from_secs(2)).await,
        Err(LockError::Misconfigured { .. })
    ));
    guard.release().await.expect("release");
}

/// A bucket this backend creates bounds how long a crashed holder's entry
/// can stay: its `max_age` is the longest lease it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_bucket_bounds_what_a_crashed_holder_leaves() {
    let server = nats::server();
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    let backend = NatsBackend::builder(js, "aged")
        .max_age(Duration::from_secs(1))
        .build()
        .await
        .expect("create");
    let store = backend.store().clone();
    let info = store.stream.get_info().await.expect("info");
    assert_eq!(info.config.max_age, Duration::from_secs(1));
    let locker = Locker::new(backend);
    let guard = locker.acquire("k", Duration::from_millis(500)).await;
    std::mem::forget(guard.expect("acquire"));
    assert_eq!(live_keys(&store).await, 1);
    // The server ages messages out on its own timer, about once a second.
    let mut left = 1;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = live_keys(&store).await;
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "the abandoned entry outlived the bucket's max_age");
}

/// Whoever may publish on the release subject can wake waiters, but never
/// make them forget how long they have watched an abandoned lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_release_announcements_do_not_keep_an_abandoned_lock() {
    let server = nats::server();
    let ttl = Duration::from_millis(600);
    let holder = Locker::new(backend(server.port).await);
    std::mem::forget(holder.acquire("k", ttl).await.expect("acquire"));
    let client = nats::connect(&[server.port]).await;
    let forger = tokio::spawn(async move {
        loop {
            let subject = format!("tower-lock.{BUCKET}.released.k");
            let _ = client.publish(subject, bytes::Bytes::new()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let waiter = Locker::new(backend(server.port).await);
    // One ttl from first sight, plus slack for a loaded machine.
    let taken = waiter
        .acquire_timeout("k", ttl, Duration::from_secs(6))
        .await;
    forger.abort();
    let guard = taken.expect("the abandoned lock was never reclaimed");
    guard.release().await.expect("release");
}

/// A server that stops answering fails requests at the backend's deadline
/// instead of holding them for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_fails_requests_at_the_deadline() {
    let server = nats::server();
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    let backend = NatsBackend::builder(js, BUCKET)
        .request_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("open");
    let locker = Locker::new(backend);
    server.pause();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        locker.try_lock("k", Duration::from_secs(5)),
    )
    .await;
    server.resume();
    assert!(
        matches!(outcome, Ok(Err(LockError::Unavailable { .. }))),
        "expected Unavailable at the deadline, got {outcome:?}"
    );
}

/// Request-chosen keys cannot grow the bucket: distinct keys locked and
/// released leave no message in its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_keys_leave_no_message_in_the_bucket() {
    let server = nats::server();
    let backend = backend(server.port).await;
    let store = backend.store().clone();
    let locker = Locker::new(backend);
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let locker = locker.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    let key = format!("tenant:{task}:{i}");
                    let guard = locker.acquire(&key, Duration::from_secs(30)).await;
                    guard.expect("acquire").release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let info = store.stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, 0, "released keys left messages");
}

// ---------------------------------------------------------------------------
// Shared and counted leases: their entries in the bucket, holders that
// crash, and what a release leaves.

const KINDS_ENV: &str = "TOWER_LOCK_NATS_KINDS_CHILD";

/// Not a test: a process holding a shared lease on `<key>:shared` and one
/// of two permits of `<key>:permit`, renewed, until it is killed.
#[tokio::test]
#[ignore = "run only as a child process by the kinds tests"]
async fn kinds_child() {
    let Ok(spec) = std::env::var(KINDS_ENV) else {
        return;
    };
    let mut parts = spec.split(' ');
    let port: u16 = parts.next().and_then(|p| p.parse().ok()).expect("port");
    let key = parts.next().expect("key").to_owned();
    let ttl = Duration::from_millis(parts.next().and_then(|t| t.parse().ok()).expect("ttl"));
    let locker = Locker::new(backend(port).await).auto_renew(true);
    let shared = locker
        .acquire_shared(&format!("{key}:shared"), ttl)
        .await
        .expect("child shared");
    let permit = locker
        .acquire_permit(&format!("{key}:permit"), 2, ttl)
        .await
        .expect("child permit");
    println!(
        "{}held {} {}",
        support::child::MARK,
        shared.fence(),
        permit.fence()
    );
    // Held (and renewed) until killed.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_shared_and_counted_holders_free_their_place_after_their_ttl() {
    let nats = Nats::start().await;
    let ttl = Duration::from_millis(1500);
    let child = support::child::ChildProcess::start(
        "kinds_child",
        KINDS_ENV,
        format!("{} doc {}", nats.port, ttl.as_millis()),
    );
    let fences = child.expect_line("held");
    let (shared, permit) = ("doc:shared", "doc:permit");
    let locker = nats.locker_for_test().await;
    // Held for several ttls (renewed): a writer stays out, one permit is left.
    let mine = locker.try_lock_permit(permit, 2, LONG).await.expect("try");
    let mine = mine.expect("the second permit is free");
    for _ in 0..3 {
        assert!(locker.try_lock(shared, ttl).await.expect("try").is_none());
        assert!(
            locker
                .try_lock_permit(permit, 2, ttl)
                .await
                .expect("try")
                .is_none(),
            "a third permit of two"
        );
        tokio::time::sleep(ttl / 2).await;
    }
    support::signal(child.pid(), "KILL");
    let killed = Instant::now();
    let bound = ttl + Duration::from_secs(1);
    let (writer, second) = tokio::join!(
        locker.acquire_timeout(shared, LONG, bound * 2),
        locker.acquire_permit_timeout(permit, 2, LONG, bound * 2),
    );
    let (writer, second) = (writer.expect("writer"), second.expect("permit"));
    let waited = killed.elapsed();
    assert!(
        waited <= bound,
        "the killed holder's places came free after {waited:?}"
    );
    let child_fences: Vec<u64> = fences
        .split(' ')
        .map(|f| f.parse().expect("fence"))
        .collect();
    assert!(writer.fence() > child_fences[0] && second.fence() > child_fences[1]);
    for guard in [writer, second, mine] {
        guard.release().await.expect("release");
    }
    let info = nats.store.stream.get_info().await.expect("info");
    assert_eq!(
        info.state.messages, 0,
        "the crashed holder's entries stayed"
    );
    drop(child);
}

/// What the bucket holds for a lock held shared, by permits, and claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_counted_holders_are_entries_under_the_lock_key() {
    let nats = Nats::start().await;
    let (a, b) = (nats.locker_for_test().await, nats.locker_for_test().await);
    let readers = [
        a.acquire_shared("doc:1", LONG).await.expect("shared"),
        b.acquire_shared("doc:1", LONG).await.expect("shared"),
    ];
    let permit = a.acquire_permit("job", 3, LONG).await.expect("permit");
    // A waiting writer claims the key it finds held.
    let writer = tokio::spawn({
        let b = b.clone();
        async move { b.acquire("doc:1", LONG).await }
    });
    // The claim is written once the writer's first waiting try is refused.
    let deadline = Instant::now() + Duration::from_secs(3);
    let keys = loop {
        // The writer's own key comes and goes with each of its tries.
        let keys: Vec<String> = stored_keys(&nats.store)
            .await
            .into_iter()
            .filter(|key| key != "doc=3A1")
            .collect();
        if keys.iter().any(|key| key == "doc=3A1.w") || Instant::now() > deadline {
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert!(keys[0].starts_with("doc=3A1.r."), "{keys:?}");
    assert!(keys[1].starts_with("doc=3A1.r."), "{keys:?}");
    assert_eq!(keys[2], "doc=3A1.w", "{keys:?}");
    assert!(
        keys[3].starts_with("job.p.3.") && keys[3]["job.p.3.".len()..].parse::<u32>().is_ok(),
        "{keys:?}"
    );
    // A new reader stays out while the writer waits.
    assert!(
        a.try_lock_shared("doc:1", LONG)
            .await
            .expect("try")
            .is_none()
    );
    // Nobody holds the key exclusively. The waiting writer's key comes and
    // goes with each of its tries, so a read may meet it; the readers,
    // who stay, must never be reported.
    let probe = backend(nats.port).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let holder = loop {
        let holder = tower_lock::backend::Backend::holder(&probe, "doc:1")
            .await
            .expect("holder");
        if holder.is_none() || Instant::now() > deadline {
            break holder;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        holder, None,
        "shared holders are not reported as the key's holder"
    );
    for reader in readers {
        reader.release().await.expect("release");
    }
    let writer = writer.await.expect("task").expect("writer");
    writer.release().await.expect("release");
    permit.release().await.expect("release");
    let info = nats.store.stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, 0, "released keys left messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_shared_and_counted_keys_leave_no_message_in_the_bucket() {
    let nats = Nats::start().await;
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(nats.locker_for_test().await);
    }
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let locker = lockers[task % 4].clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let key = format!("doc:{}", i % 3);
                    let guard = match task % 3 {
                        0 => locker.acquire_shared(&key, LONG).await,
                        1 => locker.acquire(&key, LONG).await,
                        _ => {
                            locker
                                .acquire_permit(&format!("job:{}", i % 3), 3, LONG)
                                .await
                        }
                    };
                    guard.expect("acquire").release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let info = nats.store.stream.get_info().await.expect("info");
        if info.state.messages == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "released keys left {} messages: {:?}",
            info.state.messages,
            all_keys(&nats.store).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_counted_leases_are_refused_on_a_bucket_that_forbids_deletes() {
    let server = nats::server();
    let js = async_nats::jetstream::new(nats::connect(&[server.port]).await);
    bucket_stream(&js, "classic", |c| c.deny_delete = true).await;
    let locker = Locker::new(NatsBackend::new(js, "classic").await.expect("open"));
    for refused in [
        locker.try_lock_shared("k", LONG).await.map(|_| ()),
        locker.try_lock_permit("k", 2, LONG).await.map(|_| ()),
    ] {
        match refused {
            Err(LockError::Misconfigured { setting, reason }) => {
                assert_eq!(setting, "deny_delete");
                assert!(reason.contains("classic"), "{reason}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }
    // Exclusive locks work there as before.
    let guard = locker
        .try_lock("k", LONG)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("release");
}

const LONG: Duration = Duration::from_secs(30);

/// Two tasks of one backend take one key in turn, one as a writer and one
/// as a reader: every switch between kinds is a wake-up, not a backoff step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_and_writers_of_one_backend_hand_over_by_wake_up() {
    let server = nats::server();
    let locker = Locker::new(backend(server.port).await);
    let turns = Arc::new(tokio::sync::Mutex::new(0u32));
    let started = Instant::now();
    let tasks: Vec<_> = [false, true]
        .into_iter()
        .map(|shared| {
            let (locker, turns) = (locker.clone(), turns.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    let ttl = Duration::from_secs(30);
                    let guard = if shared {
                        locker.acquire_shared("k", ttl).await
                    } else {
                        locker.acquire("k", ttl).await
                    };
                    let guard = guard.expect("acquire");
                    *turns.lock().await += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let took = started.elapsed();
    eprintln!("40 sections in {took:?}");
    // By wake-up they take a fraction of a second; by the claim's timer
    // (the defect) 18 s. The bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(8), "40 sections took {took:?}");
}

/// Takes `key` straight from `backend`'s store, for the tests that need the
/// lease itself.
async fn take(backend: &NatsBackend, key: &str) -> tower_lock::backend::Lease {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Lease, LeaseKind, Token};
    let token = Token::new();
    let request = AcquireRequest::new(key, token, Duration::from_secs(30));
    match backend.try_acquire(&request).await.expect("try") {
        Attempt::Acquired { fence, revision } => {
            Lease::granted(token, LeaseKind::Exclusive, fence, revision)
        }
        other => panic!("{key:?} is free, yet: {other:?}"),
    }
}

/// Deletes the bucket's stream, and opens a new backend, which creates it
/// again: its sequences start at 1 again.
async fn recreate_bucket(port: u16) -> NatsBackend {
    let js = async_nats::jetstream::new(nats::connect(&[port]).await);
    js.delete_stream(format!("KV_{BUCKET}"))
        .await
        .expect("delete the bucket");
    backend(port).await
}

/// Found by the fault harness (nats, seed 20018): a reader's entry that a
/// refused try failed to withdraw (its withdrawal lost to a link fault) is
/// not a lease. The same token trying again while the writer still holds
/// must be refused, not granted again without a check against the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_leftover_entry_is_not_granted_past_a_writer() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, LeaseKind, Token};
    let server = nats::server();
    let writer = Locker::new(backend(server.port).await);
    let held = writer
        .acquire("k", Duration::from_secs(30))
        .await
        .expect("the writer");
    // The entry a refused try of `token` would have left: a real reader's
    // entry, written under the name it would have had on `k`.
    let token = Token::new();
    let other = backend(server.port).await;
    let shared =
        AcquireRequest::new("elsewhere", token, Duration::from_secs(30)).kind(LeaseKind::Shared);
    assert!(matches!(
        other.try_acquire(&shared).await.expect("try"),
        Attempt::Acquired { .. }
    ));
    let store = other.store().clone();
    let elsewhere = format!("elsewhere.r.{token}");
    let value = store
        .get(&elsewhere)
        .await
        .expect("get")
        .expect("the reader's entry");
    store
        .create(format!("k.r.{token}"), value)
        .await
        .expect("the leftover entry");
    // A backend that granted nothing of `token` on `k` tries again.
    let retrying = backend(server.port).await;
    let again = AcquireRequest::new("k", token, Duration::from_secs(30))
        .kind(LeaseKind::Shared)
        .waiting(true);
    let attempt = retrying.try_acquire(&again).await.expect("try");
    assert!(
        matches!(attempt, Attempt::Busy { .. }),
        "a leftover reader's entry was granted while the writer held: {attempt:?}"
    );
    assert!(!held.is_lost());
    held.release().await.expect("the writer's lease is intact");
}

/// The writer's twin of the case above: an exclusive entry that a refused
/// try failed to withdraw (it found a reader) is not a lease either. The
/// same token trying again must be checked against the reader like any
/// first write, not granted again because the entry carries its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_leftover_entry_is_not_granted_past_a_reader() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Token};
    let server = nats::server();
    let reader = Locker::new(backend(server.port).await);
    let held = reader
        .acquire_shared("k", Duration::from_secs(30))
        .await
        .expect("the reader");
    // The entry a refused try of `token` would have left: a real lease of
    // `token`, written under the lock's own key.
    let token = Token::new();
    let other = backend(server.port).await;
    let exclusive = AcquireRequest::new("elsewhere", token, Duration::from_secs(30));
    assert!(matches!(
        other.try_acquire(&exclusive).await.expect("try"),
        Attempt::Acquired { .. }
    ));
    let store = other.store().clone();
    let value = store
        .get("elsewhere")
        .await
        .expect("get")
        .expect("the writer's entry");
    store.create("k", value).await.expect("the leftover entry");
    // A backend that granted nothing of `token` on `k` tries again.
    let retrying = backend(server.port).await;
    let again = AcquireRequest::new("k", token, Duration::from_secs(30)).waiting(true);
    let attempt = retrying.try_acquire(&again).await.expect("try");
    assert!(
        matches!(attempt, Attempt::Busy { .. }),
        "a leftover writer's entry was granted while a reader held: {attempt:?}"
    );
    assert!(!held.is_lost());
    held.release().await.expect("the reader's lease is intact");
}

/// Found by the fault harness (nats, seed 20018): a backend that lives
/// through a re-creation, whose new stream numbers past every revision the
/// backend saw in the old one, must still fence above every grant of the
/// new stream. A write's answer does not tell the streams apart, so a
/// backend that went by the revisions alone fenced from the old stream's
/// creation time, below the new stream's fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_missed_a_re_creation_fences_above_the_new_stream() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Lease, LeaseKind, Token};
    let server = nats::server();
    let old = backend(server.port).await;
    let first = take(&old, "k").await;
    assert!(old.release("k", &first).await.expect("release"));
    let new = recreate_bucket(server.port).await;
    // The new stream numbers past the one revision the old backend saw.
    for n in 0..8 {
        let lease = take(&new, &format!("filler-{n}")).await;
        assert!(
            new.release(&format!("filler-{n}"), &lease)
                .await
                .expect("release")
        );
    }
    let newer = take(&new, "k").await;
    assert!(new.release("k", &newer).await.expect("release"));
    // Its first try finds the stream changed around its write: refused
    // (see the test below); the next is granted.
    let late = loop {
        let request = AcquireRequest::new("k", Token::new(), Duration::from_secs(30));
        if let Attempt::Acquired { fence, revision } = old.try_acquire(&request).await.expect("try")
        {
            break Lease::granted(request.token, LeaseKind::Exclusive, fence, revision);
        }
    };
    assert!(
        late.fence > newer.fence,
        "a grant after the new stream's ({}) got a lower fence ({})",
        newer.fence,
        late.fence
    );
    assert!(old.release("k", &late).await.expect("release"));
}

/// Found by the fault harness (nats, seed 20030): a write whose answer
/// comes while the bucket is re-created may have gone to either stream, and
/// its fence, from the new stream's creation time, would be wrong either
/// way (one from an old stream's revision stands above the new stream's
/// next fences). A backend that finds the creation time changed since
/// before its write gives the grant back, and the key stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_stream_changed_around_its_write_is_refused() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Token};
    let server = nats::server();
    let old = backend(server.port).await;
    let new = recreate_bucket(server.port).await;
    let request = AcquireRequest::new("k", Token::new(), Duration::from_secs(30));
    let attempt = old.try_acquire(&request).await.expect("try");
    assert!(
        matches!(attempt, Attempt::Busy { .. }),
        "granted by a backend that knew another stream before its write: {attempt:?}"
    );
    let other = AcquireRequest::new("k", Token::new(), Duration::from_secs(30));
    assert!(
        matches!(
            new.try_acquire(&other).await.expect("try"),
            Attempt::Acquired { .. }
        ),
        "the refused grant was not given back"
    );
}

/// Found by the fault harness (nats, seed 20030): a backend that saw a key's
/// lease at a high revision before the bucket was re-created must still
/// take over an abandoned lease of the new bucket, at a lower revision. It
/// took the lower revision for a stale read, and the key for held, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_of_a_re_created_bucket_is_taken_over() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Token};
    let server = nats::server();
    let (waiter, old) = (backend(server.port).await, backend(server.port).await);
    // The old stream numbers past what the new one will hold at `k`.
    for n in 0..8 {
        let lease = take(&old, &format!("filler-{n}")).await;
        assert!(
            old.release(&format!("filler-{n}"), &lease)
                .await
                .expect("release")
        );
    }
    let short = Duration::from_millis(300);
    let abandoned = AcquireRequest::new("k", Token::new(), short);
    assert!(matches!(
        old.try_acquire(&abandoned).await.expect("try"),
        Attempt::Acquired { .. }
    ));
    let request = AcquireRequest::new("k", Token::new(), short);
    assert!(matches!(
        waiter.try_acquire(&request).await.expect("try"),
        Attempt::Busy { .. }
    ));
    let new = recreate_bucket(server.port).await;
    let abandoned_again = AcquireRequest::new("k", Token::new(), short);
    assert!(matches!(
        new.try_acquire(&abandoned_again).await.expect("try"),
        Attempt::Acquired { .. }
    ));
    // Measured from first sight, the new lease is over in two ttls.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match waiter.try_acquire(&request).await {
            Ok(Attempt::Acquired { .. }) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the abandoned lease of the new bucket was never taken over: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A holder from before a re-creation of the bucket releases its key `a`
/// at its revision, where the new bucket holds `b`'s lease: `b` keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_across_a_re_creation_spares_another_keys_lease() {
    use tower_lock::backend::Backend;
    let server = nats::server();
    let old = backend(server.port).await;
    let a = take(&old, "a").await;
    let new = recreate_bucket(server.port).await;
    let b = take(&new, "b").await;
    assert_eq!(
        a.revision, b.revision,
        "both are their stream's first message"
    );
    assert!(
        !old.release("a", &a).await.expect("release"),
        "the old holder's release reported that it released something"
    );
    let holding = new.holder("b").await.expect("holder").expect("b is held");
    assert_eq!(holding.token, b.token, "b's lease was deleted");
    let third = Locker::new(backend(server.port).await);
    assert!(
        third
            .try_lock("b", Duration::from_secs(30))
            .await
            .expect("try")
            .is_none(),
        "a third locker took b while its holder held it"
    );
    assert!(new.release("b", &b).await.expect("release"));
}

/// A holder from before a re-creation renews its key, which a new holder
/// took in the new bucket at the same revision: the old one has lost, and
/// the new one keeps its lease untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_across_a_re_creation_at_the_same_revision_is_lost() {
    use tower_lock::backend::Backend;
    let server = nats::server();
    let old = backend(server.port).await;
    let before = take(&old, "k").await;
    let new = recreate_bucket(server.port).await;
    let after = take(&new, "k").await;
    assert_eq!(
        before.revision, after.revision,
        "both are their stream's first message"
    );
    assert_eq!(
        old.extend("k", &before, Duration::from_secs(30))
            .await
            .expect("extend"),
        None,
        "the old holder's renewal took the new holder's lease"
    );
    let holding = new.holder("k").await.expect("holder").expect("k is held");
    assert_eq!((holding.token, holding.fence), (after.token, after.fence));
    let renewed = new
        .extend("k", &after, Duration::from_secs(30))
        .await
        .expect("extend");
    let revision = renewed.expect("the new holder's lease still renews");
    assert!(
        new.release(
            "k",
            &tower_lock::backend::Lease::granted(after.token, after.kind, after.fence, revision)
        )
        .await
        .expect("release")
    );
}

/// The announcement of a counted release names a slot; a forged one named
/// `k.p.1.evil`, a slot outside the key's one permit, and a waiter created
/// it and was let in while the permit was held. A hint only ever picks
/// among the slots the waiter would try anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_slot_hint_lets_no_waiter_past_a_held_permit() {
    let server = nats::server();
    let holder = Locker::new(backend(server.port).await);
    let store = holder.backend().clone();
    let ttl = Duration::from_secs(30);
    let permit = holder.acquire_permit("k", 1, ttl).await.expect("permit");
    let waiter = Locker::new(backend(server.port).await);
    let waiting = tokio::spawn(async move { waiter.acquire_permit("k", 1, ttl).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nats_store = async_nats::jetstream::new(nats::connect(&[server.port]).await)
        .get_key_value(BUCKET)
        .await
        .expect("bucket");
    let before = stored_keys(&nats_store).await;
    let client = nats::connect(&[server.port]).await;
    for hint in ["k.p.1.evil", "k.p.1.1", "k.p.1.+0", "k.p.01.0", "k.p.2.1"] {
        let subject = format!("tower-lock.{BUCKET}.released.k");
        client
            .publish(subject, bytes::Bytes::from(hint))
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a forged slot hint let a waiter in while the only permit was held"
    );
    assert_eq!(
        stored_keys(&nats_store).await,
        before,
        "a hint created an entry"
    );
    drop(store);
    permit.release().await.expect("release");
    let next = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the real release wakes the waiter")
        .expect("task")
        .expect("permit");
    next.release().await.expect("release");
}

/// 32 tasks over 4 backends take one key, a write one time in five and a
/// read otherwise: the key is never left idle while they wait, so all 640
/// sections finish in a fraction of what backoff steps would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_readers_and_writers_over_several_backends_keep_the_key_busy() {
    let server = nats::server();
    let mut lockers = Vec::new();
    for _ in 0..4 {
        lockers.push(Locker::new(backend(server.port).await));
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let locker = lockers[task % lockers.len()].clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let ttl = Duration::from_secs(30);
                    let write = tower_lock::backend::Token::new()
                        .as_uuid()
                        .as_u128()
                        .is_multiple_of(5);
                    let guard = if write {
                        locker.acquire("k", ttl).await
                    } else {
                        locker.acquire_shared("k", ttl).await
                    };
                    let guard = guard.expect("acquire");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let took = started.elapsed();
    eprintln!("640 mixed sections in {took:?}");
    assert!(took < Duration::from_secs(30), "640 sections took {took:?}");
}

/// A writer that crashed while it waited leaves its claim (`k.w`); a key
/// that is afterwards only locked exclusively loses it within about one
/// claim period of its next release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_writers_claim_goes_after_the_next_exclusive_use() {
    let server = nats::server();
    let locker = Locker::new(backend(server.port).await);
    let store = locker.backend().clone();
    let nats_store = async_nats::jetstream::new(nats::connect(&[server.port]).await)
        .get_key_value(BUCKET)
        .await
        .expect("bucket");
    // What a waiting writer writes, one second long, never removed.
    let claim = format!("v1 {} 1000", uuid::Uuid::new_v4());
    nats_store
        .put("k.w", bytes::Bytes::from(claim))
        .await
        .expect("a crashed writer's claim");
    drop(store);
    let guard = locker.acquire("k", Duration::from_secs(30)).await;
    guard.expect("acquire").release().await.expect("release");
    let released = Instant::now();
    while stored_keys(&nats_store).await.contains(&"k.w".to_owned()) {
        assert!(
            released.elapsed() < Duration::from_secs(3),
            "the crashed writer's claim outlived a claim period after the key's use"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored_keys(&nats_store).await.is_empty());
}

/// A process that never saw the old bucket starts right after it was
/// created again: its candidate waits until the new stream is one ttl old
/// (by then the old leader's renewals have failed), and is not reported as
/// leader meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valued_grant_on_a_re_created_bucket_waits_out_one_ttl() {
    use tower_lock::backend::{AcquireRequest, Attempt, Backend, Token};
    let server = nats::server();
    let ttl = Duration::from_millis(1500);
    let old = backend(server.port).await;
    // The first bucket is young too: its first leader waits as well.
    let leader = Token::new();
    let request = AcquireRequest::new("e", leader, ttl).value(Some("node-a"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match old.try_acquire(&request).await.expect("try") {
            Attempt::Acquired { .. } => break,
            Attempt::Busy { remaining } => {
                assert!(remaining.is_some_and(|left| left <= ttl), "{remaining:?}");
                assert!(Instant::now() < deadline, "the first leader never got in");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let fresh = recreate_bucket(server.port).await;
    let recreated = Instant::now();
    let candidate = Token::new();
    let request = AcquireRequest::new("e", candidate, ttl).value(Some("node-b"));
    let granted = loop {
        match fresh.try_acquire(&request).await.expect("try") {
            Attempt::Acquired { .. } => break recreated.elapsed(),
            Attempt::Busy { remaining } => {
                let left = remaining.expect("a hold-back says how long");
                assert!(left <= ttl, "{left:?}");
                assert_eq!(
                    fresh.holder("e").await.expect("holder"),
                    None,
                    "a held-back candidate was reported as leader"
                );
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(
        granted >= ttl - Duration::from_millis(100),
        "a candidate on a bucket {granted:?} old won while the old leader could still act"
    );
    // Plain leases are not held back: their fences protect them.
    let plain = fresh
        .try_acquire(&AcquireRequest::new("plain", Token::new(), ttl))
        .await
        .expect("try");
    assert!(matches!(plain, Attempt::Acquired { .. }), "{plain:?}");
}
