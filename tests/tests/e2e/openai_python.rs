//! The official `openai` Python client against the devnet. The interpreter
//! comes from `SHARENET_PYTHON`, else the `.venv` that `scripts/test`
//! creates; without either this test fails and says how to set it up.

use sharenet_tests::{MODEL, TestNet, minilm_dir, python, run_client_check, workspace_root};

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
    run_client_check(
        python(),
        &["tests/python/openai_client_check.py"],
        &workspace_root(),
        &[
            ("OPENAI_BASE_URL", t.base_url()),
            ("OPENAI_API_KEY", t.key().to_owned()),
            ("SHARENET_MODEL", MODEL.into()),
            ("SHARENET_EMBED_MODEL", "all-minilm-l6-v2".into()),
        ],
    )
    .await;
    t.stop().await;
}
