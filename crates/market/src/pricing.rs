//! The charge for one job, and the hold placed before it runs.
//!
//! A builder is charged three things for a job, each in nano-USD:
//!
//! - the **provider cost**: tokens × the node's per-token prices, exactly
//!   (it is the countersigned receipt's `amount`; no rounding on this side);
//! - the **network fee**: basis points (1/10,000) of the provider cost,
//!   kept by the network;
//! - the **builder margin**: basis points of the provider cost plus a fixed
//!   surcharge per 1,000,000 tokens (input + output). The builder sets it
//!   per app, charges it to its end customers, and gets it back as its
//!   payout at settlement.
//!
//! # Rounding (the one rule)
//!
//! Each fractional component is rounded **down** on its own, and the total
//! is their **exact sum**:
//!
//! ```text
//! network_fee = floor(provider_cost × network_fee_bps / 10_000)
//! margin      = floor(provider_cost × margin.percent_bps / 10_000)
//!             + floor(tokens × margin.per_mtok / 1_000_000)
//! total       = provider_cost + network_fee + margin
//! ```
//!
//! Rounding down is in the favour of the builder, the party whose balance
//! is charged: it never pays a fraction of a nano-USD it did not owe. The
//! provider's share is never rounded (it is an exact product), and the
//! margin's rounding is neutral for the builder (it is charged and paid
//! back the same amount). Because the total is the exact sum per job,
//! money is conserved over any set of jobs: the sum of totals equals the
//! sum of provider costs plus the sum of fees plus the sum of margins, and
//! settlement ([`crate::statement`]) checks exactly that.
//!
//! Intermediates are `u128` (a u64 × u32 or u64 × u64 product always fits),
//! so the only failure is a component or a total above `u64::MAX`
//! nano-USD, which is [`MarketError::Overflow`].

use serde::{Deserialize, Serialize};
use sharenet_proto::{NanoUsd, Receipt, job_cost};

use crate::MarketError;

/// Basis points in one whole (100%).
pub const BPS_DENOMINATOR: u128 = 10_000;
/// Tokens per unit of [`Margin::per_mtok`].
pub const TOKENS_PER_MTOK: u128 = 1_000_000;

/// A builder's margin on one app: a share of the provider cost plus a fixed
/// surcharge per million tokens. Both default to zero (the builder charges
/// its customers exactly what it is charged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Margin {
    /// Basis points of the provider cost (250 = 2.5%).
    pub percent_bps: u32,
    /// nano-USD per 1,000,000 tokens (input + output).
    pub per_mtok: NanoUsd,
}

/// Who counted the tokens a job is charged for: the coordinator itself (a
/// catalogued text model, whose tokenizer it holds: the receipt had to
/// carry exactly its count) or the node alone (an uncatalogued model the
/// operator allowed, or an embeddings job: the node's word, bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountedBy {
    Coordinator,
    Node,
}

impl CountedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Node => "node",
        }
    }

    /// Several jobs summed (an `n`-choice fan-out): the coordinator's count
    /// only if it counted every one of them.
    pub fn all(of: impl IntoIterator<Item = Self>) -> Self {
        if of.into_iter().all(|b| b == Self::Coordinator) {
            Self::Coordinator
        } else {
            Self::Node
        }
    }
}

/// What one job costs the builder, split by who gets it. Only [`charge`]
/// and [`hold`] make one that is guaranteed to balance; [`Charge::balances`]
/// checks one that came from elsewhere (a ledger, a peer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Charge {
    /// To the provider (the receipt's amount).
    pub provider_cost: NanoUsd,
    /// To the network.
    pub network_fee: NanoUsd,
    /// To the builder (its payout).
    pub margin: NanoUsd,
    /// What the builder's balance is charged: the exact sum of the above.
    pub total: NanoUsd,
}

impl Charge {
    /// Whether `total` is exactly `provider_cost + network_fee + margin`
    /// (without overflow).
    pub fn balances(&self) -> bool {
        self.provider_cost
            .checked_add(self.network_fee)
            .and_then(|s| s.checked_add(self.margin))
            == Some(self.total)
    }
}

/// The charge for a job whose provider cost is `provider_cost` and which
/// used `tokens` tokens (input + output). See the module docs for the
/// rounding rule.
pub fn charge(
    provider_cost: NanoUsd,
    tokens: u64,
    network_fee_bps: u32,
    margin: &Margin,
) -> Result<Charge, MarketError> {
    let cost = u128::from(provider_cost);
    let network_fee = cost * u128::from(network_fee_bps) / BPS_DENOMINATOR;
    let share = cost * u128::from(margin.percent_bps) / BPS_DENOMINATOR;
    let surcharge = u128::from(tokens) * u128::from(margin.per_mtok) / TOKENS_PER_MTOK;
    // Each term is below 2^64 * 2^64 / 10^4, so these sums cannot overflow u128.
    let margin_total = share + surcharge;
    let total = cost + network_fee + margin_total;
    Ok(Charge {
        provider_cost,
        network_fee: to_u64(network_fee, "network fee")?,
        margin: to_u64(margin_total, "builder margin")?,
        total: to_u64(total, "total charge")?,
    })
}

/// The charge for the job a receipt describes: its `amount` is the provider
/// cost, its input + output tokens are the margin's token count.
pub fn charge_receipt(
    receipt: &Receipt,
    network_fee_bps: u32,
    margin: &Margin,
) -> Result<Charge, MarketError> {
    let tokens = u64::from(receipt.input_tokens) + u64::from(receipt.output_tokens);
    charge(receipt.amount, tokens, network_fee_bps, margin)
}

/// The most a job may use and the highest prices the router may pick for
/// it, known before dispatch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBounds {
    /// The prompt's token count (or an upper bound of it).
    pub max_input_tokens: u32,
    /// `max_tokens` of the request (or the model's limit).
    pub max_output_tokens: u32,
    /// The highest `price_in` among the candidate nodes.
    pub max_price_in: NanoUsd,
    /// The highest `price_out` among the candidate nodes.
    pub max_price_out: NanoUsd,
}

/// The worst-case charge for a job, to hold on the builder's balance before
/// dispatch so concurrent requests can never spend more than it has.
///
/// [`charge`] is non-decreasing in the provider cost and in the token
/// count, and the provider cost is non-decreasing in tokens and prices, so
/// every component of the hold is at least the job's actual charge whenever
/// its tokens and prices are within `bounds` (a property test checks it).
pub fn hold(
    bounds: &JobBounds,
    network_fee_bps: u32,
    margin: &Margin,
) -> Result<Charge, MarketError> {
    let provider_cost = job_cost(
        bounds.max_input_tokens,
        bounds.max_output_tokens,
        bounds.max_price_in,
        bounds.max_price_out,
    )
    .map_err(|_| MarketError::Overflow("provider cost of the hold"))?;
    let tokens = u64::from(bounds.max_input_tokens) + u64::from(bounds.max_output_tokens);
    charge(provider_cost, tokens, network_fee_bps, margin)
}

fn to_u64(v: u128, what: &'static str) -> Result<u64, MarketError> {
    u64::try_from(v).map_err(|_| MarketError::Overflow(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summed_choices_are_the_coordinators_count_only_if_all_were() {
        use CountedBy::{Coordinator, Node};
        assert_eq!(CountedBy::all([Coordinator, Coordinator]), Coordinator);
        assert_eq!(CountedBy::all([Coordinator, Node]), Node);
        assert_eq!(CountedBy::all([Node]), Node);
        assert_eq!(
            serde_json::to_string(&[Coordinator, Node]).unwrap(),
            r#"["coordinator","node"]"#
        );
    }
    use proptest::prelude::*;

    #[test]
    fn worked_example() {
        // 1,234,567 nano-USD of provider cost, 3,000 tokens, a 5% network
        // fee, a 12.5% margin plus 2,000 nano-USD per million tokens.
        let margin = Margin {
            percent_bps: 1_250,
            per_mtok: 2_000,
        };
        let c = charge(1_234_567, 3_000, 500, &margin).unwrap();
        assert_eq!(c.network_fee, 61_728); // 61,728.35 rounded down
        assert_eq!(c.margin, 154_320 + 6); // 154,320.875 + 6 rounded down
        assert_eq!(c.total, 1_234_567 + 61_728 + 154_326);
        assert!(c.balances());
    }

    #[test]
    fn zero_fee_and_margin_charge_the_provider_cost() {
        let c = charge(999, 10, 0, &Margin::default()).unwrap();
        assert_eq!(
            c,
            Charge {
                provider_cost: 999,
                network_fee: 0,
                margin: 0,
                total: 999
            }
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(
            charge(u64::MAX, 0, 1, &Margin::default()),
            Err(MarketError::Overflow("total charge"))
        );
        assert_eq!(
            charge(u64::MAX, 0, 20_000, &Margin::default()),
            Err(MarketError::Overflow("network fee"))
        );
        let big = Margin {
            percent_bps: 0,
            per_mtok: u64::MAX,
        };
        assert_eq!(
            charge(0, 2_000_000, 0, &big),
            Err(MarketError::Overflow("builder margin"))
        );
        let bounds = JobBounds {
            max_input_tokens: u32::MAX,
            max_output_tokens: u32::MAX,
            max_price_in: u64::MAX / 2,
            max_price_out: 1,
        };
        assert!(hold(&bounds, 0, &Margin::default()).is_err());
        // The largest representable charge still works.
        assert_eq!(
            charge(u64::MAX, 0, 0, &Margin::default()).unwrap().total,
            u64::MAX
        );
    }

    #[test]
    fn charge_receipt_uses_amount_and_all_tokens() {
        let r = Receipt {
            job_id: sharenet_proto::JobId([1; 16]),
            node: [0; 32],
            coordinator: [0; 32],
            model: "m".into(),
            input_tokens: 600_000,
            output_tokens: 400_000,
            price_in: 1,
            price_out: 2,
            amount: 600_000 + 800_000,
            started_at_ms: 0,
            finished_at_ms: 0,
            request_digest: [0; 32],
            response_digest: [0; 32],
        };
        let m = Margin {
            percent_bps: 0,
            per_mtok: 7,
        };
        let c = charge_receipt(&r, 100, &m).unwrap();
        assert_eq!(c.provider_cost, 1_400_000);
        assert_eq!(c.network_fee, 14_000);
        assert_eq!(c.margin, 7);
    }

    fn margin() -> impl Strategy<Value = Margin> {
        (0u32..=100_000, 0u64..=1_000_000_000_000).prop_map(|(percent_bps, per_mtok)| Margin {
            percent_bps,
            per_mtok,
        })
    }

    /// Checks the floors against their exact rational definitions.
    fn assert_floors(c: &Charge, tokens: u64, fee_bps: u32, m: &Margin) {
        let cost = u128::from(c.provider_cost);
        let fee = u128::from(c.network_fee);
        // fee = floor(cost * bps / 10^4)  <=>  fee*10^4 <= cost*bps < (fee+1)*10^4
        assert!(fee * 10_000 <= cost * u128::from(fee_bps));
        assert!(cost * u128::from(fee_bps) < (fee + 1) * 10_000);
        let share = cost * u128::from(m.percent_bps) / 10_000;
        let surcharge = u128::from(tokens) * u128::from(m.per_mtok) / 1_000_000;
        assert_eq!(u128::from(c.margin), share + surcharge);
        // Never more than the unrounded amounts.
        assert!(
            u128::from(c.margin) * 10_000 * 1_000_000
                <= cost * u128::from(m.percent_bps) * 1_000_000
                    + u128::from(tokens) * u128::from(m.per_mtok) * 10_000
        );
        assert!(c.balances());
    }

    proptest! {
        #[test]
        fn total_is_the_exact_sum_and_floors_hold(
            cost in 0u64..=1_000_000_000_000_000,
            tokens in 0u64..=10_000_000_000,
            fee_bps in 0u32..=100_000,
            m in margin(),
        ) {
            let c = charge(cost, tokens, fee_bps, &m).unwrap();
            prop_assert_eq!(u128::from(c.total),
                u128::from(c.provider_cost) + u128::from(c.network_fee) + u128::from(c.margin));
            prop_assert_eq!(c.provider_cost, cost);
            assert_floors(&c, tokens, fee_bps, &m);
        }

        #[test]
        fn any_input_is_ok_exactly_when_it_fits(
            cost in any::<u64>(),
            tokens in any::<u64>(),
            fee_bps in any::<u32>(),
            percent_bps in any::<u32>(),
            per_mtok in any::<u64>(),
        ) {
            let m = Margin { percent_bps, per_mtok };
            let c128 = u128::from(cost);
            let exact_total = c128
                + c128 * u128::from(fee_bps) / 10_000
                + c128 * u128::from(percent_bps) / 10_000
                + u128::from(tokens) * u128::from(per_mtok) / 1_000_000;
            match charge(cost, tokens, fee_bps, &m) {
                Ok(c) => {
                    prop_assert_eq!(u128::from(c.total), exact_total);
                    assert_floors(&c, tokens, fee_bps, &m);
                }
                Err(MarketError::Overflow(_)) => prop_assert!(exact_total > u128::from(u64::MAX)),
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        #[test]
        fn money_is_conserved_over_a_stream_of_jobs(
            jobs in proptest::collection::vec(
                (0u64..=10_000_000_000, 0u64..=2_000_000, margin()), 0..200),
            fee_bps in 0u32..=5_000,
        ) {
            let (mut total, mut provider, mut fee, mut margin_sum) = (0u128, 0u128, 0u128, 0u128);
            for (cost, tokens, m) in &jobs {
                let c = charge(*cost, *tokens, fee_bps, m).unwrap();
                total += u128::from(c.total);
                provider += u128::from(c.provider_cost);
                fee += u128::from(c.network_fee);
                margin_sum += u128::from(c.margin);
            }
            prop_assert_eq!(total, provider + fee + margin_sum);
            prop_assert_eq!(provider, jobs.iter().map(|j| u128::from(j.0)).sum::<u128>());
        }

        #[test]
        fn hold_covers_every_job_within_its_bounds(
            max_in in 0u32..=200_000,
            max_out in 0u32..=200_000,
            max_price_in in 0u64..=1_000_000,
            max_price_out in 0u64..=1_000_000,
            fracs in (0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0),
            fee_bps in 0u32..=10_000,
            m in margin(),
        ) {
            // Test-only: floats pick the actual values below the maxima.
            let pick = |max: u64, f: f64| ((max as f64) * f).floor() as u64;
            let bounds = JobBounds { max_input_tokens: max_in, max_output_tokens: max_out,
                max_price_in, max_price_out };
            let input = pick(u64::from(max_in), fracs.0) as u32;
            let output = pick(u64::from(max_out), fracs.1) as u32;
            let price_in = pick(max_price_in, fracs.2);
            let price_out = pick(max_price_out, fracs.3);
            let held = hold(&bounds, fee_bps, &m).unwrap();
            let cost = job_cost(input, output, price_in, price_out).unwrap();
            let actual = charge(cost, u64::from(input) + u64::from(output), fee_bps, &m).unwrap();
            prop_assert!(held.provider_cost >= actual.provider_cost);
            prop_assert!(held.network_fee >= actual.network_fee);
            prop_assert!(held.margin >= actual.margin);
            prop_assert!(held.total >= actual.total);
            prop_assert!(held.balances());
        }
    }
}
