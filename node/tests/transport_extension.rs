//! The transport extension point and the error taxonomy, on real nodes in this process.
//!
//! A transport added with `Host::add_transport` (here an in-process pipe, of the shape
//! the relay client's `/p2p-circuit` has) gets the host's whole pipeline: Noise, yamux, the PeerId
//! check, limits, metrics, extensions. Dial failures carry whose fault they were, in code
//! (`Classify::fault`) and in the `fault` label of the dial error metric.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use multiaddr::{Multiaddr, Protocol};
use pylon_node::fault::{Classify, Fault};
use pylon_node::host::{DialError, Host, Transport};
use pylon_node::metrics::DialErrorLabels;
use pylon_node::transport::RawStream;
use pylon_node::Keypair;
use pylon_testkit::node as kit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);
const PING: &str = "/ipfs/ping/1.0.0";

/// Claims `/dns4/pipe.test/…` addresses and connects them, through an in-memory pipe, to the
/// host `to`, which takes the other end with `Host::accept`.
struct Pipe {
    to: Host,
    /// The address the far side sees us at.
    from: Multiaddr,
}

impl Transport for Pipe {
    fn label(&self) -> &'static str {
        "pipe"
    }

    fn handles(&self, addr: &Multiaddr) -> bool {
        matches!(addr.iter().next(), Some(Protocol::Dns4(name)) if name == "pipe.test")
    }

    fn dial(
        &self,
        _host: &Host,
        _addr: &Multiaddr,
    ) -> BoxFuture<'static, Result<(RawStream, Multiaddr), DialError>> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let local: Multiaddr = "/dns4/pipe.test/tcp/1".parse().unwrap();
        let accepted = self.to.accept(
            RawStream::other(theirs),
            self.from.clone(),
            local.clone(),
            "pipe",
        );
        Box::pin(async move {
            if !accepted {
                return Err(DialError::Refused);
            }
            Ok((RawStream::other(ours), local))
        })
    }
}

/// An address only the pipe claims (asked before DNS, so nothing is resolved).
fn circuit_to(peer: pylon_node::PeerId) -> Multiaddr {
    "/dns4/pipe.test/tcp/1"
        .parse::<Multiaddr>()
        .unwrap()
        .with(Protocol::P2p(peer))
}

fn dial_errors(host: &Host, transport: &'static str, error: &'static str, fault: Fault) -> u64 {
    host.metrics()
        .dial_errors
        .get_or_create(&DialErrorLabels {
            transport,
            error,
            fault: fault.label(),
            ip_version: "",
        })
        .get()
}

#[tokio::test]
async fn an_added_transport_carries_secured_muxed_connections_both_ways() {
    let a = kit::start(&[kit::LOCAL_TCP]).await;
    let b = kit::start(&[kit::LOCAL_TCP]).await;
    let from: Multiaddr = "/dns4/pipe.test/tcp/2".parse().unwrap();
    a.host.add_transport(Arc::new(Pipe {
        to: b.host.clone(),
        from: from.with(Protocol::P2p(a.peer_id())),
    }));

    let conn = tokio::time::timeout(T, a.host.dial(&circuit_to(b.peer_id())))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer(), b.peer_id());
    assert_eq!(conn.transport(), "pipe");
    assert_eq!(conn.security(), "noise");
    assert_eq!(conn.muxer(), "yamux");

    // The far side registered it as an inbound connection of the same transport.
    let theirs = kit::connection(&b, a.peer_id(), T).await;
    assert_eq!(theirs.transport(), "pipe");
    assert_eq!(theirs.direction(), pylon_node::host::Direction::Inbound);

    // Streams work over it: a ping round trip to B's ping protocol.
    let mut s = tokio::time::timeout(T, conn.open_stream(&[PING]))
        .await
        .unwrap()
        .unwrap();
    let payload = [7u8; 32];
    s.write_all(&payload).await.unwrap();
    let mut echo = [0u8; 32];
    tokio::time::timeout(T, s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, payload);
}

#[tokio::test]
async fn an_added_transport_checks_the_peer_id_and_counts_the_fault() {
    let a = kit::start(&[kit::LOCAL_TCP]).await;
    let b = kit::start(&[kit::LOCAL_TCP]).await;
    a.host.add_transport(Arc::new(Pipe {
        to: b.host.clone(),
        from: "/dns4/pipe.test/tcp/2".parse().unwrap(),
    }));
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let err = tokio::time::timeout(T, a.host.dial(&circuit_to(stranger)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, DialError::WrongPeer { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Protocol);
    assert_eq!(
        dial_errors(&a.host, "pipe", "wrong_peer", Fault::Protocol),
        1
    );
}

#[tokio::test]
async fn dial_failures_say_whose_fault_they_were() {
    let a = kit::start(&[kit::LOCAL_TCP]).await;

    // Nobody listens: the network refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let err = a.host.dial(&addr).await.unwrap_err();
    assert!(matches!(err, DialError::Refused), "{err:?}");
    assert_eq!(err.fault(), Fault::Io);

    // A listener that answers the security proposal with a frame longer than any
    // multistream-select message: the remote's bytes are malformed.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = garbage.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = garbage.accept().await.unwrap();
        let _ = s.write_all(&[0xff, 0xff, 0xff, 0x0f]).await;
        let mut sink = vec![0u8; 4096];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let err = tokio::time::timeout(T, a.host.dial(&addr))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.fault(), Fault::Malformed, "{err:?}");
    assert_eq!(err.label(), "handshake");

    // Our own choice: dialing ourselves.
    let ourselves = kit::addr_of(&a);
    let err = a.host.dial(&ourselves).await.unwrap_err();
    assert!(matches!(err, DialError::SelfDial), "{err:?}");
    assert_eq!(err.fault(), Fault::Local);
    assert!(!err.fault().is_remote());
}
