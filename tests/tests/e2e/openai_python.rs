//! The official `openai` Python client against the devnet. The interpreter
//! comes from `SHARENET_PYTHON`, else the `.venv` that `scripts/test`
//! creates; without either this test fails and says how to set it up.

use sharenet_tests::{MODEL, TestNet, minilm_dir, python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_client_gets_the_expected_shapes() {
    let t = TestNet::start(3).await;
    let _embedder = t
        .add_node(vec![sharenet_node::ModelConfig::local(
            "all-minilm-l6-v2",
            minilm_dir(),
            10,
            0,
        )])
        .await;
    let script = workspace_root().join("tests/python/openai_client_check.py");
    let output = tokio::process::Command::new(python())
        .arg(&script)
        .env("OPENAI_BASE_URL", t.base_url())
        .env("OPENAI_API_KEY", t.key())
        .env("SHARENET_MODEL", MODEL)
        .env("SHARENET_EMBED_MODEL", "all-minilm-l6-v2")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai client check failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    t.stop().await;
}
