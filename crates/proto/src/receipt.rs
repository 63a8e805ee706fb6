//! Usage receipts: the node signs what it served; the coordinator
//! countersigns after checking it against what it saw.

use serde::{Deserialize, Serialize};

use crate::canon::{Reader, Writer};
use crate::keys::{sign, verify};
use crate::{JobId, NanoUsd, ProtoError, PublicKey, SigningKey, job_cost, public_key_of};

const TAG: &[u8] = b"sharenet/receipt\0";
const COUNTER_TAG: &[u8] = b"sharenet/countersign\0";
const MAX_MODEL_ID: usize = 128;

/// What one job used and cost. All amounts are nano-USD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub job_id: JobId,
    /// The node that served the job (signer of the receipt).
    #[serde(with = "hex::serde")]
    pub node: PublicKey,
    /// The coordinator the job was served for (the countersigner).
    #[serde(with = "hex::serde")]
    pub coordinator: PublicKey,
    pub model: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub price_in: NanoUsd,
    pub price_out: NanoUsd,
    /// `input_tokens * price_in + output_tokens * price_out`, exactly.
    pub amount: NanoUsd,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// SHA-256 of the job request bytes as received.
    #[serde(with = "hex::serde")]
    pub request_digest: [u8; 32],
    /// SHA-256 of the generated text (UTF-8) as streamed.
    #[serde(with = "hex::serde")]
    pub response_digest: [u8; 32],
}

impl Receipt {
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(TAG);
        w.raw(&self.job_id.0);
        w.raw(&self.node);
        w.raw(&self.coordinator);
        w.str(&self.model);
        w.u32(self.input_tokens);
        w.u32(self.output_tokens);
        w.u64(self.price_in);
        w.u64(self.price_out);
        w.u64(self.amount);
        w.u64(self.started_at_ms);
        w.u64(self.finished_at_ms);
        w.raw(&self.request_digest);
        w.raw(&self.response_digest);
        w.finish()
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        Ok(Self {
            job_id: JobId(r.array::<16>("receipt job id")?),
            node: r.array::<32>("receipt node key")?,
            coordinator: r.array::<32>("receipt coordinator key")?,
            model: r.str("receipt model", MAX_MODEL_ID)?,
            input_tokens: r.u32("input_tokens")?,
            output_tokens: r.u32("output_tokens")?,
            price_in: r.u64("price_in")?,
            price_out: r.u64("price_out")?,
            amount: r.u64("amount")?,
            started_at_ms: r.u64("started_at_ms")?,
            finished_at_ms: r.u64("finished_at_ms")?,
            request_digest: r.array::<32>("request digest")?,
            response_digest: r.array::<32>("response digest")?,
        })
    }

    /// Structural checks every receipt must pass, whoever signed it.
    fn validate(&self) -> Result<(), ProtoError> {
        if self.model.len() > MAX_MODEL_ID {
            return Err(ProtoError::TooLong {
                field: "receipt model",
                len: self.model.len(),
                max: MAX_MODEL_ID,
            });
        }
        let expected = job_cost(
            self.input_tokens,
            self.output_tokens,
            self.price_in,
            self.price_out,
        )?;
        if expected != self.amount {
            return Err(ProtoError::Invalid {
                field: "receipt amount",
                reason: format!("{} != tokens x prices = {expected}", self.amount),
            });
        }
        if self.finished_at_ms < self.started_at_ms {
            return Err(ProtoError::Invalid {
                field: "receipt timestamps",
                reason: "finished before it started".into(),
            });
        }
        Ok(())
    }
}

/// A receipt signed by the node that served the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    receipt: Receipt,
    node_signature: [u8; 64],
}

impl SignedReceipt {
    /// Signs as the node; `receipt.node` is set to `key`'s public key.
    pub fn sign(mut receipt: Receipt, key: &SigningKey) -> Result<Self, ProtoError> {
        receipt.node = public_key_of(key);
        receipt.validate()?;
        let node_signature = sign(key, &receipt.canonical_bytes());
        Ok(Self {
            receipt,
            node_signature,
        })
    }

    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    pub fn node_signature(&self) -> &[u8; 64] {
        &self.node_signature
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.receipt.canonical_bytes();
        out.extend_from_slice(&self.node_signature);
        out
    }

    fn read(bytes: &[u8], r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let receipt = Receipt::read(r)?;
        let signed_len = r.consumed_from(bytes);
        let node_signature = r.array::<64>("receipt node signature")?;
        receipt.validate()?;
        verify(
            &receipt.node,
            &bytes[..signed_len],
            &node_signature,
            "receipt",
        )?;
        Ok(Self {
            receipt,
            node_signature,
        })
    }

    /// Decodes and verifies the node's signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(bytes, TAG, "receipt")?;
        let signed = Self::read(bytes, &mut r)?;
        if r.remaining() != 0 {
            return Err(ProtoError::TrailingBytes(r.remaining()));
        }
        Ok(signed)
    }
}

/// A node-signed receipt that the coordinator checked and countersigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountersignedReceipt {
    signed: SignedReceipt,
    coordinator_signature: [u8; 64],
}

impl CountersignedReceipt {
    /// Countersigns as the coordinator named in the receipt. Refuses a
    /// receipt made out to another coordinator.
    pub fn countersign(signed: SignedReceipt, key: &SigningKey) -> Result<Self, ProtoError> {
        if signed.receipt.coordinator != public_key_of(key) {
            return Err(ProtoError::Invalid {
                field: "receipt coordinator",
                reason: "made out to another coordinator".into(),
            });
        }
        let coordinator_signature = sign(key, &Self::countersigned_bytes(&signed));
        Ok(Self {
            signed,
            coordinator_signature,
        })
    }

    fn countersigned_bytes(signed: &SignedReceipt) -> Vec<u8> {
        let mut w = Writer::new(COUNTER_TAG);
        w.raw(&signed.to_bytes());
        w.finish()
    }

    pub fn receipt(&self) -> &Receipt {
        &self.signed.receipt
    }

    pub fn signed(&self) -> &SignedReceipt {
        &self.signed
    }

    pub fn coordinator_signature(&self) -> &[u8; 64] {
        &self.coordinator_signature
    }

    /// Countersign tag, version, the node-signed receipt, then the
    /// coordinator's signature over everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Self::countersigned_bytes(&self.signed);
        out.extend_from_slice(&self.coordinator_signature);
        out
    }

    /// Decodes and verifies both signatures.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let outer = Reader::new(bytes, COUNTER_TAG, "countersigned receipt")?;
        let inner_start = outer.consumed_from(bytes);
        let inner_bytes = &bytes[inner_start..];
        let mut r = Reader::new(inner_bytes, TAG, "receipt")?;
        let signed = SignedReceipt::read(inner_bytes, &mut r)?;
        let signed_len = inner_start + r.consumed_from(inner_bytes);
        let coordinator_signature = r.array::<64>("coordinator signature")?;
        if r.remaining() != 0 {
            return Err(ProtoError::TrailingBytes(r.remaining()));
        }
        verify(
            &signed.receipt.coordinator,
            &bytes[..signed_len],
            &coordinator_signature,
            "countersignature",
        )?;
        Ok(Self {
            signed,
            coordinator_signature,
        })
    }

    /// The countersignature of a receipt the caller signed itself (a node
    /// taking back its own receipt): `bytes` must be exactly `signed`
    /// countersigned, byte for byte, and only the coordinator's signature
    /// is checked (one verification instead of two).
    pub fn countersignature_of(signed: &SignedReceipt, bytes: &[u8]) -> Result<Self, ProtoError> {
        let expected = Self::countersigned_bytes(signed);
        let (body, signature) = bytes
            .split_at_checked(expected.len())
            .filter(|(body, _)| *body == expected.as_slice())
            .ok_or_else(|| ProtoError::Invalid {
                field: "countersigned receipt",
                reason: "covers a different receipt".into(),
            })?;
        let coordinator_signature: [u8; 64] =
            signature.try_into().map_err(|_| ProtoError::Invalid {
                field: "coordinator signature",
                reason: format!("{} bytes, not 64", signature.len()),
            })?;
        verify(
            &signed.receipt.coordinator,
            body,
            &coordinator_signature,
            "countersignature",
        )?;
        Ok(Self {
            signed: signed.clone(),
            coordinator_signature,
        })
    }

    /// Decodes and structurally checks (amount, timestamps, lengths, no
    /// trailing bytes) WITHOUT checking either signature. Only for bytes
    /// whose integrity is established another way: a coordinator's own
    /// ledger entries carry a MAC under a key derived from its secret key,
    /// written after both signatures were verified. Anything from the
    /// network goes through [`CountersignedReceipt::from_bytes`].
    pub fn from_trusted_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        Ok(UnverifiedCountersigned::parse(bytes)?.into_verified())
    }
}

/// A countersigned receipt decoded and structurally checked (amount,
/// timestamps, lengths, no trailing bytes) whose two signatures have NOT
/// been checked yet. Only the batch verifier (`batch.rs`) makes one, and it
/// turns one into a [`CountersignedReceipt`] only after both signatures
/// verified, so the "a value in memory has valid signatures" rule holds.
pub(crate) struct UnverifiedCountersigned<'a> {
    pub(crate) receipt: Receipt,
    pub(crate) node_signature: [u8; 64],
    pub(crate) coordinator_signature: [u8; 64],
    /// The bytes the node signed: the receipt's canonical bytes.
    pub(crate) node_message: &'a [u8],
    /// The bytes the coordinator signed: everything before its signature.
    pub(crate) coordinator_message: &'a [u8],
}

impl<'a> UnverifiedCountersigned<'a> {
    /// Decodes like [`CountersignedReceipt::from_bytes`] without the two
    /// signature checks.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let outer = Reader::new(bytes, COUNTER_TAG, "countersigned receipt")?;
        let inner_start = outer.consumed_from(bytes);
        let inner_bytes = &bytes[inner_start..];
        let mut r = Reader::new(inner_bytes, TAG, "receipt")?;
        let receipt = Receipt::read(&mut r)?;
        let node_len = r.consumed_from(inner_bytes);
        let node_signature = r.array::<64>("receipt node signature")?;
        receipt.validate()?;
        let signed_len = inner_start + r.consumed_from(inner_bytes);
        let coordinator_signature = r.array::<64>("coordinator signature")?;
        if r.remaining() != 0 {
            return Err(ProtoError::TrailingBytes(r.remaining()));
        }
        Ok(Self {
            receipt,
            node_signature,
            coordinator_signature,
            node_message: &inner_bytes[..node_len],
            coordinator_message: &bytes[..signed_len],
        })
    }

    /// Only for the batch verifiers: after both signatures verified, or
    /// (our own ledger) after our countersignature over the node-signed
    /// bytes verified.
    pub(crate) fn into_verified(self) -> CountersignedReceipt {
        CountersignedReceipt {
            signed: SignedReceipt {
                receipt: self.receipt,
                node_signature: self.node_signature,
            },
            coordinator_signature: self.coordinator_signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }
    fn coord() -> SigningKey {
        SigningKey::from_bytes(&[2; 32])
    }

    fn receipt() -> Receipt {
        Receipt {
            job_id: JobId([9; 16]),
            node: [0; 32],
            coordinator: public_key_of(&coord()),
            model: "tiny-llama".into(),
            input_tokens: 12,
            output_tokens: 30,
            price_in: 100,
            price_out: 300,
            amount: 12 * 100 + 30 * 300,
            started_at_ms: 5,
            finished_at_ms: 9,
            request_digest: [3; 32],
            response_digest: [4; 32],
        }
    }

    #[test]
    fn round_trip_node_signed() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        let back = SignedReceipt::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.receipt().node, public_key_of(&node()));
    }

    #[test]
    fn round_trip_countersigned() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        let counter = CountersignedReceipt::countersign(signed, &coord()).unwrap();
        let back = CountersignedReceipt::from_bytes(&counter.to_bytes()).unwrap();
        assert_eq!(back, counter);
    }

    #[test]
    fn every_changed_byte_fails() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        let bytes = signed.to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            assert!(SignedReceipt::from_bytes(&bad).is_err(), "byte {i}");
        }
        let bytes = CountersignedReceipt::countersign(signed, &coord())
            .unwrap()
            .to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x80;
            assert!(CountersignedReceipt::from_bytes(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn wrong_amount_is_refused_at_signing_and_decoding() {
        let mut r = receipt();
        r.amount += 1;
        assert!(SignedReceipt::sign(r, &node()).is_err());
    }

    #[test]
    fn countersigning_someone_elses_receipt_is_refused() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        assert!(CountersignedReceipt::countersign(signed, &node()).is_err());
    }

    #[test]
    fn node_signed_bytes_are_not_a_countersigned_receipt() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        assert!(CountersignedReceipt::from_bytes(&signed.to_bytes()).is_err());
    }

    #[test]
    fn a_node_takes_back_only_a_valid_countersignature_of_its_own_receipt() {
        let signed = SignedReceipt::sign(receipt(), &node()).unwrap();
        let good = CountersignedReceipt::countersign(signed.clone(), &coord()).unwrap();
        let bytes = good.to_bytes();
        assert_eq!(
            CountersignedReceipt::countersignature_of(&signed, &bytes).unwrap(),
            good
        );
        // Any changed byte (the receipt or the signature), a short or long
        // frame, or another receipt's countersignature: refused.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                CountersignedReceipt::countersignature_of(&signed, &bad).is_err(),
                "byte {i}"
            );
        }
        assert!(
            CountersignedReceipt::countersignature_of(&signed, &bytes[..bytes.len() - 1]).is_err()
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(CountersignedReceipt::countersignature_of(&signed, &long).is_err());
        let mut other = receipt();
        other.output_tokens += 1;
        other.amount += other.price_out;
        let other = SignedReceipt::sign(other, &node()).unwrap();
        assert!(CountersignedReceipt::countersignature_of(&other, &bytes).is_err());
    }
}
