//! Issue 26, items 7 and 9, played as the attacker over real HTTP (a
//! coordinator from [`crate::spawn`] over scripted nodes):
//!
//! - an anonymous reader of the public `/metrics`, on a coordinator that
//!   has served two apps, learns no app id and no app's spend (before: every
//!   app's id, requests, tokens and spend per model); the per-app page is on
//!   the private listener only, and both pages pass `promtool check metrics`;
//! - a greedy builder flooding its read endpoints gets 429 with
//!   `Retry-After` (before: no limit);
//! - a receipt's proof, with many settled statements, decodes one
//!   statement, and the dashboard none (before: every statement, each with
//!   all its job ids, per call); statements come a page at a time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sharenet_ledger::{AppRecord, Budgets};
use sharenet_market::{Margin, PeriodRule};
use sharenet_p2p::Event;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
use crate::core::dispatch::tests::{KEY, MODEL, Script, config, fake_network};
use crate::core::now_ms;
use crate::http::RECEIPT_HEADER;
use crate::tests::support::{PATIENCE, wait_for_state};
use crate::{CoordinatorHandle, Network, spawn};

/// A coordinator from [`spawn`] over one scripted node, live.
struct Served {
    handle: CoordinatorHandle,
    shutdown: CancellationToken,
    root: String,
    http: reqwest::Client,
    _events: tokio::sync::mpsc::Sender<Event>,
    _dir: tempfile::TempDir,
}

async fn serve(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let net = fake_network(vec![Script::Serve(vec!["Hello", " world"])]);
    let (events_tx, events) = tokio::sync::mpsc::channel(16);
    for (source, data) in net.adverts {
        events_tx
            .send(Event::Advert { source, data })
            .await
            .unwrap();
    }
    let mut config = config(dir.path());
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let handle = spawn(
        listener,
        Network {
            transport: Arc::new(net.transport),
            events,
        },
        config,
        shutdown.clone(),
    )
    .await
    .unwrap();
    wait_for_state("the scripted node to be live", PATIENCE, || {
        match handle.core.registry.live_nodes(now_ms()) {
            0 => Err("none live"),
            _ => Ok(()),
        }
    })
    .await;
    Served {
        root: handle.base_url().trim_end_matches("/v1").to_owned(),
        handle,
        shutdown,
        http: reqwest::Client::new(),
        _events: events_tx,
        _dir: dir,
    }
}

impl Served {
    /// A chat request with `key`: its receipt id.
    async fn chat(&self, key: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.root))
            .bearer_auth(key)
            .json(&json!({"model": MODEL, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()[RECEIPT_HEADER].to_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.root));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().await.unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.wait().await;
    }
}

/// Fails unless `promtool check metrics` accepts `page` (Debian's
/// `prometheus` package: scripts/setup-test-deps installs it).
fn promtool_check(page: &str) {
    use std::io::Write;
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool: run scripts/setup-test-deps (Debian's prometheus package)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the series `series` (name and labels, exactly) on `page`.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_metrics_show_no_app_and_the_private_listener_shows_each() {
    let s = serve(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    // A second app with its own key, next to the config's "default".
    let accounts = &s.handle.core.accounts;
    let margin = Margin {
        percent_bps: 0,
        per_mtok: 0,
    };
    accounts
        .create_app(AppRecord::new("shop-secret", "acme", margin, now_ms()))
        .await
        .unwrap();
    accounts
        .top_up("shop-secret", 1_000_000_000, now_ms())
        .await
        .unwrap();
    let (shop_key, _) = accounts
        .create_key("shop-secret", Budgets::default(), now_ms())
        .await
        .unwrap();
    s.chat(KEY).await;
    s.chat(&shop_key).await;
    s.chat(&shop_key).await;

    // The attacker: no key, the API port.
    let public = s.get("/metrics", None).await;
    assert_eq!(public.status(), 200);
    let public = public.text().await.unwrap();
    for leak in ["app=", "shop-secret", "\"default\""] {
        assert!(
            !public.contains(leak),
            "{leak} on the public page:\n{public}"
        );
    }
    // Aggregates are still there: three requests, by model and status.
    let requests = format!(r#"sharenet_inference_requests_total{{model="{MODEL}",status="200"}}"#);
    assert_eq!(value(&public, &requests), Some(3.0), "{public}");
    let spend = format!(r#"sharenet_spend_nano_usd_total{{model="{MODEL}"}}"#);
    let total_spend = value(&public, &spend).expect("the spend per model");
    assert!(total_spend > 0.0);
    promtool_check(&public);

    // The operator's Prometheus: the private listener, on loopback.
    let addr = s.handle.metrics_addr.expect("a metrics listener");
    assert!(addr.ip().is_loopback());
    let private = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let per_app = |app: &str| {
        let series = format!(
            r#"sharenet_inference_requests_total{{app="{app}",model="{MODEL}",status="200"}}"#
        );
        value(&private, &series)
    };
    assert_eq!(
        (per_app("default"), per_app("shop-secret")),
        (Some(1.0), Some(2.0))
    );
    let spent = |app: &str| {
        value(
            &private,
            &format!(r#"sharenet_spend_nano_usd_total{{app="{app}",model="{MODEL}"}}"#),
        )
        .unwrap()
    };
    assert_eq!(spent("default") + spent("shop-secret"), total_spend);
    promtool_check(&private);
    // The private page is on no route of the API port but the operator's
    // (and this coordinator has no operator key: the operator API is off).
    assert_eq!(s.get("/operator/metrics", None).await.status(), 404);
    assert_eq!(s.get("/operator/metrics", Some(KEY)).await.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_key_reads_the_per_app_page_and_a_builder_key_does_not() {
    let op = "op-reads-test-0123456789";
    let s = serve(|c| c.operator_key = Some(op.into())).await;
    assert!(s.handle.metrics_addr.is_none());
    s.chat(KEY).await;
    assert_eq!(s.get("/operator/metrics", Some(KEY)).await.status(), 403);
    assert_eq!(s.get("/operator/metrics", None).await.status(), 403);
    let page = s.get("/operator/metrics", Some(op)).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"app="default""#), "{page}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_flooding_its_reads_gets_429_with_retry_after() {
    const LIMIT: u32 = 12;
    let s = serve(|c| c.builder_reads_per_minute = LIMIT).await;
    let receipt = s.chat(KEY).await;
    let paths = [
        "/v1/dashboard".to_owned(),
        "/v1/statements".to_owned(),
        "/v1/receipts".to_owned(),
        format!("/v1/receipts/{receipt}"),
        format!("/v1/receipts/{receipt}/proof"),
        "/v1/usage".to_owned(),
    ];
    let mut refused = None;
    for i in 0..(LIMIT as usize + paths.len()) {
        let r = s.get(&paths[i % paths.len()], Some(KEY)).await;
        if r.status() == 429 {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("a flood of reads is refused");
    assert_eq!(at, LIMIT as usize, "the first read over the limit");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    // Every read endpoint is behind it...
    for p in &paths {
        assert_eq!(s.get(p, Some(KEY)).await.status(), 429, "{p}");
    }
    // ... and inference is not.
    s.chat(KEY).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_come_in_pages_after_a_cursor() {
    let s = serve(|_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.chat(KEY).await);
    }
    let page = |query: String| {
        let s = &s;
        async move {
            let r = s.get(&format!("/v1/receipts?{query}"), Some(KEY)).await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let listed = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, first) = page("limit=2".into()).await;
    assert_eq!(status, 200);
    assert_eq!(first["has_more"], true);
    let (_, rest) = page(format!(
        "limit=2&after={}",
        first["last_id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(rest["has_more"], false);
    let mut all = listed(&first);
    all.extend(listed(&rest));
    let mut want = ids.clone();
    want.sort();
    let mut got = all.clone();
    got.sort();
    assert_eq!(got, want, "every receipt once, across the pages");
    // A cursor that is not one of the app's receipts is a 400 naming it.
    let (status, err) = page(format!("after={}", "0".repeat(32))).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "after", "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_among_many_statements_reads_one_and_statements_come_in_pages() {
    const PERIOD_MS: u64 = 200;
    let rule = PeriodRule::Fixed {
        length_ms: PERIOD_MS,
        origin_ms: 0,
    };
    let s = serve(|c| {
        c.period_rule = rule;
        c.builder_reads_per_minute = 0;
    })
    .await;
    let core = s.handle.core.clone();
    // Many settled periods long past (empty), then the job's own.
    const OLD: u64 = 150;
    for k in 1..=OLD {
        core.settle(Some(k * PERIOD_MS)).await.unwrap();
    }
    let receipt = s.chat(KEY).await;
    let period = rule.period_of(now_ms()).unwrap();
    // A wait for the clock itself (the condition is a time): at most one
    // period.
    while now_ms() <= period.end_ms {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (statement, _) = core.settle(Some(period.start_ms)).await.unwrap();
    assert_eq!(statement.statement().receipts, 1);
    let books = core.accounts.books().clone();

    let before = books.statements_decoded();
    let r = s
        .get(&format!("/v1/receipts/{receipt}/proof"), Some(KEY))
        .await;
    assert_eq!(r.status(), 200);
    let proof: Value = r.json().await.unwrap();
    assert_eq!(proof["statement"], period.label(), "{proof}");
    assert_eq!(
        books.statements_decoded() - before,
        1,
        "the proof read its own statement only, not all {}",
        OLD + 1
    );

    // The dashboard names the statement without decoding any.
    let before = books.statements_decoded();
    let d: Value = s
        .get("/v1/dashboard", Some(KEY))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["recent"][0]["settled_in"], period.label(), "{d}");
    assert_eq!(books.statements_decoded(), before);

    // Statements a page at a time, each page reading its own heads.
    let before = books.statements_decoded();
    let first: Value = s
        .get("/v1/statements?limit=2", Some(KEY))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["object"], "list");
    assert_eq!(first["data"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["has_more"], true);
    assert!(
        books.statements_decoded() - before <= 3,
        "a page and one more"
    );
    let after = first["last_id"].as_str().unwrap();
    assert_eq!(after, first["data"][1]["label"]);
    let second: Value = s
        .get(&format!("/v1/statements?limit=2&after={after}"), Some(KEY))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        second["data"][0]["label"].as_str().unwrap() > after,
        "{second}"
    );
    // The default page is bounded, and a page asking for more is clamped.
    let all: Value = s
        .get("/v1/statements?limit=100000", Some(KEY))
        .await
        .json()
        .await
        .unwrap();
    let n = all["data"].as_array().unwrap().len();
    assert_eq!(n, crate::core::queries::MAX_STATEMENTS_PER_PAGE);
    assert_eq!(all["has_more"], true);
    // Paging from the start reaches the job's statement, with this app's
    // line.
    let mut cursor = String::new();
    let line = loop {
        let page: Value = s
            .get(
                &format!("/v1/statements?limit=40&after={cursor}"),
                Some(KEY),
            )
            .await
            .json()
            .await
            .unwrap();
        if let Some(l) = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["label"] == period.label())
        {
            break l.clone();
        }
        assert_eq!(page["has_more"], true, "the job's statement is listed");
        cursor = page["last_id"].as_str().unwrap().to_owned();
    };
    assert_eq!(line["jobs"], 1, "{line}");
    s.stop().await;
}
