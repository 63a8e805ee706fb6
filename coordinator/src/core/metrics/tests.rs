//! Unit tests of the metrics: every family registers and renders, the
//! timeline, the public page without app ids.

use super::*;

#[test]
fn every_rejection_reason_is_exported_from_the_start() {
    use crate::core::receipts::ReceiptRejection as R;
    let all = [
        R::Invalid(sharenet_proto::ProtoError::TrailingBytes(1)),
        R::WrongSigner,
        R::WrongJob,
        R::WrongCoordinator,
        R::WrongModel(String::new()),
        R::WrongPrice {
            got_in: 0,
            got_out: 0,
            want_in: 0,
            want_out: 0,
        },
        R::OutputTokens {
            claimed: 0,
            streamed: 0,
        },
        R::InputTokens {
            claimed: 0,
            reported: 0,
        },
        R::InputTokensOverBound {
            claimed: 0,
            bound: 0,
        },
        R::RequestDigest,
        R::ResponseDigest,
    ];
    let page = Metrics::new().render(Vec::new());
    for r in all.iter().map(R::reason).chain(["replay", "over_hold"]) {
        let series = format!(r#"sharenet_receipts_rejected_total{{reason="{r}"}} 0"#);
        assert!(page.contains(&series), "{series} missing:\n{page}");
    }
}

#[test]
fn the_timeline_counts_inference_minute_by_minute_for_an_hour() {
    let m = Metrics::new();
    let at = |path, status, ttft_s: Option<f64>, now| {
        m.on_timeline(
            &Finished {
                path,
                status,
                app: "acme",
                duration_s: 0.1,
                inference: ttft_s.map(|t| Inference {
                    model: "m",
                    input_tokens: 1,
                    output_tokens: 1,
                    charge_nano_usd: 1,
                    ttft_s: Some(t),
                }),
            },
            now,
        )
    };
    let t0 = 1_000 * MINUTE_MS;
    at("/v1/chat/completions", 200, Some(0.010), t0);
    at("/v1/chat/completions", 200, Some(0.030), t0 + 5);
    at("/v1/chat/completions", 400, None, t0 + 6);
    at("/v1/chat/completions", 503, None, t0 + MINUTE_MS);
    let minutes = m.timeline(t0 + MINUTE_MS + 1);
    assert_eq!(minutes.len(), TIMELINE_MINUTES);
    let (before, last) = (
        &minutes[TIMELINE_MINUTES - 2],
        &minutes[TIMELINE_MINUTES - 1],
    );
    assert_eq!((before.start_ms, before.requests), (t0, 3));
    assert_eq!((before.client_errors, before.server_errors), (1, 0));
    assert!((before.ttft_ms.unwrap() - 20.0).abs() < 1e-9);
    assert_eq!(
        (last.requests, last.server_errors, last.ttft_ms),
        (1, 1, None)
    );
    // An hour later both minutes have scrolled out.
    let later = m.timeline(t0 + 61 * MINUTE_MS);
    assert!(later.iter().all(|m| m.requests == 0));
    // Only inference paths count, through `finished`.
    m.finished(&Finished {
        path: "/v1/receipts",
        status: 200,
        app: "-",
        duration_s: 0.0,
        inference: None,
    });
    assert_eq!(
        m.timeline(now_ms()).iter().map(|m| m.requests).sum::<u64>(),
        0
    );
}

#[test]
fn the_page_adds_what_is_read_at_scrape_time() {
    let registry = Adverts::default();
    registry.stats.accepted.fetch_add(3, Ordering::Relaxed);
    let routing = Routing::new(1, 1_000.0);
    let page = Metrics::new().page(&Scrape {
        registry: &registry,
        routing: &routing,
        dropped_events: 2,
        now_ms: now_ms(),
    });
    for want in [
        "sharenet_adverts_accepted_total 3",
        "sharenet_p2p_events_dropped_total 2",
        "sharenet_open_breakers 0",
        r#"sharenet_nodes_by_trust{band="high"} 0"#,
        "sharenet_jobs_in_flight 0",
        "sharenet_requests_total 0",
    ] {
        assert!(page.contains(want), "{want} missing from\n{page}");
    }
}

#[test]
fn every_family_registers_and_renders() {
    let m = Metrics::new();
    m.requests.inc();
    m.finished(&Finished {
        path: "/v1/chat/completions",
        status: 200,
        app: "acme",
        duration_s: 0.2,
        inference: Some(Inference {
            model: "m",
            input_tokens: 5,
            output_tokens: 7,
            charge_nano_usd: 1234,
            ttft_s: Some(0.05),
        }),
    });
    m.finished(&Finished {
        path: "/v1/receipts/abc",
        status: 404,
        app: "-",
        duration_s: 0.001,
        inference: None,
    });
    let snap = Snapshot::default();
    snap.gauge_vec("sharenet_live_nodes", "Live nodes.", "model", &[("m", 2)]);
    let text = m.render(snap.families());
    for want in [
        "sharenet_requests_total 1",
        r#"sharenet_http_requests_total{path="/v1/chat/completions",status="200"} 1"#,
        r#"sharenet_http_requests_total{path="/v1/receipts",status="404"} 1"#,
        r#"sharenet_generation_tokens_total{app="acme",model="m"} 7"#,
        r#"sharenet_spend_nano_usd_total{app="acme",model="m"} 1234"#,
        r#"sharenet_time_to_first_token_seconds_count{model="m"} 1"#,
        r#"sharenet_live_nodes{model="m"} 2"#,
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

/// Issue 26, item 7: the public page sums every per-app series over its
/// apps (no `app` label, no app id anywhere) and keeps the totals; the
/// private page keeps each app's series.
#[test]
fn the_public_page_sums_the_apps_away_and_the_private_page_keeps_them() {
    let m = Metrics::new();
    for (app, status, tokens, spend) in [
        ("acme-secret", 200, 7, 1_000),
        ("globex-secret", 200, 5, 250),
        ("globex-secret", 402, 0, 0),
    ] {
        m.finished(&Finished {
            path: "/v1/chat/completions",
            status,
            app,
            duration_s: 0.1,
            inference: Some(Inference {
                model: "m",
                input_tokens: 3,
                output_tokens: tokens,
                charge_nano_usd: spend,
                ttft_s: None,
            }),
        });
    }
    let registry = Adverts::default();
    let routing = Routing::new(1, 1_000.0);
    let scrape = Scrape {
        registry: &registry,
        routing: &routing,
        dropped_events: 0,
        now_ms: now_ms(),
    };
    let public = m.page(&scrape);
    for leak in ["app=", "acme-secret", "globex-secret"] {
        assert!(!public.contains(leak), "{leak} in\n{public}");
    }
    for want in [
        r#"sharenet_inference_requests_total{model="m",status="200"} 2"#,
        r#"sharenet_inference_requests_total{model="m",status="402"} 1"#,
        r#"sharenet_generation_tokens_total{model="m"} 12"#,
        r#"sharenet_prompt_tokens_total{model="m"} 9"#,
        r#"sharenet_spend_nano_usd_total{model="m"} 1250"#,
        "# TYPE sharenet_spend_nano_usd_total counter",
        "sharenet_jobs_in_flight 0",
    ] {
        assert!(public.contains(want), "{want} missing from\n{public}");
    }
    let private = m.private_page(&scrape);
    for want in [
        r#"sharenet_spend_nano_usd_total{app="acme-secret",model="m"} 1000"#,
        r#"sharenet_spend_nano_usd_total{app="globex-secret",model="m"} 250"#,
        r#"sharenet_inference_requests_total{app="globex-secret",model="m",status="402"} 1"#,
        "sharenet_jobs_in_flight 0",
    ] {
        assert!(private.contains(want), "{want} missing from\n{private}");
    }
    // The same families on both pages, in the same order.
    let families = |page: &str| -> Vec<String> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(families(&public), families(&private));
}
