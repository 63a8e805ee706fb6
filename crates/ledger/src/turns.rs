//! One admission at a time per app, inside one replica, before it takes a
//! pooled database connection (issue 25: the burst that held the pool).
//!
//! An admission on the shared books waits for its app's row lock
//! (`SELECT … FOR UPDATE`) on a pooled connection. Without turns, a burst
//! of one app's requests took every pooled connection, each sitting on the
//! same row lock, and the group-commit writer (and everyone else) waited
//! for a connection until the pool's timeout: bookings failed after their
//! jobs had streamed. With a turn per app, at most one connection per app
//! per replica waits on that lock (so, across the deployment, one per
//! replica); the rest of the burst waits here, in arrival order, holding
//! nothing. A leaf: it imports no other file of the crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-key turns: a FIFO async lock per key, kept only while someone
/// holds or waits for it.
#[derive(Default)]
pub(crate) struct Turns {
    lines: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// A turn taken (or being waited for): ends when dropped, and the key's
/// line is forgotten once nobody holds or waits for it.
pub(crate) struct Turn<'a> {
    turns: &'a Turns,
    key: String,
    line: Option<Arc<AsyncMutex<()>>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for `key`'s turn, at most `wait`; None past it (nothing held).
    pub(crate) async fn take(&self, key: &str, wait: Duration) -> Option<Turn<'_>> {
        let line = {
            let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            lines.entry(key.to_string()).or_default().clone()
        };
        // Built before waiting, so a wait that times out (or is dropped
        // with its request) still forgets an empty line.
        let mut turn = Turn {
            turns: self,
            key: key.to_string(),
            line: Some(line.clone()),
            guard: None,
        };
        turn.guard = Some(tokio::time::timeout(wait, line.lock_owned()).await.ok()?);
        Some(turn)
    }

    /// Keys with a line (someone holds or waits for their turn).
    #[cfg(test)]
    fn lines(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // The guard and this turn's handle first: then a count of one is
        // the map's own, nobody else's.
        self.guard = None;
        self.line = None;
        let mut lines = self.turns.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            lines.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_turn_per_key_at_a_time_and_no_line_left_behind() {
        let turns = Arc::new(Turns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (turns, inside, most) = (turns.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _turn = turns.take("app", Duration::from_secs(30)).await.unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        // Another key is not held up by the line.
        let other = turns.take("other", Duration::from_secs(30)).await;
        assert!(other.is_some());
        drop(other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one at a time");
        assert_eq!(turns.lines(), 0, "no line kept once empty");
    }

    #[tokio::test]
    async fn a_wait_past_its_limit_gives_up_and_leaves_nothing() {
        let turns = Turns::default();
        let held = turns.take("app", Duration::from_secs(1)).await.unwrap();
        assert!(
            turns.take("app", Duration::from_millis(20)).await.is_none(),
            "the turn is held"
        );
        assert_eq!(turns.lines(), 1);
        drop(held);
        assert_eq!(turns.lines(), 0);
        assert!(turns.take("app", Duration::from_millis(20)).await.is_some());
    }
}
