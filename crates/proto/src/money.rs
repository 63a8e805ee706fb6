//! Money is an integer number of nano-USD (1e-9 US dollars). Prices are
//! nano-USD per token, so a job's cost is an exact integer product and no
//! rounding happens anywhere on the provider side.

use crate::ProtoError;

/// An amount of money in nano-USD (10^-9 USD). `u64` holds up to about
/// 18.4 billion USD.
pub type NanoUsd = u64;

/// What a job costs at the given per-token prices, exactly.
pub fn job_cost(
    input_tokens: u32,
    output_tokens: u32,
    price_in: NanoUsd,
    price_out: NanoUsd,
) -> Result<NanoUsd, ProtoError> {
    let input = u64::from(input_tokens)
        .checked_mul(price_in)
        .ok_or(ProtoError::Overflow("input cost"))?;
    let output = u64::from(output_tokens)
        .checked_mul(price_out)
        .ok_or(ProtoError::Overflow("output cost"))?;
    input
        .checked_add(output)
        .ok_or(ProtoError::Overflow("job cost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_exact_and_overflow_is_an_error() {
        assert_eq!(job_cost(10, 5, 100, 300), Ok(10 * 100 + 5 * 300));
        assert_eq!(job_cost(0, 0, u64::MAX, u64::MAX), Ok(0));
        assert!(job_cost(2, 0, u64::MAX, 0).is_err());
        assert!(job_cost(1, 1, u64::MAX, 1).is_err());
    }
}
