//! The streamed answers' exact bytes over real HTTP (scripted nodes), ids
//! and times masked, against `wire_golden.txt` (recorded before the two
//! streaming loops became one relay): OpenAI's chunks for chat (with `n`,
//! tool calls and a node that dies mid-stream) and completions, and
//! Anthropic's events (text, tool calls, a node that dies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use sharenet_proto::ToolCall;

use crate::core::dispatch::tests::{KEY, Script, setup};

/// Long alphanumeric runs (job ids, peer ids) as `X`, `"created":N` as 0.
fn masked(body: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push('X');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in body.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    let mut s = out;
    while let Some(i) = s.find("\"created\":") {
        let start = i + "\"created\":".len();
        let end = start + s[start..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        s = format!("{}\"created@\":0{}", &s[..i], &s[end..]);
    }
    s
}

async fn capture(script: Script, path: &str, body: Value) -> String {
    let s = setup(vec![script]);
    let app = crate::http::app(s.core.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = tokio::time::timeout(Duration::from_secs(20), r.text())
        .await
        .unwrap()
        .unwrap();
    format!("{status}\n{}", masked(&text))
}

#[tokio::test]
async fn streamed_answers_are_byte_for_byte_the_recorded_ones() {
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    };
    let chat = |extra: Value| {
        let mut b = json!({"model": "m", "max_tokens": 8, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let a_tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let cases = vec![
        (
            "chat n=2 usage",
            Script::Serve(vec!["Hello", " world"]),
            "/v1/chat/completions",
            chat(json!({"n": 2, "stream_options": {"include_usage": true}})),
        ),
        (
            "chat",
            Script::Serve(vec!["Hello", " world"]),
            "/v1/chat/completions",
            chat(json!({})),
        ),
        (
            "chat dies",
            Script::DieMidStream(vec!["one", " two"]),
            "/v1/chat/completions",
            chat(json!({"stream_options": {"include_usage": true}})),
        ),
        (
            "chat calls",
            Script::Calls {
                calls: vec![call.clone()],
                honest_digest: true,
            },
            "/v1/chat/completions",
            chat(json!({"tools": tools, "stream_options": {"include_usage": true}})),
        ),
        (
            "completion",
            Script::Serve(vec!["Hello", " world"]),
            "/v1/completions",
            json!({"model": "m", "max_tokens": 8, "stream": true, "prompt": "hi",
                   "stream_options": {"include_usage": true}}),
        ),
        (
            "messages",
            Script::Serve(vec!["Hello", " world"]),
            "/v1/messages",
            chat(json!({})),
        ),
        (
            "messages dies",
            Script::DieMidStream(vec!["one", " two"]),
            "/v1/messages",
            chat(json!({})),
        ),
        (
            "messages calls",
            Script::Calls {
                calls: vec![
                    call.clone(),
                    ToolCall {
                        id: "call_2".into(),
                        ..call.clone()
                    },
                ],
                honest_digest: true,
            },
            "/v1/messages",
            chat(json!({"tools": a_tools})),
        ),
    ];
    let mut all = String::new();
    for (name, script, path, body) in cases {
        let mut got = capture(script, path, body).await;
        if name.contains("n=2") {
            // Two choices relay at once: their chunks may interleave.
            let mut lines: Vec<&str> = got.split('\n').collect();
            lines.sort();
            got = lines.join("\n");
        }
        all.push_str(&format!("=== {name}\n{got}\n"));
    }
    assert_eq!(
        keys_sorted(&all),
        keys_sorted(include_str!("wire_golden.txt"))
    );
}

/// Every `data:` line's JSON with its object keys in sorted order: the
/// order serde_json writes a `json!` object in depends on whether another
/// crate in the build turned on its `preserve_order` feature (a workspace
/// build does, `-p sharenet-coordinator` does not), and JSON objects are
/// unordered; everything else stays byte for byte.
fn keys_sorted(text: &str) -> String {
    fn canonical(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let fields: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&m[*k])))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }
            Value::Array(a) => format!(
                "[{}]",
                a.iter().map(canonical).collect::<Vec<_>>().join(",")
            ),
            other => other.to_string(),
        }
    }
    text.split('\n')
        .map(|line| {
            match line
                .strip_prefix("data: ")
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
            {
                Some(v) => format!("data: {}", canonical(&v)),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
