//! `sharenet-coordinator catalog add|list|remove`: the model catalog file
//! of a coordinator's config, changed on disk (a running coordinator
//! reads it at start; `/operator/catalog` changes a running one).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use sharenet_coordinator::config;
use sharenet_coordinator::core::catalog::{Catalog, Naming, entry_from_path};

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Add a model read from its files: a .gguf file or a Hugging Face
    /// folder (tokenizer.json, config.json, *.safetensors). Its weights
    /// are hashed; nodes serving other weights under its id are not
    /// routed to.
    Add {
        /// The .gguf file or the model folder.
        path: PathBuf,
        /// The canonical id, an OpenRouter-style slug
        /// (`huggingfacetb/smollm2-135m-instruct`).
        #[arg(long)]
        id: String,
        /// The weights' license, an SPDX id (`apache-2.0`).
        #[arg(long)]
        license: String,
        /// Another name builders may use for it (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// `text` or `embedding` (default: from the architecture).
        #[arg(long)]
        kind: Option<String>,
        /// Replace the entry of the same id.
        #[arg(long)]
        replace: bool,
    },
    /// List the catalog.
    List {
        /// The entries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a model by its id.
    Remove { id: String },
}

/// Runs a catalog command against the catalog of the config at `config`.
pub fn run(config: &Path, command: CatalogCommand) -> anyhow::Result<()> {
    let (path, allow) = config::catalog_of(config)?;
    let catalog = Catalog::open(&path, allow)
        .with_context(|| format!("load the catalog {}", path.display()))?;
    match command {
        CatalogCommand::Add {
            path: model,
            id,
            license,
            aliases,
            kind,
            replace,
        } => {
            eprintln!("reading and hashing {} ...", model.display());
            let (entry, tokenizer) = entry_from_path(
                &model,
                Naming {
                    id,
                    license,
                    aliases,
                    kind: kind.unwrap_or_default(),
                },
            )
            .context("read the model")?;
            let entry = if replace {
                catalog.replace(entry, Some(tokenizer.as_bytes()))
            } else {
                catalog.add(entry, Some(tokenizer.as_bytes()))
            }
            .context("add the model to the catalog")?;
            println!("added {} to {}", entry.id, path.display());
            for w in &entry.weights {
                println!(
                    "  {} {}: weights sha256 {}",
                    w.format, w.quantization, w.weights_sha256
                );
            }
            println!(
                "  context length {}, license {}",
                entry.context_length, entry.license
            );
            println!("restart the coordinator (or POST /operator/catalog) for it to take effect");
        }
        CatalogCommand::List { json } => {
            let entries = catalog.entries();
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("the catalog {} is empty", path.display());
            } else {
                for e in entries {
                    let weights: Vec<String> = e
                        .weights
                        .iter()
                        .map(|w| {
                            format!(
                                "{}/{} {}",
                                w.format,
                                w.quantization,
                                short(&w.weights_sha256)
                            )
                        })
                        .collect();
                    println!(
                        "{}  {}  ctx {}  {}  tokenizer {}  weights [{}]  aliases [{}]",
                        e.id,
                        e.kind,
                        e.context_length,
                        e.license,
                        if e.tokenizer.is_empty() {
                            "none"
                        } else {
                            short(&e.tokenizer)
                        },
                        weights.join(", "),
                        e.aliases.join(", ")
                    );
                }
            }
        }
        CatalogCommand::Remove { id } => {
            catalog
                .remove(&id)
                .with_context(|| format!("remove from {}", path.display()))?;
            println!("removed {id} from {}", path.display());
        }
    }
    Ok(())
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}
