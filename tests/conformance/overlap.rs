//! Records every critical section and proves none overlapped.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

/// Wrap each critical section in [`enter`](Self::enter); then
/// [`assert_exclusive`](Self::assert_exclusive).
#[derive(Default)]
pub struct OverlapChecker {
    inside: AtomicUsize,
    most_inside: AtomicUsize,
    sections: Mutex<Vec<(u64, Instant, Instant)>>,
}

pub struct Section<'a> {
    checker: &'a OverlapChecker,
    fence: u64,
    start: Instant,
}

impl OverlapChecker {
    pub fn enter(&self, fence: u64) -> Section<'_> {
        let now_inside = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_inside.fetch_max(now_inside, Ordering::SeqCst);
        Section {
            checker: self,
            fence,
            start: Instant::now(),
        }
    }

    /// Every section so far: its fence, start and end.
    pub fn sections(&self) -> Vec<(u64, Instant, Instant)> {
        self.sections.lock().expect("sections").clone()
    }

    pub fn most_inside(&self) -> usize {
        self.most_inside.load(Ordering::SeqCst)
    }

    /// Panics unless `expected` sections ran one at a time, in fence order.
    pub fn assert_exclusive(&self, expected: usize) {
        assert_eq!(self.most_inside(), 1, "critical sections overlapped");
        let mut sections = self.sections.lock().expect("sections").clone();
        assert_eq!(sections.len(), expected);
        sections.sort_by_key(|(_, start, _)| *start);
        for pair in sections.windows(2) {
            let ((f1, _, end1), (f2, start2, _)) = (pair[0], pair[1]);
            assert!(
                end1 <= start2,
                "sections with fences {f1} and {f2} overlapped"
            );
            assert!(f2 > f1, "fence {f2} entered after fence {f1}");
        }
    }
}

impl Drop for Section<'_> {
    fn drop(&mut self) {
        let end = Instant::now();
        self.checker.inside.fetch_sub(1, Ordering::SeqCst);
        self.checker
            .sections
            .lock()
            .expect("sections")
            .push((self.fence, self.start, end));
    }
}
