//! Batch verification of countersigned receipts, for settlement and audits
//! that re-check a whole period's receipts at once.
//!
//! ed25519 batch verification checks one random linear combination of all
//! the signature equations with a single multi-scalar multiplication,
//! which costs much less per signature than verifying each one. The random
//! coefficients come from a transcript of the inputs (ed25519-dalek's
//! `verify_batch`), so the result is deterministic: no RNG is involved.
//!
//! The answer must be the one [`CountersignedReceipt::from_bytes`] gives,
//! which uses `verify_strict`. The batch equation alone is more lenient in
//! three ways, each closed before a batch is tried:
//! - a small-order public key: refused by `is_weak` (cheap, once per key);
//! - a small-order or non-canonically encoded `R`: refused by looking at
//!   its bytes ([`r_is_strict`]);
//! - any failure at all (a bad signature, bytes that do not decode, one of
//!   the refusals above) re-runs that chunk through `from_bytes` one by one,
//!   so errors are exactly the ones `from_bytes` reports, for the first
//!   receipt that fails.
//!
//! One difference remains, and it is documented rather than closed because
//! closing it costs a scalar multiplication per signature: a signature
//! whose `R` or key carries a small torsion component can pass a batch
//! with a probability of up to 1/8 and fail `verify_strict`. Only the
//! holder of the signing key can make such a signature (it is not a
//! forgery), and receipts enter the ledger through `from_bytes`; the batch
//! path re-checks receipts that already passed it.

use std::collections::HashMap;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::receipt::UnverifiedCountersigned;
use crate::{CountersignedReceipt, ProtoError, PublicKey};

/// Receipts per `verify_batch` call (two signatures each). Larger batches
/// amortise better (Pippenger's method) but a failure re-verifies the whole
/// chunk one by one (about 80 ms for 1024). Measured on one core of the
/// 2-core dev machine: 256 → ~43k receipts/s, 1024 → ~48.6k, 4096 → ~49.4k.
const CHUNK: usize = 1024;

/// Decodes and verifies countersigned receipts, as
/// `receipts.iter().map(|b| CountersignedReceipt::from_bytes(b)).collect()`
/// would, but with batched signature verification (see the module docs
/// for the one documented difference). On error, the error is the one
/// `from_bytes` gives for the first receipt that fails.
pub fn verify_countersigned_batch(
    receipts: &[&[u8]],
) -> Result<Vec<CountersignedReceipt>, ProtoError> {
    verify_in_chunks(receipts, CHUNK)
}

/// Re-reads receipts that `coordinator` countersigned itself (its own
/// ledger), on every core, checking only the countersignature.
///
/// Why one signature is enough here: the countersignature covers the node's
/// signed bytes *including the node's signature*, and the coordinator
/// countersigns only after `verify_strict` of that node signature. So a
/// valid countersignature by our own key proves the bytes are exactly what
/// we verified and signed; anyone able to alter them without failing this
/// check holds our signing key and could sign anything anyway. A receipt
/// countersigned by another key (one we used before a key change) takes the
/// slow path: any chunk that does not pass falls back to
/// [`CountersignedReceipt::from_bytes`], both signatures, exact errors.
/// Output order is input order.
pub fn verify_own_countersigned_batch(
    receipts: &[&[u8]],
    coordinator: &PublicKey,
) -> Result<Vec<CountersignedReceipt>, ProtoError> {
    let threads = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
        .clamp(1, 16);
    verify_own_in_parts(receipts, coordinator, CHUNK, threads)
}

/// Splits the work into `threads` contiguous parts (when there are at
/// least two chunks per part) and joins the results in order.
fn verify_own_in_parts(
    receipts: &[&[u8]],
    coordinator: &PublicKey,
    chunk: usize,
    threads: usize,
) -> Result<Vec<CountersignedReceipt>, ProtoError> {
    let chunk = chunk.max(1);
    if threads <= 1 || receipts.len() < 2 * chunk * threads {
        return verify_in_chunks_own(receipts, chunk, coordinator);
    }
    let per = receipts.len().div_ceil(threads);
    let parts: Vec<Result<Vec<CountersignedReceipt>, ProtoError>> = std::thread::scope(|s| {
        let handles: Vec<_> = receipts
            .chunks(per)
            .map(|part| s.spawn(move || verify_in_chunks_own(part, chunk, coordinator)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ProtoError::Invalid {
                        field: "receipt batch",
                        reason: "a verification thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(receipts.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

fn verify_in_chunks_own(
    receipts: &[&[u8]],
    chunk_size: usize,
    coordinator: &PublicKey,
) -> Result<Vec<CountersignedReceipt>, ProtoError> {
    let mut out = Vec::with_capacity(receipts.len());
    let mut keys = KeyCache::default();
    for chunk in receipts.chunks(chunk_size.max(1)) {
        match verify_chunk_own(chunk, coordinator, &mut keys) {
            Some(verified) => out.extend(verified),
            None => {
                for bytes in chunk {
                    out.push(CountersignedReceipt::from_bytes(bytes)?);
                }
            }
        }
    }
    Ok(out)
}

/// The countersignatures only, as one batch; `None` sends the chunk to the
/// exact one-by-one path.
fn verify_chunk_own(
    chunk: &[&[u8]],
    coordinator: &PublicKey,
    keys: &mut KeyCache,
) -> Option<Vec<CountersignedReceipt>> {
    let key = keys.get(coordinator)?;
    let mut parsed = Vec::with_capacity(chunk.len());
    for bytes in chunk {
        parsed.push(UnverifiedCountersigned::parse(bytes).ok()?);
    }
    let mut messages: Vec<&[u8]> = Vec::with_capacity(parsed.len());
    let mut signatures = Vec::with_capacity(parsed.len());
    for p in &parsed {
        if p.receipt.coordinator != *coordinator || !r_is_strict(&p.coordinator_signature) {
            return None;
        }
        messages.push(p.coordinator_message);
        signatures.push(Signature::from_bytes(&p.coordinator_signature));
    }
    let verifying_keys = vec![key; parsed.len()];
    ed25519_dalek::verify_batch(&messages, &signatures, &verifying_keys).ok()?;
    Some(
        parsed
            .into_iter()
            .map(UnverifiedCountersigned::into_verified)
            .collect(),
    )
}

fn verify_in_chunks(
    receipts: &[&[u8]],
    chunk_size: usize,
) -> Result<Vec<CountersignedReceipt>, ProtoError> {
    let mut out = Vec::with_capacity(receipts.len());
    let mut keys = KeyCache::default();
    for chunk in receipts.chunks(chunk_size.max(1)) {
        match verify_chunk(chunk, &mut keys) {
            Some(verified) => out.extend(verified),
            None => {
                for bytes in chunk {
                    out.push(CountersignedReceipt::from_bytes(bytes)?);
                }
            }
        }
    }
    Ok(out)
}

/// `None` when anything in the chunk did not pass the fast path; the caller
/// then falls back to `from_bytes` for the exact answer.
fn verify_chunk(chunk: &[&[u8]], keys: &mut KeyCache) -> Option<Vec<CountersignedReceipt>> {
    let mut parsed = Vec::with_capacity(chunk.len());
    for bytes in chunk {
        parsed.push(UnverifiedCountersigned::parse(bytes).ok()?);
    }
    let mut messages: Vec<&[u8]> = Vec::with_capacity(2 * parsed.len());
    let mut signatures = Vec::with_capacity(2 * parsed.len());
    let mut verifying_keys = Vec::with_capacity(2 * parsed.len());
    for p in &parsed {
        for (key, message, signature) in [
            (&p.receipt.node, p.node_message, &p.node_signature),
            (
                &p.receipt.coordinator,
                p.coordinator_message,
                &p.coordinator_signature,
            ),
        ] {
            if !r_is_strict(signature) {
                return None;
            }
            verifying_keys.push(keys.get(key)?);
            messages.push(message);
            signatures.push(Signature::from_bytes(signature));
        }
    }
    ed25519_dalek::verify_batch(&messages, &signatures, &verifying_keys).ok()?;
    Some(
        parsed
            .into_iter()
            .map(UnverifiedCountersigned::into_verified)
            .collect(),
    )
}

/// Decompressed keys, so a key that signs many receipts (the coordinator's,
/// a busy node's) is decompressed and checked once. Bounded: cleared when
/// it grows past `MAX_KEYS`.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<PublicKey, Option<VerifyingKey>>,
}

const MAX_KEYS: usize = 4096;

impl KeyCache {
    /// `None` for a key `verify_strict` refuses (invalid or small-order).
    fn get(&mut self, public: &PublicKey) -> Option<VerifyingKey> {
        if let Some(key) = self.keys.get(public) {
            return *key;
        }
        if self.keys.len() >= MAX_KEYS {
            self.keys.clear();
        }
        let key = VerifyingKey::from_bytes(public)
            .ok()
            .filter(|k| !k.is_weak());
        self.keys.insert(*public, key);
        key
    }
}

/// The field prime 2^255 - 19, little-endian.
const P: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// The y coordinates (little-endian) of the eight points of small order:
/// the identity (y = 1), the point of order 2 (y = -1), the two of order 4
/// (y = 0) and the four of order 8 (y = ±y8).
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    {
        let mut minus_one = P;
        minus_one[0] = 0xec;
        minus_one
    },
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// Whether a signature's `R` is one `verify_strict` can accept, judged from
/// its bytes alone: a canonical encoding (y < p; the x = 0 sign-bit cases
/// are y = ±1, small-order anyway) of a point that is not of small order.
/// Whether it decodes to a point at all is left to the batch equation,
/// which fails on an undecodable `R`.
fn r_is_strict(signature: &[u8; 64]) -> bool {
    let mut y = [0u8; 32];
    y.copy_from_slice(&signature[..32]);
    y[31] &= 0x7f;
    less_than_p(&y) && !SMALL_ORDER_Y.contains(&y)
}

/// Little-endian comparison y < p.
fn less_than_p(y: &[u8; 32]) -> bool {
    for i in (0..32).rev() {
        if y[i] != P[i] {
            return y[i] < P[i];
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobId, Receipt, SignedReceipt, SigningKey, public_key_of};
    use ed25519_dalek::{Signer, Verifier};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn receipt_bytes(i: u32, node: &SigningKey, coord: &SigningKey) -> Vec<u8> {
        let receipt = Receipt {
            job_id: JobId([i as u8; 16]),
            node: [0; 32],
            coordinator: public_key_of(coord),
            model: "tiny-llama".into(),
            input_tokens: i,
            output_tokens: 2 * i,
            price_in: 100,
            price_out: 300,
            amount: u64::from(i) * 100 + u64::from(2 * i) * 300,
            started_at_ms: 5,
            finished_at_ms: 9,
            request_digest: [3; 32],
            response_digest: [4; 32],
        };
        let signed = SignedReceipt::sign(receipt, node).unwrap();
        CountersignedReceipt::countersign(signed, coord)
            .unwrap()
            .to_bytes()
    }

    fn receipts(n: u32) -> Vec<Vec<u8>> {
        let coord = key(200);
        let nodes = [key(1), key(2), key(3)];
        (0..n)
            .map(|i| receipt_bytes(i, &nodes[i as usize % 3], &coord))
            .collect()
    }

    fn one_by_one(all: &[&[u8]]) -> Result<Vec<CountersignedReceipt>, ProtoError> {
        all.iter()
            .map(|b| CountersignedReceipt::from_bytes(b))
            .collect()
    }

    #[test]
    fn batch_equals_one_by_one() {
        let owned = receipts(40);
        let all: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let expected = one_by_one(&all).unwrap();
        for n in [0, 1, 2, 17, 40] {
            assert_eq!(
                verify_countersigned_batch(&all[..n]).unwrap(),
                expected[..n],
                "n = {n}"
            );
            // Small chunks: many batches, partial last chunks.
            for chunk in [1, 2, 7, 16] {
                assert_eq!(
                    verify_in_chunks(&all[..n], chunk).unwrap(),
                    expected[..n],
                    "n = {n}, chunk = {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_bad_receipt_anywhere_gives_from_bytes_error() {
        let owned = receipts(40);
        let len = owned[0].len();
        // One flipped byte in a few places of a few receipts: the
        // coordinator signature, the node signature, a key, the tag; at
        // chunk edges and inside chunks.
        for (which, byte) in [(0, len - 1), (39, len - 70), (16, 60), (17, 0), (9, 100)] {
            let mut owned = owned.clone();
            owned[which][byte] ^= 0x40;
            let all: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let expected = CountersignedReceipt::from_bytes(&owned[which]).unwrap_err();
            assert_eq!(verify_countersigned_batch(&all), Err(expected.clone()));
            assert_eq!(verify_in_chunks(&all, 16), Err(expected));
            assert_eq!(verify_countersigned_batch(&all), one_by_one(&all));
        }
    }

    #[test]
    fn own_ledger_reads_equal_one_by_one_and_catch_any_change() {
        let coord = public_key_of(&key(200));
        let owned = receipts(60);
        let all: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let expected = one_by_one(&all).unwrap();
        assert_eq!(
            verify_own_countersigned_batch(&all, &coord).unwrap(),
            expected
        );
        // Split across three threads in chunks of 8.
        assert_eq!(verify_own_in_parts(&all, &coord, 8, 3).unwrap(), expected);
        for chunk in [1, 7, 16] {
            assert_eq!(
                verify_in_chunks_own(&all[..40], chunk, &coord).unwrap(),
                expected[..40]
            );
        }
        // A flipped byte anywhere (node signature included, which only the
        // countersignature covers here) is the error from_bytes gives.
        let len = owned[0].len();
        for (which, byte) in [(0, len - 1), (39, len - 70), (59, 60), (17, 0)] {
            let mut bad = owned.clone();
            bad[which][byte] ^= 0x40;
            let all: Vec<&[u8]> = bad.iter().map(Vec::as_slice).collect();
            let expected = CountersignedReceipt::from_bytes(&bad[which]).unwrap_err();
            assert_eq!(
                verify_own_in_parts(&all, &coord, 8, 3),
                Err(expected.clone())
            );
            assert_eq!(verify_own_countersigned_batch(&all, &coord), Err(expected));
        }
        // Receipts countersigned by another key (ours before a key change)
        // are checked in full instead.
        let other = public_key_of(&key(201));
        assert_eq!(
            verify_own_countersigned_batch(&all[..3], &other).unwrap(),
            expected[..3]
        );
    }

    #[test]
    fn swapped_signatures_fail() {
        // Two valid receipts with their coordinator signatures exchanged:
        // each signature is valid for something, but not for its receipt.
        let mut owned = receipts(2);
        let len = owned[0].len();
        let a = owned[0][len - 64..].to_vec();
        let b = owned[1][len - 64..].to_vec();
        owned[0][len - 64..].copy_from_slice(&b);
        owned[1][len - 64..].copy_from_slice(&a);
        let all: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        assert!(matches!(
            verify_countersigned_batch(&all),
            Err(ProtoError::BadSignature(_))
        ));
    }

    #[test]
    fn small_order_y_table_is_the_eight_small_order_points() {
        let mut points = 0;
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut enc = y;
                enc[31] |= sign;
                let key = VerifyingKey::from_bytes(&enc).unwrap();
                assert!(key.is_weak(), "{}", hex::encode(enc));
                // x = 0 only for y = ±1: its sign bit is not a new point.
                if key.to_edwards().compress().to_bytes() == enc {
                    points += 1;
                }
            }
        }
        assert_eq!(points, 8);
        // An honest R is strict; a real key is not weak.
        let sig = key(1).sign(b"msg").to_bytes();
        assert!(r_is_strict(&sig));
        assert!(
            !VerifyingKey::from_bytes(&public_key_of(&key(1)))
                .unwrap()
                .is_weak()
        );
    }

    #[test]
    fn non_canonical_r_is_refused_by_the_fast_path() {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&P);
        assert!(!r_is_strict(&sig));
        sig[0] = 0xee; // p + 1
        assert!(!r_is_strict(&sig));
        sig[..32].copy_from_slice(&[0xff; 32]);
        assert!(!r_is_strict(&sig));
    }

    #[test]
    fn a_small_order_r_that_verifies_loosely_is_still_refused() {
        // A signature (R = identity, s = 0) under a small-order key: the
        // plain equation holds, verify_strict refuses it, and so must the batch.
        let weak_key = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        let mut sig = [0u8; 64];
        sig[0] = 1;
        let vk = VerifyingKey::from_bytes(&weak_key).unwrap();
        assert!(vk.verify(b"anything", &Signature::from_bytes(&sig)).is_ok());
        assert!(
            vk.verify_strict(b"anything", &Signature::from_bytes(&sig))
                .is_err()
        );
        assert!(!r_is_strict(&sig));
        let mut cache = KeyCache::default();
        assert!(cache.get(&weak_key).is_none());
    }
}
