//! The web dashboard: static files embedded in the binary (no JS build
//! chain; `dashboard/`), served at `/dashboard`, reading two JSON
//! documents with the key the user pastes in: `GET /v1/dashboard` (a
//! builder's key: its own app only) and `GET /operator/dashboard` (the
//! operator key).
//!
//! The pages run no code but their own (`Content-Security-Policy:
//! default-src 'self'`), keep the key in the tab's `sessionStorage` only,
//! and cannot be framed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sharenet_api::dashboard::{BuilderDashboard, OperatorDashboard};

use super::error::ApiError;
use crate::core::Core;
use crate::core::accounts::Principal;
use crate::core::error::Error;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /dashboard`.
pub(super) async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{file}`: the page's script and style sheet.
pub(super) async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "app.js" => Ok(file("text/javascript; charset=utf-8", APP_JS)),
        "style.css" => Ok(file("text/css; charset=utf-8", STYLE)),
        _ => Err(Error::NotFound(format!("no dashboard file {name:?}")).into()),
    }
}

/// `GET /v1/dashboard`: the caller's app.
pub(super) async fn builder_view(
    State(core): State<Arc<Core>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<BuilderDashboard>, ApiError> {
    Ok(Json(core.builder_dashboard(&principal.app).await?))
}

/// `GET /operator/dashboard`: the network.
pub(super) async fn operator_view(
    State(core): State<Arc<Core>>,
) -> Result<Json<OperatorDashboard>, ApiError> {
    Ok(Json(core.operator_dashboard().await?))
}
