//! `mock-openai`: the fastest OpenAI-compatible server we can write, as the
//! upstream of the gateway benchmark (so the mock is never the
//! bottleneck). One thread, no parsing beyond what the answer needs.
//!
//! `POST /v1/chat/completions` answers `--tokens` tokens of " hello" (one token each in real
//! BPE vocabularies, so a node that counts them counts `--tokens`): as one
//! JSON body, or, with `"stream": true`, as SSE chunks (a usage chunk when
//! `stream_options.include_usage` is set, then `data: [DONE]`). A model
//! named `hold-N` waits N ms before its first token (the open-streams
//! test); the headers leave at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};

/// Streams now held back (`GET /stats`).
static HELD: AtomicU64 = AtomicU64::new(0);

#[derive(Parser)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Completion tokens per answer.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Worker threads (1 keeps the mock's CPU share small and countable).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let tokens = cli.tokens;
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |body: Bytes| chat(body, tokens)),
        )
        .route(
            "/stats",
            get(|| async { axum::Json(json!({"held": HELD.load(Ordering::SeqCst)})) }),
        )
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({"object": "list", "data": [{"id": "mock", "object": "model"}]}))
            }),
        );
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listen on {}", cli.listen))?;
    println!("mock-openai listening on {}", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.context("serve")
}

async fn chat(body: Bytes, tokens: u32) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let model = req["model"].as_str().unwrap_or("mock").to_string();
    // A rough prompt count: one token per 4 bytes of message text.
    let prompt_tokens = req["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| x["content"].as_str().map_or(1, |c| c.len() / 4 + 1))
                .sum::<usize>()
        })
        .unwrap_or(1);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens as usize,
    });
    if req["stream"].as_bool() != Some(true) {
        let text = " hello".repeat(tokens as usize);
        return axum::Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let hold = model
        .strip_prefix("hold-")
        .and_then(|n| n.parse::<u64>().ok())
        .map(Duration::from_millis);
    let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut out = String::with_capacity(160 * (tokens as usize + 3));
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                   "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    out.push_str(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ));
    for _ in 0..tokens {
        out.push_str(&chunk(json!({"content": " hello"}), Value::Null));
    }
    out.push_str(&chunk(json!({}), json!("stop")));
    if include_usage {
        out.push_str(&format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                   "model": model, "choices": [], "usage": usage})
        ));
    }
    out.push_str("data: [DONE]\n\n");
    let body = match hold {
        None => Body::from(out),
        Some(d) => {
            HELD.fetch_add(1, Ordering::SeqCst);
            Body::from_stream(futures::stream::once(async move {
                tokio::time::sleep(d).await;
                HELD.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Bytes::from(out))
            }))
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
