//! Sending a job to a node, in named steps:
//!
//! 1. [`plan::resolve_model`]: the requested model or the first of its
//!    fallbacks that some node serves;
//!    then the request's bytes, refused when a node's own check of a
//!    request (`JobRequest::validate`, schema limits included) would refuse
//!    them or they would not fit a frame;
//! 2. [`plan::plan_candidates`]: the router's order over the routing index,
//!    the app's rules, live adverts only, at most `max_attempts`;
//! 3. [`plan::admit`]: rate limits and a hold for the worst case at the
//!    highest candidate price;
//! 4. [`attempt::first_answer`]: the candidates in order until one produces
//!    its first event (fallback before the first token only; a refusal
//!    falls back too, and counts against the refuser when the coordinator
//!    cannot explain it and another node answers);
//! 5. [`ActiveJob`]: relaying events within the job's byte budget
//!    (`budget.rs`), then [`book::check_and_book`] for the
//!    final receipt or, when a stream breaks, for the last running receipt;
//!    a finished job is announced to the completion hook (spot checks).
//!
//! Around those steps: [`start_job`] itself is in `start.rs`;
//! [`start_choices`] and [`run_choices`] (`fanout.rs`) turn a request's `n`
//! choices into `n` jobs; [`Cut`] (`partial.rs`) is what a builder pays
//! for a streamed job cut short after its first token.

mod active;
mod attempt;
mod book;
mod budget;
mod count;
mod fanout;
mod partial;
mod plan;
mod start;

pub use crate::config::Timeouts;
pub use crate::core::job::{CompletedJob, Notice};
pub use active::{ActiveJob, Finished, Step};
pub use fanout::{run_choices, start_choices, summed};
pub use partial::Cut;
pub(crate) use plan::allowed_nodes;
pub use start::start_job;

#[cfg(test)]
pub(crate) mod tests;
