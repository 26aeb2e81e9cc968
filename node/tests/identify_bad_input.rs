//! identify against a peer that lies or sends garbage: every case ends in a clear error or
//! a rejected record with a counted reason, never a panic, and the connection survives.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use prost::Message;
use pylon_node::host::{self, Host};
use pylon_node::metrics::{ErrorLabels, Metrics};
use pylon_node::node::{self, Node};
use pylon_node::protocols::{identify, ping};
use pylon_node::{proto, record, varint, Keypair};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(10);

/// A bare host whose identify answer is whatever bytes the test puts in `reply`.
async fn liar(key: Keypair, reply: Arc<Mutex<Vec<u8>>>) -> Host {
    let host = Host::new(key, host::Config::default(), Metrics::unregistered()).unwrap();
    ping::install(&host);
    host.set_handler(
        identify::PROTOCOL,
        host::handler(move |mut s| {
            let bytes = reply.lock().unwrap().clone();
            async move {
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
            }
        }),
    );
    host.listen(&"/memory/0".parse().unwrap()).await.unwrap();
    host
}

fn message(key: &Keypair, envelope: Option<Vec<u8>>) -> proto::Identify {
    proto::Identify {
        public_key: Some(key.public().encode_protobuf()),
        listen_addrs: vec!["/ip4/10.1.2.3/tcp/4001"
            .parse::<multiaddr::Multiaddr>()
            .unwrap()
            .to_vec()],
        protocols: vec![ping::PROTOCOL.into()],
        observed_addr: None,
        protocol_version: Some("ipfs/0.1.0".into()),
        agent_version: Some("liar/1".into()),
        signed_peer_record: envelope,
    }
}

fn framed(msg: &proto::Identify) -> Vec<u8> {
    varint::length_prefixed(&msg.encode_to_vec())
}

fn metric_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn lies_and_garbage_are_refused_with_reasons() {
    let key = Keypair::generate_ed25519();
    let reply = Arc::new(Mutex::new(Vec::new()));
    let liar = liar(key.clone(), reply.clone()).await;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let node = Node::start_volatile(node::Config::default(), metrics)
        .await
        .unwrap();
    let set = |bytes: Vec<u8>| *reply.lock().unwrap() = bytes;
    // Something valid first, so the connection's automatic identify has an answer.
    set(framed(&message(&key, None)));
    let addr = liar.listen_addrs()[0]
        .clone()
        .with(multiaddr::Protocol::P2p(liar.peer_id()));
    let mut events = node.identify.subscribe();
    let conn = node.host.dial(&addr).await.unwrap();
    // Let the automatic identify of the new connection finish before changing the answer.
    tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();

    // A valid record for another peer: rejected as wrong_peer, the rest of the message used.
    let other = Keypair::generate_ed25519();
    let foreign = record::seal_peer_record(&other, 9, &[]).unwrap();
    set(framed(&message(&key, Some(foreign))));
    let info = node.identify.identify(&conn).await.unwrap();
    assert!(info.record.is_none());
    assert_eq!(info.record_error, Some(record::Error::WrongPeer));
    assert_eq!(info.agent_version.as_deref(), Some("liar/1"));
    assert_eq!(
        node.peerstore
            .get(&liar.peer_id())
            .unwrap()
            .agent_version
            .as_deref(),
        Some("liar/1")
    );

    // A record whose signature was tampered with.
    let good =
        record::seal_peer_record(&key, 5, &["/ip4/10.1.2.3/tcp/4001".parse().unwrap()]).unwrap();
    let mut env: proto::Envelope = proto::decode(&good, 4096).unwrap();
    env.signature[0] ^= 0xff;
    set(framed(&message(&key, Some(env.encode_to_vec()))));
    let info = node.identify.identify(&conn).await.unwrap();
    assert_eq!(info.record_error, Some(record::Error::BadSignature));

    // The good record is accepted; then an older one is stale, the same one unchanged.
    set(framed(&message(&key, Some(good.clone()))));
    let info = node.identify.identify(&conn).await.unwrap();
    assert_eq!(info.record.unwrap().seq(), 5);
    set(framed(&message(&key, Some(good))));
    assert!(node
        .identify
        .identify(&conn)
        .await
        .unwrap()
        .record_error
        .is_none());
    let old = record::seal_peer_record(&key, 4, &[]).unwrap();
    set(framed(&message(&key, Some(old))));
    let info = node.identify.identify(&conn).await.unwrap();
    assert_eq!(
        info.record_error,
        Some(record::Error::Stale { got: 4, held: 5 })
    );
    assert_eq!(
        node.peerstore
            .get(&liar.peer_id())
            .unwrap()
            .record
            .unwrap()
            .seq(),
        5
    );

    // Somebody else's public key.
    set(framed(&message(&other, None)));
    assert!(matches!(
        node.identify.identify(&conn).await,
        Err(identify::Error::KeyMismatch)
    ));
    // Not protobuf; an oversized frame; a truncated frame; non-minimal length.
    set(varint::length_prefixed(&[0xff, 0xff, 0xff]));
    assert!(matches!(
        node.identify.identify(&conn).await,
        Err(identify::Error::Malformed(_))
    ));
    let mut huge = Vec::new();
    varint::encode(10_000_000, &mut huge);
    set(huge);
    assert!(matches!(
        node.identify.identify(&conn).await,
        Err(identify::Error::Read(_))
    ));
    set(vec![50, 1, 2, 3]);
    assert!(matches!(
        node.identify.identify(&conn).await,
        Err(identify::Error::Read(_))
    ));
    set(vec![0x83, 0x00, 1, 2, 3]);
    assert!(matches!(
        node.identify.identify(&conn).await,
        Err(identify::Error::Read(_))
    ));

    // The connection is still fine, and every case was counted: `identify()` counts its
    // outcome before it returns, so the counts are complete once the last call returned.
    ping::ping(&node.host, &liar.peer_id()).await.unwrap();
    let text = metric_text(&registry);
    for needle in [
        "libp2p_identify_signed_records_total{outcome=\"rejected\",kind=\"wrong_peer\"} 1",
        "libp2p_identify_signed_records_total{outcome=\"rejected\",kind=\"bad_signature\"} 1",
        "libp2p_identify_signed_records_total{outcome=\"rejected\",kind=\"stale_seq\"} 1",
        "libp2p_identify_signed_records_total{outcome=\"accepted\",kind=\"rfc0003\"} 1",
        "libp2p_identify_signed_records_total{outcome=\"unchanged\",kind=\"rfc0003\"} 1",
        "libp2p_protocol_errors_total{protocol=\"identify\",reason=\"key_mismatch\"} 1",
        "libp2p_protocol_errors_total{protocol=\"identify\",reason=\"malformed\"} 1",
        "libp2p_protocol_errors_total{protocol=\"identify\",reason=\"bad_frame\"} 3",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
    tokio::time::timeout(T, node.shutdown(T)).await.unwrap();
}

#[tokio::test]
async fn push_floods_are_rate_limited() {
    let key = Keypair::generate_ed25519();
    let reply = Arc::new(Mutex::new(framed(&message(&key, None))));
    let liar = liar(key.clone(), reply).await;
    let metrics = Metrics::unregistered();
    let node = Node::start_volatile(node::Config::default(), metrics.clone())
        .await
        .unwrap();
    let mut events = node.identify.subscribe();
    let addr = liar.listen_addrs()[0]
        .clone()
        .with(multiaddr::Protocol::P2p(liar.peer_id()));
    node.host.dial(&addr).await.unwrap();
    tokio::time::timeout(T, events.recv())
        .await
        .unwrap()
        .unwrap();
    const PUSHES: u64 = 12;
    let burst_started = std::time::Instant::now();
    for _ in 0..PUSHES {
        let mut s = liar
            .open_stream(&node.peer_id(), &[identify::PUSH_PROTOCOL])
            .await
            .unwrap();
        let _ = s.write_all(&framed(&message(&key, None))).await;
        let _ = s.shutdown().await;
    }
    // Wait until every push was decided: accepted (an identify event) or refused (counted).
    let refused = metrics
        .protocol_errors
        .get_or_create(&ErrorLabels {
            protocol: "identify",
            reason: "push_rate",
        })
        .clone();
    let mut accepted = 0;
    tokio::time::timeout(T, async {
        while accepted + refused.get() < PUSHES {
            if let identify::Event::Identified(info) = events.recv().await.unwrap() {
                assert!(info.push);
                accepted += 1;
            }
        }
    })
    .await
    .expect("every push accepted or refused");
    // A burst of 5 gets through, plus one per second the burst took; the rest is refused.
    let refills = burst_started.elapsed().as_secs() + 1;
    assert!(
        (5..=5 + refills).contains(&accepted),
        "{accepted} pushes accepted in {:?}",
        burst_started.elapsed()
    );
    assert_eq!(accepted + refused.get(), PUSHES);
    node.shutdown(T).await;
}
