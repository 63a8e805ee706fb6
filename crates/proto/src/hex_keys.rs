//! Serde for lists of 32-byte keys as hex strings
//! (`#[serde(with = "sharenet_proto::hex_keys")]`): the operator API's
//! routing rules and the books' stored copy of them write keys this way.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|h| {
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("{h:?} is not a node key (64 hex characters)"))
                })
        })
        .collect()
}
