//! Spot checks: catching a node that serves something other than the model
//! (and weights) it advertises.
//!
//! Dispatch announces every finished job on a bounded channel (its
//! completion hook); [`run`] samples text jobs from it with probability
//! `spot_check_rate` (its own rng, so which jobs are checked is invisible to
//! nodes). A sampled job's input is re-run, greedy and seeded with logprobs,
//! on the node that served it and on a reference node, the most trusted
//! one advertising the same weights hash. Both runs are ordinary jobs on the wire: the node cannot
//! tell a check from a builder's greedy request. They are paid for by the
//! operator's `spot-checks` app and booked like any job. A re-run goes
//! only where the original job's preferences allowed its prompt to go
//! (`only`, `ignore`, region, `data_collection: deny` and licenses, its
//! app's rules folded in at dispatch: [`CompletedJob::prefs`]): the
//! reference and the arbiter are chosen among those nodes, and each
//! re-run is routed under the same preferences.
//!
//! The two runs are compared ([`compare_runs`]): the same input token
//! count (a node inflating what it bills for input differs here), then the
//! token sequences ([`compare`]): equal token ids, and
//! logprobs within [`LOGPROB_TOLERANCE`]; where the ids first differ, the
//! runs still agree if the reference itself rated the other token within
//! the tolerance of its own pick (a near tie that a different GPU or kernel
//! may break the other way); after a tie the sequences legitimately part,
//! so the comparison ends there. On disagreement a third node with the same
//! weights (the arbiter) re-runs the job, and whoever disagrees with it
//! fails; with no arbiter the check is inconclusive and only logged.
//! The choice of the reference and the arbiter (the most trusted nodes with
//! the weights), the comparison and the verdict are
//! [`sharenet_router::verdict`], pure code the simulator runs too; this
//! module runs the jobs and books the evidence.
//! The router's trust ([`sharenet_router::Evidence::SpotCheckFailed`])
//! weighs a failure heaviest: one puts a node below the trust floor, so it
//! gets no traffic.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sharenet_proto::{JobInput, SamplingParams};
use sharenet_router::verdict::{self, Role, Verdict};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::accounts::Principal;
use crate::core::dispatch::{CompletedJob, allowed_nodes, start_job};
use crate::core::job::{Job, JobKind, ProviderPrefs};
use crate::core::registry::Lookup;
use crate::core::routing::Outcome;
use crate::core::{Core, now_ms};

pub use sharenet_router::verdict::{
    Comparison, LOGPROB_TOLERANCE, Run, SPOT_CHECK_APP, compare, compare_runs,
};

/// Most tokens a check generates.
const CHECK_TOKENS: u32 = 16;
/// Seed of every check (greedy decoding ignores it; it pins any sampler
/// state a backend might keep).
const CHECK_SEED: u64 = 0x5107_c4ec;

/// The completion hook's consumer: samples finished text jobs at `rate`
/// (with its own rng, so which jobs are checked is invisible to nodes) and
/// runs each sampled check as a tracked background task. Jobs of the
/// spot-checks app itself, and private jobs (sensitive, or served by the
/// app's private pool), are never sampled.
pub async fn run(
    core: Arc<Core>,
    mut completed: mpsc::Receiver<CompletedJob>,
    rate: f64,
    shutdown: CancellationToken,
) {
    let mut rng = StdRng::from_os_rng();
    loop {
        let done = tokio::select! {
            _ = shutdown.cancelled() => return,
            done = completed.recv() => match done {
                Some(d) => d,
                None => return,
            },
        };
        // A private job's prompt may not leave the app's pool, so it is
        // never re-run on another node.
        if done.app == SPOT_CHECK_APP
            || done.private
            || done.job.kind == JobKind::Embedding
            || !rng.random_bool(rate.clamp(0.0, 1.0))
        {
            continue;
        }
        let checker = core.clone();
        core.spawn(async move {
            let check = Check {
                input: done.job.input.clone(),
                model: done.model.clone(),
                prefs: done.prefs.clone(),
            };
            run_check(&checker, &check, done.node).await;
        });
    }
}

/// What a check re-runs, and where it may: the original job's input and
/// model, and its preferences (its app's rules folded in) that decided
/// where its prompt could go.
struct Check {
    input: JobInput,
    model: String,
    prefs: ProviderPrefs,
}

impl Check {
    /// The check job, on exactly `node` (`None`: on any node the original
    /// job allowed, for [`choose_checker`]'s list). Every preference that
    /// decides where the prompt may go (`only`, `ignore`, region, data
    /// collection, licenses, quantizations, weights, prices, trust) is the
    /// original job's; ordering and fallbacks are the check's own. `None`
    /// when `node` is outside the original `only` list.
    fn job(&self, node: Option<[u8; 32]>) -> Option<Job> {
        let only = match node {
            Some(n) if !self.prefs.only.is_empty() && !self.prefs.only.contains(&n) => return None,
            Some(n) => vec![n],
            None => self.prefs.only.clone(),
        };
        Some(Job {
            kind: JobKind::Chat,
            models: vec![self.model.clone()],
            input: self.input.clone(),
            params: SamplingParams {
                max_tokens: CHECK_TOKENS,
                temperature: 0.0,
                seed: Some(CHECK_SEED),
                logprobs: true,
                top_logprobs: 5,
                ..SamplingParams::default()
            },
            prefs: ProviderPrefs {
                only,
                order: Vec::new(),
                sort: None,
                allow_fallbacks: node.is_none(),
                ..self.prefs.clone()
            },
            tools: None,
            response_format: None,
            input_tokens: Default::default(),
        })
    }
}

/// The node a check on `suspect` is compared against: the most trusted
/// live node, other than those in `exclude`, advertising the model with the
/// suspect's weights hash ([`verdict::choose_reference`]; with the
/// reference in `exclude` too, the arbiter), among the nodes the original
/// job's preferences allow (dispatch's own routing decides which).
fn choose_checker(
    core: &Core,
    check: &Check,
    suspect: [u8; 32],
    exclude: &[[u8; 32]],
) -> Option<[u8; 32]> {
    let now = now_ms();
    let Lookup::Found(offers) = core.registry.lookup(&check.model, now) else {
        return None;
    };
    let allowed = allowed_nodes(core, &check.job(None)?, &check.model, SPOT_CHECK_APP);
    let offers: Vec<([u8; 32], Option<[u8; 32]>)> = offers
        .iter()
        .filter(|o| o.advert.node == suspect || allowed.contains(&o.advert.node))
        .map(|o| (o.advert.node, o.offer.weights_sha256))
        .collect();
    verdict::choose_reference(&offers, &suspect, exclude, |nodes| {
        core.routing.trust_of(nodes, now)
    })
}

/// Runs the check job on exactly `node`.
async fn run_on(core: &Arc<Core>, check: &Check, node: [u8; 32]) -> Result<Run, String> {
    let job = check
        .job(Some(node))
        .ok_or("the original job's preferences do not allow this node")?;
    let principal = Principal {
        app: SPOT_CHECK_APP.into(),
        key_id: SPOT_CHECK_APP.into(),
    };
    let mut active = start_job(core, Arc::new(job), &principal, None)
        .await
        .map_err(|e| e.to_string())?;
    let f = active.run_to_end(core).await.map_err(|e| e.to_string())?;
    Ok(Run {
        tokens: f.logprobs,
        input_tokens: f.usage.input_tokens,
    })
}

/// Who a disagreement is pinned on.
fn evidence(core: &Core, node: [u8; 32], passed: bool) {
    let outcome = if passed {
        Outcome::SpotCheckPassed
    } else {
        Outcome::SpotCheckFailed
    };
    core.routing.record(node, outcome, now_ms());
}

fn short(k: &[u8; 32]) -> String {
    hex::encode(&k[..6])
}

/// One spot check: the suspect's and the reference's runs, an arbiter's
/// when they differ, then the shared verdict ([`verdict::decide`]) booked
/// as evidence.
async fn run_check(core: &Arc<Core>, check: &Check, suspect: [u8; 32]) {
    let model = check.model.as_str();
    // 1. The reference: the most trusted other node with the same weights
    //    that the original job allowed.
    let Some(reference) = choose_checker(core, check, suspect, &[suspect]) else {
        tracing::debug!(node = %short(&suspect), model, "spot check skipped: no other node with the same weights");
        return;
    };
    // 2. Both runs; a check with a failed run is incomplete (dispatch has
    //    already counted the failure).
    let (run, reference_run) =
        tokio::join!(run_on(core, check, suspect), run_on(core, check, reference));
    let (run, reference_run) = match (run, reference_run) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            tracing::info!(node = %short(&suspect), reference = %short(&reference),
                suspect_error = ?a.err(), reference_error = ?b.err(), "spot check incomplete");
            return;
        }
    };
    core.metrics.spot_checks.inc();
    // 3. When they differ, the arbiter's run (or why there is none).
    let arbiter = match compare_runs(&run, &reference_run) {
        Comparison::Agree => None,
        Comparison::Differ { position, reason } => {
            let differ = Differ {
                suspect,
                reference,
                position,
                reason,
            };
            run_arbiter(core, check, &differ)
                .await
                .map(|(node, arbiter_run)| (node, arbiter_run, differ))
        }
    };
    // 4. The verdict, booked.
    let arbiter_run = arbiter.as_ref().map(|(_, r, _)| r);
    match verdict::decide(&run, &reference_run, arbiter_run) {
        Verdict::Passed => {
            tracing::debug!(node = %short(&suspect), reference = %short(&reference), "spot check passed");
            evidence(core, suspect, true);
        }
        // Logged by `run_arbiter`.
        Verdict::Inconclusive => {}
        judged @ Verdict::Arbitrated { .. } => {
            let Some((arbiter, arbiter_run, differ)) = &arbiter else {
                return;
            };
            let runs = Runs {
                suspect: &run,
                reference: &reference_run,
                arbiter: arbiter_run,
            };
            for (role, passed) in judged.judgements() {
                let node = match role {
                    Role::Suspect => suspect,
                    Role::Reference => reference,
                };
                evidence(core, node, passed);
                if !passed {
                    core.metrics.spot_checks_failed.inc();
                    log_failure(node, model, *arbiter, differ, &runs);
                }
            }
        }
    }
}

/// Where the suspect's and the reference's runs part.
struct Differ {
    suspect: [u8; 32],
    reference: [u8; 32],
    position: usize,
    reason: String,
}

/// The three runs of an arbitrated check.
struct Runs<'a> {
    suspect: &'a Run,
    reference: &'a Run,
    arbiter: &'a Run,
}

/// Someone is wrong; a third node with the same weights decides who. Its
/// key and run, or `None` (logged: the check is inconclusive) when no
/// third node has the weights or its run failed.
async fn run_arbiter(core: &Arc<Core>, check: &Check, differ: &Differ) -> Option<([u8; 32], Run)> {
    let Differ {
        suspect,
        reference,
        position,
        reason,
    } = differ;
    let Some(arbiter) = choose_checker(core, check, *suspect, &[*suspect, *reference]) else {
        tracing::warn!(node = %short(suspect), reference = %short(reference), position, %reason,
            "spot check inconclusive: the runs differ and no third node has the same weights");
        return None;
    };
    match run_on(core, check, arbiter).await {
        Ok(r) => Some((arbiter, r)),
        Err(e) => {
            tracing::warn!(node = %short(suspect), arbiter = %short(&arbiter), error = %e,
                "spot check inconclusive: the arbiter's run failed");
            None
        }
    }
}

fn log_failure(node: [u8; 32], model: &str, arbiter: [u8; 32], differ: &Differ, runs: &Runs<'_>) {
    let ids = |r: &Run| r.tokens.iter().map(|t| t.id).collect::<Vec<_>>();
    tracing::warn!(
        node = %hex::encode(node), model, position = differ.position, reason = %differ.reason,
        arbiter = %short(&arbiter),
        tokens = ?ids(runs.suspect),
        reference_tokens = ?ids(runs.reference),
        arbiter_tokens = ?ids(runs.arbiter),
        input_tokens = runs.suspect.input_tokens,
        reference_input_tokens = runs.reference.input_tokens,
        arbiter_input_tokens = runs.arbiter.input_tokens,
        "spot check FAILED: the node's output or input count does not match its advertised weights"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison the coordinator books is the shared one: an inflated
    /// input count differs even with the same tokens.
    #[test]
    fn the_shared_comparison_checks_input_counts_first() {
        let run = |input_tokens| Run {
            tokens: Vec::new(),
            input_tokens,
        };
        assert_eq!(compare_runs(&run(7), &run(7)), Comparison::Agree);
        assert!(matches!(
            compare_runs(&run(21), &run(7)),
            Comparison::Differ { position: 0, .. }
        ));
    }
}
