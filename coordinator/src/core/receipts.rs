//! Checking a node's receipt against what the coordinator itself saw.

use sharenet_proto::{JobId, NanoUsd, ProtoError, PublicKey, SignedReceipt};

/// What the receipt must say, from the coordinator's own records.
#[derive(Debug, Clone)]
pub struct Expected {
    pub job_id: JobId,
    /// The node we opened the stream to.
    pub node: PublicKey,
    /// Ourselves.
    pub coordinator: PublicKey,
    pub model: String,
    /// Prices in the advert we chose the node by.
    pub price_in: NanoUsd,
    pub price_out: NanoUsd,
    /// Tokens the node's deltas added up to.
    pub streamed_tokens: u32,
    /// Prompt tokens the node reported in its final usage.
    pub reported_input_tokens: u32,
    pub request_digest: [u8; 32],
    /// SHA-256 of the text we streamed to the builder.
    pub response_digest: [u8; 32],
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRejection {
    #[error("receipt does not decode or verify: {0}")]
    Invalid(ProtoError),
    #[error("receipt signed by a node other than the one that served the job")]
    WrongSigner,
    #[error("receipt is for another job")]
    WrongJob,
    #[error("receipt is made out to another coordinator")]
    WrongCoordinator,
    #[error("receipt names model {0:?}")]
    WrongModel(String),
    #[error("receipt prices {got_in}/{got_out} are above the advert's {want_in}/{want_out}")]
    WrongPrice {
        got_in: NanoUsd,
        got_out: NanoUsd,
        want_in: NanoUsd,
        want_out: NanoUsd,
    },
    #[error("receipt claims {claimed} output tokens but only {streamed} were streamed")]
    OutputTokens { claimed: u32, streamed: u32 },
    #[error("receipt claims {claimed} input tokens but the node reported {reported}")]
    InputTokens { claimed: u32, reported: u32 },
    #[error("receipt claims {claimed} input tokens but the coordinator counted {counted}")]
    InputCount { claimed: u32, counted: u32 },
    #[error(
        "receipt claims {claimed} output tokens but the coordinator counted {counted} from the ids streamed"
    )]
    OutputCount { claimed: u32, counted: u32 },
    #[error("receipt claims {claimed} input tokens, more than the job's bound of {bound}")]
    InputTokensOverBound { claimed: u32, bound: u64 },
    #[error("receipt request digest does not match the request sent")]
    RequestDigest,
    #[error("receipt response digest does not match the text streamed")]
    ResponseDigest,
}

impl ReceiptRejection {
    /// The `reason` label of `sharenet_receipts_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::WrongSigner => "wrong_signer",
            Self::WrongJob => "wrong_job",
            Self::WrongCoordinator => "wrong_coordinator",
            Self::WrongModel(_) => "wrong_model",
            Self::WrongPrice { .. } => "over_price",
            Self::OutputTokens { .. } | Self::OutputCount { .. } => "output_tokens",
            Self::InputTokens { .. }
            | Self::InputTokensOverBound { .. }
            | Self::InputCount { .. } => "input_tokens",
            Self::RequestDigest => "request_digest",
            Self::ResponseDigest => "response_digest",
        }
    }
}

/// Decodes a node-signed receipt (checking its signature and arithmetic)
/// and checks every field against `expected`.
pub fn check_receipt(bytes: &[u8], expected: &Expected) -> Result<SignedReceipt, ReceiptRejection> {
    let signed = SignedReceipt::from_bytes(bytes).map_err(ReceiptRejection::Invalid)?;
    let r = signed.receipt();
    if r.node != expected.node {
        return Err(ReceiptRejection::WrongSigner);
    }
    if r.job_id != expected.job_id {
        return Err(ReceiptRejection::WrongJob);
    }
    if r.coordinator != expected.coordinator {
        return Err(ReceiptRejection::WrongCoordinator);
    }
    if r.model != expected.model {
        return Err(ReceiptRejection::WrongModel(r.model.clone()));
    }
    // A node may charge less than it advertised (it does for a while after
    // a price change, while coordinators may still route on its old
    // advert), never more: the hold was priced on the advert.
    if r.price_in > expected.price_in || r.price_out > expected.price_out {
        return Err(ReceiptRejection::WrongPrice {
            got_in: r.price_in,
            got_out: r.price_out,
            want_in: expected.price_in,
            want_out: expected.price_out,
        });
    }
    if r.output_tokens != expected.streamed_tokens {
        return Err(ReceiptRejection::OutputTokens {
            claimed: r.output_tokens,
            streamed: expected.streamed_tokens,
        });
    }
    if r.input_tokens != expected.reported_input_tokens {
        return Err(ReceiptRejection::InputTokens {
            claimed: r.input_tokens,
            reported: expected.reported_input_tokens,
        });
    }
    if r.request_digest != expected.request_digest {
        return Err(ReceiptRejection::RequestDigest);
    }
    if r.response_digest != expected.response_digest {
        return Err(ReceiptRejection::ResponseDigest);
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharenet_proto::{Receipt, SigningKey, public_key_of, sha256};

    fn node() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn expected() -> Expected {
        Expected {
            job_id: JobId([7; 16]),
            node: public_key_of(&node()),
            coordinator: [2; 32],
            model: "m".into(),
            price_in: 10,
            price_out: 20,
            streamed_tokens: 5,
            reported_input_tokens: 3,
            request_digest: sha256(b"req"),
            response_digest: sha256(b"hello"),
        }
    }

    fn receipt() -> Receipt {
        let e = expected();
        Receipt {
            job_id: e.job_id,
            node: e.node,
            coordinator: e.coordinator,
            model: e.model,
            input_tokens: 3,
            output_tokens: 5,
            price_in: 10,
            price_out: 20,
            amount: 3 * 10 + 5 * 20,
            started_at_ms: 1,
            finished_at_ms: 2,
            request_digest: e.request_digest,
            response_digest: e.response_digest,
        }
    }

    fn signed(r: Receipt, key: &SigningKey) -> Vec<u8> {
        SignedReceipt::sign(r, key).unwrap().to_bytes()
    }

    #[test]
    fn honest_receipt_passes() {
        assert!(check_receipt(&signed(receipt(), &node()), &expected()).is_ok());
    }

    #[test]
    fn each_lie_is_caught() {
        let e = expected();
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(
            check_receipt(&signed(receipt(), &other), &e).unwrap_err(),
            ReceiptRejection::WrongSigner
        );
        let mut bytes = signed(receipt(), &node());
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        assert!(matches!(
            check_receipt(&bytes, &e),
            Err(ReceiptRejection::Invalid(ProtoError::BadSignature(_)))
        ));
        let inflated = Receipt {
            output_tokens: 50,
            amount: 3 * 10 + 50 * 20,
            ..receipt()
        };
        assert_eq!(
            check_receipt(&signed(inflated, &node()), &e).unwrap_err(),
            ReceiptRejection::OutputTokens {
                claimed: 50,
                streamed: 5
            }
        );
        let pricier = Receipt {
            price_out: 21,
            amount: 3 * 10 + 5 * 21,
            ..receipt()
        };
        assert!(matches!(
            check_receipt(&signed(pricier, &node()), &e).unwrap_err(),
            ReceiptRejection::WrongPrice { .. }
        ));
        // Cheaper than advertised is the node's own loss: accepted.
        let cheaper = Receipt {
            price_out: 19,
            amount: 3 * 10 + 5 * 19,
            ..receipt()
        };
        assert!(check_receipt(&signed(cheaper, &node()), &e).is_ok());
        let other_text = Receipt {
            response_digest: sha256(b"other"),
            ..receipt()
        };
        assert_eq!(
            check_receipt(&signed(other_text, &node()), &e).unwrap_err(),
            ReceiptRejection::ResponseDigest
        );
        let other_job = Receipt {
            job_id: JobId([8; 16]),
            ..receipt()
        };
        assert_eq!(
            check_receipt(&signed(other_job, &node()), &e).unwrap_err(),
            ReceiptRejection::WrongJob
        );
    }
}
