//! The fault harness: a history of random lock operations (the workload)
//! in this process and in child processes, under random faults (the
//! nemesis), recorded on one clock (the history) and checked against the
//! model (the checker). Everything is drawn from one seed, so a violation
//! is reproduced by its seed.
#![allow(dead_code)]

pub mod checker;
pub mod history;
pub mod proxy;
pub mod target;
pub mod workload;

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use history::{Event, Recorder, now};
use target::{Fault, Target};
use workload::{Keys, PERMITS, Worker};

use crate::support::{child::ChildProcess, signal};

/// The child process's test, and the variable that carries its spec.
pub const CHILD_TEST: &str = "harness_child";
pub const CHILD_VAR: &str = "TOWER_LOCK_HARNESS_CHILD";

/// What one history did and what the oracle found.
#[derive(Debug, Default)]
pub struct Report {
    pub target: String,
    pub seed: u64,
    pub ttl: Duration,
    pub ops: usize,
    pub holdings: usize,
    pub faults: BTreeMap<String, usize>,
    /// The longest a key took to be had again once the nemesis stopped.
    pub recovery: Duration,
    pub violations: Vec<String>,
    /// Every fault, as it was injected.
    pub log: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seed {} ttl {:?}: {} operations, {} holdings, faults {:?}, keys back after {:?}, {} violations",
            self.target,
            self.seed,
            self.ttl,
            self.ops,
            self.holdings,
            self.faults,
            self.recovery,
            self.violations.len()
        )?;
        for violation in &self.violations {
            write!(f, "\n  VIOLATION {violation}")?;
        }
        if !self.violations.is_empty() {
            write!(f, "\n  faults: {}", self.log.join("; "))?;
        }
        Ok(())
    }
}

/// A child process running its share of the workload.
struct Child {
    process: ChildProcess,
    name: String,
}

fn start_child(
    spec: &str,
    name: &str,
    seed: u64,
    keys: &Keys,
    ttl: Duration,
    run_for: Duration,
) -> Child {
    let spec = format!(
        "{spec}|{name}|{seed}|{}|{}|{}",
        keys.exclusive[0].trim_end_matches(":x0"),
        ttl.as_millis(),
        run_for.as_millis()
    );
    Child {
        process: ChildProcess::start(CHILD_TEST, CHILD_VAR, spec),
        name: name.into(),
    }
}

/// The other side of [`start_child`]: runs a child's workload, recording
/// on stdout.
pub async fn child_main(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [store, name, seed, prefix, ttl, run_for] = parts[..] else {
        panic!("bad child spec {spec:?}");
    };
    let (renewing, plain) = (target::connect(store).await, target::connect(store).await);
    let worker = Worker {
        process: name.into(),
        seed: seed.parse().expect("seed"),
        keys: Keys::new(prefix),
        ttl: Duration::from_millis(ttl.parse().expect("ttl")),
        run_for: Duration::from_millis(run_for.parse().expect("run_for")),
        tasks: 3,
        recorder: Recorder::Stdout,
    };
    let (ops, stuck) = worker.run(renewing, plain).await;
    println!(
        "{}done {ops} {}",
        crate::support::child::MARK,
        stuck.join(" | ")
    );
}

/// Runs one history of `run_for` on `target` from `seed`, then checks it.
pub async fn history<T: Target>(target: &T, seed: u64, run_for: Duration) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ttl = Duration::from_millis(rng.u64(400..1000));
    let keys = Keys::new(&format!("h{seed}-{}-{}", std::process::id(), rng.u32(..)));
    let mut report = Report {
        target: target.name(),
        seed,
        ttl,
        ..Report::default()
    };
    // A third of the histories may lose acknowledged writes; the rest only
    // suffer faults that lose none, and are held to the belief rule.
    let may_lose = rng.u32(0..3) == 0;
    let mut faults: Vec<Fault> = target
        .faults()
        .into_iter()
        .filter(|fault| may_lose || !fault.loses_writes())
        .collect();
    let spec = target.child_spec();
    if spec.is_some() {
        faults.extend([Fault::Kill, Fault::Pause]);
    }
    let recorder = Recorder::local();
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    let mut dead: Vec<Child> = Vec::new();
    let mut next_child = 0;
    if let Some(spec) = &spec {
        for _ in 0..2 {
            next_child += 1;
            let name = format!("c{next_child}");
            children.push(start_child(
                spec,
                &name,
                seed + next_child,
                &keys,
                ttl,
                run_for,
            ));
        }
    }
    let worker = Worker {
        process: "p".into(),
        seed,
        keys: keys.clone(),
        ttl,
        run_for,
        tasks: 4,
        recorder: recorder.clone(),
    };
    let (renewing, plain) = (target.locker().await, target.locker().await);
    let mut local = tokio::spawn(async move { worker.run(renewing, plain).await });

    // The nemesis, until the workload stops starting operations.
    let mut losses = Vec::new();
    while started.elapsed() + Duration::from_millis(300) < run_for && !faults.is_empty() {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        target.revive().await;
        let fault = faults[rng.usize(0..faults.len())];
        let from = now();
        let what = match fault {
            Fault::Kill if !children.is_empty() => {
                let mut child = children.swap_remove(rng.usize(0..children.len()));
                signal(child.process.pid(), "KILL");
                let left = run_for.saturating_sub(started.elapsed());
                next_child += 1;
                let name = format!("c{next_child}");
                let killed = format!("kill {}", child.name);
                child.name.clone_from(&killed);
                dead.push(child);
                if let Some(spec) = &spec {
                    children.push(start_child(
                        spec,
                        &name,
                        seed + next_child,
                        &keys,
                        ttl,
                        left,
                    ));
                }
                killed
            }
            Fault::Pause if !children.is_empty() => {
                let child = &children[rng.usize(0..children.len())];
                let pause = ttl.mul_f64(0.2 + rng.f64() * 2.8);
                signal(child.process.pid(), "STOP");
                tokio::time::sleep(pause).await;
                signal(child.process.pid(), "CONT");
                format!("pause {} {pause:?}", child.name)
            }
            Fault::Kill | Fault::Pause => continue,
            _ => target.inject(fault, &keys, &mut rng, ttl).await,
        };
        let to = now();
        if fault.loses_writes() {
            losses.push((from, to));
        }
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
        recorder.record(Event::Fault {
            kind: format!("{fault:?}"),
            from,
            to,
        });
        report.log.push(what);
    }

    // A store that crashes by itself is started again until the workload
    // ends: its waiters would otherwise wait for ever, and look stuck.
    let (ops, stuck) = loop {
        tokio::select! {
            done = &mut local => break done.expect("the workload"),
            () = tokio::time::sleep(Duration::from_millis(500)) => target.revive().await,
        }
    };
    report.ops = ops;
    if !stuck.is_empty() {
        report.violations.push(format!(
            "liveness: tasks of this process stuck: {}",
            stuck.join(" | ")
        ));
    }
    let mut events = recorder.events();
    let deadline = Instant::now() + run_for + ttl * 10 + Duration::from_secs(30);
    for child in &children {
        loop {
            let lines = child.process.drain();
            let done = lines.iter().any(|line| line.starts_with("done"));
            for line in lines {
                if let Some(done) = line.strip_prefix("done ") {
                    let (ops, stuck) = done.split_once(' ').unwrap_or((done, ""));
                    report.ops += ops.parse::<usize>().unwrap_or(0);
                    if !stuck.is_empty() {
                        report.violations.push(format!(
                            "liveness: tasks of child {} stuck: {stuck}",
                            child.name
                        ));
                    }
                }
                events.extend(Event::parse(&line));
            }
            if done {
                break;
            }
            if Instant::now() > deadline {
                report
                    .violations
                    .push(format!("liveness: child {} never finished", child.name));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for child in &dead {
        events.extend(
            child
                .process
                .drain()
                .iter()
                .filter_map(|line| Event::parse(line)),
        );
    }
    drop(children);
    drop(dead);

    report.holdings = events
        .iter()
        .filter(|e| matches!(e, Event::Began { .. }))
        .count();
    report.violations.extend(checker::check(&events, &losses));
    let recovered = Instant::now();
    liveness(target, &keys, ttl, &mut report).await;
    report.recovery = recovered.elapsed();
    report
}

/// Once the nemesis stopped, every key can be had again within a bound of
/// the ttl's order (an abandoned lease, the hold-back of an election, the
/// store's own recovery), and once given back the store holds nothing.
async fn liveness<T: Target>(target: &T, keys: &Keys, ttl: Duration, report: &mut Report) {
    // Measured from first sight on NATS (up to two ttls), plus an
    // election's hold-back after a state loss (one ttl), plus the store's
    // own recovery, plus room for a loaded machine.
    let bound = ttl * 4 + target.recovery() + Duration::from_secs(3);
    let locker = target.locker().await;
    let mut guards = Vec::new();
    for key in &keys.exclusive {
        match locker.acquire_timeout(key, ttl, bound).await {
            Ok(guard) => guards.push(guard),
            Err(err) => report
                .violations
                .push(format!("liveness: {key} not had within {bound:?}: {err}")),
        }
    }
    for _ in 0..PERMITS {
        match locker
            .acquire_permit_timeout(&keys.counted, PERMITS, ttl, bound)
            .await
        {
            Ok(guard) => guards.push(guard),
            Err(err) => report.violations.push(format!(
                "liveness: a permit of {} not had within {bound:?}: {err}",
                keys.counted
            )),
        }
    }
    match locker.acquire_timeout(&keys.shared, ttl, bound).await {
        Ok(guard) => guards.push(guard),
        Err(err) => report.violations.push(format!(
            "liveness: {} not had within {bound:?}: {err}",
            keys.shared
        )),
    }
    let election = tower_lock::election::Election::new(locker.clone(), &keys.election)
        .ttl(ttl)
        .renew_deadline(ttl * 2 / 3)
        .renew_every(ttl / 5);
    match tokio::time::timeout(bound, election.campaign("liveness")).await {
        Ok(Ok(leadership)) => drop(leadership.resign().await),
        Ok(Err(err)) => report
            .violations
            .push(format!("liveness: no leader within {bound:?}: {err}")),
        Err(_) => report
            .violations
            .push(format!("liveness: no leader within {bound:?}")),
    }
    for guard in guards {
        let _ = guard.release().await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = target.stored_locks().await;
        if stored == 0 {
            break;
        }
        if Instant::now() > deadline {
            let names = target.stored_names().await;
            report.violations.push(format!(
                "leak: {stored} entries left once every key was had and given back {names:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
