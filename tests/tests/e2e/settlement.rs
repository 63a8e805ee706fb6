//! Settlement end to end with short periods: a signed statement whose
//! totals balance and match what builders were charged, idempotent
//! re-settlement, CSV export, inclusion proofs, later jobs landing in
//! the next period, and builders' privacy: neither the public bundle nor a
//! builder's statements show another builder's line.

use std::time::Duration;

use serde_json::{Value, json};
use sharenet_market::{InclusionProof, PeriodRule, SignedStatement};
use sharenet_tests::{MODEL, TestNet};

const PERIOD_MS: u64 = 3_000;

/// A node's ed25519 public key, from its receipts' signer.
fn public_key_of_peer(node: &sharenet_node::NodeHandle) -> [u8; 32] {
    node.public_key()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps past the end of `at`'s period: a wait for the wall clock, not
/// for an event (only an ended period settles).
async fn wait_for_period_end(at: u64) {
    let end = (at / PERIOD_MS + 1) * PERIOD_MS;
    let now = now_ms();
    if end + 50 > now {
        tokio::time::sleep(Duration::from_millis(end + 50 - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_period_balances_is_idempotent_and_proves_its_receipts() {
    let t = TestNet::start_with(2, |o| {
        o.period_rule = PeriodRule::Fixed {
            length_ms: PERIOD_MS,
            origin_ms: 0,
        }
    })
    .await;
    let key = t.funded_app("acme", 2000).await;

    let mut charges = Vec::new();
    for i in 0..4 {
        let r: Value = t
            .http
            .post(format!("{}/chat/completions", t.base_url()))
            .bearer_auth(&key)
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": format!("hi {i}")}],
                          "max_tokens": 6, "user": format!("customer-{}", i % 2)}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        charges.push((
            r["receipt_id"].as_str().unwrap().to_string(),
            r["usage"]["cost_details"].clone(),
        ));
    }
    // A rival app does business in the same period.
    let rival_key = t.funded_app("rival-secret-co", 3100).await;
    let rival: Value = t
        .http
        .post(format!("{}/chat/completions", t.base_url()))
        .bearer_auth(&rival_key)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "secret"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rival_charge = rival["usage"]["cost_details"]["charge_nano_usd"]
        .as_u64()
        .unwrap();
    // Settling sweeps every unsettled job recorded before the period's end,
    // so all four are in even if they straddled a boundary.
    let last = now_ms();
    wait_for_period_end(last).await;
    let (s, first) = t
        .operator(
            reqwest::Method::POST,
            "settle",
            Some(json!({"at_ms": last})),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["newly_settled"], true);
    let st = &first["statement"];
    // Every job of this test is in a statement up to this period.
    let total = |k: &str| st[k].as_u64().unwrap();
    assert_eq!(
        total("total_charged"),
        total("total_provider") + total("total_network_fee") + total("total_margin")
    );
    let acme = st["builders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["app"] == "acme")
        .unwrap();
    let ours: u64 = charges
        .iter()
        .map(|(_, c)| c["charge_nano_usd"].as_u64().unwrap())
        .sum();
    let margin: u64 = charges
        .iter()
        .map(|(_, c)| c["margin_nano_usd"].as_u64().unwrap())
        .sum();
    assert_eq!(
        acme["charged"].as_u64().unwrap(),
        ours,
        "the statement charges acme what it was told"
    );
    assert_eq!(acme["payout"].as_u64().unwrap(), margin);
    assert_eq!(acme["jobs"], 4);
    let rewards: u64 = st["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reward"].as_u64().unwrap())
        .sum();
    assert_eq!(rewards, total("total_provider"));

    // The signed bytes verify offline, and settling again changes nothing.
    let bytes = hex::decode(first["signed_bytes"].as_str().unwrap()).unwrap();
    let signed = SignedStatement::from_bytes(&bytes).unwrap();
    let (_, again) = t
        .operator(
            reqwest::Method::POST,
            "settle",
            Some(json!({"at_ms": last})),
        )
        .await;
    assert_eq!(again["newly_settled"], false);
    assert_eq!(again["signed_bytes"], first["signed_bytes"]);

    // CSV for the payout processor.
    let label = first["label"].as_str().unwrap().to_string();
    let csv = t
        .http
        .get(format!(
            "{}/operator/statements/{label}?format=csv",
            t.base_url().trim_end_matches("/v1")
        ))
        .bearer_auth(sharenet_devnet::DEVNET_OPERATOR_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.lines().count() >= 3, "{csv}");
    assert!(csv.contains("acme"), "{csv}");

    // Each receipt has a proof against the statement's root; a tampered
    // receipt does not verify.
    let get_as = |path: String| {
        let req = t
            .http
            .get(format!("{}/{path}", t.base_url()))
            .bearer_auth(&key);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for (id, _) in &charges {
        let p = get_as(format!("receipts/{id}/proof")).await;
        let proof: InclusionProof =
            serde_json::from_value(p["proof"].clone()).unwrap_or_else(|e| panic!("{e}: {p}"));
        assert_eq!(p["statement"], first["label"]);
        // The devnet key is another app: it cannot read acme's receipts.
        let other: Value = t
            .get(&format!("receipts/{id}/proof"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(other["error"]["code"], "not_found");
        let r = get_as(format!("receipts/{id}")).await;
        let receipt_bytes = hex::decode(r["countersigned_bytes"].as_str().unwrap()).unwrap();
        assert!(
            signed.statement().includes(&receipt_bytes, &proof),
            "receipt {id}"
        );
        let mut tampered = receipt_bytes.clone();
        tampered[20] ^= 1;
        assert!(!signed.statement().includes(&tampered, &proof));
    }

    // Every node reconciles its own receipts against the public bundle.
    let bundle: sharenet_api::statements::StatementBundle = t
        .http
        .get(format!(
            "{}/statements/{label}",
            t.base_url().trim_end_matches("/v1")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut proven = 0;
    for node in &t.net().nodes {
        let local = node.store.list(usize::MAX).unwrap();
        let key = public_key_of_peer(node);
        let report = sharenet_node::reconcile::reconcile(&bundle, &key, &local).unwrap();
        assert!(report.is_clean(), "{report:?}");
        proven += report.included;
    }
    assert_eq!(proven, total("receipts"));
    // The public bundle names no builder: only a count and a root.
    let public = serde_json::to_string(&bundle).unwrap();
    let public_json = signed.to_json().to_string();
    for text in [
        &public,
        &public_json,
        &hex::encode(&bundle.signed_statement),
    ] {
        assert!(!text.contains("rival-secret-co") && !text.contains("acme"));
        assert!(!text.contains(&hex::encode("rival-secret-co")));
    }
    assert_eq!(signed.statement().builder_lines, 2);
    assert!(!public_json.contains(&format!("\"charged\":{rival_charge}")));

    // A job after the period goes to the next one.
    let r: Value = t
        .http
        .post(format!("{}/chat/completions", t.base_url()))
        .bearer_auth(&key)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "later"}], "max_tokens": 3}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let later = now_ms();
    wait_for_period_end(later).await;
    let (_, next) = t
        .operator(
            reqwest::Method::POST,
            "settle",
            Some(json!({"at_ms": later})),
        )
        .await;
    let acme_next = next["statement"]["builders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["app"] == "acme")
        .cloned()
        .unwrap();
    assert_eq!(acme_next["jobs"], 1);
    assert_eq!(
        acme_next["charged"],
        r["usage"]["cost_details"]["charge_nano_usd"]
    );

    // The builder's view of statements.
    let list: Value = t
        .http
        .get(format!("{}/statements", t.base_url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mine: u64 = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["charged_nano_usd"].as_u64().unwrap())
        .sum();
    // Each of acme's lines proves against its signed statement; nothing in
    // acme's view names the rival.
    let text = list.to_string();
    assert!(!text.contains("rival-secret-co"), "{text}");
    assert!(!text.contains(&hex::encode("rival-secret-co")), "{text}");
    for s in list["data"].as_array().unwrap() {
        let view: sharenet_api::statements::BuilderStatement =
            serde_json::from_value(s.clone()).unwrap();
        let signed =
            SignedStatement::from_bytes(&hex::decode(&view.signed_bytes).unwrap()).unwrap();
        let Some(mut line) = view.builder_proof() else {
            assert_eq!(view.jobs, 0);
            continue;
        };
        assert!(signed.statement().includes_builder(&line), "{s}");
        // A builder claiming a bigger payout cannot prove it.
        line.payout += 1;
        assert!(!signed.statement().includes_builder(&line));
    }
    assert_eq!(
        mine,
        ours + r["usage"]["cost_details"]["charge_nano_usd"]
            .as_u64()
            .unwrap()
    );
    t.stop().await;
}
