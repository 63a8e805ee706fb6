//! The web dashboard (`/dashboard`) in headless Chromium: Debian's
//! `chromium` driven by playwright-core (`tests/js/dashboard_check.mjs`)
//! against a devnet with spend, a settled period, a refused request and a
//! node whose advertised region is an HTML payload. The script checks the
//! pages load with no console errors, the charts render, the numbers are
//! the API's, and a builder's key cannot open the operator view; it saves
//! screenshots to `target/dashboard-screenshots/`.

use std::time::Duration;

use serde_json::json;
use sharenet_market::PeriodRule;
use sharenet_tests::{MODEL, TestNet, run_client_check, workspace_root};

const PERIOD_MS: u64 = 2_000;
/// What a hostile node advertises as its region.
const XSS_REGION: &str = "<img src=x onerror=alert(1)>";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_builders_and_the_operator_what_the_api_says() {
    let dir = workspace_root().join("tests/js");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/setup-test-deps (needs node and npm)"
    );
    let t = TestNet::start_with(2, |o| {
        o.period_rule = PeriodRule::Fixed {
            length_ms: PERIOD_MS,
            origin_ms: 0,
        }
    })
    .await;
    let dir_model = t.net().nodes.first().map(|n| n.config().models[0].clone());
    let _hostile = t
        .add_node_with(dir_model.into_iter().collect(), |c| {
            c.region = Some(XSS_REGION.into())
        })
        .await;
    let key = t.funded_app("acme", 1500).await;
    let chat = |customer: &str| {
        json!({"model": MODEL, "max_tokens": 4, "user": customer,
               "messages": [{"role": "user", "content": "hello"}]})
    };
    for i in 0..4 {
        let r = t
            .http
            .post(format!("{}/chat/completions", t.base_url()))
            .bearer_auth(&key)
            .json(&chat(&format!("customer-{}", i % 2)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Settle the period those fell in, then spend again (unsettled).
    let last = now_ms();
    let end = (last / PERIOD_MS + 1) * PERIOD_MS;
    // A wait for the wall clock, not for an event: only an ended period
    // settles.
    tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms()) + 50)).await;
    let (s, settled) = t
        .operator(
            reqwest::Method::POST,
            "settle",
            Some(json!({"at_ms": last})),
        )
        .await;
    assert_eq!(s, 200, "{settled}");
    let r = t
        .http
        .post(format!("{}/chat/completions", t.base_url()))
        .bearer_auth(&key)
        .json(&chat("customer-0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A refused request, for the error chart.
    let r = t
        .http
        .post(format!("{}/chat/completions", t.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let shots = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let root = t.base_url().trim_end_matches("/v1").to_owned();
    run_client_check(
        "node",
        &["dashboard_check.mjs"],
        &dir,
        &[
            ("SHARENET_ROOT", root),
            ("BUILDER_KEY", key),
            (
                "OPERATOR_KEY",
                sharenet_devnet::DEVNET_OPERATOR_KEY.to_owned(),
            ),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("XSS_REGION", XSS_REGION.to_owned()),
        ],
    )
    .await;
    for shot in [
        "builder.png",
        "builder-refused-operator-view.png",
        "operator.png",
    ] {
        assert!(shots.join(shot).exists(), "no screenshot {shot}");
    }
    t.stop().await;
}
