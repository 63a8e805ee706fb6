use super::*;

#[test]
fn streamed_call_fragments_assemble_by_index() {
    let mut a = CallAssembler::new("j".into());
    a.add(&[
        json!({"index": 0, "id": "call_a", "function": {"name": "get_weather", "arguments": ""}}),
    ])
    .unwrap();
    a.add(&[json!({"index": 0, "function": {"arguments": "{\"city\": "}})])
        .unwrap();
    a.add(&[json!({"index": 1, "function": {"name": "now"}})])
        .unwrap();
    a.add(&[json!({"index": 0, "function": {"name": "get_weather", "arguments": "\"Paris\"}"}})])
        .unwrap();
    let calls = a.finish();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id, "call_a");
    // llama-cpp-python repeats the name with every fragment.
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, r#"{"city": "Paris"}"#);
    assert_eq!(calls[1].id, "call_j_1");
    assert_eq!(calls[1].arguments, "{}");
    assert!(a.add(&[json!({"index": 100_000})]).is_err());
}

fn upstream() -> Upstream {
    Upstream::new(UpstreamConfig {
        base_url: "http://up/v1".into(),
        model: "served".into(),
        api_key: None,
        context_length: 4096,
        timeout: std::time::Duration::from_secs(1),
        capabilities: Default::default(),
        tokenizer: None,
    })
    .unwrap()
}

fn job(input: JobInput) -> JobRequest {
    JobRequest {
        job_id: sharenet_proto::JobId([1; 16]),
        coordinator: [2; 32],
        model: "m".into(),
        input,
        params: sharenet_proto::SamplingParams::default(),
        tools: None,
        response_format: None,
        traceparent: None,
    }
}

#[test]
fn messages_and_tools_go_out_in_openai_shapes() {
    let mut m = ChatMessage::new("assistant", "");
    m.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "f".into(),
        arguments: "{}".into(),
    });
    let mut result = ChatMessage::new("tool", "sunny");
    result.tool_call_id = Some("call_1".into());
    let mut j = job(JobInput::Chat {
        messages: vec![ChatMessage::new("user", "hi"), m, result],
    });
    j.params.seed = Some(7);
    j.params.stop = vec!["END".into()];
    j.params.top_k = 5;
    j.params.min_p = 0.5;
    j.params.repetition_penalty = 1.25;
    j.params.presence_penalty = 0.5;
    j.params.frequency_penalty = -0.5;
    j.params.logit_bias = vec![(7, 2.5), (50, -100.0)];
    j.tools = Some(Tools {
        specs: vec![
            sharenet_proto::ToolSpec {
                name: "f".into(),
                description: String::new(),
                parameters: Value::Null,
                strict: false,
            },
            sharenet_proto::ToolSpec {
                name: "g".into(),
                description: "gets".into(),
                parameters: json!({"type": "object"}),
                strict: true,
            },
        ],
        choice: sharenet_proto::ToolChoice::Function("f".into()),
        parallel: false,
    });
    j.response_format = Some(sharenet_proto::ResponseFormat::JsonSchema {
        name: "w".into(),
        schema: json!({"type": "object"}),
        strict: false,
    });
    let (url, body) = upstream().body(&j).unwrap();
    assert_eq!(url, "http://up/v1/chat/completions");
    // What the node sent when it wrote the body by hand.
    let expected = json!({
        "model": "served", "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": j.params.max_tokens, "temperature": 1.0, "top_p": 1.0,
        "seed": 7, "stop": ["END"], "top_k": 5, "min_p": 0.5, "repeat_penalty": 1.25,
        "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "logit_bias": {"7": 2.5, "50": -100.0},
        "tools": [
            {"type": "function", "function": {"name": "f"}},
            {"type": "function", "function": {"name": "g", "description": "gets",
                "parameters": {"type": "object"}, "strict": true}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": false}},
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
        ]
    });
    assert_eq!(body, expected);

    // A prompt job with the defaults: only what is set, and the choice
    // and formats in their string and object shapes.
    let mut j = job(JobInput::Prompt {
        prompt: "Once".into(),
    });
    j.response_format = Some(sharenet_proto::ResponseFormat::JsonObject);
    let (url, body) = upstream().body(&j).unwrap();
    assert_eq!(url, "http://up/v1/completions");
    assert_eq!(
        body,
        json!({"model": "served", "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": j.params.max_tokens, "temperature": 1.0, "top_p": 1.0,
            "response_format": {"type": "json_object"}, "prompt": "Once"})
    );
    for (choice, wire) in [
        (sharenet_proto::ToolChoice::Auto, json!("auto")),
        (sharenet_proto::ToolChoice::None, json!("none")),
        (sharenet_proto::ToolChoice::Required, json!("required")),
    ] {
        let t = Tools {
            specs: Vec::new(),
            choice,
            parallel: true,
        };
        let (_, c, parallel) = tools_fields(&t);
        assert_eq!(serde_json::to_value(c).unwrap(), wire);
        assert_eq!(parallel, None);
    }
    assert!(
        upstream()
            .body(&job(JobInput::Embed {
                inputs: vec!["x".into()]
            }))
            .is_err()
    );
}

/// What the fake server streams: content chunks, then (if asked) the
/// calls' fragments.
const CHUNKS: [&str; 7] = ["Hello", " world", ",", " this", " is", " honest", "."];

/// An OpenAI-compatible server that streams [`CHUNKS`] (and a tool call
/// when the request offers tools) and claims `claim` completion tokens in
/// its `usage`: in the stream when `usage_in_stream`, else only in
/// non-streamed answers (as llama-cpp-python does), which the node's
/// prompt-size probe reads.
async fn lying_server(claim: u32, usage_in_stream: bool) -> String {
    use axum::routing::post;
    let answer = move |axum::Json(body): axum::Json<Value>| async move {
        let usage =
            json!({"prompt_tokens": 5, "completion_tokens": claim, "total_tokens": 5 + claim});
        if body["stream"] != json!(true) {
            let v = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "length"}], "usage": usage});
            return ([("content-type", "application/json")], v.to_string());
        }
        let mut sse = String::new();
        let mut event = |v: Value| sse.push_str(&format!("data: {v}\n\n"));
        for c in CHUNKS {
            event(
                json!({"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": null}]}),
            );
        }
        if body.get("tools").is_some() {
            for args in ["{\"city\": ", "\"Paris\"}"] {
                event(
                    json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                    "id": "call_x", "function": {"name": "get_weather", "arguments": args}}]}}]}),
                );
            }
        }
        event(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
        if usage_in_stream {
            event(json!({"choices": [], "usage": usage}));
        }
        sse.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], sse)
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(answer))
        .route("/v1/completions", post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// Runs `job` through an upstream client: its pieces and calls with
/// their counts and ids, and the final usage.
async fn forwarded(up: &Upstream, job: &JobRequest) -> (Vec<(String, u32, Vec<u32>)>, Usage) {
    let (tx, mut rx) = mpsc::channel(64);
    up.run(job, tx).await;
    let mut pieces = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            UpstreamEvent::Piece { text, tokens, ids } => pieces.push((text, tokens, ids)),
            UpstreamEvent::ToolCalls { calls, tokens, ids } => {
                pieces.push((format!("{calls:?}"), tokens, ids));
            }
            UpstreamEvent::PromptTokens(_) => {}
            UpstreamEvent::Done { usage, .. } => return (pieces, usage),
            UpstreamEvent::Failed { message, .. } => panic!("{message}"),
        }
    }
    panic!("no Done");
}

/// Attack: a provider runs the unmodified node in front of its own server,
/// which claims ten times the tokens it produced. Before, the node sent
/// the difference as an empty delta and signed the server's count; now
/// the deltas and the receipt carry the node's own count: the ids of the
/// text (and calls) re-tokenized with the model's tokenizer, or one token
/// per streamed chunk without it.
#[tokio::test]
async fn an_upstream_that_overstates_its_usage_bills_only_what_it_streamed() {
    let dir = tempfile::tempdir().unwrap();
    sharenet_engine::tiny::write_tiny_llama(dir.path(), 1, Default::default()).unwrap();
    let tokenizer = crate::recount::load(dir.path()).unwrap();
    let text: String = CHUNKS.concat();
    let honest = tokenizer
        .encode(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let claim = 10 * CHUNKS.len() as u32;
    for usage_in_stream in [true, false] {
        let base = lying_server(claim, usage_in_stream).await;
        let config = |tokenizer: Option<std::path::PathBuf>| UpstreamConfig {
            base_url: base.clone(),
            tokenizer,
            ..upstream().config.clone()
        };
        let chat = job(JobInput::Chat {
            messages: vec![ChatMessage::new("user", "hi")],
        });
        // With the model's tokenizer: the ids of the text, exactly.
        let up = Upstream::new(config(Some(dir.path().join("tokenizer.json")))).unwrap();
        for j in [
            chat.clone(),
            job(JobInput::Prompt {
                prompt: "Once".into(),
            }),
        ] {
            let (pieces, usage) = forwarded(&up, &j).await;
            let streamed: String = pieces.iter().map(|p| p.0.as_str()).collect();
            assert_eq!(streamed, text);
            for (t, tokens, ids) in &pieces {
                assert_eq!(*tokens as usize, ids.len());
                assert_eq!(&tokenizer.decode(ids, true).unwrap(), t);
            }
            let ids: Vec<u32> = pieces.iter().flat_map(|p| p.2.clone()).collect();
            assert_eq!(ids, honest);
            assert_eq!(
                usage.output_tokens as usize,
                honest.len(),
                "claimed {claim}"
            );
            assert_eq!(usage.input_tokens, 5);
        }
        // A call counts its name and arguments, not the server's claim.
        let mut with_tools = chat.clone();
        with_tools.tools = Some(Tools {
            specs: Vec::new(),
            choice: sharenet_proto::ToolChoice::Auto,
            parallel: true,
        });
        let (pieces, usage) = forwarded(&up, &with_tools).await;
        let call_ids = tokenizer
            .encode("get_weather{\"city\": \"Paris\"}", false)
            .unwrap()
            .get_ids()
            .len();
        let sum: u32 = pieces.iter().map(|p| p.1).sum();
        assert_eq!(usage.output_tokens, sum);
        assert_eq!(sum as usize, honest.len() + call_ids);
        // Without a tokenizer: one token per streamed chunk, no ids.
        let up = Upstream::new(config(None)).unwrap();
        let (pieces, usage) = forwarded(&up, &chat).await;
        assert!(pieces.iter().all(|p| p.1 == 1 && p.2.is_empty()));
        assert_eq!(usage.output_tokens, CHUNKS.len() as u32, "claimed {claim}");
    }
}
