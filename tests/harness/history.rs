//! The recorder: what every holder believed, on one clock.
//!
//! The machine's `CLOCK_MONOTONIC` is shared by all its processes, so the
//! instants a child process records compare with the parent's. A holder
//! records an instant as held only when, having read the clock, it then
//! found its lease not lost: the lease's deadline was still ahead at the
//! check, so it was ahead at the instant read before it.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What a holding was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exclusive,
    Shared,
    Counted(u32),
    Leader,
}

impl Kind {
    fn code(self) -> String {
        match self {
            Kind::Exclusive => "x".into(),
            Kind::Shared => "s".into(),
            Kind::Counted(n) => format!("p{n}"),
            Kind::Leader => "l".into(),
        }
    }

    fn parse(code: &str) -> Option<Kind> {
        Some(match code {
            "x" => Kind::Exclusive,
            "s" => Kind::Shared,
            "l" => Kind::Leader,
            _ => Kind::Counted(code.strip_prefix('p')?.parse().ok()?),
        })
    }
}

/// One line of a history: a holding began, was still believed at an
/// instant (and wrote to the resource then, or only read), or a fault
/// started or ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `holder` got `key` with `fence`, having asked at `asked`; it
    /// believed it held at `at`.
    Began {
        holder: String,
        key: String,
        kind: Kind,
        fence: u64,
        asked: u64,
        at: u64,
    },
    /// `holder` still believed it held `key` at `at`; `wrote` when it
    /// wrote to the resource then (exclusive holders, permit holders to
    /// their slot, leaders), not only read.
    Held {
        holder: String,
        key: String,
        at: u64,
        wrote: bool,
    },
    /// A fault of `kind` ran from `from` to `to`.
    Fault { kind: String, from: u64, to: u64 },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Began {
                holder,
                key,
                kind,
                fence,
                asked,
                at,
            } => write!(f, "B {holder} {key} {} {fence} {asked} {at}", kind.code()),
            Event::Held {
                holder,
                key,
                at,
                wrote,
            } => write!(f, "H {holder} {key} {at} {}", u8::from(*wrote)),
            Event::Fault { kind, from, to } => write!(f, "F {kind} {from} {to}"),
        }
    }
}

impl Event {
    /// Reads a line written by [`Display`](fmt::Display), as a child
    /// process sends it.
    pub fn parse(line: &str) -> Option<Event> {
        let parts: Vec<&str> = line.split(' ').collect();
        Some(match parts[..] {
            ["B", holder, key, kind, fence, asked, at] => Event::Began {
                holder: holder.into(),
                key: key.into(),
                kind: Kind::parse(kind)?,
                fence: fence.parse().ok()?,
                asked: asked.parse().ok()?,
                at: at.parse().ok()?,
            },
            ["H", holder, key, at, wrote] => Event::Held {
                holder: holder.into(),
                key: key.into(),
                at: at.parse().ok()?,
                wrote: wrote == "1",
            },
            ["F", kind, from, to] => Event::Fault {
                kind: kind.into(),
                from: from.parse().ok()?,
                to: to.parse().ok()?,
            },
            _ => return None,
        })
    }
}

/// Where events go: a list in this process, or lines on stdout in a child
/// process (so that what a killed child recorded before it died is kept).
#[derive(Clone)]
pub enum Recorder {
    Local(Arc<Mutex<Vec<Event>>>),
    Stdout,
}

impl Recorder {
    pub fn local() -> Recorder {
        Recorder::Local(Arc::default())
    }

    pub fn record(&self, event: Event) {
        match self {
            Recorder::Local(events) => events.lock().expect("events").push(event),
            Recorder::Stdout => println!("{}{event}", crate::support::child::MARK),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        match self {
            Recorder::Local(events) => events.lock().expect("events").clone(),
            Recorder::Stdout => Vec::new(),
        }
    }
}

#[test]
fn events_read_back_as_written() {
    let events = [
        Event::Began {
            holder: "p1.t3.9".into(),
            key: "x0".into(),
            kind: Kind::Counted(2),
            fence: 17,
            asked: 5,
            at: 6,
        },
        Event::Held {
            holder: "p1.t3.9".into(),
            key: "x0".into(),
            at: 8,
            wrote: true,
        },
        Event::Fault {
            kind: "kill".into(),
            from: 1,
            to: 2,
        },
    ];
    for event in events {
        assert_eq!(Event::parse(&event.to_string()), Some(event));
    }
    assert_eq!(Event::parse("B too few"), None);
}
