//! deploy/ checked as far as this machine can (`deploy/check.sh`): the
//! systemd units verify, the Prometheus configs load, the compose and
//! Grafana files parse, and every dashboard query parses as PromQL and
//! reads metrics that a real coordinator's private `/metrics` (the
//! metrics listener Prometheus scrapes) has.

use serde_json::json;
use sharenet_tests::{MODEL, TestNet, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_check_out_against_a_real_metrics_page() {
    let t = TestNet::start(1).await;
    // One request of each kind the dashboard plots, so every series exists.
    let r = t
        .post(
            "chat/completions",
            &json!({"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // What Prometheus scrapes: the private metrics listener.
    let root = format!(
        "http://{}",
        t.net()
            .coordinator
            .metrics_addr
            .expect("a metrics listener")
    );
    let page = reqwest::get(format!("{root}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &page).unwrap();
    let out = tokio::process::Command::new(workspace_root().join("deploy/check.sh"))
        .arg(&file)
        .output()
        .await
        .expect("run deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy/check.sh failed\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the dashboard's queries parse"), "{stdout}");
    t.stop().await;
}
