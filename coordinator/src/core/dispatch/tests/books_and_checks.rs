//! Spot checks, prices, node-controlled text, settlement and the
//! routing refusals: what reaches the books, the logs and the builder.

use super::*;
use crate::tests::support::{PATIENCE, wait_for_state};

#[tokio::test]
async fn private_jobs_are_never_spot_checked_elsewhere() {
    // Issue 12, item 17: a sampled sensitive job used to be re-run on
    // public nodes with the same weights.
    let s = setup(vec![Script::Serve(vec!["a"]), Script::Serve(vec!["a"])]);
    let (tx, shutdown, sampler) = s.sampler();
    let notice = |private| CompletedJob {
        job: job(&[]),
        app: "default".into(),
        private,
        node: s.nodes[0],
        model: MODEL.into(),
        prefs: ProviderPrefs::any(),
    };
    tx.send(notice(true)).await.unwrap();
    // A negative check, so it has to look for a while: no check opened
    // within 300 ms. A slow machine can only make it pass more easily; the
    // public job below, waited for with a deadline, shows that a check
    // does get opened when one is due.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.opens.load(Ordering::Relaxed),
        0,
        "a private job stays put"
    );
    // The same job, not private, is checked on both nodes (the check runs
    // as a task on the core's tracker).
    tx.send(notice(false)).await.unwrap();
    wait_for_state("the public job to be checked", PATIENCE, || {
        match s.core.metrics.spot_checks.get() {
            0 => Err("no spot check yet"),
            _ => Ok(()),
        }
    })
    .await;
    assert!(s.opens.load(Ordering::Relaxed) >= 2);
    shutdown.cancel();
    sampler.await.unwrap();
}

#[tokio::test]
async fn an_absurd_price_is_not_routable_and_cannot_inflate_holds() {
    // Issue 12, item 5: one node advertising 10^12 nano-USD per token made
    // the hold of every request that might try it absurd (402 for all).
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let greedy = Identity::generate();
    s.core.on_advert(
        greedy.peer_id(),
        &signed_advert(&greedy, 1_000_000_000_000, 1_000_000_000_000),
        now_ms(),
    );
    assert_eq!(
        s.core
            .registry
            .stats
            .over_price_ceiling
            .load(Ordering::Relaxed),
        1
    );
    let (text, charge, node) = s.run(&[greedy.public_key(), s.nodes[0]]).await.unwrap();
    assert_eq!((text.as_str(), node), ("ok", s.nodes[0]));
    assert_eq!(s.balance(), i128::from(BALANCE) - i128::from(charge));
    assert!(
        s.core
            .registry
            .models(now_ms())
            .iter()
            .all(|m| m.price_out.1 < 1_000_000),
        "nor is it listed"
    );
}

#[tokio::test]
async fn a_nodes_words_reach_logs_and_builders_escaped_and_short() {
    // Issue 12, item 19: a node's refusal text went verbatim (any size,
    // newlines, terminal escapes) into logs and the builder's error.
    let forged = format!(
        "busy\n2026-01-01 INFO forged line \u{1b}[31m{}",
        "x".repeat(100_000)
    );
    let s = setup(vec![Script::RefuseWith(forged)]);
    let err = s.run(&[]).await.unwrap_err();
    let shown = err.to_string();
    assert!(shown.len() < 2_000, "{} bytes", shown.len());
    assert!(
        !shown.contains('\n') && !shown.contains('\u{1b}'),
        "{shown}"
    );
    assert!(
        shown.contains("busy\\n2026"),
        "escaped, not dropped: {shown}"
    );
}

#[tokio::test]
async fn parallel_settlements_never_pay_an_entry_twice() {
    // Issue 12, item 3: two settlements of different periods at once
    // could both sweep the same unsettled entries (providers paid twice).
    let rule = sharenet_market::PeriodRule::Fixed {
        length_ms: 400,
        origin_ms: 0,
    };
    let s = setup_with(vec![Script::Serve(vec!["ok"])], |c| c.period_rule = rule);
    let first = rule.period_of(now_ms()).unwrap();
    for _ in 0..6 {
        s.run(&[]).await.unwrap();
    }
    // Both the jobs' period and the next one have ended. A wait for the
    // clock itself (the condition is a time), so no deadline is needed:
    // it ends within about 1.2 s however loaded the machine is.
    let next = rule.period_of(first.end_ms).unwrap();
    while now_ms() <= next.end_ms + 400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = rule.period_of(next.end_ms).unwrap();
    let (a, b, c) = tokio::join!(
        s.core.settle(Some(first.start_ms)),
        s.core.settle(Some(next.start_ms)),
        s.core.settle(Some(later.start_ms)),
    );
    let total: u64 = [a, b, c]
        .into_iter()
        .map(|r| r.unwrap().0.statement().receipts)
        .sum();
    assert_eq!(total, 6, "every entry in exactly one statement");
    let mut seen = std::collections::HashSet::new();
    for record in s.core.accounts.books().statements().unwrap() {
        for id in record.job_ids {
            assert!(seen.insert(id), "job {id} settled twice");
        }
    }
    assert_eq!(seen.len(), 6);

    // Issue 12, item 11: the public bundle is built once per period (the
    // second call is the same allocation, no re-read of the period), and
    // proofs come from it.
    let label = first.label();
    let a = s.core.bundle(&label).await.unwrap();
    let b = s.core.bundle(&label).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let statement = sharenet_market::SignedStatement::from_bytes(&a.signed_statement).unwrap();
    for leaf in &a.leaves {
        let proof = s
            .core
            .proof_of(&s.principal.app, sharenet_proto::JobId(leaf.job_id))
            .await
            .unwrap();
        let entry = s
            .core
            .receipt_of(&s.principal.app, sharenet_proto::JobId(leaf.job_id))
            .await
            .unwrap();
        assert!(
            statement
                .statement()
                .includes(&entry.receipt.to_bytes(), &proof.proof)
        );
    }
}

#[tokio::test]
async fn a_node_inflating_its_input_counts_is_caught_by_a_spot_check() {
    // Issue 12, item 6: a node that bills 60 input tokens for a 5-token
    // prompt stays under the hold's bound (every prompt byte a token), so
    // its receipts pass; the spot check compares its count with the
    // reference's, and the arbiter decides.
    let inflator = Script::LyingReceipt {
        pieces: vec!["ok"],
        extra_out: 0,
        input: 60,
    };
    let s = setup(vec![
        inflator,
        Script::Serve(vec!["ok"]),
        Script::Serve(vec!["ok"]),
    ]);
    let (_, charge, node) = s.run(&[s.nodes[0]]).await.unwrap();
    assert_eq!(node, s.nodes[0]);
    assert!(charge > 0, "within the bound, the receipt itself passes");
    let (tx, shutdown, sampler) = s.sampler();
    tx.send(CompletedJob {
        job: job(&[]),
        app: "default".into(),
        private: false,
        node: s.nodes[0],
        model: MODEL.into(),
        prefs: ProviderPrefs::any(),
    })
    .await
    .unwrap();
    wait_for_state("the inflating node to be caught", PATIENCE, || {
        match s.core.metrics.spot_checks_failed.get() {
            0 => Err(format!(
                "no failed spot check yet ({} run)",
                s.core.metrics.spot_checks.get()
            )),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(s.core.metrics.spot_checks_failed.get(), 1);
    // Under the trust floor: it gets no traffic, even when asked for first.
    let (_, _, node) = s.run(&[s.nodes[0], s.nodes[1]]).await.unwrap();
    assert_ne!(node, s.nodes[0]);
    shutdown.cancel();
    sampler.await.unwrap();
}

#[tokio::test]
async fn a_request_no_node_can_fit_is_a_400_not_a_503() {
    // Prompt + max_tokens beyond every node's context window (4096 here):
    // the request is at fault, as OpenAI answers it.
    let s = setup(vec![Script::Serve(vec!["ok"])]);
    let mut big = (*job(&[])).clone();
    big.params.max_tokens = 8_000;
    let err = start_job(&s.core, Arc::new(big), &s.principal, None)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::BadRequest { param: Some(p), message } if p == "messages" && message.contains("max_tokens 8000")),
        "{err:?}"
    );
    assert_eq!(s.opens.load(Ordering::Relaxed), 0);
}
