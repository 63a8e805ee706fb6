//! Capacity adverts: what a node serves, at what price, with how much room.

use serde::Serialize;

use crate::canon::{Reader, Writer};
use crate::keys::{sign, verify};
use crate::{Capabilities, NanoUsd, ProtoError, PublicKey, SigningKey, public_key_of};

const TAG: &[u8] = b"sharenet/advert\0";
/// At most this many models in one advert, so adverts stay small.
pub const MAX_ADVERT_MODELS: usize = 64;
/// An advert may not claim to live longer than this.
pub const MAX_ADVERT_TTL_MS: u64 = 10 * 60 * 1000;
const MAX_MODEL_ID: usize = 128;
/// At most this many GPUs in one advert.
pub const MAX_ADVERT_GPUS: usize = 16;
const MAX_GPU_NAME: usize = 128;
/// Longest region or quantization label.
const MAX_SHORT: usize = 64;

/// A model name as a network-wide slug: lowercase ASCII letters and
/// digits, with `/`, `.`, `_`, `:` (a variant, e.g. the quantization) and
/// `-` kept and every other run of characters one `-`
/// (`"SmolLM2 135M Instruct"` → `smollm2-135m-instruct`).
pub fn model_slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | ':') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').chars().take(MAX_MODEL_ID).collect()
}

/// What kind of jobs a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Chat and text completions.
    Text = 0,
    /// Embeddings.
    Embedding = 1,
}

/// One GPU on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    pub name: String,
    /// Total device memory in MiB.
    pub memory_mib: u64,
}

/// One model a node serves and its prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelOffer {
    /// The model name builders ask for, e.g. `tiny-llama`.
    pub id: String,
    /// nano-USD per prompt token.
    pub price_in: NanoUsd,
    /// nano-USD per generated token.
    pub price_out: NanoUsd,
    /// Longest prompt + completion the node accepts, in tokens.
    pub context_length: u32,
    pub kind: ModelKind,
    /// Weight format, e.g. `Q8_0`, `Q4K`, `F32`; empty when unknown.
    pub quantization: String,
    /// Decode tokens per second the node measured for this model lately
    /// (all sequences together); 0 when it has no measurement yet.
    pub tokens_per_sec: u32,
    /// SHA-256 of the weights files (in file name order), so "the same
    /// model" means the same weights. `None` where the node cannot know
    /// them (an upstream server).
    #[serde(with = "opt_hex")]
    pub weights_sha256: Option<[u8; 32]>,
    /// Tools and structured outputs, where the model has them.
    pub capabilities: Capabilities,
    /// The weights' license as the node states it (an SPDX-style id such
    /// as `apache-2.0`, from GGUF `general.license`, the model card or the
    /// provider's config); empty when unknown.
    pub license: String,
    /// The weights' network-wide name (e.g. `smollm2-135m-instruct:q4_1`,
    /// from the provider's config, else GGUF `general.name` or
    /// `config.json`'s `_name_or_path`, slugged, with the quantization):
    /// nodes serving the same weights under different local ids are one
    /// market under it. Empty when unknown.
    pub canonical: String,
}

mod opt_hex {
    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<[u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

/// A node's signed statement of what it serves right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advert {
    /// The node's ed25519 public key (its PeerId derives from it).
    #[serde(with = "hex::serde")]
    pub node: PublicKey,
    pub models: Vec<ModelOffer>,
    /// The node's GPUs (empty: CPU only).
    pub gpus: Vec<GpuInfo>,
    /// Where the node says it is (operator-defined, e.g. `eu-west`); empty
    /// when unset.
    pub region: String,
    /// Whether the node is reached through a relay (behind NAT).
    pub relayed: bool,
    /// The node's stated data policy: it keeps (stores, logs or trains on)
    /// prompts or outputs. A declaration, as on OpenRouter: requests with
    /// `provider.data_collection: "deny"` avoid nodes that say so.
    pub keeps_prompts: bool,
    /// Jobs the node runs at once.
    pub max_concurrency: u32,
    /// Jobs running or waiting right now.
    pub queue_depth: u32,
    /// Increases with every advert the node publishes; older ones are stale.
    pub seq: u64,
    /// Unix milliseconds when signed.
    pub issued_at_ms: u64,
    /// Unix milliseconds after which the advert must be ignored.
    pub expires_at_ms: u64,
}

impl Advert {
    /// The protocol version adverts are written with.
    pub fn protocol_version(&self) -> u16 {
        crate::PROTOCOL_VERSION
    }

    fn validate(&self) -> Result<(), ProtoError> {
        if self.models.len() > MAX_ADVERT_MODELS {
            return Err(ProtoError::TooLong {
                field: "advert models",
                len: self.models.len(),
                max: MAX_ADVERT_MODELS,
            });
        }
        for m in &self.models {
            if m.canonical.len() > MAX_MODEL_ID {
                return Err(ProtoError::Invalid {
                    field: "canonical name",
                    reason: format!("at most {MAX_MODEL_ID} bytes"),
                });
            }
            if m.id.is_empty() || m.id.len() > MAX_MODEL_ID {
                return Err(ProtoError::Invalid {
                    field: "model id",
                    reason: format!("must be 1..={MAX_MODEL_ID} bytes"),
                });
            }
        }
        if self.gpus.len() > MAX_ADVERT_GPUS {
            return Err(ProtoError::TooLong {
                field: "advert gpus",
                len: self.gpus.len(),
                max: MAX_ADVERT_GPUS,
            });
        }
        if self.region.len() > MAX_SHORT
            || self
                .models
                .iter()
                .any(|m| m.quantization.len() > MAX_SHORT || m.license.len() > MAX_SHORT)
        {
            return Err(ProtoError::Invalid {
                field: "region / quantization / license",
                reason: format!("at most {MAX_SHORT} bytes"),
            });
        }
        if self.gpus.iter().any(|g| g.name.len() > MAX_GPU_NAME) {
            return Err(ProtoError::Invalid {
                field: "gpu name",
                reason: format!("at most {MAX_GPU_NAME} bytes"),
            });
        }
        if self.expires_at_ms < self.issued_at_ms
            || self.expires_at_ms - self.issued_at_ms > MAX_ADVERT_TTL_MS
        {
            return Err(ProtoError::Invalid {
                field: "advert expiry",
                reason: format!("must be within {MAX_ADVERT_TTL_MS} ms after issue"),
            });
        }
        Ok(())
    }

    /// The canonical bytes that are signed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(TAG);
        w.raw(&self.node);
        w.u32(self.models.len() as u32);
        for m in &self.models {
            w.str(&m.id);
            w.u64(m.price_in);
            w.u64(m.price_out);
            w.u32(m.context_length);
            w.u32(m.kind as u32);
            w.str(&m.quantization);
            w.u32(m.tokens_per_sec);
            match &m.weights_sha256 {
                Some(h) => {
                    w.u32(1);
                    w.raw(h);
                }
                None => w.u32(0),
            }
            w.u32(m.capabilities.bits());
            w.str(&m.license);
            w.str(&m.canonical);
        }
        w.u32(self.gpus.len() as u32);
        for g in &self.gpus {
            w.str(&g.name);
            w.u64(g.memory_mib);
        }
        w.str(&self.region);
        w.u32(u32::from(self.relayed));
        w.u32(u32::from(self.keeps_prompts));
        w.u32(self.max_concurrency);
        w.u32(self.queue_depth);
        w.u64(self.seq);
        w.u64(self.issued_at_ms);
        w.u64(self.expires_at_ms);
        w.finish()
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ProtoError> {
        let node = r.array::<32>("advert node key")?;
        let n = r.u32("advert model count")? as usize;
        if n > MAX_ADVERT_MODELS {
            return Err(ProtoError::TooLong {
                field: "advert models",
                len: n,
                max: MAX_ADVERT_MODELS,
            });
        }
        let mut models = Vec::with_capacity(n);
        for _ in 0..n {
            models.push(ModelOffer {
                id: r.str("model id", MAX_MODEL_ID)?,
                price_in: r.u64("price_in")?,
                price_out: r.u64("price_out")?,
                context_length: r.u32("context_length")?,
                kind: match r.u32("model kind")? {
                    0 => ModelKind::Text,
                    1 => ModelKind::Embedding,
                    other => {
                        return Err(ProtoError::Invalid {
                            field: "model kind",
                            reason: format!("unknown kind {other}"),
                        });
                    }
                },
                quantization: r.str("quantization", MAX_SHORT)?,
                tokens_per_sec: r.u32("tokens_per_sec")?,
                weights_sha256: match r.u32("weights hash flag")? {
                    0 => None,
                    1 => Some(r.array::<32>("weights_sha256")?),
                    other => {
                        return Err(ProtoError::Invalid {
                            field: "weights hash flag",
                            reason: format!("must be 0 or 1, not {other}"),
                        });
                    }
                },
                capabilities: Capabilities::from_bits(r.u32("capabilities")?),
                license: r.str("license", MAX_SHORT)?,
                canonical: r.str("canonical name", MAX_MODEL_ID)?,
            });
        }
        let g = r.u32("advert gpu count")? as usize;
        if g > MAX_ADVERT_GPUS {
            return Err(ProtoError::TooLong {
                field: "advert gpus",
                len: g,
                max: MAX_ADVERT_GPUS,
            });
        }
        let mut gpus = Vec::with_capacity(g);
        for _ in 0..g {
            gpus.push(GpuInfo {
                name: r.str("gpu name", MAX_GPU_NAME)?,
                memory_mib: r.u64("gpu memory")?,
            });
        }
        let region = r.str("region", MAX_SHORT)?;
        let relayed = match r.u32("relayed")? {
            0 => false,
            1 => true,
            other => {
                return Err(ProtoError::Invalid {
                    field: "relayed",
                    reason: format!("must be 0 or 1, not {other}"),
                });
            }
        };
        let keeps_prompts = match r.u32("keeps_prompts")? {
            0 => false,
            1 => true,
            other => {
                return Err(ProtoError::Invalid {
                    field: "keeps_prompts",
                    reason: format!("must be 0 or 1, not {other}"),
                });
            }
        };
        Ok(Self {
            node,
            models,
            gpus,
            region,
            keeps_prompts,
            relayed,
            max_concurrency: r.u32("max_concurrency")?,
            queue_depth: r.u32("queue_depth")?,
            seq: r.u64("seq")?,
            issued_at_ms: r.u64("issued_at_ms")?,
            expires_at_ms: r.u64("expires_at_ms")?,
        })
    }

    /// Whether the advert is live at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// The offer for `model`: by the node's own id, else by canonical name.
    pub fn offer(&self, model: &str) -> Option<&ModelOffer> {
        self.models.iter().find(|m| m.id == model).or_else(|| {
            self.models
                .iter()
                .find(|m| !m.canonical.is_empty() && m.canonical == model)
        })
    }
}

/// An advert with the node's signature. Only [`SignedAdvert::sign`] and
/// [`SignedAdvert::from_bytes`] (which verifies) make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAdvert {
    advert: Advert,
    signature: [u8; 64],
}

impl SignedAdvert {
    /// Signs `advert`; its `node` field is set to `key`'s public key.
    pub fn sign(mut advert: Advert, key: &SigningKey) -> Result<Self, ProtoError> {
        advert.node = public_key_of(key);
        advert.validate()?;
        let signature = sign(key, &advert.canonical_bytes());
        Ok(Self { advert, signature })
    }

    pub fn advert(&self) -> &Advert {
        &self.advert
    }

    pub fn into_advert(self) -> Advert {
        self.advert
    }

    /// Canonical bytes followed by the 64-byte signature: what goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.advert.canonical_bytes();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies an advert from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(bytes, TAG, "advert")?;
        let advert = Advert::read(&mut r)?;
        let signed_len = r.consumed_from(bytes);
        let signature = r.array::<64>("advert signature")?;
        if r.remaining() != 0 {
            return Err(ProtoError::TrailingBytes(r.remaining()));
        }
        advert.validate()?;
        verify(&advert.node, &bytes[..signed_len], &signature, "advert")?;
        Ok(Self { advert, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn advert() -> Advert {
        Advert {
            node: [0; 32],
            models: vec![ModelOffer {
                id: "tiny-llama".into(),
                price_in: 100,
                price_out: 300,
                context_length: 512,
                kind: ModelKind::Text,
                quantization: "Q8_0".into(),
                tokens_per_sec: 950,
                weights_sha256: Some([9; 32]),
                capabilities: Capabilities {
                    tools: true,
                    structured_outputs: false,
                },
                license: "apache-2.0".into(),
                canonical: "tiny-llama:q8_0".into(),
            }],
            gpus: vec![GpuInfo {
                name: "NVIDIA H100".into(),
                memory_mib: 81_559,
            }],
            region: "eu-west".into(),
            relayed: false,
            keeps_prompts: true,
            max_concurrency: 4,
            queue_depth: 1,
            seq: 7,
            issued_at_ms: 1_000,
            expires_at_ms: 31_000,
        }
    }

    #[test]
    fn round_trip() {
        let signed = SignedAdvert::sign(advert(), &key(1)).unwrap();
        let back = SignedAdvert::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.advert().node, public_key_of(&key(1)));
        assert_eq!(back.advert().offer("tiny-llama").unwrap().price_out, 300);
    }

    #[test]
    fn slugs_are_lowercase_and_dashed() {
        assert_eq!(model_slug("SmolLM2 135M Instruct"), "smollm2-135m-instruct");
        assert_eq!(
            model_slug("meta-llama/Llama-3.1-8B-Instruct"),
            "meta-llama/llama-3.1-8b-instruct"
        );
        assert_eq!(model_slug("  Qwen2.5 (7B) -- chat!! "), "qwen2.5-7b-chat");
        assert_eq!(model_slug("Tiny Chat:Q8_0"), "tiny-chat:q8_0");
    }

    #[test]
    fn every_changed_byte_fails() {
        let bytes = SignedAdvert::sign(advert(), &key(1)).unwrap().to_bytes();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(SignedAdvert::from_bytes(&bad).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_fail() {
        let bytes = SignedAdvert::sign(advert(), &key(1)).unwrap().to_bytes();
        for len in 0..bytes.len() {
            assert!(SignedAdvert::from_bytes(&bytes[..len]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            SignedAdvert::from_bytes(&long),
            Err(ProtoError::TrailingBytes(1))
        );
    }

    #[test]
    fn other_version_is_refused() {
        let mut bytes = SignedAdvert::sign(advert(), &key(1)).unwrap().to_bytes();
        bytes[TAG.len() + 1] = 9;
        assert_eq!(
            SignedAdvert::from_bytes(&bytes),
            Err(ProtoError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn overlong_ttl_is_refused() {
        let mut a = advert();
        a.expires_at_ms = a.issued_at_ms + MAX_ADVERT_TTL_MS + 1;
        assert!(SignedAdvert::sign(a, &key(1)).is_err());
    }
}
