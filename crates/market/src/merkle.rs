//! An RFC 6962 (Certificate Transparency) Merkle tree over 32-byte leaf
//! hashes, so a provider can prove that one of its receipts is in a
//! statement with a standard audit path that any RFC 6962 / RFC 9162
//! verifier accepts.
//!
//! - leaf hash: `SHA-256(0x00 || data)`; interior: `SHA-256(0x01 || left ||
//!   right)` — the different prefixes keep a leaf from passing as a node;
//! - `n > 1` leaves split at `k`, the largest power of two below `n`: the
//!   left subtree is the first `k` leaves, the right one the rest;
//! - the empty tree's root is `SHA-256("")`.
//!
//! Everything is computed bottom up, pairing neighbours level by level and
//! carrying an unpaired last node up unchanged; that builds exactly the
//! RFC's split tree (tested against a recursive transcription of the RFC)
//! in O(n) time with one buffer of n/2 hashes and no recursion, so a
//! million leaves take well under a second.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::MarketError;

/// A proof is at most this long: one sibling per level of a tree of up to
/// 2^64 leaves.
pub const MAX_PROOF_LEN: usize = 64;

/// `SHA-256(0x00 || data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree over `leaves` (already leaf-hashed with
/// [`leaf_hash`]).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    fold(leaves, None).0
}

/// An audit path: the sibling hashes from the leaf's level up to the
/// root's children, in the order RFC 6962 `PATH` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The leaf's position (0-based) in the tree.
    pub index: u64,
    /// How many leaves the tree has.
    pub tree_size: u64,
    /// Sibling hashes, lowest level first (hex in JSON).
    #[serde(with = "hex_list")]
    pub siblings: Vec<[u8; 32]>,
}

/// The audit path of leaf `index` in the tree over `leaves`.
pub fn prove(leaves: &[[u8; 32]], index: u64) -> Result<InclusionProof, MarketError> {
    let size = leaves.len() as u64;
    let at = usize::try_from(index)
        .ok()
        .filter(|&i| i < leaves.len())
        .ok_or(MarketError::IndexOutOfRange { index, size })?;
    let (_, siblings) = fold(leaves, Some(at));
    Ok(InclusionProof {
        index,
        tree_size: size,
        siblings,
    })
}

/// Whether `proof` shows that `leaf` (a leaf hash) is at `proof.index` in
/// the tree of `proof.tree_size` leaves whose root is `root`. This is the
/// verification algorithm of RFC 9162 section 2.1.3.2.
pub fn verify(root: &[u8; 32], leaf: &[u8; 32], proof: &InclusionProof) -> bool {
    if proof.index >= proof.tree_size || proof.siblings.len() > MAX_PROOF_LEN {
        return false;
    }
    let mut f = proof.index;
    let mut s = proof.tree_size - 1;
    let mut r = *leaf;
    for p in &proof.siblings {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                // The node was the unpaired last one on this and the next
                // levels: it climbs unchanged until it is a right child.
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// The root, and the audit path of leaf `at` when asked.
fn fold(leaves: &[[u8; 32]], at: Option<usize>) -> ([u8; 32], Vec<[u8; 32]>) {
    let mut path = Vec::new();
    match leaves {
        [] => return (Sha256::digest([]).into(), path),
        [one] => return (*one, path),
        _ => {}
    }
    // The first level is hashed straight from `leaves` (the input is never
    // copied); the levels above are folded in place in that one buffer.
    if let Some(sibling) = at.and_then(|i| leaves.get(i ^ 1)) {
        path.push(*sibling);
    }
    fold_owned(pair_up(leaves), at.map(|i| i / 2), path)
}

/// Folds a level that this function owns, in place.
fn fold_owned(
    mut level: Vec<[u8; 32]>,
    mut at: Option<usize>,
    mut path: Vec<[u8; 32]>,
) -> ([u8; 32], Vec<[u8; 32]>) {
    while level.len() > 1 {
        if let Some(i) = at {
            if let Some(sibling) = level.get(i ^ 1) {
                path.push(*sibling);
            }
            at = Some(i / 2);
        }
        let n = level.len();
        for i in 0..n / 2 {
            level[i] = node_hash(&level[2 * i], &level[2 * i + 1]);
        }
        if n % 2 == 1 {
            level[n / 2] = level[n - 1];
        }
        level.truncate(n.div_ceil(2));
    }
    (level.first().copied().unwrap_or_default(), path)
}

/// One level up: neighbours paired, an unpaired last node carried up.
fn pair_up(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut next = Vec::with_capacity(level.len().div_ceil(2));
    let mut pairs = level.chunks_exact(2);
    for pair in &mut pairs {
        next.push(node_hash(&pair[0], &pair[1]));
    }
    if let [last] = pairs.remainder() {
        next.push(*last);
    }
    next
}

/// A whole tree kept in memory, for proving many leaves of one tree (a
/// provider's receipts in a statement) without rehashing it each time.
/// Holds about 2n hashes.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    /// `levels[0]` are the leaves; the last level is the root alone.
    levels: Vec<Vec<[u8; 32]>>,
}

impl MerkleTree {
    pub fn new(leaves: Vec<[u8; 32]>) -> Self {
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let next = pair_up(top);
            levels.push(next);
        }
        Self { levels }
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn root(&self) -> [u8; 32] {
        match self.levels.last().and_then(|l| l.first()) {
            Some(root) => *root,
            None => Sha256::digest([]).into(),
        }
    }

    /// The audit path of leaf `index`; the same proof as [`prove`].
    pub fn prove(&self, index: u64) -> Result<InclusionProof, MarketError> {
        let size = self.len();
        let mut at = usize::try_from(index)
            .ok()
            .filter(|&i| (i as u64) < size)
            .ok_or(MarketError::IndexOutOfRange { index, size })?;
        let mut siblings = Vec::new();
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(at ^ 1) {
                siblings.push(*sibling);
            }
            at /= 2;
        }
        Ok(InclusionProof {
            index,
            tree_size: size,
            siblings,
        })
    }
}

/// A list of 32-byte hashes as a JSON array of hex strings.
mod hex_list {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        if strings.len() > super::MAX_PROOF_LEN {
            return Err(D::Error::custom("proof longer than 64 hashes"));
        }
        strings
            .iter()
            .map(|s| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(D::Error::custom)?;
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 6962 section 2.1, transcribed literally (recursive).
    fn rfc_root(d: &[[u8; 32]]) -> [u8; 32] {
        match d.len() {
            0 => Sha256::digest([]).into(),
            1 => d[0],
            n => {
                let k = largest_power_of_two_below(n);
                node_hash(&rfc_root(&d[..k]), &rfc_root(&d[k..]))
            }
        }
    }

    /// RFC 6962 section 2.1.1 `PATH(m, D[n])`.
    fn rfc_path(m: usize, d: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let n = d.len();
        if n <= 1 {
            return vec![];
        }
        let k = largest_power_of_two_below(n);
        if m < k {
            let mut p = rfc_path(m, &d[..k]);
            p.push(rfc_root(&d[k..]));
            p
        } else {
            let mut p = rfc_path(m - k, &d[k..]);
            p.push(rfc_root(&d[..k]));
            p
        }
    }

    fn largest_power_of_two_below(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    #[test]
    fn known_answers() {
        // The empty tree (RFC 6962 test vectors): SHA-256 of nothing.
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // The leaf hash of the empty string (Certificate Transparency's
        // merkle_tree tests).
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_index_of_trees_up_to_33_proves_and_verifies() {
        for n in 1..=33 {
            let l = leaves(n);
            let r = root(&l);
            assert_eq!(r, rfc_root(&l), "root of {n}");
            let tree = MerkleTree::new(l.clone());
            assert_eq!(tree.root(), r);
            for i in 0..n {
                let proof = prove(&l, i as u64).unwrap();
                assert_eq!(proof.siblings, rfc_path(i, &l), "path {i} of {n}");
                assert_eq!(tree.prove(i as u64).unwrap(), proof);
                assert!(verify(&r, &l[i], &proof), "leaf {i} of {n}");
            }
        }
    }

    #[test]
    fn tampering_fails() {
        for n in 1..=33usize {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let proof = prove(&l, i as u64).unwrap();
                // Another leaf.
                assert!(!verify(&r, &leaf_hash(b"intruder"), &proof));
                // Another root.
                let mut bad_root = r;
                bad_root[7] ^= 1;
                assert!(!verify(&bad_root, &l[i], &proof));
                // Any sibling changed.
                for s in 0..proof.siblings.len() {
                    let mut bad = proof.clone();
                    bad.siblings[s][31] ^= 0x80;
                    assert!(!verify(&r, &l[i], &bad), "sibling {s} of leaf {i}/{n}");
                }
                // Another index (in range or not).
                for j in 0..n + 2 {
                    if j != i {
                        let mut bad = proof.clone();
                        bad.index = j as u64;
                        assert!(!verify(&r, &l[i], &bad), "index {j} for leaf {i}/{n}");
                    }
                }
                // A sibling too many or too few. (The tree size is not
                // bound by the root alone: the proof of leaf 0 of 3 also
                // passes as leaf 0 of 4 against the same root, as in RFC
                // 6962 where the signed tree head carries the size. A
                // statement signs its size: `Statement::includes`.)
                let mut bad = proof.clone();
                bad.siblings.push([0; 32]);
                assert!(!verify(&r, &l[i], &bad));
                if !proof.siblings.is_empty() {
                    let mut bad = proof.clone();
                    bad.siblings.pop();
                    assert!(!verify(&r, &l[i], &bad));
                }
            }
        }
    }

    #[test]
    fn out_of_range_and_empty() {
        assert_eq!(
            prove(&[], 0),
            Err(MarketError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert!(prove(&leaves(3), 3).is_err());
        assert!(MerkleTree::new(vec![]).prove(0).is_err());
        assert_eq!(MerkleTree::new(vec![]).root(), root(&[]));
        let p = InclusionProof {
            index: 0,
            tree_size: 0,
            siblings: vec![],
        };
        assert!(!verify(&root(&[]), &root(&[]), &p));
    }

    #[test]
    fn a_leaf_is_not_a_node() {
        // A two-leaf tree's root is not the leaf hash of the two leaves
        // concatenated (second-preimage protection by the prefixes).
        let l = leaves(2);
        let mut cat = Vec::new();
        cat.extend_from_slice(&l[0]);
        cat.extend_from_slice(&l[1]);
        assert_ne!(root(&l), leaf_hash(&cat));
    }

    #[test]
    fn proof_json_round_trip() {
        let l = leaves(5);
        let proof = prove(&l, 4).unwrap();
        let json = serde_json::to_string(&proof).unwrap();
        assert!(json.contains(&hex::encode(proof.siblings[0])));
        let back: InclusionProof = serde_json::from_str(&json).unwrap();
        assert_eq!(back, proof);
    }

    #[test]
    fn a_million_leaves() {
        // Kept to a few passes over the tree: tests run unoptimised.
        let l: Vec<[u8; 32]> = (0..1_000_000u32)
            .map(|i| leaf_hash(&i.to_be_bytes()))
            .collect();
        let r = root(&l);
        let tree = MerkleTree::new(l.clone());
        assert_eq!(tree.root(), r);
        assert_eq!(prove(&l, 999_999).unwrap(), tree.prove(999_999).unwrap());
        for i in [0u64, 1, 524_287, 524_288, 999_998, 999_999] {
            let proof = tree.prove(i).unwrap();
            // 2^19 < n <= 2^20: leaves in the full left half have 20
            // siblings; the last ones, carried up unpaired, fewer.
            assert!(proof.siblings.len() <= 20);
            if i < 524_288 {
                assert_eq!(proof.siblings.len(), 20);
            }
            assert!(verify(&r, &l[i as usize], &proof));
            assert!(!verify(&r, &l[(i as usize + 1) % l.len()], &proof));
        }
    }
}
