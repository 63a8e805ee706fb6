//! A peer that floods the advert topic (issue 12, item 12): malformed and
//! forged adverts are rejected before they are forwarded or passed on, a
//! publisher's valid adverts are rate-limited, and an honest advert still
//! gets through to a coordinator whose event channel is small and unread
//! during the flood.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sharenet_p2p::{Event, Identity, NetworkConfig};
use sharenet_proto::SignedAdvert;
use tokio_util::sync::CancellationToken;

mod common;
use common::signed_advert;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_cannot_crowd_out_honest_adverts() {
    let cancel = CancellationToken::new();
    // The coordinator: 200 events of room, not read until the flood is over
    // (without the checks, the flood alone is 1,200 events).
    let mut cfg = NetworkConfig::loopback(Identity::generate());
    cfg.event_capacity = 200;
    let coordinator = sharenet_p2p::start(cfg, cancel.clone()).await.unwrap();
    let addr = coordinator.client.listen_addrs()[0]
        .clone()
        .with(sharenet_p2p::Protocol::P2p(coordinator.client.peer_id()));
    let mut events = coordinator.events;

    let join = |identity: Identity| {
        let mut cfg = NetworkConfig::loopback(identity);
        cfg.bootstrap = vec![addr.clone()];
        sharenet_p2p::start(cfg, cancel.clone())
    };
    let flooder_id = Identity::generate();
    let spammer_id = Identity::generate();
    let honest_id = Identity::generate();
    let flooder = join(flooder_id.clone()).await.unwrap();
    let spammer = join(spammer_id.clone()).await.unwrap();
    let honest = join(honest_id.clone()).await.unwrap();

    // Wait until the flooder's publishes reach someone.
    let first = signed_advert(&flooder_id, 1, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while flooder.client.publish_advert(first.clone()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the flooder joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let flood_started = std::time::Instant::now();
    // 300 malformed, 300 forged (signed by someone else), 300 valid.
    let stranger = Identity::generate();
    for i in 0..300u64 {
        let _ = flooder
            .client
            .publish_advert(format!("garbage {i}").into_bytes())
            .await;
        let _ = flooder
            .client
            .publish_advert(signed_advert(&stranger, i + 2, false))
            .await;
        let _ = flooder
            .client
            .publish_advert(signed_advert(&flooder_id, i + 2, false))
            .await;
    }
    // A second peer sends only valid adverts of its own, 300 at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while spammer
        .client
        .publish_advert(signed_advert(&spammer_id, 1, false))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "the spammer joined");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..300u64 {
        let _ = spammer
            .client
            .publish_advert(signed_advert(&spammer_id, i + 2, false))
            .await;
    }
    // Part of the scenario, not a wait for a result: the flood has a
    // moment to fill the coordinator's unread event channel before the
    // honest advert is sent (what arrived is read below, with a deadline).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let honest_advert = signed_advert(&honest_id, 1, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while honest
        .client
        .publish_advert(honest_advert.clone())
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the honest node joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Now read what reached the coordinator.
    let mut from_flooder = 0u32;
    let mut from_spammer = 0u32;
    let mut honest_seen = false;
    // The bucket refills for as long as the coordinator is still checking
    // queued adverts, which can be after the flood was sent (on a loaded
    // machine, well after): the time the last one was read here bounds it.
    let mut checked_secs = flood_secs;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !honest_seen {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Advert { source, data })) => {
                if source == flooder_id.peer_id() {
                    from_flooder += 1;
                    checked_secs = flood_started.elapsed().as_secs_f64();
                    assert!(
                        SignedAdvert::from_bytes(&data).is_ok(),
                        "nothing unverified is passed on"
                    );
                } else if source == spammer_id.peer_id() {
                    from_spammer += 1;
                    checked_secs = flood_started.elapsed().as_secs_f64();
                } else if source == honest_id.peer_id() {
                    honest_seen = true;
                }
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert!(honest_seen, "the honest advert got through the flood");
    // At most the bucket: a burst of 20, then 5 a second while it lasted.
    let allowed = 20.0 + 5.0 * checked_secs.max(flood_secs) + 5.0;
    assert!(
        f64::from(from_flooder) <= allowed,
        "the flooder's valid adverts are few: {from_flooder} (allowed {allowed:.0})"
    );
    assert!(
        f64::from(from_spammer) <= allowed,
        "a publisher's valid adverts are rate-limited: {from_spammer} of 301 passed on (allowed {allowed:.0})"
    );
    // The first malformed advert is rejected and costs the flooder its
    // score: below the graylist threshold, the rest of its flood is
    // dropped by gossipsub without even being checked.
    let stats = coordinator.client.gossip_stats();
    let rejected = stats.rejected.load(std::sync::atomic::Ordering::Relaxed);
    assert!(rejected >= 1, "malformed and forged adverts are rejected");
    let limited = stats
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(limited > 0, "the spammer hit its rate");
    eprintln!(
        "rejected {rejected}, rate-limited {limited}, from the flooder {from_flooder}, from the spammer {from_spammer}"
    );
    assert_eq!(
        coordinator.client.dropped_events(),
        0,
        "no event was dropped"
    );
    cancel.cancel();
}
