//! A job served, fallen back from, broken mid-stream, or lied about in
//! its receipt: what the builder gets and pays.

use super::*;

#[tokio::test]
async fn a_job_is_served_checked_countersigned_and_charged() {
    let s = setup(vec![Script::Serve(vec!["Hello", " world"])]);
    let mut active = start_job(&s.core, job(&[]), &s.principal, Some("cust-1"))
        .await
        .unwrap();
    let mut pieces = Vec::new();
    let finished = loop {
        match active.next(&s.core).await.unwrap() {
            Step::Delta(text, _) => pieces.push(text),
            Step::ToolCalls(_) => panic!("no tools were offered"),
            Step::Done(f) => break f,
        }
    };
    assert_eq!(pieces, ["Hello", " world"]);
    assert_eq!(finished.text, "Hello world");
    assert_eq!(
        (finished.usage.input_tokens, finished.usage.output_tokens),
        (5, 2)
    );
    let r = finished.receipt.receipt();
    assert_eq!(r.node, s.nodes[0]);
    assert_eq!(r.amount, 5 * 10 + 2 * 20);
    let c = finished.charge;
    assert_eq!(c.provider_cost, 90);
    assert_eq!(c.total, c.provider_cost + c.network_fee + c.margin);
    // Durable, countersigned by us, and charged exactly once.
    assert_eq!(s.entries(), 1);
    assert_eq!(s.core.metrics.receipts_accepted.get(), 1);
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(c.total));
    let booked = s.core.accounts.books().entry(&r.job_id).unwrap().unwrap();
    assert_eq!(booked.end_customer.as_deref(), Some("cust-1"));
    assert_eq!(
        booked.receipt.to_bytes(),
        finished.receipt.to_bytes(),
        "the stored receipt is the countersigned one"
    );
}

#[tokio::test]
async fn a_refusal_falls_back_to_the_next_node() {
    let s = setup(vec![Script::Refuse, Script::Serve(vec!["ok"])]);
    let (text, charge, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!(text, "ok");
    assert_eq!(node, s.nodes[1]);
    assert_eq!(s.core.metrics.fallbacks.get(), 1);
    assert!(
        s.trust(0) < s.trust(1),
        "the refusal counts against the node"
    );
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(charge));
}

#[tokio::test]
async fn a_node_that_dies_before_its_first_token_is_skipped() {
    let s = setup(vec![Script::DieBeforeFirstToken, Script::Serve(vec!["ok"])]);
    let (text, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("ok", s.nodes[1]));
    assert!(s.trust(0) < s.trust(1));

    // With no other node, the builder gets a 503-class error naming why,
    // and nothing is held or charged.
    let s = setup(vec![Script::DieBeforeFirstToken]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoCapacity(m) if m.contains("failed before the first token")),
        "{err:?}"
    );
    assert_eq!(s.balance(), i128::from(BALANCE));
    assert_eq!(s.entries(), 0);
}

#[tokio::test]
async fn death_mid_stream_is_an_error_never_a_switch_and_charges_what_was_received() {
    let s = setup(vec![
        Script::DieMidStream(vec!["one", " two"]),
        Script::Serve(vec!["never used"]),
    ]);
    let mut active = start_job(&s.core, job(&[s.nodes[0], s.nodes[1]]), &s.principal, None)
        .await
        .unwrap();
    let mut received = String::new();
    let err = loop {
        match active.next(&s.core).await {
            Ok(Step::Delta(text, _)) => received.push_str(&text),
            Ok(Step::ToolCalls(_)) => panic!("no tools were offered"),
            Ok(Step::Done(_)) => panic!("a broken stream cannot finish"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::BadGateway(_)), "{err:?}");
    assert_eq!(received, "one two");
    assert_eq!(active.node(), s.nodes[0], "no switch after the first token");
    let partial = active
        .book_partial(&s.core)
        .await
        .expect("a partial charge");
    assert_eq!(partial.text, "one two");
    assert_eq!(partial.usage.output_tokens, 2);
    assert_eq!(partial.receipt.receipt().amount, 5 * 10 + 2 * 20);
    assert_eq!(
        s.balance(),
        i128::from(BALANCE) - i128::from(partial.charge.total)
    );
    assert_eq!(s.entries(), 1);
    assert!(
        s.trust(0) < s.trust(1),
        "the broken stream counts against the node"
    );
}

#[tokio::test]
async fn a_lying_receipt_is_rejected_and_nothing_is_charged() {
    // More output tokens than were streamed.
    let s = setup(vec![Script::LyingReceipt {
        pieces: vec!["a", "b"],
        extra_out: 3,
        input: INPUT_TOKENS,
    }]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadGateway(m) if m.contains("receipt was rejected")),
        "{err:?}"
    );
    assert_eq!(s.entries(), 0);
    assert_eq!(s.balance(), i128::from(BALANCE), "the hold is released");
    assert_eq!(s.core.metrics.receipts_rejected_total(), 1);
    let page = s.core.metrics.render(Vec::new());
    assert!(
        page.contains(r#"sharenet_receipts_rejected_total{reason="output_tokens"} 1"#),
        "{page}"
    );
    let health = s.core.routing.health(&s.nodes[0]).unwrap();
    assert!(health.trust.score(now_ms(), &Default::default()) < 0.5);

    // Billions of input tokens: past the job's bound (every prompt byte a
    // token), so never booked, and the balance never goes below zero.
    let s = setup(vec![Script::LyingReceipt {
        pieces: vec!["a"],
        extra_out: 0,
        input: 4_000_000_000,
    }]);
    let err = s.run(&[]).await.unwrap_err();
    assert!(
        matches!(&err, Error::BadGateway(m) if m.contains("input tokens")),
        "{err:?}"
    );
    assert_eq!(s.entries(), 0);
    assert_eq!(s.balance(), i128::from(BALANCE));
}
