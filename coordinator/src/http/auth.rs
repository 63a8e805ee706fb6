//! Who is calling: the builder's API key on the builder endpoints (the
//! principal goes into the request's extensions), the operator key on
//! `/operator/*`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sharenet_proto::sha256;

use super::error::ApiError;
use crate::core::Core;
use crate::core::error::Error;

/// The API key: `Authorization: Bearer <key>` (OpenAI's clients), else
/// `x-api-key: <key>` (Anthropic's).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Builder endpoints: the API key names the principal.
pub(super) async fn authenticate(
    State(core): State<Arc<Core>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = bearer(request.headers()) else {
        return Err(Error::Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)".into(),
        )
        .into());
    };
    let principal = core.accounts.authenticate(key)?;
    request.extensions_mut().insert(principal.clone());
    let mut response = next.run(request).await;
    // For the access log.
    response.extensions_mut().insert(principal);
    Ok(response)
}

/// `/operator/*`: the operator key only.
pub(super) async fn operator_auth(
    State(core): State<Arc<Core>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = core.operator_key.as_deref() else {
        return Err(
            Error::NotFound("the operator API is off (no operator_key configured)".into()).into(),
        );
    };
    match bearer(request.headers()) {
        // Compared as hashes, so the comparison takes the same time
        // whatever prefix matches.
        Some(k) if sha256(k.as_bytes()) == sha256(expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(Error::Forbidden("the operator key is required".into()).into()),
    }
}
