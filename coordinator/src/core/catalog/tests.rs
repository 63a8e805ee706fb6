#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sharenet_api::catalog::CountedBy;
use sharenet_p2p::Identity;
use sharenet_proto::{Advert, ModelKind, ModelOffer, SignedAdvert};

use super::*;
use crate::core::registry::{Lookup, Registry};

/// A word-level tokenizer small enough to write inline.
const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":3,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":4,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2,"<s>":3,"</s>":4},"unk_token":"<unk>"}}"#;

/// A Hugging Face folder of a (meaningless) tiny llama: config, tokenizer
/// and one small safetensors file whose bytes depend on `seed`.
pub(crate) fn hf_folder(dir: &Path, seed: u8) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"llama","max_position_embeddings":256,"bos_token_id":3,"eos_token_id":4}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token":"<s>","eos_token":"</s>","chat_template":"{% for m in messages %}{{ m['content'] }} {% endfor %}"}"#,
    )
    .unwrap();
    let header =
        br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[seed; 16]);
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    dir.to_path_buf()
}

fn naming(id: &str) -> Naming {
    Naming {
        id: id.into(),
        license: "Apache-2.0".into(),
        aliases: vec!["tiny".into()],
        kind: String::new(),
    }
}

fn offer(id: &str, canonical: &str, digest: Option<[u8; 32]>) -> ModelOffer {
    ModelOffer {
        id: id.into(),
        price_in: 1,
        price_out: 2,
        context_length: 64,
        kind: ModelKind::Text,
        quantization: String::new(),
        tokens_per_sec: 0,
        weights_sha256: digest,
        capabilities: Default::default(),
        license: String::new(),
        canonical: canonical.into(),
    }
}

fn advert(id: &Identity, models: Vec<ModelOffer>) -> Vec<u8> {
    SignedAdvert::sign(
        Advert {
            node: id.public_key(),
            models,
            gpus: Vec::new(),
            region: String::new(),
            relayed: false,
            keeps_prompts: false,
            max_concurrency: 1,
            queue_depth: 0,
            seq: 1,
            issued_at_ms: 1000,
            expires_at_ms: 6000,
        },
        id.signing_key(),
    )
    .unwrap()
    .to_bytes()
}

/// A catalog holding the fixture folder as `test/tiny`, and the digest.
fn catalog_with_tiny(dir: &Path, allow: bool) -> (Arc<Catalog>, [u8; 32]) {
    let catalog = Catalog::open(&dir.join("data/catalog.json"), allow).unwrap();
    let (entry, tokenizer) =
        entry_from_path(&hf_folder(&dir.join("tiny"), 1), naming("test/tiny")).unwrap();
    let added = catalog.add(entry, Some(tokenizer.as_bytes())).unwrap();
    let digest: [u8; 32] = hex::decode(&added.weights[0].weights_sha256)
        .unwrap()
        .try_into()
        .unwrap();
    (Arc::new(catalog), digest)
}

#[test]
fn a_folder_is_added_listed_reloaded_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/catalog.json");
    let (catalog, digest) = catalog_with_tiny(dir.path(), false);
    let entries = catalog.entries();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e.id.as_str(), e.license.as_str()),
        ("test/tiny", "apache-2.0")
    );
    assert_eq!(e.context_length, 256);
    assert_eq!(e.kind, "text");
    assert_eq!(e.weights[0].format, "safetensors");
    // The advert's digest: SHA-256 over the weights files in order.
    let weights = std::fs::read(dir.path().join("tiny/model.safetensors")).unwrap();
    assert_eq!(digest, sharenet_proto::sha256(&weights));
    assert_eq!(e.weights[0].files[0].sha256, hex::encode(digest));
    // The tokenizer is stored beside the catalog, by digest.
    let tok = dir
        .path()
        .join("data/tokenizers")
        .join(format!("{}.json", e.tokenizer));
    assert_eq!(std::fs::read_to_string(tok).unwrap(), TOKENIZER);
    assert!(catalog.prompt_model("test/tiny").is_some(), "built at add");
    assert!(catalog.prompt_model("tiny").is_some(), "found by alias");
    assert_eq!(catalog.resolve("tiny").as_deref(), Some("test/tiny"));

    // Durable: a fresh load sees it, prompt model included; no temp files.
    let again = Catalog::open(&path, false).unwrap();
    assert_eq!(again.entries(), entries);
    assert!(again.prompt_model("test/tiny").is_some());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "catalog.json" && n != "tokenizers")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    again.remove("test/tiny").unwrap();
    assert!(Catalog::open(&path, false).unwrap().entries().is_empty());
    assert!(again.prompt_model("test/tiny").is_none());
}

#[test]
fn bad_input_is_refused_naming_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, _) = catalog_with_tiny(dir.path(), false);
    let folder = hf_folder(&dir.path().join("other"), 2);
    let add = |id: &str, license: &str, aliases: &[&str]| {
        let (entry, tok) = entry_from_path(
            &folder,
            Naming {
                id: id.into(),
                license: license.into(),
                aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
                kind: String::new(),
            },
        )?;
        catalog.add(entry, Some(tok.as_bytes()))
    };
    let err = |r: Result<CatalogEntry, CatalogError>| r.unwrap_err().to_string();
    assert!(err(add("test/tiny", "mit", &[])).contains("already in the catalog"));
    assert!(err(add("Test Tiny", "mit", &[])).contains("not a model slug"));
    assert!(err(add("no-org", "mit", &[])).contains("not a model slug"));
    assert!(err(add("test/other", "mit", &["tiny"])).contains("`tiny` already names `test/tiny`"));
    assert!(err(add("test/other", "not spdx", &[])).contains("license"));
    assert!(err(add("test/other", "mit", &["Bad Alias"])).contains("alias"));
    let missing = entry_from_path(&dir.path().join("nope.gguf"), naming("test/x")).unwrap_err();
    assert!(
        missing.to_string().contains("no such file or folder"),
        "{missing}"
    );
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf at all").unwrap();
    let unreadable = entry_from_path(&junk, naming("test/x")).unwrap_err();
    assert!(
        unreadable.to_string().contains("not a readable GGUF"),
        "{unreadable}"
    );
    // An entry naming a tokenizer that is not there.
    let (mut e, _) = entry_from_path(&folder, naming("test/other")).unwrap();
    e.aliases.clear();
    e.tokenizer = "ab".repeat(32);
    assert!(err(catalog.add(e, None)).contains("no such tokenizer"));
    // A catalog file someone broke is refused at load, naming the file.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"version":1,"models":[{"id":"x"}]}"#).unwrap();
    let e = Catalog::open(&broken, false).err().unwrap().to_string();
    assert!(e.contains("broken.json"), "{e}");
    assert_eq!(catalog.entries().len(), 1, "nothing half-added");
}

#[test]
fn the_gate_names_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, digest) = catalog_with_tiny(dir.path(), false);
    let ok = Verdict::Catalogued("test/tiny".into());
    assert_eq!(catalog.check(&offer("test/tiny", "", Some(digest))), ok);
    assert_eq!(
        catalog.check(&offer("local-name", "test/tiny", Some(digest))),
        ok
    );
    // An upstream server cannot know its weights: the name decides.
    assert_eq!(catalog.check(&offer("test/tiny", "", None)), ok);
    assert_eq!(
        catalog.check(&offer("other", "", Some(digest))),
        Verdict::Uncatalogued
    );
    // Aliases are for builders: a node names the model by its id.
    assert_eq!(
        catalog.check(&offer("tiny", "", Some(digest))),
        Verdict::Uncatalogued
    );
    assert!(matches!(
        catalog.check(&offer("test/tiny", "", Some([9; 32]))),
        Verdict::Mismatch { .. }
    ));
    let mut embedding = offer("test/tiny", "", Some(digest));
    embedding.kind = ModelKind::Embedding;
    assert!(matches!(
        catalog.check(&embedding),
        Verdict::Mismatch { .. }
    ));
}

/// Issue 26, item 1 (attack): a rogue node advertised a model no one
/// vetted, or a vetted model's name over other weights, and was routed to
/// like any other; its token counts were taken as given.
#[test]
fn a_rogue_nodes_uncatalogued_or_mismatched_offers_are_not_routable() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, digest) = catalog_with_tiny(dir.path(), false);
    let reg = Registry::default().with_catalog(catalog);
    let (honest, rogue, impostor) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    reg.ingest(
        honest.peer_id(),
        &advert(&honest, vec![offer("local", "test/tiny", Some(digest))]),
        1000,
    )
    .unwrap();
    reg.ingest(
        rogue.peer_id(),
        &advert(&rogue, vec![offer("rogue-model", "", None)]),
        1000,
    )
    .unwrap();
    reg.ingest(
        impostor.peer_id(),
        &advert(&impostor, vec![offer("test/tiny", "", Some([9; 32]))]),
        1000,
    )
    .unwrap();
    assert!(matches!(
        reg.lookup("rogue-model", 2000),
        Lookup::UnknownModel
    ));
    let Lookup::Found(found) = reg.lookup("test/tiny", 2000) else {
        panic!("the honest node serves test/tiny");
    };
    assert_eq!(found.len(), 1, "the impostor is not among them");
    assert_eq!(found[0].advert.node, honest.public_key());
    // Listed under the catalog id, whatever its local name.
    assert_eq!(found[0].offer.id, "test/tiny");
    assert_eq!(found[0].counted_by, CountedBy::Coordinator);
    assert!(matches!(reg.lookup("local", 2000), Lookup::UnknownModel));
    assert_eq!(reg.stats.uncatalogued.load(Ordering::Relaxed), 1);
    assert_eq!(reg.stats.catalog_mismatch.load(Ordering::Relaxed), 1);
    // Counted at every advert, logged once per (node, model).
    let mut again = advert(&rogue, vec![offer("rogue-model", "", None)]);
    again = {
        let mut a = SignedAdvert::from_bytes(&again).unwrap().into_advert();
        a.seq = 2;
        SignedAdvert::sign(a, rogue.signing_key())
            .unwrap()
            .to_bytes()
    };
    reg.ingest(rogue.peer_id(), &again, 1000).unwrap();
    assert_eq!(reg.stats.uncatalogued.load(Ordering::Relaxed), 2);
}

#[test]
fn allowed_uncatalogued_offers_route_but_are_counted_by_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, _) = catalog_with_tiny(dir.path(), true);
    let reg = Registry::default().with_catalog(catalog);
    let rogue = Identity::generate();
    reg.ingest(
        rogue.peer_id(),
        &advert(&rogue, vec![offer("rogue-model", "", None)]),
        1000,
    )
    .unwrap();
    let Lookup::Found(found) = reg.lookup("rogue-model", 2000) else {
        panic!("allowed, so routable");
    };
    assert_eq!(found[0].counted_by, CountedBy::Node);
    let offer = reg
        .offer_of(&rogue.public_key(), "rogue-model", 2000)
        .unwrap();
    assert_eq!(offer.counted_by, CountedBy::Node);
    // Other weights under a catalogued id stay refused even then.
    let impostor = Identity::generate();
    reg.ingest(
        impostor.peer_id(),
        &advert(&impostor, vec![offer_named("test/tiny")]),
        1000,
    )
    .unwrap();
    assert!(matches!(
        reg.lookup("test/tiny", 2000),
        Lookup::UnknownModel
    ));
}

fn offer_named(id: &str) -> ModelOffer {
    offer(id, "", Some([9; 32]))
}

/// The real SmolLM2 GGUF, where scripts/setup-test-deps put it: added
/// from the file with its own tokenizer and template, and the digest the
/// project publishes.
#[test]
fn the_real_smollm2_gguf_is_added_from_its_file() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let gguf = std::env::var_os("SHARENET_SMOLLM2_GGUF").map_or(gguf, PathBuf::from);
    if !gguf.exists() {
        eprintln!(
            "skipped: no SmolLM2 GGUF at {} (scripts/setup-test-deps)",
            gguf.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog.json"), false).unwrap();
    let (entry, tok) = entry_from_path(&gguf, naming(known::SMOLLM2)).unwrap();
    let e = catalog.add(entry, Some(tok.as_bytes())).unwrap();
    assert_eq!(e.weights[0].format, "gguf");
    assert_eq!(e.weights[0].quantization, "Q4_1");
    assert_eq!(
        e.weights[0].weights_sha256,
        known::PROJECT_MODELS[1].weights_sha256
    );
    assert!(e.chat_template.is_some());
    assert!(catalog.prompt_model(known::SMOLLM2).is_some());
}

#[test]
fn seeding_writes_the_projects_models_once() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog.json"), false).unwrap();
    let lines = known::seed(&catalog, &[dir.path().to_path_buf()], true).unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ids: Vec<String> = catalog.entries().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, [known::SMOLLM2, known::MINILM, known::TINY_LLAMA]);
    assert_eq!(
        catalog.resolve("tiny-llama").as_deref(),
        Some(known::TINY_LLAMA)
    );
    assert!(known::seed(&catalog, &[], true).unwrap().is_empty(), "once");
}
