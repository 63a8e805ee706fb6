//! The model catalog: the models this coordinator routes, by canonical id
//! (an OpenRouter-style slug such as `huggingfacetb/smollm2-135m-instruct`),
//! each with its tokenizer, chat template, context length, license and the
//! weight digests accepted for it.
//!
//! Storage: one JSON file (`catalog.json` in the data folder unless
//! `catalog_file` says otherwise), rewritten whole on every change (a
//! temporary file, fsync, rename), with each tokenizer beside it as
//! `tokenizers/<sha256>.json`. The file is per replica: with shared books
//! every replica loads its own copy (give them the same file); the CLI and
//! the operator API write the local one, and [`watch`] reloads it when
//! another writer changed it.
//!
//! The routing gate ([`Catalog::check`]): the registry asks it about every
//! offer of every advert. An offer whose name (id or canonical name) the
//! catalog does not know is not routable unless `allow_uncatalogued`; an
//! offer under a catalogued name with weights the catalog does not accept
//! is never routable.

mod entry;
pub mod known;
mod source;
mod store;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sharenet_api::catalog::{CatalogEntry, CatalogFile};
use sharenet_proto::{ModelKind, ModelOffer};

use entry::validate;
pub use entry::{
    CATALOG_VERSION, CatalogError, MAX_ALIASES, MAX_ID_LEN, MAX_MODELS, MAX_TEMPLATE_BYTES,
    MAX_TOKENIZER_BYTES, slug, valid_id, valid_name,
};
pub use source::{Naming, entry_from_path};

impl From<CatalogError> for crate::core::error::Error {
    fn from(e: CatalogError) -> Self {
        use crate::core::error::Error;
        match e {
            CatalogError::BadEntry(m) => Error::bad_request(m, None),
            CatalogError::Duplicate(_) => Error::bad_request(e.to_string(), Some("id")),
            CatalogError::Unknown(m) => Error::NotFound(format!("`{m}` is not in the catalog")),
            CatalogError::Read { .. } => Error::bad_request(e.to_string(), Some("path")),
            CatalogError::Write { .. } => Error::internal(e),
        }
    }
}

/// What the catalog says about one advertised offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A catalogued model (the canonical id), with weights it accepts (or
    /// an offer that cannot know its weights: an upstream server).
    Catalogued(String),
    /// A name the catalog does not know.
    Uncatalogued,
    /// A catalogued name with something the catalog does not accept
    /// (other weights, the other kind of model).
    Mismatch { id: String, why: &'static str },
}

/// The catalog as loaded: entries by id, every name (id and aliases) to
/// its id, and the prompt models built once per entry.
#[derive(Default)]
struct Loaded {
    entries: BTreeMap<String, Arc<CatalogEntry>>,
    names: HashMap<String, String>,
    prompts: HashMap<String, Arc<sharenet_prompt::PromptModel>>,
}

impl Loaded {
    fn build(entries: Vec<CatalogEntry>, dir: &Path) -> Self {
        let mut out = Self::default();
        for e in entries {
            for name in std::iter::once(&e.id).chain(&e.aliases) {
                out.names.insert(name.clone(), e.id.clone());
            }
            if let Some(p) = store::prompt_model(&e, dir) {
                out.prompts.insert(e.id.clone(), p);
            }
            out.entries.insert(e.id.clone(), Arc::new(e));
        }
        out
    }
}

/// The catalog: loaded once, read on every advert, changed by the
/// operator (CLI or API), each change written to the file before it
/// counts.
pub struct Catalog {
    path: PathBuf,
    allow_uncatalogued: bool,
    loaded: RwLock<Arc<Loaded>>,
    /// One change at a time (read, change, write, swap).
    writing: Mutex<()>,
    /// The file's length and modification time when last read or
    /// written, so [`Catalog::reload_if_changed`] notices another writer.
    seen: Mutex<Option<store::Stamp>>,
}

/// How often a running coordinator looks for changes another writer (the
/// CLI, a replica sharing the file) made to the catalog file: a `stat`
/// each time, a reload only on a change.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads `catalog` whenever its file changes, until `shutdown`.
pub async fn watch(catalog: Arc<Catalog>, shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(RELOAD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let c = catalog.clone();
        // Building prompt models parses tokenizers: off the async threads.
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
            tracing::warn!(%error, "catalog: the changed file was not loaded; the catalog stays as it was");
        }
    }
}

impl Catalog {
    /// Loads the catalog at `path` (none there: an empty catalog).
    pub fn open(path: &Path, allow_uncatalogued: bool) -> Result<Self, CatalogError> {
        let seen = store::stamp(path);
        let file = store::read(path)?;
        let dir = store::dir_of(path);
        Ok(Self {
            loaded: RwLock::new(Arc::new(Loaded::build(file.models, &dir))),
            path: path.to_path_buf(),
            allow_uncatalogued,
            writing: Mutex::new(()),
            seen: Mutex::new(seen),
        })
    }

    /// An empty catalog kept at `path` (nothing is read or written until
    /// a change).
    pub fn empty(path: &Path, allow_uncatalogued: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            allow_uncatalogued,
            loaded: RwLock::default(),
            writing: Mutex::new(()),
            seen: Mutex::new(None),
        }
    }

    fn now(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The file this catalog lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether adverts for models outside the catalog are routable.
    pub fn allows_uncatalogued(&self) -> bool {
        self.allow_uncatalogued
    }

    /// Every entry, by id.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        self.now().entries.values().map(|e| (**e).clone()).collect()
    }

    /// The entry `name` (an id or an alias) names.
    pub fn get(&self, name: &str) -> Option<Arc<CatalogEntry>> {
        let now = self.now();
        now.names
            .get(name)
            .and_then(|id| now.entries.get(id))
            .cloned()
    }

    /// The canonical id `name` (an id or an alias) stands for.
    pub fn resolve(&self, name: &str) -> Option<String> {
        self.now().names.get(name).cloned()
    }

    /// Every alias with the id it names.
    pub fn aliases(&self) -> BTreeMap<String, String> {
        self.now()
            .entries
            .values()
            .flat_map(|e| e.aliases.iter().map(|a| (a.clone(), e.id.clone())))
            .collect()
    }

    /// The prompt renderer and tokenizer of a catalogued model (built once
    /// when the catalog was loaded or the entry added): what the
    /// coordinator counts a request's tokens with. None for an unknown
    /// name or an entry without a usable tokenizer.
    pub fn prompt_model(&self, name: &str) -> Option<Arc<sharenet_prompt::PromptModel>> {
        let now = self.now();
        now.names
            .get(name)
            .and_then(|id| now.prompts.get(id))
            .cloned()
    }

    /// The gate: what the catalog says about an advertised offer, found
    /// by its id or its canonical name (a node accepts jobs under either),
    /// each matched against the catalog's ids only: aliases are for
    /// builders, and a node names the model by its canonical id.
    pub fn check(&self, offer: &ModelOffer) -> Verdict {
        let now = self.now();
        let by_id = now.entries.get(&offer.id);
        let by_canonical = now.entries.get(&offer.canonical);
        let entry = match (by_id, by_canonical) {
            (None, None) => return Verdict::Uncatalogued,
            (Some(a), Some(b)) if a.id != b.id => {
                return Verdict::Mismatch {
                    id: a.id.clone(),
                    why: "names two catalogued models",
                };
            }
            (Some(e), _) | (None, Some(e)) => e,
        };
        let kind = match offer.kind {
            ModelKind::Text => "text",
            ModelKind::Embedding => "embedding",
        };
        if entry.kind != kind {
            return Verdict::Mismatch {
                id: entry.id.clone(),
                why: "another kind of model",
            };
        }
        if let Some(digest) = offer.weights_sha256
            && !entry.weights.is_empty()
        {
            let digest = hex::encode(digest);
            if !entry.weights.iter().any(|w| w.weights_sha256 == digest) {
                return Verdict::Mismatch {
                    id: entry.id.clone(),
                    why: "weights the catalog does not accept",
                };
            }
        }
        Verdict::Catalogued(entry.id.clone())
    }

    /// Adds `entry` (checked: a slug id, names not taken, bounded fields),
    /// storing `tokenizer_json` beside the catalog and naming it in the
    /// entry. Written to the file before it counts.
    pub fn add(
        &self,
        entry: CatalogEntry,
        tokenizer_json: Option<&[u8]>,
    ) -> Result<CatalogEntry, CatalogError> {
        self.insert(entry, tokenizer_json, false)
    }

    /// As [`Catalog::add`], replacing the entry of the same id if there
    /// is one.
    pub fn replace(
        &self,
        entry: CatalogEntry,
        tokenizer_json: Option<&[u8]>,
    ) -> Result<CatalogEntry, CatalogError> {
        self.insert(entry, tokenizer_json, true)
    }

    fn insert(
        &self,
        mut entry: CatalogEntry,
        tokenizer_json: Option<&[u8]>,
        replace: bool,
    ) -> Result<CatalogEntry, CatalogError> {
        let _one = crate::core::sync::lock(&self.writing);
        let now = self.now();
        validate(&entry)?;
        for name in std::iter::once(&entry.id).chain(&entry.aliases) {
            match now.names.get(name) {
                Some(owner) if *owner == entry.id && replace => {}
                Some(owner) if *owner == entry.id => {
                    return Err(CatalogError::Duplicate(entry.id.clone()));
                }
                Some(owner) => {
                    return Err(CatalogError::BadEntry(format!(
                        "`{name}` already names `{owner}`"
                    )));
                }
                None => {}
            }
        }
        if now.entries.len() >= MAX_MODELS {
            return Err(CatalogError::BadEntry(format!(
                "the catalog holds {MAX_MODELS} models at most"
            )));
        }
        let dir = store::dir_of(&self.path);
        if let Some(json) = tokenizer_json {
            entry.tokenizer = store::put_tokenizer(&dir, json)?;
        } else if !entry.tokenizer.is_empty() && !store::has_tokenizer(&dir, &entry.tokenizer) {
            return Err(CatalogError::BadEntry(format!(
                "tokenizer {}: no such tokenizer beside the catalog (send tokenizer_json)",
                entry.tokenizer
            )));
        }
        let mut models: Vec<CatalogEntry> = now
            .entries
            .values()
            .filter(|e| e.id != entry.id)
            .map(|e| (**e).clone())
            .collect();
        models.push(entry.clone());
        self.commit(models, &dir)?;
        Ok(entry)
    }

    /// Removes the entry `id` (an alias is not enough: the id must be
    /// named).
    pub fn remove(&self, id: &str) -> Result<CatalogEntry, CatalogError> {
        let _one = crate::core::sync::lock(&self.writing);
        let now = self.now();
        let Some(gone) = now.entries.get(id).cloned() else {
            return Err(CatalogError::Unknown(id.to_owned()));
        };
        let models: Vec<CatalogEntry> = now
            .entries
            .values()
            .filter(|e| e.id != id)
            .map(|e| (**e).clone())
            .collect();
        self.commit(models, &store::dir_of(&self.path))?;
        Ok((*gone).clone())
    }

    /// Writes `models` to the file, then makes them the catalog.
    fn commit(&self, models: Vec<CatalogEntry>, dir: &Path) -> Result<(), CatalogError> {
        store::write(
            &self.path,
            &CatalogFile {
                version: CATALOG_VERSION,
                models: models.clone(),
            },
        )?;
        *crate::core::sync::lock(&self.seen) = store::stamp(&self.path);
        self.swap(Loaded::build(models, dir));
        Ok(())
    }

    fn swap(&self, loaded: Loaded) {
        let loaded = Arc::new(loaded);
        match self.loaded.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
    }

    /// Reloads the file if another writer changed it since this catalog
    /// last read or wrote it (the CLI beside a running coordinator, or a
    /// replica sharing the file). A file that no longer loads leaves the
    /// catalog as it was (the error says why). True when it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, CatalogError> {
        let _one = crate::core::sync::lock(&self.writing);
        let now = store::stamp(&self.path);
        let mut seen = crate::core::sync::lock(&self.seen);
        if now == *seen {
            return Ok(false);
        }
        *seen = now;
        drop(seen);
        let file = store::read(&self.path)?;
        let count = file.models.len();
        self.swap(Loaded::build(file.models, &store::dir_of(&self.path)));
        tracing::info!(models = count, path = %self.path.display(), "catalog: reloaded after a change to its file");
        Ok(true)
    }
}
