use super::*;

/// A GGUF v3 header written by hand: `kvs` already encoded (key, type,
/// value bytes), then tensor infos.
fn file(version: u32, kvs: &[Vec<u8>], tensors: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(version.to_le_bytes());
    len(&mut out, version, tensors.len() as u64);
    len(&mut out, version, kvs.len() as u64);
    for kv in kvs {
        out.extend(kv);
    }
    for t in tensors {
        out.extend(t);
    }
    out
}

fn len(out: &mut Vec<u8>, version: u32, n: u64) {
    if version == 1 {
        out.extend((n as u32).to_le_bytes());
    } else {
        out.extend(n.to_le_bytes());
    }
}

fn string(version: u32, s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    len(&mut out, version, s.len() as u64);
    out.extend(s);
    out
}

fn kv(version: u32, key: &str, kind: u32, value: &[u8]) -> Vec<u8> {
    let mut out = string(version, key.as_bytes());
    out.extend(kind.to_le_bytes());
    out.extend(value);
    out
}

fn str_array(version: u32, items: &[&str]) -> Vec<u8> {
    let mut v = 8u32.to_le_bytes().to_vec();
    len(&mut v, version, items.len() as u64);
    for i in items {
        v.extend(string(version, i.as_bytes()));
    }
    v
}

fn tensor(name: &str, dims: &[u64], ty: u32) -> Vec<u8> {
    let mut out = string(3, name.as_bytes());
    out.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend(d.to_le_bytes());
    }
    out.extend(ty.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out
}

fn parse(bytes: &[u8]) -> Result<Metadata, String> {
    Metadata::parse(bytes, bytes.len() as u64)
}

#[test]
fn reads_values_arrays_and_tensor_infos() {
    for version in [1, 2, 3] {
        let kvs = vec![
            kv(
                version,
                "general.architecture",
                8,
                &string(version, b"llama"),
            ),
            kv(version, "llama.context_length", 4, &2048u32.to_le_bytes()),
            kv(version, "tokenizer.ggml.add_bos_token", 7, &[1]),
            kv(
                version,
                "tokenizer.ggml.bos_token_id",
                5,
                &(-1i32).to_le_bytes(),
            ),
            kv(
                version,
                "tokenizer.ggml.tokens",
                9,
                &str_array(version, &["a", "b\0\0"]),
            ),
            kv(version, "x.f", 6, &1.5f32.to_le_bytes()),
            kv(version, "x.u64", 10, &7u64.to_le_bytes()),
        ];
        let tensors = if version == 3 {
            vec![tensor("blk.0.attn_q.weight", &[64, 64], 8)]
        } else {
            vec![]
        };
        let md = parse(&file(version, &kvs, &tensors)).unwrap();
        assert_eq!(md.version, version);
        assert_eq!(md.str("general.architecture"), Some("llama"));
        assert_eq!(md.get("llama.context_length").unwrap().as_u64(), Some(2048));
        assert_eq!(
            md.get("tokenizer.ggml.add_bos_token").unwrap().as_bool(),
            Some(true)
        );
        assert_eq!(
            md.get("tokenizer.ggml.bos_token_id").unwrap().as_i32(),
            Some(-1)
        );
        assert_eq!(md.get("x.f"), Some(&Value::F32(1.5)));
        assert_eq!(md.get("x.u64").unwrap().as_u64(), Some(7));
        // Trailing NULs are dropped, as candle's reader drops them.
        let tokens = md.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(tokens[1].as_str(), Some("b"));
        if version == 3 {
            let t = md.tensor("blk.0.attn_q.weight").unwrap();
            assert_eq!(t.dims, vec![64, 64]);
            assert_eq!(ggml_type_name(t.ggml_type), Some("Q8_0"));
        }
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let kvs = vec![
        kv(3, "general.architecture", 8, &string(3, b"qwen2")),
        kv(
            3,
            "tokenizer.ggml.tokens",
            9,
            &str_array(3, &["a", "bb", "ccc"]),
        ),
    ];
    let bytes = file(3, &kvs, &[tensor("t", &[4], 0)]);
    assert!(parse(&bytes).is_ok());
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // A reader shorter than the length it claims is an error too.
    assert!(Metadata::parse(&bytes[..20], bytes.len() as u64).is_err());
}

#[test]
fn absurd_counts_lengths_and_types_are_refused_before_allocating() {
    let mut huge_kv = b"GGUF".to_vec();
    huge_kv.extend(3u32.to_le_bytes());
    huge_kv.extend(0u64.to_le_bytes());
    huge_kv.extend(u64::MAX.to_le_bytes());
    assert!(parse(&huge_kv).unwrap_err().contains("metadata keys"));

    let mut huge_tensors = b"GGUF".to_vec();
    huge_tensors.extend(3u32.to_le_bytes());
    huge_tensors.extend((MAX_TENSORS + 1).to_le_bytes());
    huge_tensors.extend(0u64.to_le_bytes());
    assert!(parse(&huge_tensors).unwrap_err().contains("tensors"));

    // A string claiming 2^40 bytes, an array claiming 2^60 elements.
    let mut long = string(3, b"k");
    long.extend(8u32.to_le_bytes());
    long.extend((1u64 << 40).to_le_bytes());
    assert!(
        parse(&file(3, &[long], &[]))
            .unwrap_err()
            .contains("string")
    );
    let mut wide = string(3, b"k");
    wide.extend(9u32.to_le_bytes());
    wide.extend(0u32.to_le_bytes());
    wide.extend((1u64 << 60).to_le_bytes());
    assert!(parse(&file(3, &[wide], &[])).unwrap_err().contains("array"));

    assert!(
        parse(&file(3, &[kv(3, "k", 99, &[0])], &[]))
            .unwrap_err()
            .contains("type 99")
    );
    assert!(
        parse(&file(3, &[kv(3, "k", 7, &[2])], &[]))
            .unwrap_err()
            .contains("bool")
    );
    assert!(
        parse(&file(3, &[], &[tensor("t", &[1, 1, 1, 1, 1], 0)]))
            .unwrap_err()
            .contains("dimensions")
    );
    assert!(parse(b"GGML\x03\0\0\0").unwrap_err().contains("not a GGUF"));
    assert!(parse(b"GGUF\x04\0\0\0").unwrap_err().contains("version 4"));
}

#[test]
fn nesting_is_bounded() {
    // An array's value: element type, count, elements.
    let array_of = |inner: u32, element: Vec<u8>| {
        let mut v = inner.to_le_bytes().to_vec();
        v.extend(1u64.to_le_bytes());
        v.extend(element);
        v
    };
    let nested = |arrays: usize| {
        let mut value = array_of(4, 7u32.to_le_bytes().to_vec());
        for _ in 1..arrays {
            value = array_of(9, value);
        }
        file(3, &[kv(3, "k", 9, &value)], &[])
    };
    assert!(parse(&nested(MAX_DEPTH)).is_ok());
    let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
    assert!(err.contains("nested"), "{err}");
}
