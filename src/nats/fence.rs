//! Fences from the bucket's stream, so that a bucket deleted and created
//! again hands out greater fences than the old one ever did.
//!
//! A fence is the stream's creation time in microseconds since the Unix
//! epoch plus the lease's revision (its stream sequence). Sequences start
//! again at 1 in a new stream, but the new stream was created after the old
//! one was deleted, and the old one's last sequence is at most the number
//! of messages it stored (every acquisition and renewal is one). So as long
//! as a stream stores fewer than one message per microsecond on average
//! over its life (a JetStream stream stores at most a few hundred thousand
//! a second), the old stream's greatest fence is below its deletion time,
//! and every fence of the new one is above its creation time: fences never
//! go back, provided the server's clock does not step back between the
//! deletion and the new creation.
//!
//! For the same reason a fence stays below the wall clock in microseconds,
//! which is below 2^53 (exact as a JSON number, and an `i64` column holds
//! it) until the year 2255.
//!
//! Every grant reads the stream's creation time after its write, so its
//! fence comes from the stream the write went to (a write's answer does not
//! name the stream's creation, and a new stream may have numbered past
//! every revision a backend saw of the old one). Between grants, a backend
//! that lives through its bucket's deletion notices the new stream when a
//! write gets a lower revision than one it got before, or when its watch of
//! the bucket is re-established (the old stream's watch fails). A new creation time also means the old stream's leases are gone
//! while their holders may still count on them: the backend then holds
//! back leases with a value for one ttl (see `StateLoss`). A backend that
//! never saw the old stream cannot notice that; it holds them back while
//! the stream is younger than their ttl instead, reading the stream's age
//! on the server's clock ([`Fences::server_read`], [`Fences::stream_age`]).
//!
//! The creation time is also what a write on a holder's behalf proves its
//! stream by: a lease granted in a stream that is no longer the bucket's
//! is lost, whatever the new stream holds at its key.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use async_nats::jetstream::stream::{Info, Stream};

use crate::{
    LockError,
    backend::{AcquireRequest, StateLoss, wall_clock},
};

/// When a write of a lease was sent, and the stream's creation time as the
/// backend knew it then: what its grant is dated and fenced by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub(crate) at: Instant,
    created: u64,
}

/// The fence base of one bucket's stream, as this backend last read it.
#[derive(Debug)]
pub(crate) struct Fences {
    /// The stream's creation time, in microseconds since the Unix epoch.
    created: AtomicU64,
    /// The highest revision a write of this backend got.
    highest: AtomicU64,
    /// Whether the stream may have been created again since `created` was
    /// read.
    suspect: AtomicBool,
    /// Noticed when the creation time changes.
    loss: StateLoss,
    /// What this backend knows of the server's clock: at the instant, it
    /// read at least this many microseconds since the epoch (a message's
    /// time). `None` until it read one, and again for a new stream.
    clock: Mutex<Option<(u64, Instant)>>,
}

impl Fences {
    pub(crate) fn new(info: &Info) -> Self {
        Fences {
            created: AtomicU64::new(created_micros(info)),
            highest: AtomicU64::new(info.state.last_sequence),
            suspect: AtomicBool::new(false),
            loss: StateLoss::default(),
            clock: Mutex::new(None),
        }
    }

    /// The server stored a message at `time` (microseconds since the
    /// epoch, on its clock): its clock reads at least that now.
    pub(crate) fn server_read(&self, time: u64) {
        let now = Instant::now();
        let mut clock = crate::sync::lock(&self.clock);
        let known = clock.map(|(at_least, since)| at_least + elapsed_micros(since, now));
        if known.is_none_or(|known| known < time) {
            *clock = Some((time, now));
        }
    }

    /// At least how old the stream is, on the server's clock, from the
    /// last server time read; `None` when none was read for this stream.
    pub(crate) fn stream_age(&self) -> Option<Duration> {
        let (at_least, since) = (*crate::sync::lock(&self.clock))?;
        let now = at_least + elapsed_micros(since, Instant::now());
        Some(Duration::from_micros(now.saturating_sub(self.base())))
    }

    /// Notes a revision of the stream, written or watched: sequences of
    /// one stream only grow, so a lower one than seen before is a new
    /// stream.
    pub(crate) fn saw(&self, revision: u64) {
        if self.highest.fetch_max(revision, Ordering::AcqRel) > revision {
            self.suspect.store(true, Ordering::Release);
        }
    }

    /// Notes that a write is sent now: see [`fence`](Self::fence).
    pub(crate) fn sent(&self) -> Sent {
        Sent {
            at: Instant::now(),
            created: self.base(),
        }
    }

    /// The fence of a lease written at `revision` by the write `sent`:
    /// `None` when the stream is not provably the one the write went to.
    ///
    /// A write's answer does not say which stream it went to, and a new
    /// stream may have numbered past every revision this backend saw of
    /// the old one, so a lower revision is no sure sign. The creation time
    /// is read again after the write: if it is the one known before the
    /// write was sent, that stream lived all along, and took the write.
    /// Otherwise the stream was created again around the write, and its
    /// fence would be either a deleted stream's (below the new stream's
    /// fences) or a new stream's base with an old stream's revision (above
    /// the new stream's next fences): the grant must not stand.
    pub(crate) async fn fence(
        &self,
        stream: &Stream,
        revision: u64,
        sent: Sent,
    ) -> Result<Option<u64>, LockError> {
        self.saw(revision);
        self.suspect.store(true, Ordering::Release);
        self.refresh(stream, revision).await?;
        Ok((self.base() == sent.created).then(|| self.of(revision)))
    }

    /// The creation time of the stream, read again first if it may have
    /// been created again since it was last read: what a write on a
    /// holder's behalf proves it is still the holder's stream by.
    pub(crate) async fn created(&self, stream: &Stream) -> Result<u64, LockError> {
        self.refresh(stream, 0).await?;
        Ok(self.base())
    }

    /// The creation time of the stream as last read.
    pub(crate) fn base(&self) -> u64 {
        self.created.load(Ordering::Acquire)
    }

    /// Reads the stream's creation time again if it is suspect.
    async fn refresh(&self, stream: &Stream, revision: u64) -> Result<(), LockError> {
        if self.suspect.swap(false, Ordering::AcqRel) {
            let info = match stream.get_info().await {
                Ok(info) => info,
                Err(err) => {
                    self.suspect.store(true, Ordering::Release);
                    return Err(LockError::unavailable(err));
                }
            };
            let created = created_micros(&info);
            if self.created.swap(created, Ordering::AcqRel) != created {
                self.loss.notice();
                // What was read of the server's clock was read through the
                // old stream's messages: the new one's age is unknown.
                *crate::sync::lock(&self.clock) = None;
            }
            self.highest
                .store(info.state.last_sequence.max(revision), Ordering::Release);
        }
        Ok(())
    }

    /// The fence of the lease at `revision`, as far as this backend knows
    /// the stream (for reports of who holds a key, which grant nothing).
    pub(crate) fn of(&self, revision: u64) -> u64 {
        self.base() + revision
    }

    /// How long `request` must wait, after the stream was found new (see
    /// `StateLoss::holds_back`).
    pub(crate) fn holds_back(&self, request: &AcquireRequest<'_>) -> Option<Duration> {
        self.loss.holds_back(request)
    }

    /// The stream may have been deleted and created again (its watch
    /// failed): read its creation time again before the next fence.
    pub(crate) fn suspect(&self) {
        self.suspect.store(true, Ordering::Release);
    }
}

fn created_micros(info: &Info) -> u64 {
    // Through `SystemTime`, which async-nats's date type converts to
    // whichever time crate it was built with.
    wall_clock::micros(SystemTime::from(info.created))
}

fn elapsed_micros(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_micros()).unwrap_or(u64::MAX)
}
