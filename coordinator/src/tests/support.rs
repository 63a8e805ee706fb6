//! What the coordinator's unit tests share for waiting: they wait for a
//! condition with a deadline, never for a time, so they pass on a loaded
//! machine and fail (naming what they awaited) instead of hanging. The
//! same style as the end-to-end tests' `wait_for` in `tests/src/lib.rs`.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// How long a test waits for something it expects: far longer than it
/// takes even on a loaded machine, so a condition that holds at all holds
/// well within it, and one that never holds still fails, only later.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// How often [`wait_for`] looks again: often enough not to slow a test
/// down, rarely enough to be no load of its own.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Ok`, and returns what that carried.
/// While the condition does not hold, `check` returns `Err` with what it
/// saw; once `limit` has passed the test fails naming `what` and that
/// last observed state.
pub(crate) async fn wait_for<T, S, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`wait_for`] a condition that can be read without waiting; `check`
/// returns `Err` with what it saw while the condition does not hold.
pub(crate) async fn wait_for_state<S: Debug>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), S>,
) {
    wait_for(what, limit, || std::future::ready(check())).await
}
