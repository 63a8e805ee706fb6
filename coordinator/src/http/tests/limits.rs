//! The constraint compiler's schema limits at request validation (issue
//! 26, item 6): a request over them is the builder's 400, naming the
//! field, before any planning, so no node ever refuses it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::core::error::Error;
use crate::http::request::{chat_job, parse_body};

#[test]
fn the_http_layer_refuses_schemas_over_the_nodes_limits_naming_the_field() {
    // The same limits, at request validation: a 400 to the builder before
    // any planning.
    let wide: serde_json::Map<String, serde_json::Value> = (0
        ..=sharenet_proto::MAX_OBJECT_PROPERTIES)
        .map(|i| (format!("p{i}"), serde_json::json!({})))
        .collect();
    let schema = serde_json::json!({"type": "object", "properties": wide});
    let base = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let mut format = base.clone();
    format["response_format"] =
        serde_json::json!({"type": "json_schema", "json_schema": {"name": "w", "schema": schema}});
    let mut tools = base;
    tools["tools"] =
        serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": schema}}]);
    for (body, field) in [(format, "response_format"), (tools, "tools")] {
        let parsed = parse_body(&serde_json::to_vec(&body).unwrap()).unwrap();
        let Err(err) = chat_job(parsed) else {
            panic!("{field}: not refused");
        };
        assert!(
            matches!(&err, Error::BadRequest { param: Some(p), .. } if p.starts_with(field)),
            "{err:?}"
        );
    }
}
