//! Kademlia server under bad input: oversized and malformed messages, bogus record keys,
//! forged IPNS records, floods from one peer and from one subnet. Each is refused (stream
//! reset) and counted, and honest peers are still served. Real nodes on loopback; an
//! attacker speaks the wire format through raw streams.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pylon_node::host::Stream;
use pylon_node::metrics::ErrorLabels;
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad::{self, proto, MessageType};
use pylon_node::{varint, Keypair, Multiaddr};
use pylon_testkit::node as kit;
use pylon_testkit::wait;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(10);

/// A DHT server on IPv4 and IPv6 loopback, refresh off, the rest of `config` kept.
async fn kad_server(config: kad::Config) -> Node {
    kit::start_with(node::Config {
        kad: Some(kad::Config {
            server: true,
            refresh_interval: None,
            ..config
        }),
        ..kit::config(&["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"])
    })
    .await
}

/// `to`'s listen address of the family `from` listens on.
fn addr_for(from: &Node, to: &Node) -> Multiaddr {
    let v6 = from.host.listen_addrs()[0].to_string().starts_with("/ip6/");
    to.host
        .listen_addrs()
        .into_iter()
        .find(|a| a.to_string().starts_with("/ip6/") == v6)
        .unwrap()
}

/// A new kad stream on `from`'s connection to `to` (dialed once).
async fn stream_to(from: &Node, to: &Node) -> Stream {
    let conn = from
        .host
        .connect(to.peer_id(), &[addr_for(from, to)])
        .await
        .unwrap();
    conn.open_stream(&[kad::DEFAULT_PROTOCOL]).await.unwrap()
}

/// Sends raw bytes, then reads one reply; `None` when the server reset or closed instead.
async fn exchange(stream: &mut Stream, bytes: &[u8]) -> Option<proto::Message> {
    stream.write_all(bytes).await.ok()?;
    stream.flush().await.ok()?;
    let frame = tokio::time::timeout(T, varint::read_frame(stream, 1 << 20))
        .await
        .expect("the server answers or resets within T")
        .ok()?;
    Some(proto::decode(&frame, 1 << 20).unwrap())
}

async fn ask(stream: &mut Stream, msg: &proto::Message) -> Option<proto::Message> {
    exchange(stream, &varint::length_prefixed(&msg.to_bytes())).await
}

fn errors(node: &Node, reason: &'static str) -> u64 {
    node.host
        .metrics()
        .protocol_errors
        .get_or_create(&ErrorLabels {
            protocol: "kad",
            reason,
        })
        .get()
}

fn find_node(key: &[u8]) -> proto::Message {
    proto::Message::new(MessageType::FindNode, key.to_vec())
}

fn put(key: &[u8], record_key: &[u8], value: &[u8]) -> proto::Message {
    let mut m = proto::Message::new(MessageType::PutValue, key.to_vec());
    m.record = Some(proto::Record {
        key: record_key.to_vec(),
        value: value.to_vec(),
        time_received: String::new(),
    });
    m
}

#[tokio::test]
async fn bad_messages_and_bogus_records_are_refused_and_counted() {
    let server = kad_server(kad::Config {
        max_message_len: 4096,
        ..Default::default()
    })
    .await;
    let attacker = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let target = attacker.peer_id().to_bytes();

    // An honest request first: answered.
    let mut s = stream_to(&attacker, &server).await;
    assert!(ask(&mut s, &find_node(&target)).await.is_some());

    // Each bad input gets the stream reset (no reply) and its own counter.
    let mut oversized = Vec::new();
    varint::encode(1_000_000, &mut oversized);
    oversized.extend_from_slice(&[0u8; 64]);
    let forged_ipns = {
        let owner = Keypair::generate_ed25519();
        let data = kad::validator::IpnsData {
            value: b"/ipfs/bafkqaaa".to_vec(),
            validity: kad::validator::format_rfc3339(4_102_444_800_000).into_bytes(),
            validity_type: 0,
            sequence: 1,
            ttl: 1,
        };
        let mut entry: kad::validator::IpnsEntry =
            prost::Message::decode(kad::validator::seal_ipns(&owner, &data).unwrap().as_slice())
                .unwrap();
        let mut sig = entry.signature_v2.take().unwrap();
        sig[0] ^= 1;
        entry.signature_v2 = Some(sig);
        let mut key = b"/ipns/".to_vec();
        key.extend_from_slice(&owner.public().to_peer_id().to_bytes());
        put(&key, &key, &prost::Message::encode_to_vec(&entry))
    };
    let mut pk_mismatch = b"/pk/".to_vec();
    pk_mismatch.extend_from_slice(&attacker.peer_id().to_bytes());
    let unknown_type = proto::Message {
        r#type: 42,
        key: b"k".to_vec(),
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("too_large", oversized),
        ("malformed", varint::length_prefixed(&[0xff; 12])),
        (
            "unknown_type",
            varint::length_prefixed(&unknown_type.to_bytes()),
        ),
        (
            "bad_key",
            varint::length_prefixed(&find_node(b"").to_bytes()),
        ),
        (
            "unknown_namespace",
            varint::length_prefixed(&put(b"/nope/x", b"/nope/x", b"v").to_bytes()),
        ),
        (
            "key_mismatch",
            varint::length_prefixed(&put(b"/pk/a", b"/pk/b", b"v").to_bytes()),
        ),
        (
            "mismatch",
            varint::length_prefixed(
                &put(
                    &pk_mismatch,
                    &pk_mismatch,
                    &Keypair::generate_ed25519().public().encode_protobuf(),
                )
                .to_bytes(),
            ),
        ),
        (
            "bad_signature",
            varint::length_prefixed(&forged_ipns.to_bytes()),
        ),
        (
            "no_record",
            varint::length_prefixed(
                &proto::Message::new(MessageType::PutValue, b"/pk/x".to_vec()).to_bytes(),
            ),
        ),
    ];
    for (reason, bytes) in cases {
        let before = errors(&server, reason);
        let mut s = stream_to(&attacker, &server).await;
        assert!(
            exchange(&mut s, &bytes).await.is_none(),
            "{reason}: no reply"
        );
        assert_eq!(errors(&server, reason), before + 1, "{reason} counted");
    }
    let k = server.kad.as_ref().unwrap();
    assert_eq!(k.store().counts().records, 0, "nothing bogus was stored");

    // The same peer's honest requests and another peer's are still served.
    let mut s = stream_to(&attacker, &server).await;
    assert!(ask(&mut s, &find_node(&target)).await.is_some());
    let honest = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let mut s = stream_to(&honest, &server).await;
    assert!(ask(&mut s, &find_node(&target)).await.is_some());
    // A valid /pk/ record is stored and echoed.
    let mut key = b"/pk/".to_vec();
    key.extend_from_slice(&honest.peer_id().to_bytes());
    let good = put(
        &key,
        &key,
        &honest.host.keypair().public().encode_protobuf(),
    );
    assert_eq!(ask(&mut s, &good).await, Some(good.clone()));
    assert_eq!(k.store().counts().records, 1);

    // ADD_PROVIDER keeps the sender's entry once and only counts entries for others.
    let mut add = proto::Message::new(MessageType::AddProvider, vec![0x12, 0x20, 7, 7]);
    let entry = |id: Vec<u8>| proto::Peer {
        id,
        addrs: vec![addr_for(&honest, &server).to_vec()],
        connection: 0,
    };
    add.provider_peers = vec![
        entry(attacker.peer_id().to_bytes()),
        entry(honest.peer_id().to_bytes()),
        entry(honest.peer_id().to_bytes()),
    ];
    let before = errors(&server, "foreign_provider");
    s.write_all(&varint::length_prefixed(&add.to_bytes()))
        .await
        .unwrap();
    s.flush().await.unwrap();
    // The store reports nothing: polled.
    wait::until("the provider stored", T, || {
        k.store().counts().providers > 0
    })
    .await;
    let held = k.store().providers(&add.key, 0).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].peer, honest.peer_id());
    assert_eq!(errors(&server, "foreign_provider"), before + 1);
}

/// Sends FIND_NODE on one stream until the server resets it; returns how many were answered.
async fn flood(from: &Node, server: &Node, max: usize) -> usize {
    let mut s = stream_to(from, server).await;
    let target = from.peer_id().to_bytes();
    for answered in 0..max {
        if ask(&mut s, &find_node(&target)).await.is_none() {
            return answered;
        }
    }
    max
}

#[tokio::test]
async fn floods_from_one_peer_and_one_subnet_are_rate_limited() {
    let server = kad_server(kad::Config {
        peer_rate: (20, 1),
        group_rate: (50, 1),
        limit_private_subnets: true,
        ..Default::default()
    })
    .await;
    // One peer: its burst, then a reset.
    let flooder = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let answered = flood(&flooder, &server, 100).await;
    assert!((20..=22).contains(&answered), "answered {answered}");
    assert!(errors(&server, "rate_limited") >= 1);

    // Several peers of the same /16 (127.0.0.0/16), each under its own limit, share the
    // subnet's budget: together they are cut off near it.
    let mut subnet_total = answered;
    for _ in 0..3 {
        let p = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
        subnet_total += flood(&p, &server, 19).await;
    }
    assert!(
        (50..=54).contains(&subnet_total),
        "the subnet got {subnet_total} answers"
    );

    // A peer from another network (IPv6 loopback: its own group) is served as usual.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping the other-network check");
        return;
    }
    let honest = kit::start(&["/ip6/::1/tcp/0"]).await;
    assert_eq!(flood(&honest, &server, 10).await, 10);
}
