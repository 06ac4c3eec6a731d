//! Locking the crate's std mutexes.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves its data consistent at each step, so a panic elsewhere while the
/// mutex was held does not make the data unusable, and a lock must never
/// turn one panic into many.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
