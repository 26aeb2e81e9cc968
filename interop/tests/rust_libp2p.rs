//! Interop with a real rust-libp2p 0.57 peer, both directions: the connection comes up
//! over TCP + Noise + yamux, each side identifies and pings the other, and our signed
//! peer record verifies with rust-libp2p's own envelope and record code.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::{PeerRecord, SignedEnvelope};
use pylon_node::node::Node;
use pylon_node::protocols::{identify as pylon_identify, ping as pylon_ping};
use pylon_node::record::RecordFormat;
use pylon_node::secure::Security;

/// Reads our identify message off a raw rust-libp2p stream and checks the signed peer
/// record with rust-libp2p's RFC 0003 verifier (its identify behaviour drops RFC 0003
/// records silently, so this is how we see what it would conclude).
async fn check_record_with_rust_verifier(rust: &mut RustPeer, node: &Node) {
    let mut stream = rust
        .raw_stream(node.peer_id(), pylon_identify::PROTOCOL)
        .await;
    let mut buf = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let _ = stream.close().await;
    let (frame, rest) = pylon_node::varint::split_frame(&buf, 64 * 1024).unwrap();
    assert!(rest.is_empty());
    let msg: pylon_node::proto::Identify = prost::Message::decode(frame).unwrap();
    let envelope =
        SignedEnvelope::from_protobuf_encoding(&msg.signed_peer_record.unwrap()).unwrap();
    let record = PeerRecord::from_signed_envelope_interop(envelope)
        .expect("rust-libp2p verifies our record");
    assert_eq!(record.peer_id(), node.peer_id());
    assert_eq!(
        record.addresses(),
        node.identify.advertised_addrs().as_slice()
    );
    assert!(record
        .addresses()
        .iter()
        .any(|a| pylon_addr(node).to_string().starts_with(&a.to_string())));
    assert!(record.seq() > 0);
}

async fn check_rust_view_of_pylon(info: &libp2p::identify::Info, node: &Node) {
    assert_eq!(info.public_key.to_peer_id(), node.peer_id());
    assert_eq!(
        info.agent_version,
        concat!("pylon/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(info.protocol_version, "ipfs/0.1.0");
    let protocols: Vec<String> = info.protocols.iter().map(|p| p.to_string()).collect();
    for p in [
        pylon_ping::PROTOCOL,
        pylon_identify::PROTOCOL,
        pylon_identify::PUSH_PROTOCOL,
    ] {
        assert!(
            protocols.iter().any(|x| x == p),
            "{p} missing from {protocols:?}"
        );
    }
    assert_eq!(info.listen_addrs, node.identify.advertised_addrs());
    // rust-libp2p keeps only legacy-format records: ours (RFC 0003) is dropped here.
    assert!(info.signed_peer_record.is_none());
}

fn check_pylon_view_of_rust(info: &pylon_identify::Info, rust: &RustPeer) {
    assert_eq!(info.agent_version.as_deref(), Some(RUST_AGENT));
    assert_eq!(info.protocol_version.as_deref(), Some("ipfs/0.1.0"));
    assert!(
        info.protocols.iter().any(|p| p == pylon_ping::PROTOCOL),
        "{:?}",
        info.protocols
    );
    let rust_listen = {
        let mut a = rust.addr.clone();
        a.pop();
        a
    };
    assert!(
        info.listen_addrs.contains(&rust_listen),
        "{:?}",
        info.listen_addrs
    );
    // rust-libp2p signs the legacy format; we verify and accept it, marked as such.
    let record = info
        .record
        .as_ref()
        .expect("rust's legacy signed record accepted");
    assert_eq!(record.format(), RecordFormat::LegacyRoutingState);
    assert_eq!(record.peer_id(), rust.peer_id);
    assert_eq!(record.addrs(), &[rust_listen]);
}

#[tokio::test]
async fn rust_libp2p_dials_pylon() {
    let node = pylon().await;
    let mut pylon_events = node.identify.subscribe();
    let mut rust = RustPeer::start().await;
    rust.dial(pylon_addr(&node)).await;

    let info = rust.identified(node.peer_id()).await;
    check_rust_view_of_pylon(&info, &node).await;
    // The address rust-libp2p is observed at is its side of this loopback connection.
    assert!(
        info.observed_addr
            .to_string()
            .starts_with("/ip4/127.0.0.1/tcp/"),
        "{}",
        info.observed_addr
    );
    let theirs = pylon_identified(&mut pylon_events, rust.peer_id).await;
    check_pylon_view_of_rust(&theirs, &rust);
    assert_eq!(
        theirs.observed_addr.as_ref(),
        Some(&pylon_node::host::Host::listen_addrs(&node.host)[0])
    );

    rust.pinged(node.peer_id()).await;
    pylon_ping::ping(&node.host, &rust.peer_id).await.unwrap();
    check_record_with_rust_verifier(&mut rust, &node).await;

    // Several pings in a row on both sides (rust pings every second on its own stream).
    for _ in 0..3 {
        rust.pinged(node.peer_id()).await;
        pylon_ping::ping(&node.host, &rust.peer_id).await.unwrap();
    }
    node.shutdown(T).await;
    rust.wait("close", |e| {
        matches!(e, RustEvent::Closed { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn pylon_dials_rust_libp2p() {
    let node = pylon().await;
    let mut pylon_events = node.identify.subscribe();
    let mut rust = RustPeer::start().await;
    let conn = node.host.dial(&rust.addr).await.unwrap();
    assert_eq!(conn.peer(), rust.peer_id);
    // rust-libp2p does not offer muxers in the handshake: multistream-select fallback.
    assert!(!conn.early_muxer());

    let theirs = pylon_identified(&mut pylon_events, rust.peer_id).await;
    check_pylon_view_of_rust(&theirs, &rust);
    let info = rust.identified(node.peer_id()).await;
    check_rust_view_of_pylon(&info, &node).await;

    pylon_ping::ping(&node.host, &rust.peer_id).await.unwrap();
    rust.pinged(node.peer_id()).await;
    check_record_with_rust_verifier(&mut rust, &node).await;

    // Pylon's peerstore kept rust's record and addresses.
    let stored = node.peerstore.get(&rust.peer_id).unwrap();
    assert_eq!(stored.agent_version.as_deref(), Some(RUST_AGENT));
    assert!(stored.addrs.iter().any(|a| a.certified));

    // A wrong PeerId in the dialed address is refused after the handshake.
    let other = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let mut wrong = rust.addr.clone();
    wrong.pop();
    let wrong = wrong.with(libp2p::multiaddr::Protocol::P2p(other));
    assert!(matches!(
        node.host.dial(&wrong).await,
        Err(pylon_node::host::DialError::WrongPeer { .. })
    ));
    node.shutdown(T).await;
}

#[tokio::test]
async fn tls_both_directions_with_rust_libp2p() {
    // rust-libp2p proposes /tls/1.0.0 first; Pylon dials with TLS only (lazily proposed).
    both_directions_on(
        RustKind::Tls,
        "/ip4/127.0.0.1/tcp/0",
        Security::Tls,
        ("tcp", "tls", "yamux"),
    )
    .await;
}

/// Identify and ping both ways on one transport, each side dialing once; the negotiated
/// transport, security and muxer are asserted on Pylon's side and on rust-libp2p's.
async fn both_directions_on(
    kind: RustKind,
    listen: &str,
    security: Security,
    expect: (&str, &str, &str),
) {
    // rust-libp2p dials Pylon.
    let node = pylon_with(listen, security).await;
    let mut pylon_events = node.identify.subscribe();
    let mut rust = RustPeer::start_on(kind).await;
    rust.dial(pylon_addr(&node)).await;
    let info = rust.identified(node.peer_id()).await;
    check_rust_view_of_pylon(&info, &node).await;
    let theirs = pylon_identified(&mut pylon_events, rust.peer_id).await;
    check_pylon_view_of_rust(&theirs, &rust);
    let conn = node.host.connection(&rust.peer_id).unwrap();
    assert_eq!(
        (conn.transport(), conn.security(), conn.muxer()),
        expect,
        "{kind:?}, rust dialing"
    );
    pylon_ping::ping(&node.host, &rust.peer_id).await.unwrap();
    rust.pinged(node.peer_id()).await;
    node.shutdown(T).await;

    // Pylon dials rust-libp2p.
    let node = pylon_with(listen, security).await;
    let mut pylon_events = node.identify.subscribe();
    let mut rust = RustPeer::start_on(kind).await;
    let conn = node.host.dial(&rust.addr).await.unwrap();
    assert_eq!(
        (conn.transport(), conn.security(), conn.muxer()),
        expect,
        "{kind:?}, pylon dialing"
    );
    let connected = rust
        .wait("connection", |e| match e {
            RustEvent::Connected { peer, endpoint } => Some((peer, endpoint)),
            _ => None,
        })
        .await;
    assert_eq!(connected.0, node.peer_id());
    let theirs = pylon_identified(&mut pylon_events, rust.peer_id).await;
    check_pylon_view_of_rust(&theirs, &rust);
    rust.identified(node.peer_id()).await;
    pylon_ping::ping(&node.host, &rust.peer_id).await.unwrap();
    rust.pinged(node.peer_id()).await;
    // A wrong PeerId is refused, naming the peer that answered.
    let other = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let mut wrong = rust.addr.clone();
    wrong.pop();
    match node
        .host
        .dial(&wrong.with(libp2p::multiaddr::Protocol::P2p(other)))
        .await
    {
        Err(pylon_node::host::DialError::WrongPeer { got, .. }) => assert_eq!(*got, rust.peer_id),
        other => panic!("{kind:?}: expected WrongPeer, got {other:?}"),
    }
    node.shutdown(T).await;
}

#[tokio::test]
async fn quic_both_directions_with_rust_libp2p() {
    both_directions_on(
        RustKind::Quic,
        "/ip4/127.0.0.1/udp/0/quic-v1",
        Security::Noise,
        ("quic-v1", "tls", "quic"),
    )
    .await;
}

#[tokio::test]
async fn websocket_both_directions_with_rust_libp2p() {
    both_directions_on(
        RustKind::Ws,
        "/ip4/127.0.0.1/tcp/0/ws",
        Security::Noise,
        ("ws", "noise", "yamux"),
    )
    .await;
}
