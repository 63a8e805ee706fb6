//! Issue 26, items 5, 6 and 9 (parts), played by rogue nodes: every byte a
//! node sends for a job counts against one budget; a refusal the
//! coordinator cannot explain falls back and costs the refuser; embeddings
//! frames are checked; spot-check re-runs go only where the original job
//! allowed.

use super::*;
use crate::core::job::SortKey;
use crate::core::routing::Outcome;
use crate::tests::support::{PATIENCE, wait_for_state};

async fn run_job(s: &Setup, job: Arc<Job>) -> Result<Box<Finished>, Error> {
    let mut active = start_job(&s.core, job, &s.principal, None).await?;
    active.run_to_end(&s.core).await
}

/// A chat job asking for logprobs with `top` alternatives.
fn logprobs_job(top: u8) -> Arc<Job> {
    let mut j = (*job(&[])).clone();
    j.params.logprobs = true;
    j.params.top_logprobs = top;
    Arc::new(j)
}

#[tokio::test]
async fn logprobs_keep_to_what_was_asked_and_to_the_jobs_byte_budget() {
    // Before: `top` lists of any length and token strings of any size were
    // kept for the whole job (up to a 1 MiB frame per event).
    let rogue = [
        // Three alternatives where two were asked for.
        (2, 3, 4, "more alternatives"),
        // A "token" longer than any token.
        (2, 0, 1000, "longer than any token"),
        // Each entry within the limits, together over the job's budget
        // (8 tokens × 3 entries of 2 × 256 bytes > 8 × (256 + 3 × 160) + 4 KiB).
        (2, 2, sharenet_proto::MAX_TOKEN_BYTES, "budget"),
        // Logprobs nobody asked for.
        (0, 0, 4, "not asked for"),
    ];
    for (asked, top, token_len, why) in rogue {
        let s = setup(vec![Script::Logprobs {
            n: 8,
            top,
            token_len,
        }]);
        let job = if asked == 0 {
            job(&[])
        } else {
            logprobs_job(asked)
        };
        assert_node_failed(&s, run_job(&s, job).await, why);
    }

    // An honest node's ordinary tokens are well within the budget.
    let s = setup(vec![Script::Logprobs {
        n: 8,
        top: 2,
        token_len: 5,
    }]);
    let f = run_job(&s, logprobs_job(2)).await.unwrap();
    assert_eq!(f.logprobs.len(), 8);
    assert!(f.logprobs.iter().all(|e| e.top.len() == 2));
    assert_eq!(s.entries(), 1);
}

#[tokio::test]
async fn tool_calls_share_the_jobs_byte_budget() {
    // A call whose arguments are far beyond what 8 tokens can write.
    let mut j = (*job(&[])).clone();
    j.tools = Some(Tools {
        specs: vec![ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            strict: false,
        }],
        choice: ToolChoice::Auto,
        parallel: false,
    });
    let s = setup(vec![Script::Calls {
        calls: vec![ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "x".repeat(512 * 1024),
        }],
        honest_digest: true,
    }]);
    assert_node_failed(&s, run_job(&s, Arc::new(j)).await, "budget");
}

/// The job `s.run` would run, at the lowest price first (no load
/// balancing), so a zero-priced node is always tried first.
fn cheapest_first() -> Arc<Job> {
    let mut j = (*job(&[])).clone();
    j.prefs.sort = Some(SortKey::Price);
    Arc::new(j)
}

#[tokio::test]
async fn a_zero_priced_node_refusing_every_job_does_not_black_hole_the_model() {
    // Before: its `invalid_request` went to the builder as a 400, no other
    // node was tried, and nothing counted against it, so the cheapest node
    // answered every job of the model with a refusal.
    for code in [
        JobErrorCode::InvalidRequest,
        JobErrorCode::UnsupportedInput,
        JobErrorCode::ContextLengthExceeded,
    ] {
        let s = setup_adverts(
            vec![Script::RefuseAs(code), Script::Serve(vec!["ok"])],
            &|i, a| {
                if i == 0 {
                    a.models[0].price_in = 0;
                    a.models[0].price_out = 0;
                }
            },
        );
        for _ in 0..6 {
            let f = run_job(&s, cheapest_first()).await.unwrap();
            assert_eq!(f.text, "ok", "{code:?}: an honest node answered");
            assert_eq!(f.receipt.receipt().node, s.nodes[1]);
        }
        assert!(
            s.trust(0) < 0.5,
            "{code:?}: the refuser is under the trust floor ({})",
            s.trust(0)
        );
        assert!(
            s.opened_to(0) < 6,
            "{code:?}: and stops being tried ({} tries)",
            s.opened_to(0)
        );
    }
}

#[tokio::test]
async fn a_request_every_node_refuses_is_the_builders_400_and_costs_no_node() {
    // A builder cannot sink honest nodes' trust with a request they all
    // refuse: nobody answered it, so nobody is charged with the refusal.
    let s = setup(vec![
        Script::RefuseAs(JobErrorCode::UnsupportedInput),
        Script::RefuseAs(JobErrorCode::InvalidRequest),
    ]);
    let fresh = s.trust(0);
    let err = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadRequest { message, .. } if message.contains("InvalidRequest")),
        "the last refusal: {err:?}"
    );
    assert_eq!(s.opened_to(0) + s.opened_to(1), 2, "both were tried");
    for node in [0, 1] {
        assert_eq!(s.trust(node), fresh);
        let health = s.core.routing.health(&s.nodes[node]).unwrap();
        assert_eq!(health.breaker.consecutive_failures, 0);
    }
    assert_eq!(s.balance(), i128::from(BALANCE));
}

#[tokio::test]
async fn a_context_refusal_counts_only_when_the_prompts_bytes_cannot_explain_it() {
    // The prompt's bytes bound its tokens; a node whose advertised context
    // that bound reaches may truly be out of room, so it falls back
    // without blame. Below it, the refusal is the node's.
    for (prompt_bytes, blamed) in [(4_000, false), (16, true)] {
        let s = setup(vec![
            Script::RefuseAs(JobErrorCode::ContextLengthExceeded),
            Script::Serve(vec!["ok"]),
        ]);
        let mut j = (*job(&[s.nodes[0], s.nodes[1]])).clone();
        j.input = JobInput::Chat {
            messages: vec![ChatMessage::new("user", "x".repeat(prompt_bytes))],
        };
        let f = run_job(&s, Arc::new(j)).await.unwrap();
        assert_eq!(f.receipt.receipt().node, s.nodes[1]);
        let failures = s
            .core
            .routing
            .health(&s.nodes[0])
            .unwrap()
            .breaker
            .consecutive_failures;
        assert_eq!(failures > 0, blamed, "{prompt_bytes} bytes");
    }
}

#[tokio::test]
async fn an_upstream_node_refusing_logprobs_falls_back_without_blame() {
    // Adverts do not say whether a node returns logprobs, and an
    // upstream-backed node refuses them as `unsupported_input`: the job
    // goes to the next node and the refusal costs nothing; the same
    // refusal of a plain job counts.
    for (logprobs, blamed) in [(true, false), (false, true)] {
        let s = setup(vec![
            Script::RefuseAs(JobErrorCode::UnsupportedInput),
            Script::Serve(vec!["ok"]),
        ]);
        let mut j = (*job(&[s.nodes[0], s.nodes[1]])).clone();
        j.params.logprobs = logprobs;
        let f = run_job(&s, Arc::new(j)).await.unwrap();
        assert_eq!(f.receipt.receipt().node, s.nodes[1]);
        let health = s.core.routing.health(&s.nodes[0]).unwrap();
        assert_eq!(
            health.breaker.consecutive_failures > 0,
            blamed,
            "logprobs: {logprobs}"
        );
    }
}

#[tokio::test]
async fn a_refusal_the_coordinator_explains_never_reaches_a_node() {
    // A response_format over the constraint compiler's limits (one object
    // of 1,001 properties) and tools over them: refused with a 400 before
    // dispatch. Before, the request reached the node, which refused it.
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let wide: serde_json::Map<String, serde_json::Value> = (0
        ..=sharenet_proto::MAX_OBJECT_PROPERTIES)
        .map(|i| (format!("p{i}"), serde_json::json!({})))
        .collect();
    let schema = serde_json::json!({"type": "object", "properties": wide});
    let mut with_format = (*job(&[])).clone();
    with_format.response_format = Some(sharenet_proto::ResponseFormat::JsonSchema {
        name: "w".into(),
        schema: schema.clone(),
        strict: true,
    });
    let mut with_tools = (*job(&[])).clone();
    with_tools.tools = Some(Tools {
        specs: vec![ToolSpec {
            name: "f".into(),
            description: String::new(),
            parameters: schema,
            strict: true,
        }],
        choice: ToolChoice::Required,
        parallel: false,
    });
    for (j, param) in [(with_format, "response_format"), (with_tools, "tools")] {
        let err = start_job(&s.core, Arc::new(j), &s.principal, None)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, Error::BadRequest { param: Some(p), message } if p == param && message.contains("1000")),
            "{err:?}"
        );
    }
    assert_eq!(s.opens.load(Ordering::Relaxed), 0, "no node was dialled");
    assert_eq!(s.balance(), i128::from(BALANCE));
}

/// An embeddings job of `n` texts.
fn embeddings_job(n: usize) -> Arc<Job> {
    Arc::new(Job {
        kind: JobKind::Embedding,
        models: vec![MODEL.into()],
        input: JobInput::Embed {
            inputs: (0..n).map(|i| format!("text {i}")).collect(),
        },
        params: SamplingParams {
            max_tokens: 1,
            ..SamplingParams::default()
        },
        prefs: ProviderPrefs::any(),
        tools: None,
        response_format: None,
        input_tokens: Default::default(),
    })
}

fn embedding_model(_: usize, a: &mut Advert) {
    a.models[0].kind = ModelKind::Embedding;
}

#[tokio::test]
async fn embeddings_frames_are_checked() {
    // Before: a chat job took an embeddings frame (and was booked with its
    // receipt), and a vector count was never compared with the inputs.
    let s = setup(vec![Script::Embeddings(vec![vec![0.5, 0.5]])]);
    assert_node_failed(&s, run_job(&s, job(&[])).await, "not an embeddings job");

    for (data, why) in [
        (vec![vec![0.5, 0.5]], "number of vectors"),
        (vec![vec![0.5, 0.5], vec![0.5]], "inconsistent dimensions"),
        (vec![vec![], vec![]], "inconsistent dimensions"),
    ] {
        let s = setup_adverts(vec![Script::Embeddings(data)], &embedding_model);
        assert_node_failed(&s, run_job(&s, embeddings_job(2)).await, why);
    }

    let s = setup_adverts(
        vec![Script::Embeddings(vec![vec![0.5, 0.5], vec![0.1, 0.9]])],
        &embedding_model,
    );
    let f = run_job(&s, embeddings_job(2)).await.unwrap();
    assert_eq!(f.embeddings.map(|v| v.len()), Some(2));
    assert_eq!(s.entries(), 1);
}

/// A change to node `i`'s advert before it is signed.
type AdvertEdit = dyn Fn(usize, &mut Advert);

/// Gives node `i` a record that makes it the most trusted.
fn make_most_trusted(s: &Setup, i: usize) {
    for _ in 0..10 {
        s.core.routing.record(
            s.nodes[i],
            Outcome::Served {
                ttft_ms: 1.0,
                tokens: 1,
                duration_ms: 1.0,
            },
            now_ms(),
        );
    }
}

#[tokio::test]
async fn spot_check_re_runs_go_only_where_the_original_job_allowed() {
    // Node 1 is the most trusted with the suspect's weights, so it was
    // always the reference: a builder's prompt went to a node that keeps
    // prompts after the builder said `data_collection: deny`, and to a node
    // the builder's `ignore` named.
    let keeps_prompts = |i: usize, a: &mut Advert| a.keeps_prompts = i == 1;
    let cases: [(ProviderPrefs, &AdvertEdit); 2] = [
        (
            ProviderPrefs {
                deny_data_collection: true,
                ..ProviderPrefs::any()
            },
            &keeps_prompts,
        ),
        (ProviderPrefs::any(), &|_, _| {}),
    ];
    for (n, (mut prefs, adverts)) in cases.into_iter().enumerate() {
        let s = setup_adverts(
            vec![
                Script::Serve(vec!["a"]),
                Script::Serve(vec!["a"]),
                Script::Serve(vec!["a"]),
            ],
            adverts,
        );
        if n == 1 {
            prefs.ignore = vec![s.nodes[1]];
        }
        make_most_trusted(&s, 1);
        let (tx, shutdown, sampler) = s.sampler();
        tx.send(CompletedJob {
            job: job(&[]),
            app: "default".into(),
            private: false,
            node: s.nodes[0],
            model: MODEL.into(),
            prefs,
        })
        .await
        .unwrap();
        wait_for_state("the check to run", PATIENCE, || {
            match s.core.metrics.spot_checks.get() {
                0 => Err("no spot check yet"),
                _ => Ok(()),
            }
        })
        .await;
        assert_eq!(
            s.opened_to(1),
            0,
            "case {n}: the prompt never reached node 1"
        );
        assert_eq!(s.opened_to(2), 1, "case {n}: node 2 was the reference");
        assert_eq!(s.opened_to(0), 1, "case {n}: the suspect re-ran it");
        shutdown.cancel();
        sampler.await.unwrap();
    }
}
