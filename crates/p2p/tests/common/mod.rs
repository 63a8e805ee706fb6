//! Fixtures the p2p tests and the propagation bench share.

use sharenet_p2p::Identity;
use sharenet_proto::{Advert, ModelKind, ModelOffer, SignedAdvert};

/// A signed advert for one text model `m`, valid for 30 s from now, as a
/// node publishes it.
pub fn signed_advert(signer: &Identity, seq: u64, relayed: bool) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let advert = Advert {
        node: signer.public_key(),
        models: vec![ModelOffer {
            id: "m".into(),
            price_in: 1,
            price_out: 2,
            context_length: 4096,
            kind: ModelKind::Text,
            quantization: String::new(),
            tokens_per_sec: 0,
            weights_sha256: None,
            capabilities: Default::default(),
            license: String::new(),
            canonical: String::new(),
        }],
        gpus: Vec::new(),
        region: String::new(),
        relayed,
        keeps_prompts: false,
        max_concurrency: 1,
        queue_depth: 0,
        seq,
        issued_at_ms: now,
        expires_at_ms: now + 30_000,
    };
    match SignedAdvert::sign(advert, signer.signing_key()) {
        Ok(signed) => signed.to_bytes(),
        Err(e) => panic!("sign a test advert: {e}"),
    }
}
