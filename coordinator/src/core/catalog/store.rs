//! The catalog on disk: `catalog.json` written whole and atomically
//! (temporary file, fsync, rename, fsync of the folder), tokenizers beside
//! it as `tokenizers/<sha256>.json`, and the prompt model built from an
//! entry and its tokenizer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sharenet_api::catalog::{CatalogEntry, CatalogFile};

use super::entry::{
    CATALOG_VERSION, CatalogError, MAX_MODELS, MAX_TOKENIZER_BYTES, is_sha256_hex, validate,
};
use super::source;

/// Largest catalog file read (10,000 entries of a few KB each).
const MAX_CATALOG_BYTES: u64 = 256 * 1024 * 1024;

/// The folder the catalog file (and its tokenizers) live in.
pub(super) fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn tokenizer_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("tokenizers").join(format!("{digest}.json"))
}

fn read_err(path: &Path, reason: impl std::fmt::Display) -> CatalogError {
    CatalogError::Read {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The catalog file at `path`; none there is an empty catalog.
pub(super) fn read(path: &Path) -> Result<CatalogFile, CatalogError> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CatalogFile {
                version: CATALOG_VERSION,
                models: Vec::new(),
            });
        }
        Err(e) => return Err(read_err(path, e)),
    };
    if len > MAX_CATALOG_BYTES {
        return Err(read_err(
            path,
            format!("larger than {MAX_CATALOG_BYTES} bytes"),
        ));
    }
    let text = std::fs::read(path).map_err(|e| read_err(path, e))?;
    let file: CatalogFile =
        serde_json::from_slice(&text).map_err(|e| read_err(path, format!("not a catalog: {e}")))?;
    if file.version != CATALOG_VERSION {
        return Err(read_err(
            path,
            format!(
                "catalog version {} (this coordinator reads {CATALOG_VERSION})",
                file.version
            ),
        ));
    }
    if file.models.len() > MAX_MODELS {
        return Err(read_err(path, format!("more than {MAX_MODELS} models")));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &file.models {
        validate(e).map_err(|err| read_err(path, err))?;
        for name in std::iter::once(&e.id).chain(&e.aliases) {
            if !seen.insert(name.as_str()) {
                return Err(read_err(path, format!("`{name}` is named twice")));
            }
        }
    }
    Ok(file)
}

/// Writes `body` to `path` atomically: a reader (or a crash) sees the old
/// file or the new one, never part of one.
fn write_atomic(path: &Path, body: &[u8]) -> Result<(), CatalogError> {
    let werr = |source| CatalogError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = dir_of(path);
    std::fs::create_dir_all(&dir).map_err(werr)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(werr)?;
    tmp.write_all(body).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    // The rename itself is durable once the folder is.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the catalog file.
pub(super) fn write(path: &Path, file: &CatalogFile) -> Result<(), CatalogError> {
    let mut body = serde_json::to_vec_pretty(file).map_err(|e| CatalogError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    body.push(b'\n');
    write_atomic(path, &body)
}

/// Stores a `tokenizer.json` beside the catalog; returns its digest (hex),
/// the name entries refer to it by.
pub(super) fn put_tokenizer(dir: &Path, json: &[u8]) -> Result<String, CatalogError> {
    if json.len() > MAX_TOKENIZER_BYTES {
        return Err(CatalogError::BadEntry(format!(
            "tokenizer_json: at most {MAX_TOKENIZER_BYTES} bytes"
        )));
    }
    if serde_json::from_slice::<serde_json::Value>(json).is_err() {
        return Err(CatalogError::BadEntry(
            "tokenizer_json: not JSON (a Hugging Face tokenizer.json)".into(),
        ));
    }
    let digest = hex::encode(sharenet_proto::sha256(json));
    let path = tokenizer_path(dir, &digest);
    if !path.exists() {
        write_atomic(&path, json)?;
    }
    Ok(digest)
}

pub(super) fn has_tokenizer(dir: &Path, digest: &str) -> bool {
    is_sha256_hex(digest) && tokenizer_path(dir, digest).exists()
}

/// The prompt model of `entry` (its tokenizer read from beside the
/// catalog), or None where it has no tokenizer or it does not load (then
/// logged: the model stays routable, its tokens uncounted by us).
pub(super) fn prompt_model(
    entry: &CatalogEntry,
    dir: &Path,
) -> Option<Arc<sharenet_prompt::PromptModel>> {
    if entry.tokenizer.is_empty() || !is_sha256_hex(&entry.tokenizer) {
        return None;
    }
    let path = tokenizer_path(dir, &entry.tokenizer);
    let built = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|json| source::prompt_model(entry, &json));
    match built {
        Ok(p) => Some(Arc::new(p)),
        Err(error) => {
            tracing::warn!(model = %entry.id, path = %path.display(), %error,
                "catalog: the model's tokenizer did not load; its tokens cannot be counted");
            None
        }
    }
}
