//! Spot checks: catching a node that serves something other than the model
//! (and weights) it advertises.
//!
//! Dispatch announces every finished job on a bounded channel (its
//! completion hook); [`run`] samples text jobs from it with probability
//! `spot_check_rate` (its own rng, so which jobs are checked is invisible to
//! nodes). A sampled job's input is re-run, greedy and seeded with logprobs,
//! on the node that served it and on a reference node advertising the same
//! weights hash. Both runs are ordinary jobs on the wire: the node cannot
//! tell a check from a builder's greedy request. They are paid for by the
//! operator's `spot-checks` app and booked like any job.
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
//! The router's trust ([`sharenet_router::Evidence::SpotCheckFailed`])
//! weighs a failure heaviest: one puts a node below the trust floor, so it
//! gets no traffic.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sharenet_proto::{JobInput, SamplingParams, TokenLogprob};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::accounts::Principal;
use crate::core::dispatch::{CompletedJob, start_job};
use crate::core::job::{Job, JobKind, ProviderPrefs};
use crate::core::registry::Lookup;
use crate::core::routing::Outcome;
use crate::core::{Core, now_ms};

pub use crate::core::accounts::SPOT_CHECK_APP;

/// Most tokens a check generates.
const CHECK_TOKENS: u32 = 16;
/// Seed of every check (greedy decoding ignores it; it pins any sampler
/// state a backend might keep).
const CHECK_SEED: u64 = 0x5107_c4ec;
/// Largest logprob difference (nats) still counted as equal: kernels and
/// hardware round differently, cheats differ by far more.
pub const LOGPROB_TOLERANCE: f32 = 0.05;

/// What comparing two runs found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Agree,
    /// They part at this token position, for this reason.
    Differ {
        position: usize,
        reason: String,
    },
}

/// Compares a run against a reference run of the same greedy job.
pub fn compare(run: &[TokenLogprob], reference: &[TokenLogprob]) -> Verdict {
    for (i, (a, b)) in run.iter().zip(reference).enumerate() {
        if a.id == b.id {
            if (a.logprob - b.logprob).abs() > LOGPROB_TOLERANCE || !a.logprob.is_finite() {
                return Verdict::Differ {
                    position: i,
                    reason: format!(
                        "token {} has logprob {:.4}, the reference {:.4}",
                        a.id, a.logprob, b.logprob
                    ),
                };
            }
            continue;
        }
        // Different picks: agreement only if the reference rated the other
        // pick within the tolerance of its own (a near tie).
        let tie = b
            .top
            .iter()
            .find(|t| t.id == a.id)
            .is_some_and(|t| (b.logprob - t.logprob).abs() <= LOGPROB_TOLERANCE);
        return if tie {
            Verdict::Agree
        } else {
            Verdict::Differ {
                position: i,
                reason: format!("picked token {} where the reference picked {}", a.id, b.id),
            }
        };
    }
    if run.len() != reference.len() {
        // Both stop only at EOS or the token limit, so an honest pair ends
        // together unless they parted at a tie (handled above).
        return Verdict::Differ {
            position: run.len().min(reference.len()),
            reason: format!(
                "{} tokens where the reference has {}",
                run.len(),
                reference.len()
            ),
        };
    }
    Verdict::Agree
}

/// One run of a check job: its tokens with logprobs, and the input tokens
/// the node counted (and was paid for).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub tokens: Vec<TokenLogprob>,
    pub input_tokens: u32,
}

/// Compares two runs of the same job: the same input count first (the
/// same weights come with the same tokenizer and template, so an honest
/// node counts exactly what the reference counts; a node inflating its
/// input counts differs here even when its output is right), then the
/// tokens ([`compare`]).
pub fn compare_runs(run: &Run, reference: &Run) -> Verdict {
    if run.input_tokens != reference.input_tokens {
        return Verdict::Differ {
            position: 0,
            reason: format!(
                "counted {} input tokens where the reference counted {}",
                run.input_tokens, reference.input_tokens
            ),
        };
    }
    compare(&run.tokens, &reference.tokens)
}

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
            run_check(&checker, done.job.input.clone(), done.node, &done.model).await;
        });
    }
}

/// Nodes other than `exclude` that advertise `model` with the same weights
/// hash as `node`, most trusted first.
fn peers_with_same_weights(
    core: &Core,
    model: &str,
    node: [u8; 32],
    exclude: &[[u8; 32]],
) -> Vec<[u8; 32]> {
    let Lookup::Found(offers) = core.registry.lookup(model, now_ms()) else {
        return Vec::new();
    };
    let Some(weights) = offers
        .iter()
        .find(|o| o.advert.node == node)
        .and_then(|o| o.offer.weights_sha256)
    else {
        return Vec::new();
    };
    let same: Vec<[u8; 32]> = offers
        .iter()
        .filter(|o| o.offer.weights_sha256 == Some(weights) && !exclude.contains(&o.advert.node))
        .map(|o| o.advert.node)
        .collect();
    let trust = core.routing.trust_of(&same, now_ms());
    let mut same: Vec<(f64, [u8; 32])> = trust.into_iter().zip(same).collect();
    same.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    same.into_iter().map(|(_, k)| k).collect()
}

/// Runs the check job on exactly `node`.
async fn run_on(
    core: &Arc<Core>,
    input: &JobInput,
    node: [u8; 32],
    model: &str,
) -> Result<Run, String> {
    let job = Job {
        kind: JobKind::Chat,
        models: vec![model.to_owned()],
        input: input.clone(),
        params: SamplingParams {
            max_tokens: CHECK_TOKENS,
            temperature: 0.0,
            seed: Some(CHECK_SEED),
            logprobs: true,
            top_logprobs: 5,
            ..SamplingParams::default()
        },
        prefs: ProviderPrefs {
            only: vec![node],
            allow_fallbacks: false,
            ..ProviderPrefs::default()
        },
        tools: None,
        response_format: None,
    };
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

async fn run_check(core: &Arc<Core>, input: JobInput, suspect: [u8; 32], model: &str) {
    let short = |k: &[u8; 32]| hex::encode(&k[..6]);
    let Some(reference) = peers_with_same_weights(core, model, suspect, &[suspect])
        .into_iter()
        .next()
    else {
        tracing::debug!(node = %short(&suspect), model, "spot check skipped: no other node with the same weights");
        return;
    };
    let (run, reference_run) = tokio::join!(
        run_on(core, &input, suspect, model),
        run_on(core, &input, reference, model)
    );
    let (run, reference_run) = match (run, reference_run) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            // A failed run is already counted as a failure by dispatch.
            tracing::info!(node = %short(&suspect), reference = %short(&reference),
                suspect_error = ?a.err(), reference_error = ?b.err(), "spot check incomplete");
            return;
        }
    };
    core.metrics.spot_checks.inc();
    let Verdict::Differ { position, reason } = compare_runs(&run, &reference_run) else {
        tracing::debug!(node = %short(&suspect), reference = %short(&reference), "spot check passed");
        evidence(core, suspect, true);
        return;
    };
    // Someone is wrong; a third node with the same weights decides who.
    let arbiter = peers_with_same_weights(core, model, suspect, &[suspect, reference])
        .into_iter()
        .next();
    let Some(arbiter) = arbiter else {
        tracing::warn!(node = %short(&suspect), reference = %short(&reference), position, %reason,
            "spot check inconclusive: the runs differ and no third node has the same weights");
        return;
    };
    let arbiter_run = match run_on(core, &input, arbiter, model).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = %short(&suspect), arbiter = %short(&arbiter), error = %e,
                "spot check inconclusive: the arbiter's run failed");
            return;
        }
    };
    let suspect_ok = compare_runs(&run, &arbiter_run) == Verdict::Agree;
    let reference_ok = compare_runs(&reference_run, &arbiter_run) == Verdict::Agree;
    for (node, ok) in [(suspect, suspect_ok), (reference, reference_ok)] {
        evidence(core, node, ok);
        if !ok {
            core.metrics.spot_checks_failed.inc();
            tracing::warn!(
                node = %hex::encode(node), model, position, %reason,
                arbiter = %short(&arbiter),
                tokens = ?run.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
                reference_tokens = ?reference_run.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
                arbiter_tokens = ?arbiter_run.tokens.iter().map(|t| t.id).collect::<Vec<_>>(),
                input_tokens = run.input_tokens,
                reference_input_tokens = reference_run.input_tokens,
                arbiter_input_tokens = arbiter_run.input_tokens,
                "spot check FAILED: the node's output or input count does not match its advertised weights"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::TopLogprob;

    fn tok(id: u32, logprob: f32, top: &[(u32, f32)]) -> TokenLogprob {
        TokenLogprob {
            id,
            token: String::new(),
            bytes: Vec::new(),
            logprob,
            top: top
                .iter()
                .map(|&(id, logprob)| TopLogprob {
                    id,
                    token: String::new(),
                    bytes: Vec::new(),
                    logprob,
                })
                .collect(),
        }
    }

    #[test]
    fn equal_runs_agree_within_tolerance() {
        let a = [tok(1, -0.5, &[]), tok(2, -1.0, &[])];
        let b = [tok(1, -0.52, &[]), tok(2, -0.99, &[])];
        assert_eq!(compare(&a, &b), Verdict::Agree);
    }

    #[test]
    fn a_logprob_off_by_more_than_the_tolerance_differs() {
        let a = [tok(1, -0.5, &[]), tok(2, -1.5, &[])];
        let b = [tok(1, -0.5, &[]), tok(2, -1.0, &[])];
        assert!(matches!(
            compare(&a, &b),
            Verdict::Differ { position: 1, .. }
        ));
    }

    #[test]
    fn a_different_pick_differs_unless_it_was_a_near_tie() {
        let run = [tok(1, -0.5, &[]), tok(7, -0.70, &[])];
        let tie = [tok(1, -0.5, &[]), tok(3, -0.69, &[(3, -0.69), (7, -0.70)])];
        assert_eq!(compare(&run, &tie), Verdict::Agree);
        let clear = [tok(1, -0.5, &[]), tok(3, -0.1, &[(3, -0.1), (7, -2.5)])];
        assert!(matches!(
            compare(&run, &clear),
            Verdict::Differ { position: 1, .. }
        ));
        let absent = [tok(1, -0.5, &[]), tok(3, -0.1, &[(3, -0.1)])];
        assert!(matches!(compare(&run, &absent), Verdict::Differ { .. }));
    }

    #[test]
    fn different_lengths_differ_and_nan_never_agrees() {
        let a = [tok(1, -0.5, &[])];
        let b = [tok(1, -0.5, &[]), tok(2, -0.5, &[])];
        assert!(matches!(
            compare(&a, &b),
            Verdict::Differ { position: 1, .. }
        ));
        let nan = [tok(1, f32::NAN, &[])];
        assert!(matches!(compare(&nan, &a), Verdict::Differ { .. }));
    }
}
