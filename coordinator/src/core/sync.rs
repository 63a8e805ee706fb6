//! The one way the core takes a `std::sync::Mutex`.
//!
//! A lock is poisoned only when a thread panicked while holding it. The
//! core's critical sections hold no code that panics on input (no unwrap,
//! no indexing by untrusted values, checked arithmetic), so a poisoned lock
//! means a bug, not a half-made update an attacker can steer; refusing
//! every later request would turn that bug into an outage. So the core
//! takes the data as it is and logs, everywhere the same.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data of a poisoned lock (see the module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| {
        tracing::error!("a lock was poisoned by an earlier panic; continuing with its data");
        poisoned.into_inner()
    })
}
