//! The partial-charge policy: what a builder pays for a streamed job cut
//! short after its first token. However it is cut (the client hangs up,
//! the client stops reading for the idle timeout, the node fails, or the
//! coordinator shuts down), the builder pays for what it received, the
//! node's last running receipt, and nothing more; with no valid running
//! receipt it pays nothing and the hold is released. The HTTP layer only
//! says how the job was cut and formats the answer.

use crate::core::Core;
use crate::core::error::Error;

use super::active::{ActiveJob, Finished, Step};

/// How a streamed job ended before its last event.
pub enum Cut<'a> {
    /// The client went away or stopped reading: dropping the job closes
    /// the node's stream, which stops generation there.
    HungUp,
    /// The node failed, or the coordinator is shutting down.
    Failed(&'a Error),
}

impl ActiveJob {
    /// The next step of a streamed job; a coordinator that shuts down
    /// ends the job like a failure (what was received is charged).
    pub async fn next_streamed(&mut self, core: &Core) -> Result<Step, Error> {
        tokio::select! {
            step = self.next(core) => step,
            _ = core.shutdown().cancelled() => {
                Err(Error::ShuttingDown("the coordinator is shutting down".into()))
            }
        }
    }

    /// Charges a job cut short (see the module docs): what was booked,
    /// or `None` when nothing valid could be.
    pub async fn cut_short(&mut self, core: &Core, cut: Cut<'_>) -> Option<Finished> {
        if let Cut::Failed(e) = cut {
            tracing::warn!(job = %self.job_id(), error = %e, "stream failed after the first token");
        }
        self.book_partial(core).await
    }
}
