//! The operator API's model catalog (`/operator/catalog`, operator key
//! only): list, add (an entry as JSON, or a model file or folder on the
//! coordinator's disk) and remove. Each change is written to this
//! replica's catalog file before it answers; with replicas, change each
//! (or share the file and restart them).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use sharenet_api::List;
use sharenet_api::catalog::{CatalogEntry, NewCatalogEntry};

use super::error::ApiError;
use super::request::parse_body;
use crate::core::Core;
use crate::core::catalog::{Naming, entry_from_path};
use crate::core::error::Error;

/// `GET /operator/catalog`.
pub(super) async fn list(State(core): State<Arc<Core>>) -> Json<List<CatalogEntry>> {
    Json(List::new(core.catalog.entries()))
}

/// `GET /operator/catalog/{id}`.
pub(super) async fn get(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    let entry = core
        .catalog
        .get(&id)
        .ok_or_else(|| Error::NotFound(format!("`{id}` is not in the catalog")))?;
    Ok(Json((*entry).clone()))
}

/// `POST /operator/catalog`: `{"path", "id", "license", "aliases"}` reads
/// the model from the coordinator's disk; `{"entry", "tokenizer_json"}`
/// adds an entry as given. A duplicate id, a bad slug, an unknown path or
/// an unreadable model is a 400 naming it.
pub(super) async fn add(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<CatalogEntry>, ApiError> {
    let new: NewCatalogEntry = parse_body(&body)?;
    let (entry, tokenizer) = match (new.path, new.entry) {
        (Some(path), None) => {
            let (Some(id), Some(license)) = (new.id, new.license) else {
                return Err(Error::bad_request(
                    "adding from a path needs `id` (a model slug) and `license` (an SPDX id)",
                    Some("id"),
                )
                .into());
            };
            let naming = Naming {
                id,
                license,
                aliases: new.aliases,
                kind: String::new(),
            };
            // Hashing the weights reads every byte: off the async threads.
            tokio::task::spawn_blocking(move || {
                entry_from_path(std::path::Path::new(&path), naming)
            })
            .await
            .map_err(Error::from)?
            .map(|(e, t)| (e, Some(t)))
            .map_err(Error::from)?
        }
        (None, Some(entry)) => (entry, new.tokenizer_json),
        _ => {
            return Err(Error::bad_request(
                "send either `path` (a model on the coordinator's disk) or `entry`",
                Some("path"),
            )
            .into());
        }
    };
    let catalog = core.catalog.clone();
    let added = tokio::task::spawn_blocking(move || {
        catalog.add(entry, tokenizer.as_deref().map(str::as_bytes))
    })
    .await
    .map_err(Error::from)?
    .map_err(Error::from)?;
    tracing::info!(model = %added.id, "catalog: model added");
    Ok(Json(added))
}

/// `DELETE /operator/catalog/{id}`.
pub(super) async fn remove(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    let catalog = core.catalog.clone();
    let removed = tokio::task::spawn_blocking(move || catalog.remove(&id))
        .await
        .map_err(Error::from)?
        .map_err(Error::from)?;
    tracing::info!(model = %removed.id, "catalog: model removed");
    Ok(Json(removed))
}
