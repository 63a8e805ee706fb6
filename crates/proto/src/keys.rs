use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ProtoError;

pub use ed25519_dalek::SigningKey;

/// An ed25519 public key, 32 bytes. The libp2p PeerId of a node or a
/// coordinator is derived from this same key.
pub type PublicKey = [u8; 32];

/// The public key of a signing key.
pub fn public_key_of(key: &SigningKey) -> PublicKey {
    key.verifying_key().to_bytes()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(crate) fn sign(key: &SigningKey, msg: &[u8]) -> [u8; 64] {
    key.sign(msg).to_bytes()
}

pub(crate) fn verify(
    public: &PublicKey,
    msg: &[u8],
    sig: &[u8; 64],
    what: &'static str,
) -> Result<(), ProtoError> {
    let key = VerifyingKey::from_bytes(public).map_err(|_| ProtoError::BadPublicKey(what))?;
    key.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| ProtoError::BadSignature(what))
}

/// Signs the canonical bytes of a signed object defined outside this crate
/// (settlement statements in `sharenet-market`), so every signature in the
/// project goes through one place. `canonical` must begin with that
/// object's own domain tag and [`crate::PROTOCOL_VERSION`]: the tag is what
/// keeps a signature over one kind of object from passing as another.
pub fn sign_canonical(key: &SigningKey, canonical: &[u8]) -> [u8; 64] {
    sign(key, canonical)
}

/// Verifies a signature made with [`sign_canonical`], with the same strict
/// rules as every object of this crate (`verify_strict`: no small-order
/// keys or `R`, canonical encodings). `what` names the object in the error.
pub fn verify_canonical(
    public: &PublicKey,
    canonical: &[u8],
    signature: &[u8; 64],
    what: &'static str,
) -> Result<(), ProtoError> {
    verify(public, canonical, signature, what)
}

/// A job's identity: 16 random bytes chosen by the coordinator. It is also
/// the receipt id; a job id is accepted into the ledger once.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.to_hex())
    }
}

impl FromStr for JobId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|e| ProtoError::Invalid {
            field: "job id",
            reason: format!("expected 32 hex digits: {e}"),
        })?;
        Ok(Self(out))
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of embedding vectors as a receipt commits to them: every value
/// as little-endian f32 bytes, vectors in input order.
pub fn embeddings_digest(vectors: &[Vec<f32>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in vectors {
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    h.finalize().into()
}
