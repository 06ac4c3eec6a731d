//! The workload: lock operations drawn from a seed, over a few hot keys,
//! each holder recording what it believes while it believes it.

use std::{sync::Arc, time::Duration};

use tower_lock::{LockError, Locker, election::Election};

use super::history::{Event, Kind, Recorder, now};

/// How many permits the counted key allows.
pub const PERMITS: u32 = 2;

/// The keys of one history, all under its own prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Locked exclusively, alone or two or three at once.
    pub exclusive: Vec<String>,
    /// Read (shared) and written (exclusive).
    pub shared: String,
    /// [`PERMITS`] holders at once.
    pub counted: String,
    /// The election's name.
    pub election: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            exclusive: (0..3).map(|i| format!("{prefix}:x{i}")).collect(),
            shared: format!("{prefix}:s"),
            counted: format!("{prefix}:p"),
            election: format!("{prefix}:e"),
        }
    }

    /// Every key the workload locks (the election's name aside).
    pub fn locks(&self) -> Vec<String> {
        let mut keys = self.exclusive.clone();
        keys.push(self.shared.clone());
        keys.push(self.counted.clone());
        keys
    }
}

/// One process's share of a history.
pub struct Worker {
    /// Names this process in holder ids.
    pub process: String,
    pub seed: u64,
    pub keys: Keys,
    pub ttl: Duration,
    /// How long to keep starting operations.
    pub run_for: Duration,
    pub tasks: usize,
    pub recorder: Recorder,
}

impl Worker {
    /// Runs the workload on two lockers over `renewing` and `plain` (one
    /// renews its leases, one does not), `tasks` tasks at once.
    /// Returns how many operations it started, and what the tasks that were
    /// stuck in one long after the others ended were doing.
    pub async fn run(&self, renewing: Locker, plain: Locker) -> (usize, Vec<String>) {
        let renewing = renewing.auto_renew(true);
        let plain = plain.auto_renew(false);
        let until = tokio::time::Instant::now() + self.run_for;
        let tasks: Vec<_> = (0..self.tasks)
            .map(|task| {
                let task = Task {
                    id: format!("{}.{task}", self.process),
                    rng: fastrand::Rng::with_seed(
                        self.seed.wrapping_mul(31).wrapping_add(task as u64),
                    ),
                    keys: self.keys.clone(),
                    ttl: self.ttl,
                    recorder: self.recorder.clone(),
                    lockers: [renewing.clone(), plain.clone()],
                    next: 0,
                    doing: Arc::default(),
                };
                let doing = task.doing.clone();
                (tokio::spawn(task.run(until)), doing)
            })
            .collect();
        // A task still in an operation this long after the last one began
        // is stuck (a deadlock, a lost wake-up with no timer behind it).
        let stuck_after = until + self.ttl * 10 + Duration::from_secs(10);
        let (mut ops, mut stuck) = (0, Vec::new());
        for (mut task, doing) in tasks {
            match tokio::time::timeout_at(stuck_after, &mut task).await {
                Ok(done) => ops += done.unwrap_or(0),
                Err(_) => {
                    task.abort();
                    stuck.push(doing.lock().expect("doing").clone());
                }
            }
        }
        (ops, stuck)
    }
}

struct Task {
    id: String,
    rng: fastrand::Rng,
    keys: Keys,
    ttl: Duration,
    recorder: Recorder,
    lockers: [Locker; 2],
    next: u64,
    /// What the task does now, for the report of a stuck one.
    doing: Arc<std::sync::Mutex<String>>,
}

/// What a holder holds, behind one `is_lost`.
enum Held {
    Guard(tower_lock::LockGuard),
    Set(tower_lock::LockSet),
    Leader(tower_lock::election::Leadership),
}

impl Held {
    fn is_lost(&self) -> bool {
        match self {
            Held::Guard(guard) => guard.is_lost(),
            Held::Set(set) => set.is_lost(),
            Held::Leader(leadership) => leadership.is_lost(),
        }
    }

    async fn end(self, release: bool) {
        // Errors are the store's faults; what was believed is recorded.
        match (self, release) {
            (Held::Guard(guard), true) => drop(guard.release().await),
            (Held::Set(set), true) => drop(set.release().await),
            (Held::Leader(leadership), true) => drop(leadership.resign().await),
            (held, false) => drop(held),
        }
    }
}

impl Task {
    async fn run(mut self, until: tokio::time::Instant) -> usize {
        let mut ops = 0;
        while tokio::time::Instant::now() < until {
            ops += 1;
            if let Err(err) = self.one().await
                && !matches!(err, LockError::Busy { .. })
            {
                // The store is down or slow: back off as a client would.
                tokio::time::sleep(Duration::from_millis(self.rng.u64(5..50))).await;
            }
        }
        ops
    }

    fn locker(&mut self) -> Locker {
        self.lockers[self.rng.usize(0..2)].clone()
    }

    /// One operation: take something, hold it a while (recording what is
    /// believed), give it back or drop it. A take may be cut short at a
    /// random point (a dropped future).
    async fn one(&mut self) -> Result<(), LockError> {
        let ttl = self.ttl;
        let locker = self.locker();
        let x = self.keys.exclusive[self.rng.usize(0..self.keys.exclusive.len())].clone();
        let asked = now();
        let op = self.rng.u32(0..100);
        *self.doing.lock().expect("doing") =
            format!("op {op} on {x} (asked at {:.3} s)", asked as f64 / 1e9);
        let cut = self
            .rng
            .bool()
            .then(|| Duration::from_millis(self.rng.u64(1..300)));
        let guarded = |key: &String, kind: Kind, guard: tower_lock::LockGuard| {
            Some((vec![(key.clone(), guard.fence())], kind, Held::Guard(guard)))
        };
        let rng = &mut self.rng;
        let keys = &self.keys;
        let recorder = &self.recorder;
        let id = format!("{}.{}", self.id, self.next);
        let take = async {
            Ok::<_, LockError>(match op {
                0..20 => guarded(&x, Kind::Exclusive, locker.acquire(&x, ttl).await?),
                20..30 => match locker.try_lock(&x, ttl).await? {
                    Some(guard) => guarded(&x, Kind::Exclusive, guard),
                    None => None,
                },
                30..40 => {
                    let wait = Duration::from_millis(rng.u64(10..500));
                    guarded(
                        &x,
                        Kind::Exclusive,
                        locker.acquire_timeout(&x, ttl, wait).await?,
                    )
                }
                40..55 => guarded(
                    &keys.shared,
                    Kind::Shared,
                    locker.acquire_shared(&keys.shared, ttl).await?,
                ),
                55..62 => guarded(
                    &keys.shared,
                    Kind::Exclusive,
                    locker.acquire(&keys.shared, ttl).await?,
                ),
                62..77 => {
                    let guard = locker.acquire_permit(&keys.counted, PERMITS, ttl).await?;
                    guarded(&keys.counted, Kind::Counted(PERMITS), guard)
                }
                77..90 => {
                    let mut some = keys.exclusive.clone();
                    rng.shuffle(&mut some);
                    some.truncate(rng.usize(2..=3));
                    let set = locker.acquire_all(some, ttl).await?;
                    let fences = set.fences().map(|(k, f)| (k.to_owned(), f)).collect();
                    Some((fences, Kind::Exclusive, Held::Set(set)))
                }
                90..95 => {
                    // The job records its own holding: run_while_leader may
                    // lead several times before one job runs to its end.
                    let election = Election::new(locker.clone(), &keys.election)
                        .ttl(ttl)
                        .renew_deadline(ttl * 2 / 3)
                        .renew_every(ttl / 5);
                    let (steps, step) = (rng.usize(0..4), ttl.mul_f64(rng.f64() * 0.25));
                    let mut terms = 0;
                    election
                        .run_while_leader(&id, |leadership| {
                            terms += 1;
                            let holder = format!("{id}.run{terms}");
                            let (recorder, key) = (recorder.clone(), keys.election.clone());
                            async move {
                                let at = now();
                                if leadership.is_lost() {
                                    return;
                                }
                                let fence = leadership.term();
                                let (kind, holder2) = (Kind::Leader, holder.clone());
                                recorder.record(Event::Began {
                                    holder,
                                    key: key.clone(),
                                    kind,
                                    fence,
                                    asked,
                                    at,
                                });
                                for _ in 0..steps {
                                    tokio::time::sleep(step).await;
                                    let at = now();
                                    if leadership.is_lost() {
                                        break;
                                    }
                                    let holder = holder2.clone();
                                    recorder.record(Event::Held {
                                        holder,
                                        key: key.clone(),
                                        at,
                                        wrote: true,
                                    });
                                }
                            }
                        })
                        .await?;
                    None
                }
                _ => {
                    let election = Election::new(locker.clone(), &keys.election)
                        .ttl(ttl)
                        .renew_deadline(ttl * 2 / 3)
                        .renew_every(ttl / 5);
                    let leadership = election.campaign(&id).await?;
                    let term = leadership.term();
                    Some((
                        vec![(keys.election.clone(), term)],
                        Kind::Leader,
                        Held::Leader(leadership),
                    ))
                }
            })
        };
        let taken = match cut {
            Some(cut) => match tokio::time::timeout(cut, take).await {
                Ok(taken) => taken?,
                // Dropped mid-wait or mid-request.
                Err(_) => return Ok(()),
            },
            None => take.await?,
        };
        if let Some((keys, kind, held)) = taken {
            self.hold(asked, keys, kind, held, &locker).await;
        }
        Ok(())
    }

    /// Holds `held` (`keys` with their fences) for a few steps, recording
    /// each instant it still believes it holds, then ends it.
    async fn hold(
        &mut self,
        asked: u64,
        keys: Vec<(String, u64)>,
        kind: Kind,
        held: Held,
        locker: &Locker,
    ) {
        self.next += 1;
        let holder = format!("{}.{}", self.id, self.next);
        let at = now();
        if held.is_lost() {
            return held.end(false).await;
        }
        for (key, fence) in &keys {
            self.recorder.record(Event::Began {
                holder: holder.clone(),
                key: key.clone(),
                kind,
                fence: *fence,
                asked,
                at,
            });
        }
        let writes = kind != Kind::Shared;
        // Some sections outrun their ttl (a slow call): what the lease's
        // deadline is for when it does not renew.
        let (steps, longest) = if self.rng.u32(0..8) == 0 {
            (self.rng.usize(3..7), 0.6)
        } else {
            (self.rng.usize(0..5), 0.25)
        };
        for _ in 0..steps {
            let step = self.ttl.mul_f64(self.rng.f64() * longest);
            tokio::time::sleep(step).await;
            let at = now();
            if held.is_lost() {
                break;
            }
            for (key, _) in &keys {
                self.recorder.record(Event::Held {
                    holder: holder.clone(),
                    key: key.clone(),
                    at,
                    wrote: writes,
                });
            }
        }
        let release = self.rng.u32(0..4) != 0;
        *self.doing.lock().expect("doing") =
            format!("ending {holder} ({kind:?}, release: {release})");
        if let (Held::Guard(guard), true) = (&held, self.rng.u32(0..4) == 0) {
            // By key: every lease the locker holds there, other tasks'
            // included (their leases then count as lost).
            let key = guard.key().to_owned();
            drop(locker.release(&key).await);
        }
        held.end(release).await;
    }
}
