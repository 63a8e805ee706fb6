//! The `n` parameter: a request for several choices becomes one job per
//! choice (its own node, hold and receipt; a `seed` gives choice `i` the
//! seed `seed + i`), started together, so choices on one node share its
//! batch. The request is charged for every choice that finished; its
//! usage is their sum (each node read the prompt).

use std::sync::Arc;

use sharenet_market::Charge;
use sharenet_proto::Usage;

use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::error::Error;
use crate::core::job::Job;

use super::active::{ActiveJob, Finished};
use super::start::start_job;

/// Starts `n` choices of `job` (at least one) together. A choice that
/// cannot start fails the request; the others' holds are released as
/// they drop, before any of them is charged.
pub async fn start_choices(
    core: &Arc<Core>,
    job: Job,
    n: u32,
    principal: &Principal,
    end_customer: Option<&str>,
) -> Result<Vec<ActiveJob>, Error> {
    let jobs = (0..n.max(1)).map(|i| {
        let mut j = job.clone();
        j.params.seed = j.params.seed.map(|s| s.wrapping_add(u64::from(i)));
        Arc::new(j)
    });
    let starts =
        futures::future::join_all(jobs.map(|j| start_job(core, j, principal, end_customer))).await;
    let actives = starts.into_iter().collect::<Result<Vec<_>, _>>()?;
    if actives.is_empty() {
        return Err(Error::Internal("no choices".into()));
    }
    Ok(actives)
}

/// Runs every choice to its end, together. When one fails the request
/// fails: with that error if none finished, else with a 502 saying that
/// the ones that finished were charged (their receipts are booked).
pub async fn run_choices(
    core: &Core,
    actives: &mut [ActiveJob],
) -> Result<Vec<Box<Finished>>, Error> {
    let results = futures::future::join_all(actives.iter_mut().map(|a| a.run_to_end(core))).await;
    let total = results.len();
    let mut finished = Vec::with_capacity(total);
    let mut failure = None;
    for r in results {
        match r {
            Ok(f) => finished.push(f),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        if finished.is_empty() {
            return Err(e);
        }
        return Err(Error::BadGateway(format!(
            "{} of {total} choices failed ({e}); the {} that finished were charged (see /v1/receipts)",
            total - finished.len(),
            finished.len()
        )));
    }
    Ok(finished)
}

/// The usage and charge of all the choices of one request together.
pub fn summed(all: &[Box<Finished>]) -> (Usage, Charge) {
    let mut charge = Charge::default();
    let (mut input, mut output) = (0u32, 0u32);
    for f in all {
        input = input.saturating_add(f.usage.input_tokens);
        output = output.saturating_add(f.usage.output_tokens);
        charge.provider_cost = charge.provider_cost.saturating_add(f.charge.provider_cost);
        charge.network_fee = charge.network_fee.saturating_add(f.charge.network_fee);
        charge.margin = charge.margin.saturating_add(f.charge.margin);
        charge.total = charge.total.saturating_add(f.charge.total);
    }
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
    };
    (usage, charge)
}
