//! The spot-check verdict, one decision for the coordinator and the
//! simulator: which node a check is compared against ([`choose_reference`]),
//! how two runs of a check job are compared ([`compare_runs`]), and what
//! the check concludes from the suspect's, the reference's and maybe an
//! arbiter's run ([`decide`]).
//!
//! A spot check re-runs a finished job, greedy and seeded, on the node that
//! served it (the suspect) and on a reference node advertising the same
//! weights (the most trusted one). If the two runs agree the suspect
//! passes. If they differ, a third node with the same weights (the arbiter,
//! the most trusted of the rest) re-runs the job, and each of the two passes
//! if it agrees with the arbiter and fails otherwise; with no arbiter (none
//! available, or its run failed) the check is inconclusive and no one is
//! judged.
//!
//! Pure as the rest of the crate: trust is given (the caller computes it at
//! its `now`), nothing here reads a clock or draws a random number, and
//! every choice ends on the node key, so the same inputs give the same
//! verdict. The coordinator ([`Run`]: tokens with logprobs, input count)
//! and the simulator (a modelled right / wrong answer) both implement
//! [`Answer`] and call [`decide`].

use sharenet_proto::TokenLogprob;

use crate::candidate::NodeKey;

/// App id the operator's spot checks are paid by (their re-runs are
/// ordinary jobs, booked like any job, and never themselves checked).
pub const SPOT_CHECK_APP: &str = "spot-checks";

/// Largest logprob difference (nats) still counted as equal: kernels and
/// hardware round differently, cheats differ by far more.
pub const LOGPROB_TOLERANCE: f32 = 0.05;

/// A weights hash as adverts carry it (`sha256` of the weights file).
pub type WeightsHash = [u8; 32];

/// The node a check is compared against: among `offers` (every live node
/// serving the model, with the weights hash it advertises), those that
/// advertise the suspect's weights hash, other than the nodes in `exclude`,
/// the most trusted; equal trust goes to the lower key (`f64::total_cmp`,
/// so a NaN trust sorts above every number, as it always has in the
/// coordinator). The same call with the reference added to `exclude`
/// chooses the arbiter.
///
/// `None` when the suspect is not in `offers`, advertises no weights hash,
/// or no other node advertises its hash. `trust_of` gives the trust now of
/// each of the nodes it is passed, in order (only the nodes with the same
/// weights are passed; a missing score drops the node).
pub fn choose_reference(
    offers: &[(NodeKey, Option<WeightsHash>)],
    suspect: &NodeKey,
    exclude: &[NodeKey],
    trust_of: impl FnOnce(&[NodeKey]) -> Vec<f64>,
) -> Option<NodeKey> {
    let weights = offers
        .iter()
        .find(|(node, _)| node == suspect)
        .and_then(|(_, w)| *w)?;
    let same: Vec<NodeKey> = offers
        .iter()
        .filter(|(node, w)| *w == Some(weights) && !exclude.contains(node))
        .map(|(node, _)| *node)
        .collect();
    let trust = trust_of(&same);
    trust
        .into_iter()
        .zip(same)
        .min_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)))
        .map(|(_, node)| node)
}

/// What comparing two runs found.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    Agree,
    /// They part at this token position, for this reason.
    Differ {
        position: usize,
        reason: String,
    },
}

/// Compares a run's tokens against a reference run of the same greedy job:
/// equal token ids, and logprobs within [`LOGPROB_TOLERANCE`]; where the ids
/// first differ, the runs still agree if the reference itself rated the
/// other token within the tolerance of its own pick (a near tie that a
/// different GPU or kernel may break the other way); after a tie the
/// sequences legitimately part, so the comparison ends there.
pub fn compare(run: &[TokenLogprob], reference: &[TokenLogprob]) -> Comparison {
    for (i, (a, b)) in run.iter().zip(reference).enumerate() {
        if a.id == b.id {
            if (a.logprob - b.logprob).abs() > LOGPROB_TOLERANCE || !a.logprob.is_finite() {
                return Comparison::Differ {
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
            Comparison::Agree
        } else {
            Comparison::Differ {
                position: i,
                reason: format!("picked token {} where the reference picked {}", a.id, b.id),
            }
        };
    }
    if run.len() != reference.len() {
        // Both stop only at EOS or the token limit, so an honest pair ends
        // together unless they parted at a tie (handled above).
        return Comparison::Differ {
            position: run.len().min(reference.len()),
            reason: format!(
                "{} tokens where the reference has {}",
                run.len(),
                reference.len()
            ),
        };
    }
    Comparison::Agree
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
pub fn compare_runs(run: &Run, reference: &Run) -> Comparison {
    if run.input_tokens != reference.input_tokens {
        return Comparison::Differ {
            position: 0,
            reason: format!(
                "counted {} input tokens where the reference counted {}",
                run.input_tokens, reference.input_tokens
            ),
        };
    }
    compare(&run.tokens, &reference.tokens)
}

/// A run of a check job, as far as the verdict needs it.
pub trait Answer {
    /// Whether this run agrees with `reference`, the run it is judged
    /// against (the comparison may be asymmetric: a near tie is judged by
    /// the reference's own top logprobs).
    fn agrees_with(&self, reference: &Self) -> bool;
}

impl Answer for Run {
    fn agrees_with(&self, reference: &Self) -> bool {
        compare_runs(self, reference) == Comparison::Agree
    }
}

/// Whose run a judgement is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Suspect,
    Reference,
}

/// What a spot check concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The suspect agrees with the reference: it passes (the reference is
    /// not judged).
    Passed,
    /// They differ and no arbiter answered: no one is judged.
    Inconclusive,
    /// They differ and the arbiter decided: each of the two passes if it
    /// agrees with the arbiter and fails otherwise, so both can fail (an
    /// arbiter that agrees with neither) and both can pass (near ties).
    Arbitrated {
        suspect_passed: bool,
        reference_passed: bool,
    },
}

impl Verdict {
    /// The evidence the verdict gives: who passed or failed, the suspect
    /// first. Empty when inconclusive.
    pub fn judgements(&self) -> Vec<(Role, bool)> {
        match *self {
            Verdict::Passed => vec![(Role::Suspect, true)],
            Verdict::Inconclusive => Vec::new(),
            Verdict::Arbitrated {
                suspect_passed,
                reference_passed,
            } => vec![
                (Role::Suspect, suspect_passed),
                (Role::Reference, reference_passed),
            ],
        }
    }
}

/// Whether a check needs an arbiter: the suspect's run does not agree with
/// the reference's.
pub fn needs_arbiter<A: Answer>(suspect: &A, reference: &A) -> bool {
    !suspect.agrees_with(reference)
}

/// The check's verdict from the suspect's and the reference's runs and the
/// arbiter's run (`None`: no arbiter was available or its run failed; it
/// is only read when the two differ, see [`needs_arbiter`]).
pub fn decide<A: Answer>(suspect: &A, reference: &A, arbiter: Option<&A>) -> Verdict {
    if !needs_arbiter(suspect, reference) {
        return Verdict::Passed;
    }
    match arbiter {
        None => Verdict::Inconclusive,
        Some(arbiter) => Verdict::Arbitrated {
            suspect_passed: suspect.agrees_with(arbiter),
            reference_passed: reference.agrees_with(arbiter),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        assert_eq!(compare(&a, &b), Comparison::Agree);
    }

    #[test]
    fn a_logprob_off_by_more_than_the_tolerance_differs() {
        let a = [tok(1, -0.5, &[]), tok(2, -1.5, &[])];
        let b = [tok(1, -0.5, &[]), tok(2, -1.0, &[])];
        assert!(matches!(
            compare(&a, &b),
            Comparison::Differ { position: 1, .. }
        ));
    }

    #[test]
    fn a_different_pick_differs_unless_it_was_a_near_tie() {
        let run = [tok(1, -0.5, &[]), tok(7, -0.70, &[])];
        let tie = [tok(1, -0.5, &[]), tok(3, -0.69, &[(3, -0.69), (7, -0.70)])];
        assert_eq!(compare(&run, &tie), Comparison::Agree);
        let clear = [tok(1, -0.5, &[]), tok(3, -0.1, &[(3, -0.1), (7, -2.5)])];
        assert!(matches!(
            compare(&run, &clear),
            Comparison::Differ { position: 1, .. }
        ));
        let absent = [tok(1, -0.5, &[]), tok(3, -0.1, &[(3, -0.1)])];
        assert!(matches!(compare(&run, &absent), Comparison::Differ { .. }));
    }

    #[test]
    fn different_lengths_differ_and_nan_never_agrees() {
        let a = [tok(1, -0.5, &[])];
        let b = [tok(1, -0.5, &[]), tok(2, -0.5, &[])];
        assert!(matches!(
            compare(&a, &b),
            Comparison::Differ { position: 1, .. }
        ));
        let nan = [tok(1, f32::NAN, &[])];
        assert!(matches!(compare(&nan, &a), Comparison::Differ { .. }));
    }

    #[test]
    fn a_different_input_count_differs_even_with_the_same_tokens() {
        let tokens = vec![tok(1, -0.5, &[])];
        let run = Run {
            tokens: tokens.clone(),
            input_tokens: 30,
        };
        let reference = Run {
            tokens,
            input_tokens: 10,
        };
        assert!(matches!(
            compare_runs(&run, &reference),
            Comparison::Differ { position: 0, .. }
        ));
        assert!(!run.agrees_with(&reference));
        assert!(reference.agrees_with(&reference.clone()));
    }

    /// A modelled answer: equal values agree, `0` never agrees with
    /// anything (a cheat's output), as the simulator models garbage.
    #[derive(Debug, Clone, Copy)]
    struct A(u8);
    impl Answer for A {
        fn agrees_with(&self, reference: &Self) -> bool {
            self.0 != 0 && self.0 == reference.0
        }
    }

    /// The whole table: suspect, reference, arbiter (right = 1, wrong =
    /// 0, another right-looking answer = 2) → verdict.
    #[test]
    fn the_verdict_table() {
        use Verdict::*;
        let arb = |s, r| Arbitrated {
            suspect_passed: s,
            reference_passed: r,
        };
        let cases: [(u8, u8, Option<u8>, Verdict); 12] = [
            // They agree: the suspect passes, the arbiter is not read.
            (1, 1, None, Passed),
            (1, 1, Some(0), Passed),
            (2, 2, Some(1), Passed),
            // They differ and no arbiter answered.
            (0, 1, None, Inconclusive),
            (1, 0, None, Inconclusive),
            (0, 0, None, Inconclusive),
            // The arbiter sides with one of them: the other fails.
            (0, 1, Some(1), arb(false, true)),
            (1, 0, Some(1), arb(true, false)),
            (1, 2, Some(2), arb(false, true)),
            // Both wrong: both fail.
            (0, 0, Some(1), arb(false, false)),
            // An arbiter that agrees with neither fails both (the
            // coordinator's rule: whoever disagrees with the arbiter).
            (0, 1, Some(0), arb(false, false)),
            (1, 0, Some(2), arb(false, false)),
        ];
        for (s, r, a, want) in cases {
            let a = a.map(A);
            let got = decide(&A(s), &A(r), a.as_ref());
            assert_eq!(got, want, "suspect {s}, reference {r}, arbiter {a:?}");
            assert_eq!(needs_arbiter(&A(s), &A(r)), want != Passed);
        }
    }

    #[test]
    fn judgements_name_the_suspect_first_and_nobody_when_inconclusive() {
        assert_eq!(Verdict::Passed.judgements(), vec![(Role::Suspect, true)]);
        assert!(Verdict::Inconclusive.judgements().is_empty());
        let v = Verdict::Arbitrated {
            suspect_passed: false,
            reference_passed: true,
        };
        assert_eq!(
            v.judgements(),
            vec![(Role::Suspect, false), (Role::Reference, true)]
        );
    }

    #[test]
    fn both_pass_when_the_arbiter_agrees_with_both() {
        // A near tie: the suspect's pick differs from the reference's but
        // the arbiter's top logprobs rate both within the tolerance.
        let run = |id: u32| Run {
            tokens: vec![tok(id, -0.70, &[])],
            input_tokens: 5,
        };
        let arbiter = Run {
            tokens: vec![tok(3, -0.69, &[(3, -0.69), (7, -0.70)])],
            input_tokens: 5,
        };
        let (suspect, reference) = (run(7), run(9));
        assert_eq!(
            decide(&suspect, &reference, Some(&arbiter)),
            Verdict::Arbitrated {
                suspect_passed: true,
                reference_passed: false,
            }
        );
        let reference = run(3);
        assert!(needs_arbiter(&suspect, &reference));
        assert_eq!(
            decide(&suspect, &reference, Some(&arbiter)),
            Verdict::Arbitrated {
                suspect_passed: true,
                reference_passed: true,
            }
        );
    }

    fn key(i: u8) -> NodeKey {
        [i; 32]
    }

    #[test]
    fn the_reference_is_the_most_trusted_node_with_the_same_weights() {
        let (w, other) = ([7u8; 32], [8u8; 32]);
        let offers = [
            (key(1), Some(w)),
            (key(2), Some(w)),
            (key(3), Some(other)),
            (key(4), Some(w)),
            (key(5), None),
            (key(6), Some(w)),
        ];
        let trust = |k: &NodeKey| match k[0] {
            1 => 0.99,
            2 => 0.6,
            3 => 1.0,
            4 => 0.9,
            6 => 0.9,
            _ => 1.0,
        };
        let trust_of = |ks: &[NodeKey]| ks.iter().map(trust).collect::<Vec<f64>>();
        // Suspect 2: 3 and 5 have other weights; 1 is the most trusted.
        assert_eq!(
            choose_reference(&offers, &key(2), &[key(2)], trust_of),
            Some(key(1))
        );
        // The arbiter: 1 excluded too; 4 and 6 tie, the lower key wins.
        assert_eq!(
            choose_reference(&offers, &key(2), &[key(2), key(1)], trust_of),
            Some(key(4))
        );
        // Offers in another order give the same choice.
        let mut reversed = offers;
        reversed.reverse();
        assert_eq!(
            choose_reference(&reversed, &key(2), &[key(2), key(1)], trust_of),
            Some(key(4))
        );
        // No weights hash, not on offer, or nobody else: no reference.
        assert_eq!(
            choose_reference(&offers, &key(5), &[key(5)], trust_of),
            None
        );
        assert_eq!(
            choose_reference(&offers, &key(9), &[key(9)], trust_of),
            None
        );
        assert_eq!(
            choose_reference(&offers, &key(3), &[key(3)], trust_of),
            None
        );
        // Only the nodes with the suspect's weights are asked for trust.
        let asked = std::cell::RefCell::new(Vec::new());
        choose_reference(&offers, &key(2), &[key(2)], |ks| {
            asked.borrow_mut().extend_from_slice(ks);
            ks.iter().map(trust).collect()
        });
        assert_eq!(asked.into_inner(), vec![key(1), key(4), key(6)]);
    }
}
