//! Recycles the allocations of released leases, per thread.
//!
//! An uncontended lock in a store of this process allocates one lease
//! record and frees it at release: `malloc` and `free` took about 120 of the
//! path's 1,500 instructions (callgrind). A lease whose last owner lets go
//! of it goes back to its thread's free list, and the thread's next lease is
//! written into it. `triomphe`'s `Arc` can tell it holds the last reference
//! from one load, and turn a unique one back into a shared one with no
//! atomic write, which `std`'s can do only with `unsafe` code.

use std::cell::RefCell;

use triomphe::{Arc, UniqueArc};

use crate::guard::HeldLease;

/// A lease record shared by its guard, its store and its renewal.
pub(crate) type LeaseRef = Arc<HeldLease>;

/// How many free lease records a thread keeps: enough for the locks it
/// takes and releases in a row, while bounding what an idle thread holds
/// (about 130 bytes each).
const KEEP: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<UniqueArc<HeldLease>>> = const { RefCell::new(Vec::new()) };
}

/// `lease`, in a recycled allocation when this thread has one.
pub(crate) fn share(lease: HeldLease) -> LeaseRef {
    // `try_with`: a thread being torn down has no pool, and allocates.
    match FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten() {
        Some(mut slot) => {
            *slot = lease;
            UniqueArc::shareable(slot)
        }
        None => Arc::new(lease),
    }
}

/// Lets go of `lease`; its allocation goes back to this thread's pool if
/// this was its last reference and the pool has room.
pub(crate) fn recycle(lease: LeaseRef) {
    let Ok(slot) = Arc::try_unique(lease) else {
        return;
    };
    let refused = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(slot);
                None
            } else {
                Some(slot)
            }
        })
        .unwrap_or(None);
    // Dropped outside the pool's borrow.
    drop(refused);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smol_str::SmolStr;

    use super::*;
    use crate::{backend::Token, guard::Deadline};

    fn lease(key: &str) -> HeldLease {
        let start = Deadline::coarse_now();
        HeldLease::new(
            SmolStr::new(key),
            Token::new(),
            1,
            Duration::from_secs(1),
            start,
        )
    }

    #[test]
    fn a_released_lease_is_reused_and_a_shared_one_is_not() {
        let first = share(lease("a"));
        let at = std::ptr::from_ref::<HeldLease>(&first);
        recycle(first);
        let second = share(lease("b"));
        assert_eq!(std::ptr::from_ref::<HeldLease>(&second), at);
        assert_eq!(&*second.key, "b", "the recycled record holds the new lease");

        let kept = second.clone();
        recycle(second);
        let third = share(lease("c"));
        assert_ne!(
            std::ptr::from_ref::<HeldLease>(&third),
            at,
            "a lease still referenced was reused"
        );
        assert_eq!(&*kept.key, "b");
    }
}
