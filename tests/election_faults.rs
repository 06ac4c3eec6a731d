//! Elections against real servers, with candidates in child processes that
//! are SIGKILLed and SIGSTOPped, and a Redis restart under a running
//! election.
#![cfg(all(feature = "redis", feature = "nats"))]

mod conformance;
mod redis_support;
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use conformance::{OverlapChecker, seen};
use redis_support::{REDIS_SERVER, server_args};
use support::{
    ServerProcess,
    child::{ChildProcess, MARK},
    free_port, nats, signal,
};
use tower_lock::{
    LockError, Locker,
    election::{Election, Leader},
    nats::NatsBackend,
    redis::RedisBackend,
};

const CHILD_ENV: &str = "TOWER_LOCK_ELECTION_CHILD";
const TTL: Duration = Duration::from_millis(1000);
/// Far above any round trip or wake-up here; far below a ttl of `LONG`.
const PROMPT: Duration = Duration::from_secs(3);
const LONG: Duration = Duration::from_secs(30);

fn redis_server() -> ServerProcess {
    let port = free_port();
    let dir = tempfile::tempdir().expect("dir");
    let mut args = server_args(port, dir.path());
    // ServerProcess runs in its own temp dir: write there, not in `dir`.
    args.truncate(args.len() - 2);
    let server = ServerProcess::start(REDIS_SERVER, args, port);
    // An established store: on a fresh one, a first election waits a ttl
    // for the store's epoch (a restart or a FLUSHALL here makes it fresh).
    redis_support::cli(port, &["SET", "lock:epoch", "0"]);
    server
}

fn url_of(server: &ServerProcess, scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}", server.port)
}

async fn locker(url: &str) -> Locker {
    if url.starts_with("redis://") {
        let backend = RedisBackend::builder(redis::Client::open(url).expect("url"))
            .request_timeout(Duration::from_millis(500))
            .build()
            .await
            .expect("connect to Redis");
        return Locker::new(backend);
    }
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let js = nats::jetstream(client, Duration::from_millis(500));
    Locker::new(NatsBackend::new(js, "locks").await.expect("bucket"))
}

/// The election every candidate of a test runs: `ttl`, and a renew
/// deadline and interval in proportion.
fn election(locker: Locker, name: &str, ttl: Duration) -> Election {
    Election::new(locker, name)
        .ttl(ttl)
        .renew_deadline(ttl * 6 / 10)
        .renew_every(ttl * 15 / 100)
}

/// A candidate in a child process, running `candidate_process`.
struct Candidate(ChildProcess);

impl Candidate {
    fn start(url: &str, name: &str, ttl: Duration) -> Candidate {
        let spec = format!("{url}\n{name}\n{}", ttl.as_millis());
        Candidate(ChildProcess::start("candidate_process", CHILD_ENV, spec))
    }

    fn leads(&self) -> u64 {
        self.0.expect_line("LEADING").parse().expect("a term")
    }
}

/// The other side of the process tests; does nothing unless started by one
/// of them. It campaigns as `child`, says when it leads, then answers
/// `act` (whether it may act as leader now, by its own judgement) and
/// `resign`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the election fault tests"]
async fn candidate_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.lines();
    let (url, name) = (parts.next().expect("url"), parts.next().expect("name"));
    let ttl = Duration::from_millis(parts.next().expect("ttl").parse().expect("ms"));
    let election = election(locker(url).await, name, ttl);
    let leadership = election.campaign("child").await.expect("campaign");
    println!("{MARK}LEADING {}", leadership.term());
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    while let Some(command) = commands.recv().await {
        match command.as_str() {
            "act" => {
                let state = if leadership.is_lost() {
                    "lost"
                } else {
                    "leading"
                };
                println!("{MARK}ACT {state}");
            }
            "resign" => {
                let outcome = match leadership.resign().await {
                    Ok(()) => "ok".to_owned(),
                    Err(LockError::Lost) => "lost".to_owned(),
                    Err(err) => format!("error {err}"),
                };
                println!("{MARK}RESIGNED {outcome}");
                // At once, as a process that resigns on its way out: what
                // the resignation sent must already have left.
                std::process::exit(0);
            }
            other => panic!("unknown command {other}"),
        }
    }
}

fn is_child(now: &Option<Leader>) -> bool {
    now.as_ref().is_some_and(|leader| leader.id == "child")
}

/// The leader's process SIGKILLed: a candidate here takes over within ttl
/// and the bound, with a higher term, and an observer sees no leader or
/// the new one within that bound.
async fn a_killed_leader_is_replaced(url: &str) {
    let name = "killed";
    let leader = Candidate::start(url, name, TTL);
    let term = leader.leads();
    let observer = election(locker(url).await, name, TTL);
    let mut rx = observer.observe().await.expect("observe");
    seen(&mut rx, PROMPT, "the child lead", is_child).await;
    let heir = election(locker(url).await, name, TTL);
    let campaign = tokio::spawn(async move { heir.campaign("heir").await });
    // Let the heir queue up behind the leader.
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(leader.0.pid(), "KILL");
    let killed = Instant::now();
    let leadership = tokio::time::timeout(TTL + PROMPT, campaign)
        .await
        .expect("no new leader within ttl and the bound")
        .expect("task")
        .expect("campaign");
    let took = killed.elapsed();
    assert!(leadership.term() > term, "the new term must be higher");
    let now = seen(&mut rx, PROMPT, "the heir", |now| !is_child(now)).await;
    assert!(
        now.is_none() || now == Some(Leader::new("heir", leadership.term())),
        "the observer saw {now:?}"
    );
    eprintln!("{url}: taken over {took:?} after the kill");
    leadership.resign().await.expect("resign");
}

/// The leader's process SIGSTOPped past its ttl: a candidate here takes
/// over with a higher term; resumed, the old leader knows it lost before it
/// acts, and its resignation leaves the new leader alone.
async fn a_paused_leader_knows_it_lost_and_spares_its_successor(url: &str) {
    let name = "paused";
    let mut leader = Candidate::start(url, name, TTL);
    let term = leader.leads();
    signal(leader.0.pid(), "STOP");
    let heir = election(locker(url).await, name, TTL);
    let leadership = tokio::time::timeout(TTL + PROMPT, heir.campaign("heir"))
        .await
        .expect("no new leader while the old one is paused")
        .expect("campaign");
    assert!(leadership.term() > term, "the new term must be higher");
    signal(leader.0.pid(), "CONT");
    leader.0.tell("act");
    assert_eq!(
        leader.0.expect_line("ACT"),
        "lost",
        "the resumed leader would act"
    );
    leader.0.tell("resign");
    assert_eq!(leader.0.expect_line("RESIGNED"), "lost");
    assert!(
        !leadership.is_lost(),
        "the old leader's resign disturbed the new"
    );
    let now = heir.leader().await.expect("leader");
    assert_eq!(now, Some(Leader::new("heir", leadership.term())));
    leadership
        .resign()
        .await
        .expect("the new leadership is intact");
}

/// A resignation reaches an observer by its wake-up, long before the
/// lease could have run out.
async fn a_resignation_is_seen_at_once(url: &str) {
    // Far above `PROMPT`, so that only the resignation can end the lease
    // in time; short enough that the first election of a new NATS bucket,
    // held back one ttl (the bucket may be a re-created one), leads within
    // the child's 20 s.
    let ttl = Duration::from_secs(8);
    let name = "resigned";
    let mut leader = Candidate::start(url, name, ttl);
    leader.leads();
    let observer = election(locker(url).await, name, ttl);
    let mut rx = observer.observe().await.expect("observe");
    seen(&mut rx, PROMPT, "the child lead", is_child).await;
    let asked = Instant::now();
    leader.0.tell("resign");
    seen(&mut rx, PROMPT, "no leader", Option::is_none).await;
    eprintln!(
        "{url}: resignation seen {:?} after it was asked",
        asked.elapsed()
    );
    assert_eq!(leader.0.expect_line("RESIGNED"), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_killed_leader_is_replaced() {
    let server = redis_server();
    a_killed_leader_is_replaced(&url_of(&server, "redis")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_paused_leader_knows_it_lost_and_spares_its_successor() {
    let server = redis_server();
    a_paused_leader_knows_it_lost_and_spares_its_successor(&url_of(&server, "redis")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_resignation_is_seen_at_once() {
    let server = redis_server();
    a_resignation_is_seen_at_once(&url_of(&server, "redis")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_killed_leader_is_replaced() {
    let server = nats::server();
    a_killed_leader_is_replaced(&url_of(&server, "nats")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_paused_leader_knows_it_lost_and_spares_its_successor() {
    let server = nats::server();
    a_paused_leader_knows_it_lost_and_spares_its_successor(&url_of(&server, "nats")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_resignation_is_seen_at_once() {
    let server = nats::server();
    a_resignation_is_seen_at_once(&url_of(&server, "nats")).await;
}

/// Three candidates lead in turn while `lose` makes the store lose its
/// state: leadership resumes, and by the candidates' own clocks no two ever
/// led at once, though the loss dropped the leader's lease while it still
/// counted on it. Renewals are far apart, so the old leader would go on
/// believing for a while if nobody held the others back.
async fn no_two_leaders_through_a_loss<F: std::future::Future<Output = ()>>(
    url: &str,
    lose: impl FnOnce() -> F,
) {
    let checker = Arc::new(OverlapChecker::default());
    let (terms_tx, mut terms) = tokio::sync::mpsc::unbounded_channel();
    let mut candidates = Vec::new();
    for n in 0..3 {
        let election = Election::new(locker(url).await, "lost-state")
            .ttl(TTL)
            .renew_deadline(TTL * 6 / 10)
            .renew_every(TTL * 45 / 100);
        let (checker, terms_tx) = (checker.clone(), terms_tx.clone());
        candidates.push(tokio::spawn(async move {
            election
                .run_while_leader(&format!("candidate-{n}"), |leadership| {
                    let (checker, terms_tx) = (checker.clone(), terms_tx.clone());
                    async move {
                        // The section lasts until the job is dropped at the
                        // loss, or resigns after a short term.
                        let _term = checker.enter(leadership.term());
                        let _ = terms_tx.send(leadership.term());
                        tokio::time::sleep(TTL * 3).await;
                        drop(_term);
                        let _ = leadership.resign().await;
                    }
                })
                .await
        }));
    }
    let first = tokio::time::timeout(PROMPT, terms.recv())
        .await
        .expect("a leader")
        .expect("a term");
    tokio::time::sleep(TTL).await;
    lose().await;
    let resumed = tokio::time::timeout(TTL * 3 + PROMPT * 2, async {
        loop {
            let term = terms.recv().await.expect("candidates run");
            if term > first {
                return term;
            }
        }
    })
    .await
    .expect("leadership did not resume after the loss");
    for candidate in &candidates {
        candidate.abort();
    }
    for candidate in candidates {
        let _ = candidate.await;
    }
    assert!(resumed > first);
    let sections = checker.sections().len();
    checker.assert_exclusive(sections);
}

/// Redis restarted without persistence under a running election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_leadership_resumes_after_a_restart_with_no_two_leaders() {
    let server = redis_server();
    let url = url_of(&server, "redis");
    let server = Arc::new(std::sync::Mutex::new(server));
    let restarted = server.clone();
    no_two_leaders_through_a_loss(&url, move || async move {
        let restart = move || restarted.lock().expect("server").restart();
        tokio::task::spawn_blocking(restart).await.expect("restart");
    })
    .await;
    drop(server);
}

/// The NATS bucket deleted and created again under a running election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_leadership_resumes_after_the_bucket_is_created_again_with_no_two_leaders() {
    let server = nats::server();
    let url = url_of(&server, "nats");
    no_two_leaders_through_a_loss(&url, || async {
        let client = async_nats::connect(url.as_str()).await.expect("connect");
        let js = nats::jetstream(client, Duration::from_millis(500));
        js.delete_stream("KV_locks")
            .await
            .expect("delete the bucket");
        NatsBackend::new(js, "locks")
            .await
            .expect("create it again");
    })
    .await;
}

/// The store paused under a leader: its renewals stall, so it counts
/// itself lost at its renew deadline, on its own clock, before the store
/// (or a waiter's measure of the lease) lets anyone else win.
async fn a_stalled_leader_stops_before_another_leads(server: &ServerProcess, url: &str) {
    let name = "stalled";
    let leader = election(locker(url).await, name, TTL);
    let leadership = leader.campaign("first").await.expect("campaign");
    let lost = leadership.lost();
    let lost_at = tokio::spawn(async move {
        lost.await;
        Instant::now()
    });
    let heir = election(locker(url).await, name, TTL);
    let campaign = tokio::spawn(async move {
        let leadership = heir.campaign("heir").await;
        (leadership, Instant::now())
    });
    // Renewed a few times, and the heir has seen the lease.
    tokio::time::sleep(TTL / 2).await;
    server.pause();
    let paused = Instant::now();
    tokio::time::sleep(TTL + TTL / 2).await;
    server.resume();
    let (next, won_at) = tokio::time::timeout(TTL + PROMPT, campaign)
        .await
        .expect("no new leader after the store came back")
        .expect("task");
    let next = next.expect("campaign");
    let lost_at = tokio::time::timeout(PROMPT, lost_at)
        .await
        .expect("the stalled leader never counted itself lost")
        .expect("task");
    assert!(leadership.is_lost());
    assert!(next.term() > leadership.term());
    assert!(
        lost_at < won_at,
        "the old leader counted itself lost {:?} after the pause, the new one won {:?} after it",
        lost_at - paused,
        won_at - paused
    );
    eprintln!(
        "{url}: lost {:?} and won {:?} after the pause",
        lost_at - paused,
        won_at - paused
    );
    next.resign().await.expect("resign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_stalled_leader_stops_before_another_leads() {
    let server = redis_server();
    a_stalled_leader_stops_before_another_leads(&server, &url_of(&server, "redis")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_stalled_leader_stops_before_another_leads() {
    let server = nats::server();
    a_stalled_leader_stops_before_another_leads(&server, &url_of(&server, "nats")).await;
}

/// The store lost the lease (FLUSHALL, as a restart without persistence
/// does): a leader that proclaims a new id is granted a fresh lease, under
/// another fence, which it gives back, and counts itself lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_proclaim_on_a_lost_lease_fails_and_takes_nothing() {
    let server = redis_server();
    let url = url_of(&server, "redis");
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let election = election(locker(&url).await, "flushed", LONG);
    let mut leadership = election.campaign("first").await.expect("campaign");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    let outcome = leadership.proclaim("renamed").await;
    assert!(matches!(outcome, Err(LockError::Lost)), "{outcome:?}");
    assert!(leadership.is_lost());
    assert_eq!(leadership.id(), "first", "a failed proclaim changed the id");
    assert_eq!(
        election.leader().await.expect("leader"),
        None,
        "the fresh grant was kept"
    );
}

/// An election whose leader renews seldom: after its lease is lost without
/// a sign, it would go on believing for up to `renew_every`.
fn slow_renewing(locker: Locker, name: &str) -> Election {
    Election::new(locker, name)
        .ttl(Duration::from_secs(2))
        .renew_deadline(Duration::from_millis(1200))
        .renew_every(Duration::from_millis(900))
}

/// Campaigns as `id` with a fresh backend, and checks, while it is held
/// back, that no one is reported as leader, and at its win, that `old`
/// already counts itself lost.
async fn the_next_leader_waits_for_the_old_one(
    url: &str,
    name: &str,
    old: &tower_lock::election::Leadership,
) {
    let next = slow_renewing(locker(url).await, name);
    let started = Instant::now();
    let campaign = tokio::spawn({
        let next = next.clone();
        async move { next.campaign("next").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !campaign.is_finished() {
        assert_eq!(
            next.leader().await.expect("leader"),
            None,
            "a held-back candidate was reported as leader"
        );
    }
    let leadership = tokio::time::timeout(Duration::from_secs(2) + PROMPT, campaign)
        .await
        .expect("no leader within one ttl and the bound")
        .expect("task")
        .expect("campaign");
    assert!(
        old.is_lost(),
        "a new leader won after {:?} while the old one still led",
        started.elapsed()
    );
    leadership.resign().await.expect("resign");
}

/// FLUSHALL under a leader, with nothing to show it: the leader's process
/// saw no disconnect. A candidate of another backend is held back until
/// the old leader has counted its lease lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_flush_under_a_leader_holds_the_next_one_back() {
    let server = redis_server();
    let url = url_of(&server, "redis");
    let leader = slow_renewing(locker(&url).await, "flushed-leader");
    let old = leader.campaign("old").await.expect("campaign");
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    the_next_leader_waits_for_the_old_one(&url, "flushed-leader", &old).await;
}

/// Redis restarted without persistence under a leader; a process started
/// right after (here, a backend built after) never saw the server go: its
/// first campaign is held back until the old leader has counted itself
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_backend_built_after_a_restart_holds_its_first_leader_back() {
    let mut server = redis_server();
    let url = url_of(&server, "redis");
    let leader = slow_renewing(locker(&url).await, "restarted-leader");
    let old = leader.campaign("old").await.expect("campaign");
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    the_next_leader_waits_for_the_old_one(&url, "restarted-leader", &old).await;
    drop(server);
}
