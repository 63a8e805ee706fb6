//! The rate limit on a builder's reads of its own books (`/v1/receipts`,
//! proofs, `/v1/statements`, `/v1/usage`, `/v1/generation`,
//! `/v1/dashboard`): requests per minute per API key, the same `governor`
//! machinery as the inference limits (`accounts/limits.rs`), each replica
//! enforcing its share. Each read is bounded by its page, and this bounds
//! how many pages a key may ask for; a refusal is
//! [`Error::RateLimited`], which `http::error` turns into 429 with
//! `Retry-After`.
//!
//! Keys are those that authenticated (the operator creates them), so the
//! limiter's map is bounded by the keys that exist.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::core::error::Error;

/// Builder reads per minute, per API key.
pub struct ReadLimiter {
    /// None: no limit (`builder_reads_per_minute = 0`).
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    per_minute: u32,
}

impl std::fmt::Debug for ReadLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLimiter")
            .field("per_minute", &self.per_minute)
            .finish_non_exhaustive()
    }
}

impl ReadLimiter {
    /// `per_minute` reads per key across the deployment (0: no limit),
    /// of which this replica enforces `1/replicas`.
    pub fn new(per_minute: u32, replicas: u32) -> Self {
        let share = NonZeroU32::new(per_minute.div_ceil(replicas.max(1)));
        Self {
            limiter: share.map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n))),
            per_minute,
        }
    }

    /// Counts one read by `key_id`; over the limit it is refused with the
    /// time to wait.
    pub fn check(&self, key_id: &str) -> Result<(), Error> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&key_id.to_owned()).map_err(|not_until| {
            Error::RateLimited {
                message: format!(
                    "this API key is over its limit of {} reads per minute of receipts, statements, usage and the dashboard",
                    self.per_minute
                ),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_share_and_then_waits() {
        let l = ReadLimiter::new(6, 2);
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        let Err(Error::RateLimited { retry_after, .. }) = l.check("a") else {
            panic!("the fourth read of a 3-per-minute share is refused");
        };
        assert!(retry_after > std::time::Duration::ZERO);
        // Another key has its own budget.
        l.check("b").unwrap();
        // 0 is no limit.
        let open = ReadLimiter::new(0, 1);
        for _ in 0..1000 {
            open.check("a").unwrap();
        }
    }
}
