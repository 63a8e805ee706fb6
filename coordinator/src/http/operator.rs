//! The operator API (`/operator/*`, operator key only): builder apps, their
//! API keys and prepaid balances, routing rules, settlement, and the model
//! catalog (`catalog.rs`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use sharenet_api::List;
use sharenet_api::accounts::{
    AppObject, AppRouting, BalanceObject, Budgets, KeyObject, MarginObject, NewApp, NewKey,
    RateLimits, SettleRequest, StatementFormat, TopUpRequest,
};
use sharenet_api::statements::StatementObject;
use sharenet_ledger::{AppRecord, KeyRecord};
use sharenet_market::{Margin, Settlement};

use super::error::ApiError;
use super::request::parse_body;
use crate::core::error::Error;
use crate::core::{Core, now_ms};

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/operator/apps", post(create_app).get(list_apps))
        .route("/operator/apps/{app}", get(get_app))
        .route("/operator/apps/{app}/routing", put(set_routing))
        .route("/operator/apps/{app}/keys", post(create_key).get(list_keys))
        .route("/operator/apps/{app}/topup", post(top_up))
        .route("/operator/keys/{key_id}", delete(revoke_key))
        .route("/operator/settle", post(settle_period))
        .route("/operator/statements", get(list_statements))
        .route("/operator/dashboard", get(super::dashboard::operator_view))
        .route("/operator/statements/{label}", get(get_statement))
        .route(
            "/operator/catalog",
            get(super::catalog::list).post(super::catalog::add),
        )
        .route(
            "/operator/catalog/{*id}",
            get(super::catalog::get).delete(super::catalog::remove),
        )
}

/// A body that may be empty (then the type's default).
fn optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Error> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse_body(body)
    }
}

fn app_object(app: &AppRecord, balance: i128) -> AppObject {
    AppObject {
        object: "app".into(),
        id: app.id.clone(),
        builder: app.builder.clone(),
        name: app.name.clone(),
        margin: MarginObject {
            bps: app.margin.percent_bps,
            per_mtok_nano_usd: app.margin.per_mtok,
        },
        budgets: budgets_out(app.budgets),
        customer_budgets: budgets_out(app.customer_budgets),
        key_limits: limits_out(app.key_limits),
        customer_limits: limits_out(app.customer_limits),
        routing: routing_out(&app.routing),
        balance_nano_usd: balance.to_string(),
        created_at_ms: app.created_at_ms,
    }
}

fn key_object(k: &KeyRecord) -> KeyObject {
    KeyObject {
        object: "api_key".into(),
        id: k.id.clone(),
        app: k.app.clone(),
        budgets: budgets_out(k.budgets),
        created_at_ms: k.created_at_ms,
        revoked_at_ms: k.revoked_at_ms,
        key: None,
    }
}

// The books store their own budget, limit and routing types (the ledger
// knows no HTTP type); the operator API's are the same shape.

fn budgets_in(b: Budgets) -> sharenet_ledger::Budgets {
    let Budgets {
        daily,
        monthly,
        total,
    } = b;
    sharenet_ledger::Budgets {
        daily,
        monthly,
        total,
    }
}

fn budgets_out(b: sharenet_ledger::Budgets) -> Budgets {
    let sharenet_ledger::Budgets {
        daily,
        monthly,
        total,
    } = b;
    Budgets {
        daily,
        monthly,
        total,
    }
}

fn limits_in(l: RateLimits) -> sharenet_ledger::RateLimits {
    let RateLimits {
        requests_per_minute,
        tokens_per_minute,
    } = l;
    sharenet_ledger::RateLimits {
        requests_per_minute,
        tokens_per_minute,
    }
}

fn limits_out(l: sharenet_ledger::RateLimits) -> RateLimits {
    let sharenet_ledger::RateLimits {
        requests_per_minute,
        tokens_per_minute,
    } = l;
    RateLimits {
        requests_per_minute,
        tokens_per_minute,
    }
}

fn routing_in(r: AppRouting) -> sharenet_ledger::AppRouting {
    let AppRouting {
        private_pool,
        sensitive,
        spill_to_public,
        deny_data_collection,
        licenses,
    } = r;
    sharenet_ledger::AppRouting {
        private_pool,
        sensitive,
        spill_to_public,
        deny_data_collection,
        licenses,
    }
}

fn routing_out(r: &sharenet_ledger::AppRouting) -> AppRouting {
    let sharenet_ledger::AppRouting {
        private_pool,
        sensitive,
        spill_to_public,
        deny_data_collection,
        licenses,
    } = r.clone();
    AppRouting {
        private_pool,
        sensitive,
        spill_to_public,
        deny_data_collection,
        licenses,
    }
}

fn statement_object(s: &Settlement, newly_settled: Option<bool>) -> StatementObject {
    StatementObject {
        object: "statement".into(),
        label: s.statement().period.label(),
        statement: s.to_json(),
        signed_bytes: hex::encode(s.signed().to_bytes()),
        newly_settled,
    }
}

async fn create_app(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<AppObject>, ApiError> {
    let n: NewApp = parse_body(&body)?;
    let app = core
        .accounts
        .create_app(AppRecord {
            name: if n.name.is_empty() {
                n.id.clone()
            } else {
                n.name
            },
            id: n.id,
            builder: n.builder,
            margin: Margin {
                percent_bps: n.margin_bps,
                per_mtok: n.margin_per_mtok,
            },
            budgets: budgets_in(n.budgets),
            customer_budgets: budgets_in(n.customer_budgets),
            key_limits: limits_in(n.key_limits),
            customer_limits: limits_in(n.customer_limits),
            created_at_ms: now_ms(),
            routing: routing_in(n.routing),
        })
        .await?;
    Ok(Json(app_object(&app, 0)))
}

async fn list_apps(State(core): State<Arc<Core>>) -> Result<Json<List<AppObject>>, ApiError> {
    let apps = core.accounts.books().apps().map_err(Error::from)?;
    let data = apps
        .iter()
        .map(|a| app_object(a, core.accounts.balance(&a.id)))
        .collect();
    Ok(Json(List::new(data)))
}

fn app_of(core: &Core, app: &str) -> Result<AppRecord, Error> {
    core.accounts
        .app(app)
        .ok_or_else(|| Error::NotFound(format!("no app {app}")))
}

async fn get_app(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<Json<AppObject>, ApiError> {
    let record = app_of(&core, &app)?;
    Ok(Json(app_object(&record, core.accounts.balance(&app))))
}

/// `PUT /operator/apps/{app}/routing`: replaces the app's routing rules.
async fn set_routing(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<AppObject>, ApiError> {
    let routing: AppRouting = parse_body(&body)?;
    let record = core.accounts.set_routing(&app, routing_in(routing)).await?;
    Ok(Json(app_object(&record, core.accounts.balance(&app))))
}

async fn create_key(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<KeyObject>, ApiError> {
    let n: NewKey = optional_body(&body)?;
    let (plaintext, record) = core
        .accounts
        .create_key(&app, budgets_in(n.budgets), now_ms())
        .await?;
    // Shown once: only the hash is kept.
    Ok(Json(KeyObject {
        key: Some(plaintext),
        ..key_object(&record)
    }))
}

async fn list_keys(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<Json<List<KeyObject>>, ApiError> {
    app_of(&core, &app)?;
    let data = core.accounts.keys(&app).iter().map(key_object).collect();
    Ok(Json(List::new(data)))
}

async fn revoke_key(
    State(core): State<Arc<Core>>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyObject>, ApiError> {
    let k = core.accounts.revoke_key(&key_id, now_ms()).await?;
    Ok(Json(key_object(&k)))
}

async fn top_up(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<BalanceObject>, ApiError> {
    let t: TopUpRequest = parse_body(&body)?;
    let balance = core
        .accounts
        .top_up(&app, t.amount_nano_usd, now_ms())
        .await?;
    Ok(Json(BalanceObject {
        object: "balance".into(),
        app,
        balance_nano_usd: balance.to_string(),
    }))
}

async fn settle_period(
    State(core): State<Arc<Core>>,
    body: Bytes,
) -> Result<Json<StatementObject>, ApiError> {
    let b: SettleRequest = optional_body(&body)?;
    let (statement, fresh) = core.settle(b.at_ms).await?;
    Ok(Json(statement_object(&statement, Some(fresh))))
}

async fn list_statements(
    State(core): State<Arc<Core>>,
) -> Result<Json<List<StatementObject>>, ApiError> {
    let data = core
        .statements()
        .await?
        .iter()
        .map(|s| statement_object(s, None))
        .collect();
    Ok(Json(List::new(data)))
}

/// One statement as JSON (default) or CSV for a payout processor.
async fn get_statement(
    State(core): State<Arc<Core>>,
    Path(label): Path<String>,
    Query(f): Query<StatementFormat>,
) -> Result<Response, ApiError> {
    let s = core.statement(&label).await?;
    match f.format.as_deref() {
        None | Some("json") => Ok(Json(statement_object(&s, None)).into_response()),
        Some("csv") => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            s.to_csv(),
        )
            .into_response()),
        Some(other) => Err(ApiError::bad_request(
            format!("format {other:?} is not json or csv"),
            Some("format"),
        )),
    }
}
