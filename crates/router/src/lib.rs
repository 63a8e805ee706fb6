//! Node selection for sharenet, as a pure function.
//!
//! Given the live offers for a model, rank them: cheapest expected cost for
//! this request first, then the emptier queue, then the node key (so the
//! order is total and deterministic). Richer routing (latency, trust,
//! preferences) grows here.
//!
//! Architecture invariant: no sockets, clocks, disks or randomness inside;
//! everything the decision depends on is an argument, so the coordinator and
//! the simulator run the same code and tests can drive it exactly.

use sharenet_proto::{NanoUsd, PublicKey};

/// One node that serves the requested model, as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: PublicKey,
    pub price_in: NanoUsd,
    pub price_out: NanoUsd,
    pub queue_depth: u32,
    pub max_concurrency: u32,
}

impl Candidate {
    /// Worst-case cost of a request with `input_tokens` of prompt and up to
    /// `max_output` generated tokens. Saturates instead of overflowing.
    pub fn expected_cost(&self, input_tokens: u32, max_output: u32) -> NanoUsd {
        u64::from(input_tokens)
            .saturating_mul(self.price_in)
            .saturating_add(u64::from(max_output).saturating_mul(self.price_out))
    }
}

/// Orders candidates best first: expected cost, then queue depth, then key.
pub fn rank_cheapest(candidates: &mut [Candidate], input_tokens: u32, max_output: u32) {
    candidates.sort_by(|a, b| {
        a.expected_cost(input_tokens, max_output)
            .cmp(&b.expected_cost(input_tokens, max_output))
            .then(a.queue_depth.cmp(&b.queue_depth))
            .then(a.node.cmp(&b.node))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: u8, price_in: u64, price_out: u64, queue: u32) -> Candidate {
        Candidate {
            node: [node; 32],
            price_in,
            price_out,
            queue_depth: queue,
            max_concurrency: 4,
        }
    }

    #[test]
    fn cheapest_first_for_this_request_shape() {
        // Node 1 is cheap on output, node 2 cheap on input.
        let mut v = vec![c(1, 100, 10, 0), c(2, 10, 100, 0)];
        rank_cheapest(&mut v, 1000, 10);
        assert_eq!(v[0].node, [2; 32], "long prompt: input price dominates");
        rank_cheapest(&mut v, 10, 1000);
        assert_eq!(
            v[0].node, [1; 32],
            "long completion: output price dominates"
        );
    }

    #[test]
    fn ties_break_on_queue_then_key() {
        let mut v = vec![c(3, 1, 1, 2), c(2, 1, 1, 0), c(1, 1, 1, 2)];
        rank_cheapest(&mut v, 10, 10);
        let order: Vec<u8> = v.iter().map(|c| c.node[0]).collect();
        assert_eq!(order, vec![2, 1, 3]);
    }

    #[test]
    fn cost_saturates() {
        assert_eq!(c(1, u64::MAX, u64::MAX, 0).expected_cost(2, 2), u64::MAX);
    }
}
