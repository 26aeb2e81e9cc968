//! Host tests: several nodes in one process, over the in-memory transport and over
//! loopback TCP. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus_client::registry::Registry;
use pylon_node::host::{self, DialError, Event, StreamError};
use pylon_node::metrics::Metrics;
use pylon_node::node::Node;
use pylon_node::protocols::{identify, ping};
use pylon_node::{Keypair, Multiaddr, PeerId};
use pylon_testkit::node::{self as kit, addr_of};
use pylon_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn wait_identified(
    events: &mut tokio::sync::broadcast::Receiver<identify::Event>,
    peer: PeerId,
) -> identify::Info {
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await.unwrap() {
                identify::Event::Identified(info) if info.peer == peer => return *info,
                identify::Event::Failed { peer: p, error } if p == peer => {
                    panic!("identify failed: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("identify within bound")
}

/// `dialer` dials `target`'s first listen address naming another PeerId: refused, and the
/// error names the peer that answered.
async fn wrong_peer_refused(dialer: &Node, target: &Node) {
    let other = Keypair::generate_ed25519().public().to_peer_id();
    let wrong = target.host.listen_addrs()[0]
        .clone()
        .with(multiaddr::Protocol::P2p(other));
    match dialer.host.dial(&wrong).await {
        Err(DialError::WrongPeer { expected, got }) => {
            assert_eq!(*expected, other);
            assert_eq!(*got, target.peer_id());
        }
        other => panic!("expected WrongPeer dialing {wrong}, got {other:?}"),
    }
}

/// Closes `conn` (ours, `us`) and waits until `remote` saw it go.
async fn close_seen_by(conn: &host::Connection, us: PeerId, remote: &Node) {
    let mut events = remote.host.subscribe();
    conn.close();
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    tokio::time::timeout(T, async {
        loop {
            if let Event::ConnectionClosed { peer, .. } = events.recv().await.unwrap() {
                if peer == us {
                    break;
                }
            }
        }
    })
    .await
    .unwrap();
}

async fn identify_and_ping(listen: &str) {
    let a = kit::start(&[listen]).await;
    let b = kit::start(&[listen]).await;
    let mut a_events = a.identify.subscribe();
    let mut b_events = b.identify.subscribe();
    let conn = b.host.dial(&addr_of(&a)).await.unwrap();
    assert_eq!(conn.peer(), a.peer_id());
    let (transport, security, muxer) = if listen.contains("quic") {
        ("quic-v1", "tls", "quic")
    } else if listen.ends_with("/ws") {
        ("ws", "noise", "yamux")
    } else if listen.starts_with("/memory") {
        ("memory", "noise", "yamux")
    } else {
        ("tcp", "noise", "yamux")
    };
    assert_eq!(
        (conn.transport(), conn.security(), conn.muxer()),
        (transport, security, muxer)
    );

    // Each side identified the other, with a verified RFC 0003 record.
    let info_a = wait_identified(&mut b_events, a.peer_id()).await;
    let info_b = wait_identified(&mut a_events, b.peer_id()).await;
    for (info, node) in [(&info_a, &a), (&info_b, &b)] {
        assert_eq!(
            info.agent_version.as_deref(),
            Some(concat!("pylon/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(info.protocol_version.as_deref(), Some("ipfs/0.1.0"));
        assert_eq!(
            info.public_key.as_ref().unwrap().to_peer_id(),
            node.peer_id()
        );
        for p in [ping::PROTOCOL, identify::PROTOCOL, identify::PUSH_PROTOCOL] {
            assert!(
                info.protocols.iter().any(|x| x == p),
                "{p} missing from {:?}",
                info.protocols
            );
        }
        let record = info.record.as_ref().expect("verified record");
        assert_eq!(record.peer_id(), node.peer_id());
        assert_eq!(record.format(), pylon_node::record::RecordFormat::Rfc0003);
        assert_eq!(record.addrs(), node.identify.advertised_addrs().as_slice());
        assert!(info.record_error.is_none());
    }
    // The observed address b reports for a is a's side of the connection, and vice versa.
    assert_eq!(info_a.observed_addr.as_ref(), Some(conn.local_addr()));

    // The peerstore holds the facts, the certified addresses first.
    let stored = b.peerstore.get(&a.peer_id()).unwrap();
    assert_eq!(
        stored.record.unwrap().seq(),
        info_a.record.as_ref().unwrap().seq()
    );
    assert!(stored.addrs.iter().any(|e| e.certified));

    // Pings in both directions.
    let rtt = ping::ping(&b.host, &a.peer_id()).await.unwrap();
    assert!(rtt < T);
    ping::ping(&a.host, &b.peer_id()).await.unwrap();

    // Many pings on one stream and several streams at once.
    let mut s1 = b
        .host
        .open_stream(&a.peer_id(), &[ping::PROTOCOL])
        .await
        .unwrap();
    let mut s2 = b
        .host
        .open_stream(&a.peer_id(), &[ping::PROTOCOL])
        .await
        .unwrap();
    for _ in 0..10 {
        ping::ping_on(&mut s1).await.unwrap();
        ping::ping_on(&mut s2).await.unwrap();
    }

    // Graceful shutdown of a is seen by b as a closed connection.
    let mut host_events = b.host.subscribe();
    a.shutdown(T).await;
    tokio::time::timeout(T, async {
        loop {
            if let Event::ConnectionClosed { peer, .. } = host_events.recv().await.unwrap() {
                if peer == a.peer_id() {
                    break;
                }
            }
        }
    })
    .await
    .unwrap();
    assert!(b.host.connection(&a.peer_id()).is_none());
    b.shutdown(T).await;
}

#[tokio::test]
async fn identify_and_ping_over_memory() {
    identify_and_ping("/memory/0").await;
}

#[tokio::test]
async fn identify_and_ping_over_tcp_ipv4() {
    identify_and_ping("/ip4/127.0.0.1/tcp/0").await;
}

#[tokio::test]
async fn identify_and_ping_over_tcp_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    identify_and_ping("/ip6/::1/tcp/0").await;
}

#[tokio::test]
async fn identify_and_ping_over_websocket() {
    identify_and_ping("/ip4/127.0.0.1/tcp/0/ws").await;
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files.
fn wss_certificates(
    dir: &std::path::Path,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (chain, key_path) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&chain, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca.der().clone(), chain, key_path)
}

#[tokio::test]
async fn secure_websocket_with_an_operator_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, chain, key) = wss_certificates(dir.path());
    let mut config = kit::config(&["/ip4/127.0.0.1/tcp/0/wss"]);
    config.host.websocket = host::WsConfig {
        server: Some(pylon_node::transport::WsTls::server_config(&chain, &key).unwrap()),
        extra_roots: vec![ca],
    };
    let a = kit::start_with(config.clone()).await;
    let b = kit::start_with(config).await;
    assert!(a.host.listen_addrs()[0].to_string().ends_with("/tls/ws"));
    let mut events = b.identify.subscribe();
    let conn = b.host.dial(&addr_of(&a)).await.unwrap();
    assert_eq!((conn.transport(), conn.security()), ("wss", "noise"));
    wait_identified(&mut events, a.peer_id()).await;
    ping::ping(&b.host, &a.peer_id()).await.unwrap();
    ping::ping(&a.host, &b.peer_id()).await.unwrap();
    // By name: the certificate carries `localhost`.
    let port = kit::tcp_port(&a.host.listen_addrs()[0]);
    let by_name: Multiaddr = Multiaddr::empty()
        .with(multiaddr::Protocol::Ip4([127, 0, 0, 1].into()))
        .with(multiaddr::Protocol::Tcp(port))
        .with(multiaddr::Protocol::Tls)
        .with(multiaddr::Protocol::Sni("localhost".into()))
        .with(multiaddr::Protocol::Ws("/".into()))
        .with(multiaddr::Protocol::P2p(a.peer_id()));
    b.host.disconnect(&a.peer_id());
    let c = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    // A dialer that does not trust the CA refuses the server; a wrong name likewise.
    assert!(matches!(c.host.dial(&by_name).await, Err(DialError::Io(_))));
    let mut wrong_name = by_name.to_string();
    wrong_name = wrong_name.replace("/sni/localhost/", "/sni/example.com/");
    assert!(b.host.dial(&wrong_name.parse().unwrap()).await.is_err());
    let conn = b.host.dial(&by_name).await.unwrap();
    assert_eq!(conn.transport(), "wss");
    // Listening on /wss without a certificate is a clear error.
    let err = c
        .host
        .listen(&"/ip4/127.0.0.1/tcp/0/wss".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("websocket.tls_certificate"),
        "{err}"
    );
    // A plain-HTTP client on the wss port is dropped; the listener keeps serving.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, raw.read_to_end(&mut buf))
        .await
        .unwrap();
    ping::ping(&b.host, &a.peer_id()).await.unwrap();
}

#[tokio::test]
async fn identify_and_ping_over_quic_ipv4() {
    identify_and_ping("/ip4/127.0.0.1/udp/0/quic-v1").await;
}

#[tokio::test]
async fn identify_and_ping_over_quic_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    identify_and_ping("/ip6/::1/udp/0/quic-v1").await;
}

#[tokio::test]
async fn quic_wrong_peer_silent_port_limits_and_port_reuse() {
    let mut quick = kit::config(&["/ip4/127.0.0.1/udp/0/quic-v1"]);
    quick.host.handshake_timeout = Duration::from_millis(500);
    quick.host.max_streams_per_connection = 4;
    let a = kit::start_with(quick.clone()).await;
    let b = kit::start_with(quick).await;
    // Wrong PeerId: refused inside the TLS handshake, naming who answered.
    wrong_peer_refused(&b, &a).await;
    assert!(a.host.connection(&b.peer_id()).is_none());
    // A UDP port that never answers: the handshake deadline, not a hang.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let silent_addr: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
        .parse()
        .unwrap();
    let res = tokio::time::timeout(T, b.host.dial(&silent_addr))
        .await
        .unwrap();
    assert!(matches!(res, Err(DialError::Timeout)), "{res:?}");
    // The dial leaves from b's listen port (what hole punching needs).
    let conn = b.host.dial(&addr_of(&a)).await.unwrap();
    assert_eq!(conn.local_addr(), &b.host.listen_addrs()[0]);
    // Our limit and the remote's: a fifth stream is refused, the connection lives.
    for n in [&a, &b] {
        n.host.set_handler(
            "/hold/1",
            host::handler(|mut s| async move {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
            }),
        );
    }
    // No event says a stream ended: polled.
    let settled = |peer: PeerId, host: host::Host| async move {
        wait::until("the connection up with no stream open", T, || {
            host.connection(&peer)
                .is_some_and(|c| c.stream_count() == 0)
        })
        .await;
    };
    settled(a.peer_id(), b.host.clone()).await;
    settled(b.peer_id(), a.host.clone()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(conn.open_stream(&["/hold/1"]).await.unwrap());
    }
    assert!(matches!(
        conn.open_stream(&["/hold/1"]).await,
        Err(StreamError::Limit)
    ));
    drop(held);
    settled(a.peer_id(), b.host.clone()).await;
    settled(b.peer_id(), a.host.clone()).await;
    ping::ping(&b.host, &a.peer_id()).await.unwrap();
    // close() is seen by the remote.
    close_seen_by(&conn, b.peer_id(), &a).await;
    // Shutdown frees the UDP port (quinn keeps a socket while any endpoint handle lives).
    let port = kit::port_of(&a);
    a.shutdown(T).await;
    // The kernel says nothing when it frees a port: polled.
    wait::until("QUIC port freed after shutdown", T, || {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
    })
    .await;
    b.shutdown(T).await;
}

#[tokio::test]
async fn quic_stream_credit_grows_to_the_limit() {
    // A QUIC connection starts with a small stream credit (quinn keeps state per allowed
    // stream) and is raised as streams are used: 200 streams held open at once all work.
    let a = kit::start(&["/ip4/127.0.0.1/udp/0/quic-v1"]).await;
    let b = kit::start(&["/ip4/127.0.0.1/udp/0/quic-v1"]).await;
    a.host.set_handler(
        "/echo/1",
        host::handler(|mut s| async move {
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                let _ = s.write_all(&buf).await;
                let _ = s.flush().await;
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }),
    );
    let conn = b.host.dial(&addr_of(&a)).await.unwrap();
    let opened = tokio::time::timeout(T, async {
        let opens = (0..200u32).map(|i| {
            let conn = conn.clone();
            async move {
                let mut s = conn.open_stream(&["/echo/1"]).await.unwrap();
                s.write_all(&i.to_be_bytes()).await.unwrap();
                s.flush().await.unwrap();
                let mut back = [0u8; 4];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(u32::from_be_bytes(back), i);
                s
            }
        });
        futures::future::join_all(opens).await
    })
    .await
    .expect("200 concurrent QUIC streams");
    let remote = a.host.connection(&b.peer_id()).unwrap();
    assert!(remote.stream_count() >= 200, "{}", remote.stream_count());
    drop(opened);
    a.shutdown(T).await;
    b.shutdown(T).await;
}

#[tokio::test]
async fn wrong_peer_id_is_refused() {
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let b = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    wrong_peer_refused(&b, &a).await;
    assert!(b.host.connection(&a.peer_id()).is_none());
    // Refused port: a distinct error.
    let closed: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    assert!(matches!(
        b.host.dial(&closed).await,
        Err(DialError::Refused)
    ));
}

#[tokio::test]
async fn unsupported_protocol_and_custom_handler() {
    let a = kit::start(&["/memory/0"]).await;
    let b = kit::start(&["/memory/0"]).await;
    a.host.set_handler(
        "/echo/1",
        host::handler(|mut s| async move {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            let _ = s.write_all(&buf).await;
            let _ = s.shutdown().await;
        }),
    );
    b.host.dial(&addr_of(&a)).await.unwrap();
    assert!(matches!(
        b.host.open_stream(&a.peer_id(), &["/nope/1"]).await,
        Err(StreamError::Unsupported)
    ));
    let mut s = b
        .host
        .open_stream(&a.peer_id(), &["/nope/1", "/echo/1"])
        .await
        .unwrap();
    assert_eq!(s.protocol(), "/echo/1");
    s.write_all(b"hello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"hello");
    let other = Keypair::generate_ed25519().public().to_peer_id();
    assert!(matches!(
        b.host.open_stream(&other, &["/echo/1"]).await,
        Err(StreamError::NotConnected(_))
    ));
    // A lazily negotiated ping to a peer that stopped serving ping fails on the read.
    a.host.remove_handler(ping::PROTOCOL);
    match ping::ping(&b.host, &a.peer_id()).await {
        Err(ping::Error::Io(e)) => assert!(e.to_string().contains("does not support"), "{e}"),
        other => panic!("expected a not-supported error, got {other:?}"),
    }
    ping::ping(&a.host, &b.peer_id()).await.unwrap();
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_are_dropped_and_counted() {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let mut config = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
    config.host.handshake_timeout = Duration::from_millis(500);
    let a = Node::start_volatile(config, metrics).await.unwrap();
    let port = kit::tcp_port(&a.host.listen_addrs()[0]);
    // Garbage instead of multistream-select.
    let mut garbage = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    garbage.write_all(&[0xff; 64]).await.unwrap();
    // A slowloris: connects and says nothing.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // An honest peer is served meanwhile.
    let b = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    b.host.dial(&addr_of(&a)).await.unwrap();
    ping::ping(&b.host, &a.peer_id()).await.unwrap();
    // Both bad connections get closed by a.
    for s in [&mut garbage, &mut stalled] {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(T, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "bad connection left open");
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("libp2p_swarm_handshake_errors_total{transport=\"tcp\",error=\"deadline\""),
        "{text}"
    );
    assert!(
        text.contains("libp2p_swarm_handshake_errors_total{transport=\"tcp\",error=\"handshake\""),
        "{text}"
    );
    assert!(
        text.contains("libp2p_swarm_connections_opened_total{dir=\"inbound\""),
        "{text}"
    );
}

#[tokio::test]
async fn restart_keeps_peer_id_and_peerstore() {
    let dir = tempfile::tempdir().unwrap();
    let config = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
    let other = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let (id, seq) = {
        let a = Node::start_in(dir.path(), config.clone(), Metrics::unregistered())
            .await
            .unwrap();
        let mut events = a.identify.subscribe();
        a.host.dial(&addr_of(&other)).await.unwrap();
        let info = wait_identified(&mut events, other.peer_id()).await;
        a.shutdown(T).await;
        (a.peer_id(), info.record.unwrap().seq())
    };
    let a = Node::start_in(dir.path(), config, Metrics::unregistered())
        .await
        .unwrap();
    assert_eq!(a.peer_id(), id);
    let stored = a
        .peerstore
        .get(&other.peer_id())
        .expect("peer survived restart");
    assert_eq!(stored.record.unwrap().seq(), seq);
    assert_eq!(
        stored.agent_version.as_deref(),
        Some(concat!("pylon/", env!("CARGO_PKG_VERSION")))
    );
    // And the stored addresses are good enough to dial the peer by PeerId alone.
    a.dial_peer(other.peer_id()).await.unwrap();
    ping::ping(&a.host, &other.peer_id()).await.unwrap();
    a.shutdown(T).await;
}

#[tokio::test]
async fn identify_push_announces_new_listen_addresses() {
    let a = kit::start(&["/memory/0"]).await;
    let b = kit::start(&["/memory/0"]).await;
    let mut a_events = a.identify.subscribe();
    let mut b_events = b.identify.subscribe();
    b.host.dial(&addr_of(&a)).await.unwrap();
    wait_identified(&mut b_events, a.peer_id()).await;
    // a must know b supports push before it pushes: wait until a identified b (identify
    // stores what it learnt, then reports it: checked again after each report).
    tokio::time::timeout(T, async {
        while a
            .peerstore
            .get(&b.peer_id())
            .is_none_or(|p| p.protocols.is_empty())
        {
            a_events.recv().await.unwrap();
        }
    })
    .await
    .expect("a identified b");
    let new_addr = a.host.listen(&"/memory/0".parse().unwrap()).await.unwrap();
    let info = tokio::time::timeout(T, async {
        loop {
            if let identify::Event::Identified(info) = b_events.recv().await.unwrap() {
                if info.push && info.peer == a.peer_id() && info.listen_addrs.contains(&new_addr) {
                    return info;
                }
            }
        }
    })
    .await
    .expect("push with the new address");
    // The pushed record is newer and certifies the new address too.
    let record = info.record.expect("pushed record accepted");
    assert!(record.addrs().contains(&new_addr));
    assert!(b.peerstore.addrs(&a.peer_id(), 0).contains(&new_addr));
}

#[tokio::test]
async fn stream_limits_refuse_streams_not_connections() {
    let mut small = kit::config(&["/memory/0"]);
    small.host.max_streams_per_connection = 4;
    let mut large = kit::config(&["/memory/0"]);
    large.host.max_streams_per_connection = 16;
    let a = kit::start_with(small.clone()).await;
    let b = kit::start_with(large).await;
    let c = kit::start_with(small).await;
    for n in [&a, &b, &c] {
        n.host.set_handler(
            "/hold/1",
            host::handler(|mut s| async move {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
            }),
        );
    }
    // Let each connection's identify streams finish so only ours count (no event says a
    // stream ended: polled).
    let settle = |conn: host::Connection| async move {
        wait::until("identify's streams finished", T, || {
            conn.stream_count() == 0
        })
        .await;
    };

    // Our own limit: c may hold 4 streams to a; the fifth open fails locally.
    let conn = c.host.dial(&addr_of(&a)).await.unwrap();
    settle(conn.clone()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(conn.open_stream(&["/hold/1"]).await.unwrap());
    }
    assert!(matches!(
        conn.open_stream(&["/hold/1"]).await,
        Err(StreamError::Limit)
    ));
    held.pop();
    held.push(conn.open_stream(&["/hold/1"]).await.unwrap());
    drop(held);

    // The remote's limit: b allows 16, a only 4 — a resets the fifth, the connection lives.
    let conn = b.host.dial(&addr_of(&a)).await.unwrap();
    settle(conn.clone()).await;
    // With lazy muxer negotiation the dialer is ready before the listener: wait for it.
    let a_side = kit::connection(&a, b.peer_id(), T).await;
    settle(a_side.clone()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(conn.open_stream(&["/hold/1"]).await.unwrap());
    }
    assert!(conn.open_stream(&["/hold/1"]).await.is_err());
    assert!(!conn.is_closed());
    drop(held);
    settle(a_side).await;
    ping::ping(&b.host, &a.peer_id()).await.unwrap();

    // close() ends the connection on both sides.
    close_seen_by(&conn, b.peer_id(), &a).await;
}

#[tokio::test]
async fn tcp_dials_reuse_the_listen_port() {
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let b = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let a_port = kit::tcp_port(&a.host.listen_addrs()[0]);
    let conn = a.host.dial(&addr_of(&b)).await.unwrap();
    assert_eq!(kit::tcp_port(conn.local_addr()), a_port);
    assert_eq!(
        kit::tcp_port(&seen_by(&b, a.peer_id()).await),
        a_port,
        "b sees a at its listen port"
    );
    // A second connection to the same remote cannot reuse the 4-tuple: it falls back.
    let second = a.host.dial(&addr_of(&b)).await.unwrap();
    assert_ne!(kit::tcp_port(second.local_addr()), a_port);
    ping::ping(&a.host, &b.peer_id()).await.unwrap();

    // Turned off, dials leave from an ephemeral port.
    let mut config = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
    config.host.port_reuse = false;
    let c = kit::start_with(config).await;
    let c_port = kit::tcp_port(&c.host.listen_addrs()[0]);
    let conn = c.host.dial(&addr_of(&b)).await.unwrap();
    assert_ne!(kit::tcp_port(conn.local_addr()), c_port);
}

/// A node listening on one of its host's addresses dials from that address, so peers see
/// it where it listens (from every interface, the route would pick 127.0.0.1 here, and on
/// a host with several addresses whichever the route picks).
#[tokio::test]
async fn tcp_dials_leave_from_the_listen_ip() {
    let a = kit::start(&["/ip4/127.0.0.3/tcp/0"]).await;
    let b = kit::start(&["/ip4/127.0.0.2/tcp/0"]).await;
    let listen = a.host.listen_addrs()[0].clone();
    let conn = a.host.dial(&addr_of(&b)).await.unwrap();
    assert_eq!(conn.local_addr(), &listen);
    assert_eq!(
        seen_by(&b, a.peer_id()).await,
        listen,
        "b sees a where it listens"
    );
}

async fn seen_by(node: &Node, peer: PeerId) -> Multiaddr {
    let mut seen = None;
    kit::until(node, "the connection seen", T, || {
        seen = node
            .host
            .connections()
            .into_iter()
            .find(|c| c.peer() == peer)
            .map(|c| c.remote_addr().clone());
        seen.is_some()
    })
    .await;
    seen.unwrap()
}

#[tokio::test]
async fn observed_address_is_confirmed_by_distinct_peers() {
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let mut events = a.identify.subscribe();
    let mut others = Vec::new();
    for i in 0..3 {
        let o = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
        // With port reuse, every peer sees a's dials come from a's listen address.
        a.host.dial(&addr_of(&o)).await.unwrap();
        // a's own identify of o (its answer carries what o observed), not a push o may
        // send as its own start-up settles.
        tokio::time::timeout(T, async {
            loop {
                match events.recv().await.unwrap() {
                    identify::Event::Identified(info) if info.peer == o.peer_id() && !info.push => {
                        return
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("a identified o");
        let confirmed = a.identify.confirmed_observed_addrs();
        if i < 2 {
            assert!(
                confirmed.is_empty(),
                "confirmed after {} reports: {confirmed:?}",
                i + 1
            );
        } else {
            assert_eq!(confirmed, a.host.listen_addrs());
        }
        others.push(o);
    }
}

#[tokio::test]
async fn connect_ranks_races_backs_off_and_dials_once_per_peer() {
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let b = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let good = b.host.listen_addrs()[0].clone();
    let dead: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    let mut events = a.host.subscribe();
    // A dead address first: it fails, the good one wins, the dead one backs off.
    let conn = a
        .host
        .connect(b.peer_id(), &[dead.clone(), good.clone()])
        .await
        .unwrap();
    assert_eq!(conn.peer(), b.peer_id());
    let failed = tokio::time::timeout(T, async {
        loop {
            if let Event::DialFailed { kind, .. } = events.recv().await.unwrap() {
                return kind;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(failed, "connection_refused");
    a.host.disconnect(&b.peer_id());
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    assert!(matches!(
        a.host.connect(b.peer_id(), &[dead]).await,
        Err(DialError::Backoff)
    ));

    // Many concurrent connects to one peer: one dial, one connection.
    let c = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    let addrs = c.host.listen_addrs();
    let results =
        futures::future::join_all((0..8).map(|_| a.host.connect(c.peer_id(), &addrs))).await;
    let ids: std::collections::HashSet<_> = results.into_iter().map(|r| r.unwrap().id()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        a.host
            .connections()
            .iter()
            .filter(|x| x.peer() == c.peer_id())
            .count(),
        1
    );
}

#[tokio::test]
async fn tls_on_tcp_between_pylons() {
    let mut tls_only = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
    tls_only.host.security = vec![pylon_node::secure::Security::Tls];
    let mut both = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
    both.host.security = vec![
        pylon_node::secure::Security::Tls,
        pylon_node::secure::Security::Noise,
    ];
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await; // listens with both, dials noise
    let b = kit::start_with(tls_only).await;
    let c = kit::start_with(both).await;
    let mut events = b.identify.subscribe();
    // Lazy TLS proposal.
    b.host.dial(&addr_of(&a)).await.unwrap();
    let info = wait_identified(&mut events, a.peer_id()).await;
    assert_eq!(info.record.unwrap().peer_id(), a.peer_id());
    ping::ping(&b.host, &a.peer_id()).await.unwrap();
    // Negotiated TLS (two proposals), then wrong PeerId over TLS.
    c.host.dial(&addr_of(&a)).await.unwrap();
    ping::ping(&c.host, &a.peer_id()).await.unwrap();
    wrong_peer_refused(&b, &a).await;
}

#[tokio::test]
async fn inlined_muxer_negotiation_and_fallback() {
    use pylon_node::secure::Security;
    for security in [Security::Noise, Security::Tls] {
        let mut inline = kit::config(&["/ip4/127.0.0.1/tcp/0"]);
        inline.host.security = vec![security];
        let mut plain = inline.clone();
        plain.host.inline_muxer = false;
        let a = kit::start_with(inline.clone()).await;
        let b = kit::start_with(inline).await;
        let c = kit::start_with(plain).await;
        // Both offer it: agreed in the handshake.
        let conn = b.host.dial(&addr_of(&a)).await.unwrap();
        assert!(conn.early_muxer(), "{security:?}");
        ping::ping(&b.host, &a.peer_id()).await.unwrap();
        // One side does not: multistream-select, both directions.
        let conn = c.host.dial(&addr_of(&a)).await.unwrap();
        assert!(!conn.early_muxer());
        ping::ping(&c.host, &a.peer_id()).await.unwrap();
        let conn = a.host.dial(&addr_of(&c)).await.unwrap();
        assert!(!conn.early_muxer());
        ping::ping(&a.host, &c.peer_id()).await.unwrap();
    }
}

#[tokio::test]
async fn cancelled_connects_leave_nothing_behind() {
    let a = kit::start(&["/ip4/127.0.0.1/tcp/0"]).await;
    // A listener that accepts and then says nothing: the handshake would hang for its
    // full timeout, so the caller's own timeout cancels the connect mid-dial.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", silent.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    for _ in 0..5 {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let attempt = tokio::time::timeout(
            Duration::from_millis(100),
            a.host.connect(peer, std::slice::from_ref(&addr)),
        );
        assert!(
            attempt.await.is_err(),
            "the silent peer cannot complete a handshake"
        );
    }
    assert_eq!(a.host.dials_in_flight(), 0);
    held.abort();
}

/// Inbound caps per source IP: the listener refuses a connection past the cap (counted),
/// and a closed connection frees its place. Loopback clients all share 127.0.0.1.
async fn per_ip_cap(listen: &str, transport: &'static str) {
    let mut config = kit::config(&[listen]);
    config.host.max_incoming_per_ip = 2;
    let server = kit::start_with(config).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(kit::start(&[listen]).await);
    }
    let first = clients[0].host.dial(&addr_of(&server)).await.unwrap();
    clients[1].host.dial(&addr_of(&server)).await.unwrap();
    let refused = tokio::time::timeout(T, async {
        // The client may see its side up before the server drops it; ping to be sure.
        match clients[2].host.dial(&addr_of(&server)).await {
            Ok(_) => ping::ping(&clients[2].host, &server.peer_id())
                .await
                .is_err(),
            Err(_) => true,
        }
    })
    .await
    .unwrap();
    assert!(refused, "third connection from one IP was refused");
    let counted = server
        .host
        .metrics()
        .handshake_errors
        .get_or_create(&pylon_node::metrics::DialErrorLabels {
            transport,
            error: "ip_limit",
            fault: "limit",
            ip_version: "ip4",
        })
        .get();
    assert!(counted >= 1, "refusal counted");
    first.close();
    first.closed().await;
    // The server sees the close shortly after; then there is room again.
    kit::until(&server, "the server saw the close", T, || {
        server.host.connections().len() < 2
    })
    .await;
    clients[2].host.dial(&addr_of(&server)).await.unwrap();
    ping::ping(&clients[2].host, &server.peer_id())
        .await
        .unwrap();
}

#[tokio::test]
async fn inbound_connections_are_capped_per_ip_over_tcp() {
    per_ip_cap("/ip4/127.0.0.1/tcp/0", "tcp").await;
}

#[tokio::test]
async fn inbound_connections_are_capped_per_ip_over_quic() {
    per_ip_cap("/ip4/127.0.0.1/udp/0/quic-v1", "quic-v1").await;
}
