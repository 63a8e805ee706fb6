//! The operator API (`/operator/*`, operator key only): builder apps, their
//! API keys and prepaid balances, and settlement.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sharenet_ledger::{AppRecord, AppRouting, Budgets, KeyRecord, RateLimits};
use sharenet_market::{Margin, PeriodRule, SignedStatement};
use sharenet_proto::NanoUsd;

use crate::error::ApiError;
use crate::{Shared, now_ms};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/operator/apps", post(create_app).get(list_apps))
        .route("/operator/apps/{app}", get(get_app))
        .route("/operator/apps/{app}/routing", put(set_routing))
        .route("/operator/apps/{app}/keys", post(create_key).get(list_keys))
        .route("/operator/apps/{app}/topup", post(top_up))
        .route("/operator/keys/{key_id}", delete(revoke_key))
        .route("/operator/settle", post(settle_period))
        .route("/operator/statements", get(list_statements))
        .route("/operator/statements/{label}", get(get_statement))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"), None))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    id: String,
    builder: String,
    #[serde(default)]
    name: String,
    /// Basis points of provider cost (100 = 1%).
    #[serde(default)]
    margin_bps: u32,
    /// nano-USD per 1M tokens.
    #[serde(default)]
    margin_per_mtok: NanoUsd,
    #[serde(default)]
    budgets: Budgets,
    #[serde(default)]
    customer_budgets: Budgets,
    #[serde(default)]
    key_limits: RateLimits,
    #[serde(default)]
    customer_limits: RateLimits,
    /// Private pool, sensitive, spill-over; see [`AppRouting`].
    #[serde(default)]
    routing: AppRouting,
}

fn app_json(app: &AppRecord, balance: i128) -> Value {
    json!({
        "object": "app",
        "id": app.id,
        "builder": app.builder,
        "name": app.name,
        "margin": {"bps": app.margin.percent_bps, "per_mtok_nano_usd": app.margin.per_mtok},
        "budgets": app.budgets,
        "customer_budgets": app.customer_budgets,
        "key_limits": app.key_limits,
        "customer_limits": app.customer_limits,
        "routing": app.routing,
        "balance_nano_usd": balance.to_string(),
        "created_at_ms": app.created_at_ms,
    })
}

fn key_json(k: &KeyRecord) -> Value {
    json!({
        "object": "api_key", "id": k.id, "app": k.app, "budgets": k.budgets,
        "created_at_ms": k.created_at_ms, "revoked_at_ms": k.revoked_at_ms,
    })
}

async fn create_app(
    State(state): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let n: NewApp = parse(&body)?;
    let valid_id = !n.id.is_empty()
        && n.id.len() <= 64
        && n.id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_id {
        return Err(ApiError::bad_request(
            "id: 1 to 64 characters of a-z, A-Z, 0-9, - and _",
            Some("id"),
        ));
    }
    if n.builder.is_empty() {
        return Err(ApiError::bad_request(
            "builder must not be empty",
            Some("builder"),
        ));
    }
    if n.margin_bps > 100_000 {
        return Err(ApiError::bad_request(
            "margin_bps: at most 100000 (1000%)",
            Some("margin_bps"),
        ));
    }
    let app = state.accounts.create_app(AppRecord {
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
        budgets: n.budgets,
        customer_budgets: n.customer_budgets,
        key_limits: n.key_limits,
        customer_limits: n.customer_limits,
        created_at_ms: now_ms(),
        routing: n.routing,
    })?;
    Ok(Json(app_json(&app, 0)))
}

async fn list_apps(State(state): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let books = state.accounts.books().clone();
    let apps = books
        .apps()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let data: Vec<Value> = apps
        .iter()
        .map(|a| Ok(app_json(a, state.accounts.balance(&a.id)?)))
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn get_app(
    State(state): State<Arc<Shared>>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .accounts
        .app(&app)?
        .ok_or_else(|| ApiError::NotFound(format!("no app {app}")))?;
    Ok(Json(app_json(&record, state.accounts.balance(&app)?)))
}

/// `PUT /operator/apps/{app}/routing`: replaces the app's routing rules.
async fn set_routing(
    State(state): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let routing: AppRouting = parse(&body)?;
    let record = state.accounts.set_routing(&app, routing)?;
    Ok(Json(app_json(&record, state.accounts.balance(&app)?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    budgets: Budgets,
}

async fn create_key(
    State(state): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let n: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        parse(&body)?
    };
    let (plaintext, record) = state.accounts.create_key(&app, n.budgets, now_ms())?;
    let mut v = key_json(&record);
    // Shown once: only the hash is kept.
    v["key"] = json!(plaintext);
    Ok(Json(v))
}

async fn list_keys(
    State(state): State<Arc<Shared>>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.accounts.app(&app)?.is_none() {
        return Err(ApiError::NotFound(format!("no app {app}")));
    }
    let data: Vec<Value> = state.accounts.keys(&app)?.iter().map(key_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn revoke_key(
    State(state): State<Arc<Shared>>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let k = state.accounts.revoke_key(&key_id, now_ms())?;
    Ok(Json(key_json(&k)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUpBody {
    amount_nano_usd: NanoUsd,
}

async fn top_up(
    State(state): State<Arc<Shared>>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let t: TopUpBody = parse(&body)?;
    let balance = state.accounts.top_up(&app, t.amount_nano_usd, now_ms())?;
    Ok(Json(
        json!({"object": "balance", "app": app, "balance_nano_usd": balance.to_string()}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    /// Any moment inside the period to settle; default: the last period
    /// that has ended.
    at_ms: Option<u64>,
}

async fn settle_period(
    State(state): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: SettleBody = if body.is_empty() {
        SettleBody::default()
    } else {
        parse(&body)?
    };
    let rule: PeriodRule = state.period_rule;
    let now = now_ms();
    let bad = |e: sharenet_market::MarketError| ApiError::bad_request(e.to_string(), Some("at_ms"));
    let period = match b.at_ms {
        Some(at) => rule.period_of(at).map_err(bad)?,
        None => {
            let current = rule.period_of(now).map_err(bad)?;
            rule.period_of(current.start_ms.saturating_sub(1))
                .map_err(bad)?
        }
    };
    let label = period.label();
    let books = state.accounts.books().clone();
    let key = state.identity.signing_key().clone();
    let (statement, fresh) = tokio::task::spawn_blocking(move || {
        crate::settle::settle(&books, &key, period, &label, now)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let mut v = statement_json(&statement);
    v["newly_settled"] = json!(fresh);
    Ok(Json(v))
}

fn statement_json(s: &SignedStatement) -> Value {
    json!({
        "object": "statement",
        "label": s.statement().period.label(),
        "statement": s.to_json(),
        "signed_bytes": hex::encode(s.to_bytes()),
    })
}

async fn list_statements(State(state): State<Arc<Shared>>) -> Result<Json<Value>, ApiError> {
    let records = state
        .accounts
        .books()
        .statements()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let data: Vec<Value> = records
        .iter()
        .map(|r| {
            SignedStatement::from_bytes(&r.statement)
                .map(|s| statement_json(&s))
                .map_err(|e| ApiError::Internal(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Format {
    format: Option<String>,
}

/// One statement as JSON (default) or CSV for a payout processor.
async fn get_statement(
    State(state): State<Arc<Shared>>,
    Path(label): Path<String>,
    axum::extract::Query(f): axum::extract::Query<Format>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let record = state
        .accounts
        .books()
        .statement(&label)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("period {label} is not settled")))?;
    let s = SignedStatement::from_bytes(&record.statement)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match f.format.as_deref() {
        None | Some("json") => Ok(Json(statement_json(&s)).into_response()),
        Some("csv") => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            s.to_csv(),
        )
            .into_response()),
        Some(other) => Err(ApiError::bad_request(
            format!("format {other:?} is not json or csv"),
            Some("format"),
        )),
    }
}
