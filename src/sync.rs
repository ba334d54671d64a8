//! Small helpers for the std locks that guard service state.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering from poisoning.
///
/// A poisoned lock means a panic happened while another thread held it. Service maps stay
/// structurally valid through any single operation, so serving on is better than taking the
/// whole service (and every connection using it) down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
