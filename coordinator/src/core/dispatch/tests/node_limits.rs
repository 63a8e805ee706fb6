//! What a node may send: tool calls only as offered, a first token in
//! time, no more text than its tokens hold, and requests that fit a frame.

use super::*;

fn weather_call(name: &str, id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    }
}

/// A chat job offering one function, `get_weather`.
fn job_with_tools() -> Arc<Job> {
    let mut j = (*job(&[])).clone();
    j.tools = Some(Tools {
        specs: vec![ToolSpec {
            name: "get_weather".into(),
            description: String::new(),
            parameters: serde_json::Value::Null,
            strict: false,
        }],
        choice: ToolChoice::Auto,
        parallel: false,
    });
    Arc::new(j)
}

async fn run_job(s: &Setup, job: Arc<Job>) -> Result<Box<Finished>, Error> {
    let mut active = start_job(&s.core, job, &s.principal, None).await?;
    loop {
        if let Step::Done(f) = active.next(&s.core).await? {
            return Ok(f);
        }
    }
}

/// A rogue node's tool calls: calls nobody offered, functions the job did
/// not offer, more calls than allowed, duplicate ids, and calls left out
/// of the receipt's digest are all refused, charge nothing and count
/// against the node. An honest node's call is booked with its receipt.
#[tokio::test]
async fn a_node_cannot_invent_or_hide_tool_calls() {
    let rogue = [
        (
            job(&[]),
            vec![weather_call("get_weather", "call_1")],
            true,
            "offered no tools",
        ),
        (
            job_with_tools(),
            vec![weather_call("rm_rf", "call_1")],
            true,
            "did not offer",
        ),
        (
            job_with_tools(),
            vec![
                weather_call("get_weather", "call_1"),
                weather_call("get_weather", "call_2"),
            ],
            true,
            "more tool calls",
        ),
        (
            job_with_tools(),
            vec![weather_call("get_weather", "")],
            true,
            "unique id",
        ),
        (
            job_with_tools(),
            vec![weather_call("get_weather", "call_1")],
            false,
            "receipt was rejected",
        ),
    ];
    for (job, calls, honest_digest, why) in rogue {
        let s = setup(vec![Script::Calls {
            calls,
            honest_digest,
        }]);
        let err = run_job(&s, job).await.err().expect("refused");
        assert!(
            matches!(&err, Error::BadGateway(m) if m.contains(why)),
            "{why}: {err:?}"
        );
        assert_eq!(s.entries(), 0, "{why}");
        assert_eq!(s.balance(), i128::from(BALANCE), "{why}: nothing charged");
        let health = s.core.routing.health(&s.nodes[0]).unwrap();
        let held = health.breaker.consecutive_failures > 0
            || health.trust.score(now_ms(), &Default::default()) < 0.5;
        assert!(held, "{why}: held against the node");
    }

    let call = weather_call("get_weather", "call_1");
    let s = setup(vec![Script::Calls {
        calls: vec![call.clone()],
        honest_digest: true,
    }]);
    let f = run_job(&s, job_with_tools()).await.unwrap();
    assert_eq!(f.tool_calls, vec![call.clone()]);
    assert_eq!(f.finish_reason, FinishReason::ToolCalls);
    assert_eq!(s.entries(), 1);
    assert_eq!(
        f.receipt.receipt().response_digest,
        response_digest("", &[call])
    );
}

#[tokio::test]
async fn a_slow_first_token_times_out_and_falls_back() {
    let slow = Script::SlowFirstToken(FIRST_TOKEN * 5, vec!["late"]);
    let s = setup(vec![slow.clone(), Script::Serve(vec!["fast"])]);
    let started = std::time::Instant::now();
    let (text, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("fast", s.nodes[1]));
    assert!(
        started.elapsed() < FIRST_TOKEN * 5,
        "the coordinator gave up on the slow node before it would have answered"
    );
    assert!(s.trust(0) < s.trust(1));

    let s = setup(vec![slow]);
    assert!(matches!(s.run(&[]).await, Err(Error::NoCapacity(_))));
    assert_eq!(s.balance(), i128::from(BALANCE));
}

#[tokio::test]
async fn a_flooding_node_is_cut_off_and_paid_nothing() {
    // Token-less deltas of 512 KiB each: the coordinator would keep all of
    // that text until the end (issue 12, item 7).
    for flood in [
        Script::Flood {
            n: 1000,
            bytes: 512 * 1024,
        },
        Script::Flood {
            n: 100_000,
            bytes: 0,
        },
    ] {
        let s = setup(vec![flood, Script::Serve(vec!["ok"])]);
        let err = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap_err();
        assert!(
            matches!(&err, Error::BadGateway(m) if m.contains("more text") || m.contains("more events")),
            "{err:?}"
        );
        assert!(s.trust(0) < s.trust(1), "the flood counts against the node");
        assert_eq!(s.entries(), 0);
        assert_eq!(s.balance(), i128::from(BALANCE));
    }
}

#[tokio::test]
async fn a_request_too_big_for_a_frame_is_refused_before_any_node_is_dialled() {
    // Issue 12, item 14: it used to reach a node, fail there, and count as
    // that honest node's failure.
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let mut job = (*job(&[])).clone();
    job.input = JobInput::Chat {
        messages: vec![ChatMessage::new("user", "x".repeat(MAX_FRAME_BYTES))],
    };
    let err = start_job(&s.core, Arc::new(job), &s.principal, None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::BadRequest { param: Some(p), .. } if p == "messages"),
        "{err:?}"
    );
    assert_eq!(s.opens.load(Ordering::Relaxed), 0, "no node was dialled");
    assert_eq!(s.balance(), i128::from(BALANCE), "nothing held");
}
