//! A node behind NAT: it has no listen address at all, so nobody can dial
//! it. It joins through the coordinator's relay (circuit relay v2), and a
//! second coordinator that has never heard of it finds it through Kademlia
//! and gets jobs served through the relay circuit. (Hole punching is tried
//! too, and fails here as it must: neither side has an address to punch.)

use std::time::Duration;

use serde_json::{Value, json};
use sharenet_coordinator::config::CoordinatorConfig;
use sharenet_coordinator::core::registry::Lookup;
use sharenet_engine::tiny::{TinyConfig, write_tiny_llama};
use sharenet_node::{ModelConfig, NodeConfig};
use sharenet_p2p::{Identity, Multiaddr};
use sharenet_tests::TestNet;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_nobody_can_dial_serves_another_coordinator_through_the_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    // The relay: the test network's coordinator (relays by default).
    let t = TestNet::start(1).await;
    let relay: Multiaddr = t
        .net()
        .coordinator
        .p2p_addrs
        .iter()
        .find(|a| a.to_string().contains("/quic-v1"))
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(&dir.path().join("model"), 5, TinyConfig::default()).unwrap();

    // The NATed node: no listen address, only the relay. It serves the
    // relay's coordinator and the second one below.
    let second_identity = Identity::generate();
    let node = sharenet_node::start(
        NodeConfig {
            identity: Identity::generate(),
            data_dir: dir.path().join("node"),
            listen: Vec::new(),
            bootstrap: vec![relay.clone()],
            relays: vec![relay.clone()],
            advert_interval: Duration::from_secs(1),
            advert_ttl: Duration::from_secs(3),
            region: None,
            coordinators: vec![t.net().coordinator.peer_id, second_identity.peer_id()],
            keeps_prompts: false,
            admin_listen: None,
            models: vec![ModelConfig::local(
                "natted-model",
                dir.path().join("model"),
                10,
                20,
            )],
        },
        t.cancel_token(),
    )
    .await
    .unwrap();
    let node_key = node.public_key();

    // A second coordinator that only knows the relay, and listens nowhere
    // either: neither side can dial the other, so the only path between
    // them is a circuit through the relay, found through the DHT.
    let api_key = "sk-second-coordinator-0000".to_string();
    let second = sharenet_coordinator::start(
        CoordinatorConfig {
            identity: second_identity,
            data_dir: dir.path().join("second"),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            p2p_listen: Vec::new(),
            bootstrap: vec![relay.clone()],
            api_keys: vec![api_key.clone()],
            max_attempts: 3,
            timeouts: Default::default(),
            network_fee_bps: 0,
            operator_key: None,
            bootstrap_balance: 1_000_000_000_000,
            period_rule: sharenet_market::PeriodRule::CalendarMonth,
            spot_check_rate: 0.0,
            spot_check_funding: 0,
            price_ceiling: Default::default(),
            spill_queue_factor: 5,
            aliases: Default::default(),
            // Models outside the (empty) catalog are routable here.
            catalog: sharenet_coordinator::config::CatalogConfig {
                file: None,
                allow_uncatalogued: true,
            },
            database: None,
            relay_server: false,
        },
        t.cancel_token(),
    )
    .await
    .unwrap();

    // Its advert reaches the second coordinator by gossip through the relay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Lookup::Found(o) = second.core.registry.lookup("natted-model", now_ms())
            && o.iter().any(|o| o.advert.node == node_key)
        {
            assert!(o[0].advert.relayed, "the advert says it is relayed");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node's advert never reached the second coordinator"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It finds the node through the DHT and connects through the relay.
    let peer = sharenet_p2p::peer_id_of(&node_key).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while second
        .p2p
        .as_ref()
        .unwrap()
        .is_relayed(peer)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second coordinator never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let http = reqwest::Client::new();
    let body = json!({"model": "natted-model", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hello through the relay"}]});
    let r = http
        .post(format!("{}/chat/completions", second.base_url()))
        .bearer_auth(&api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    let id = v["receipt_id"].as_str().unwrap();
    let receipt: Value = http
        .get(format!("{}/receipts/{id}", second.base_url()))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        receipt["receipt"]["node"].as_str(),
        Some(hex::encode(node_key).as_str()),
        "served and signed by the NATed node"
    );
    // Connected, relayed or hole-punched; the node cannot have been dialled
    // directly, for it listens nowhere.
    let relayed = second.p2p.as_ref().unwrap().is_relayed(peer).await.unwrap();
    assert!(
        relayed.is_some(),
        "the second coordinator holds a connection"
    );
    let traversal = second.p2p.as_ref().unwrap().traversal();
    let through_relay = traversal
        .relayed_connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let punched = traversal
        .hole_punches
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "relayed connections {through_relay}, hole punches {punched}, relayed only now: {relayed:?}"
    );
    assert!(
        through_relay >= 1,
        "the second coordinator reached the node through the relay circuit"
    );
    t.stop().await;
}
