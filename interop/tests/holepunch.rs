//! Hole punching through a Pylon relay: rust-libp2p 0.57 peers (relay client, DCUtR,
//! identify, ping), a js-libp2p peer and a Pylon node on two LANs behind NAT routers
//! (`pylon_testkit::netns`), the Pylon relay on the public network.
//!
//! A reserves on the relay; B connects to the relay, then dials A through it; the two ping
//! over the circuit, and DCUtR (run by rust-libp2p on both sides over the circuit, with the
//! addresses the relay's identify observed) punches a direct connection. Through
//! endpoint-independent NATs that works over TCP and over QUIC; behind a symmetric NAT it
//! fails, and the circuit goes on carrying pings.
//!
//! Each test builds its own bed of namespaces (root, `ip`, `nft`: CI has them) and deletes
//! it at the end. Every peer runs on a thread inside its namespace; the test drives them
//! through channels, and every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{dcutr, identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId};
mod common;

use common::ns_pylon::NsPylon;
use common::ns_swarm::NsSwarm;
use pylon_interop::js::{ConnectionClose, ConnectionOpen, JsOptions, JsPeer, JsTransport};
use pylon_roles::relay::{Config, Relay};
use pylon_roles::Role;
use pylon_testkit::netns::{self, Bed, Nat};
use pylon_testkit::node as kit;
use tokio::sync::oneshot;

/// The bound on each wait.
const T: Duration = Duration::from_secs(30);

/// A dial (and so each hole-punch attempt) gives up after this; DCUtR tries three times.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(NetworkBehaviour)]
struct Client {
    relay: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// The transport between the peers and the relay, and so the one DCUtR punches with: its
/// address candidates are what the relay's identify observed on that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Tcp,
    Quic,
}

impl Over {
    fn is(self, addr: &Multiaddr) -> bool {
        addr.iter().any(|p| match self {
            Over::Tcp => matches!(p, Protocol::Tcp(_)),
            Over::Quic => matches!(p, Protocol::QuicV1),
        })
    }
}

fn client() -> Swarm<Client> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Client {
            relay,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/interop/holepunch/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(500)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .with_connection_timeout(DIAL_TIMEOUT)
        .build()
}

/// What a peer reported that the tests judge, in the order it happened.
#[derive(Debug, Clone)]
enum Seen {
    Reserved {
        relay: PeerId,
    },
    /// An address the relay's identify observed (DCUtR's candidate).
    Candidate(Multiaddr),
    Connected {
        peer: PeerId,
        id: ConnectionId,
        endpoint: ConnectedPoint,
    },
    Pinged {
        peer: PeerId,
        connection: ConnectionId,
    },
    /// DCUtR's verdict: the direct connection, or why there is none.
    Punched {
        peer: PeerId,
        result: Result<ConnectionId, String>,
    },
}

impl Seen {
    fn of(event: &SwarmEvent<ClientEvent>) -> Option<Seen> {
        Some(match event {
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => Seen::Reserved {
                relay: *relay_peer_id,
            },
            SwarmEvent::NewExternalAddrCandidate { address } => Seen::Candidate(address.clone()),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => Seen::Connected {
                peer: *peer_id,
                id: *connection_id,
                endpoint: endpoint.clone(),
            },
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(_),
            })) => Seen::Pinged {
                peer: *peer,
                connection: *connection,
            },
            SwarmEvent::Behaviour(ClientEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => Seen::Punched {
                peer: *remote_peer_id,
                result: result.as_ref().map(|id| *id).map_err(|e| e.to_string()),
            },
            _ => return None,
        })
    }
}

/// The connections to `peer` in `history`, in order: (position, id, endpoint).
fn connections(
    history: &[Seen],
    peer: PeerId,
) -> impl Iterator<Item = (usize, ConnectionId, &ConnectedPoint)> {
    history
        .iter()
        .enumerate()
        .filter_map(move |(i, s)| match s {
            Seen::Connected {
                peer: p,
                id,
                endpoint,
            } if *p == peer => Some((i, *id, endpoint)),
            _ => None,
        })
}

/// Whether `peer` answered a ping on `connection` at a position after `after`.
fn pinged_after(history: &[Seen], after: usize, peer: PeerId, connection: ConnectionId) -> bool {
    history.iter().enumerate().skip(after + 1).any(|(_, s)| {
        matches!(s, Seen::Pinged { peer: p, connection: c } if *p == peer && *c == connection)
    })
}

/// A rust-libp2p peer on a thread inside a LAN host's namespace.
type Peer = NsSwarm<Client, Seen>;

/// Starts a peer in `host`'s namespace, listening on TCP and QUIC on all its addresses:
/// its dials then leave from those ports (rust-libp2p's port reuse), so the NAT's mapping
/// of the relay connection is the one the hole punch goes through.
async fn start_peer(name: &str, host: &netns::Host) -> Peer {
    let listen = vec![
        "/ip4/0.0.0.0/tcp/0".parse().unwrap(),
        "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap(),
    ];
    NsSwarm::start(name, host, client, listen, Seen::of, T).await
}

/// A bed with LAN 0 behind `a` and LAN 1 behind `b`.
fn two_lans(a: Nat, b: Nat) -> Bed {
    Bed::builder().lan(a).lan(b).build().unwrap()
}

/// The Pylon relay on the public host of a bed.
type PublicRelay = NsPylon<Relay>;

async fn start_relay(bed: &Bed) -> PublicRelay {
    NsPylon::start(bed.public(), Default::default(), Config::default(), T).await
}

/// The relay's address over `over`, with `/p2p/<id>`.
fn relay_at(relay: &PublicRelay, over: Over) -> Multiaddr {
    match over {
        Over::Tcp => relay.tcp.clone(),
        Over::Quic => relay.quic.clone(),
    }
}

/// Two peers that met through the relay, and what they met in.
struct Met {
    a: Peer,
    b: Peer,
    relay: PublicRelay,
    /// B's connection to A over the circuit.
    b_circuit: ConnectionId,
    /// A's connection to B over the circuit.
    a_circuit: ConnectionId,
    bed: Bed,
}

/// The bed (A on LAN 0 behind `nat_a`, B on LAN 1 behind `nat_b`), the relay, A reserved,
/// B connected to A through the relay before anything else, and a ping each way over the
/// circuit. DCUtR may already be at work meanwhile: the caller judges it from the
/// peers' histories.
async fn meet_through_relay(over: Over, nat_a: Nat, nat_b: Nat) -> Met {
    let bed = two_lans(nat_a, nat_b);
    let relay = start_relay(&bed).await;
    let relay_addr = relay_at(&relay, over);
    let mut a = start_peer("A", &bed.lan(0).host).await;
    let mut b = start_peer("B", &bed.lan(1).host).await;
    let (a_id, b_id, relay_id) = (a.id, b.id, relay.id);
    let observed = |history: &[Seen]| {
        history.iter().find_map(|s| match s {
            Seen::Candidate(addr) if over.is(addr) => Some(addr.clone()),
            _ => None,
        })
    };

    // A reserves. Its DCUtR candidate is what the relay's identify observed: its router's
    // public address (and, with port reuse through an endpoint-independent NAT, A's port).
    a.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .await;
    let a_seen_at = a
        .until("A's reservation and observed address", |h| {
            let reserved = h
                .iter()
                .any(|s| matches!(s, Seen::Reserved { relay } if *relay == relay_id));
            observed(h).filter(|_| reserved)
        })
        .await;
    assert_eq!(
        a_seen_at.iter().next(),
        Some(Protocol::Ip4(bed.lan(0).router.ip())),
        "the relay sees A at A's router: {a_seen_at}"
    );
    assert_eq!(relay.role.reservation_count(), 1);

    // B connects to the relay first, so that its candidate is known before the circuit
    // opens (DCUtR takes the candidates a connection starts with).
    b.dial(relay_addr.clone()).await;
    let b_seen_at = b.until("B's observed address", observed).await;
    assert_eq!(
        b_seen_at.iter().next(),
        Some(Protocol::Ip4(bed.lan(1).router.ip())),
        "the relay sees B at B's router: {b_seen_at}"
    );

    // B dials A through the relay: its first connection to A is the circuit, and so is A's
    // first to B; each side's ping is answered over it.
    b.dial(
        relay_addr
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(a_id)),
    )
    .await;
    let mut circuits = Vec::new();
    for (peer, other) in [(&mut b, a_id), (&mut a, b_id)] {
        let (first, circuit) = peer
            .until("a first connection through the relay", |h| {
                connections(h, other).next().map(|(i, id, endpoint)| {
                    assert!(endpoint.is_relayed(), "first connection: {endpoint:?}");
                    (i, id)
                })
            })
            .await;
        peer.until("a ping over the circuit", |h| {
            pinged_after(h, first, other, circuit).then_some(())
        })
        .await;
        circuits.push(circuit);
    }
    let status = relay.role.status();
    assert_eq!(status.circuits.len(), 1, "one circuit: {status:?}");
    assert!(
        status.circuits[0].bytes_up > 0 && status.circuits[0].bytes_down > 0,
        "data crossed the circuit both ways: {status:?}"
    );
    Met {
        a,
        b,
        relay,
        b_circuit: circuits[0],
        a_circuit: circuits[1],
        bed,
    }
}

/// Through two endpoint-independent NATs: DCUtR upgrades the circuit to a direct `over`
/// connection between the two routers' addresses, which then carries a ping.
async fn hole_punch(over: Over) {
    let Met {
        mut a,
        mut b,
        relay,
        b_circuit,
        a_circuit: _,
        bed,
    } = meet_through_relay(over, Nat::EndpointIndependent, Nat::EndpointIndependent).await;
    let (a_id, b_id) = (a.id, b.id);
    let (a_router, b_router) = (bed.lan(0).router.ip(), bed.lan(1).router.ip());

    // B's side: DCUtR reports the connection it made; that connection is direct, to A's
    // router, over `over`, and came after the circuit.
    let (punched, remote) = b
        .until("B's hole punch to A", |h| {
            let punched = h.iter().find_map(|s| match s {
                Seen::Punched { peer, result } if *peer == a_id => Some(result.clone()),
                _ => None,
            })?;
            let punched = punched.unwrap_or_else(|e| panic!("B's hole punch failed: {e}"));
            connections(h, a_id)
                .find(|(_, id, _)| *id == punched)
                .map(|(_, _, endpoint)| {
                    assert!(!endpoint.is_relayed(), "punched: {endpoint:?}");
                    (punched, endpoint.get_remote_address().clone())
                })
        })
        .await;
    assert_ne!(punched, b_circuit);
    assert!(over.is(&remote), "punched over {over:?}: {remote}");
    assert_eq!(
        remote.iter().next(),
        Some(Protocol::Ip4(a_router)),
        "B reaches A at A's router: {remote}"
    );
    let order: Vec<bool> = connections(&b.history, a_id)
        .map(|(_, _, endpoint)| endpoint.is_relayed())
        .collect();
    assert!(
        order[0] && order[1..].iter().all(|relayed| !relayed),
        "the circuit first, then only direct connections: {order:?}"
    );

    // A's side: a direct connection to B's router.
    let a_direct = a
        .until("A's direct connection to B", |h| {
            connections(h, b_id).find_map(|(_, _, endpoint)| {
                (!endpoint.is_relayed()).then(|| endpoint.get_remote_address().clone())
            })
        })
        .await;
    assert!(over.is(&a_direct), "{a_direct}");
    assert_eq!(a_direct.iter().next(), Some(Protocol::Ip4(b_router)));

    // The direct connection carries data: a ping on it.
    b.until("B's ping of A over the direct connection", |h| {
        pinged_after(h, 0, a_id, punched).then_some(())
    })
    .await;
    // Still the one circuit: the direct connection does not go through the relay.
    assert_eq!(relay.role.circuit_count(), 1);
}

#[tokio::test]
async fn tcp_hole_punch_through_endpoint_independent_nats() {
    hole_punch(Over::Tcp).await;
}

#[tokio::test]
async fn quic_hole_punch_through_endpoint_independent_nats() {
    hole_punch(Over::Quic).await;
}

/// B behind a symmetric NAT: A (which started the exchange, having taken the inbound
/// circuit) gives up after three attempts, no direct connection appears on either side,
/// and the circuit carries a ping after that.
async fn symmetric_nat(over: Over) {
    let Met {
        mut a,
        mut b,
        relay,
        b_circuit: _,
        a_circuit,
        bed: _bed,
    } = meet_through_relay(over, Nat::EndpointIndependent, Nat::Symmetric).await;
    let (a_id, b_id) = (a.id, b.id);
    let no_direct = |h: &[Seen], who: &str, other: PeerId| {
        if let Some((_, _, endpoint)) = connections(h, other).find(|(_, _, e)| !e.is_relayed()) {
            panic!("{who} has a direct connection through a symmetric NAT: {endpoint:?}");
        }
    };

    let (failed_at, failure) = a
        .until("A's hole punch to give up", |h| {
            no_direct(h, "A", b_id);
            h.iter().enumerate().find_map(|(i, s)| match s {
                Seen::Punched { peer, result } if *peer == b_id => match result {
                    Ok(id) => panic!("A punched a hole through a symmetric NAT: {id:?}"),
                    Err(e) => Some((i, e.clone())),
                },
                _ => None,
            })
        })
        .await;
    assert!(failure.contains("3 dial attempts"), "{failure}");

    // Afterwards, on A's own event stream: a ping over the circuit gets its answer.
    a.until("A's ping of B over the circuit after the failure", |h| {
        no_direct(h, "A", b_id);
        pinged_after(h, failed_at, b_id, a_circuit).then_some(())
    })
    .await;
    b.catch_up();
    no_direct(&b.history, "B", a_id);
    assert_eq!(relay.role.circuit_count(), 1, "the circuit stays");
}

#[tokio::test]
async fn tcp_hole_punch_fails_behind_a_symmetric_nat_and_the_circuit_stays() {
    symmetric_nat(Over::Tcp).await;
}

#[tokio::test]
async fn quic_hole_punch_fails_behind_a_symmetric_nat_and_the_circuit_stays() {
    symmetric_nat(Over::Quic).await;
}

/// A rust-libp2p peer ("R") on LAN 1 of `bed`, connected to the relay over `over` until
/// the relay's identify gave it its candidate address (DCUtR takes the candidates a
/// connection starts with).
async fn seen_by_relay(bed: &Bed, relay_addr: &Multiaddr, over: Over) -> Peer {
    let mut rust = start_peer("R", &bed.lan(1).host).await;
    rust.dial(relay_addr.clone()).await;
    rust.until("R's observed address", |h| {
        h.iter().find_map(|s| match s {
            Seen::Candidate(a) if over.is(a) => Some(()),
            _ => None,
        })
    })
    .await;
    rust
}

/// `rust` dials `target` through the relay; returns where in its history its first
/// connection to `target` is, and that connection, which must be the circuit.
async fn circuit_to(
    rust: &mut Peer,
    relay_addr: &Multiaddr,
    target: PeerId,
) -> (usize, ConnectionId) {
    rust.dial(
        relay_addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(target)),
    )
    .await;
    rust.until("R's first connection through the relay", |h| {
        connections(h, target).next().map(|(i, id, endpoint)| {
            assert!(endpoint.is_relayed(), "first connection: {endpoint:?}");
            (i, id)
        })
    })
    .await
}

/// A Pylon node behind an endpoint-independent NAT, reachable through the Pylon relay
/// (`relay_client` reservation), hole punches with a rust-libp2p peer behind another NAT
/// that dialed it through the relay: Pylon runs DCUtR's initiator side (it received the
/// circuit) and takes the listener's part of the TCP simultaneous open.
#[tokio::test]
async fn a_pylon_node_behind_nat_hole_punches_with_a_rust_libp2p_peer() {
    use pylon_node::metrics::HolepunchLabels;
    let bed = two_lans(Nat::EndpointIndependent, Nat::EndpointIndependent);
    let relay = start_relay(&bed).await;
    let relay_addr = relay_at(&relay, Over::Tcp);

    // The Pylon node, on LAN 0: holds a reservation, then waits to be told whom to expect.
    let (ready_tx, ready_rx) = oneshot::channel();
    let (expect_tx, expect_rx) = oneshot::channel::<(String, oneshot::Sender<(String, u64)>)>();
    let via: pylon_node::Multiaddr = relay_addr.to_string().parse().unwrap();
    let _pylon = bed
        .lan(0)
        .host
        .spawn(async move || {
            let node = kit::start(&["/ip4/0.0.0.0/tcp/0"]).await;
            node.relay.listen_via(via);
            kit::until(&node, "Pylon's reservation", T, || {
                !node.relay.reservations().is_empty()
            })
            .await;
            if ready_tx.send(node.peer_id().to_string()).is_err() {
                return;
            }
            let Ok((peer, reply)) = expect_rx.await else {
                return;
            };
            let peer: pylon_node::PeerId = peer.parse().unwrap();
            kit::until(&node, "Pylon's direct connection", T, || {
                node.host
                    .connection(&peer)
                    .is_some_and(|c| c.transport() == "tcp")
            })
            .await;
            let direct = node.host.connection(&peer).unwrap();
            let punched = node
                .host
                .metrics()
                .holepunch_outcomes
                .get_or_create(&HolepunchLabels {
                    side: "initiator",
                    outcome: "success",
                })
                .get();
            let _ = reply.send((direct.remote_addr().to_string(), punched));
            std::future::pending::<()>().await
        })
        .unwrap();
    let pylon_id: PeerId = tokio::time::timeout(T, ready_rx)
        .await
        .expect("Pylon reserves in time")
        .unwrap()
        .parse()
        .unwrap();

    // The rust-libp2p peer, on LAN 1: to the relay first (its candidate), then through it.
    let mut rust = seen_by_relay(&bed, &relay_addr, Over::Tcp).await;
    let (reply_tx, reply_rx) = oneshot::channel();
    expect_tx.send((rust.id.to_string(), reply_tx)).unwrap();
    let (first, _) = circuit_to(&mut rust, &relay_addr, pylon_id).await;
    // Then a direct one, to Pylon's router.
    let direct = rust
        .until("R's direct connection to Pylon", |h| {
            connections(h, pylon_id)
                .find(|(i, _, endpoint)| *i > first && !endpoint.is_relayed())
                .map(|(_, _, endpoint)| endpoint.get_remote_address().clone())
        })
        .await;
    assert_eq!(
        direct.iter().next(),
        Some(Protocol::Ip4(bed.lan(0).router.ip())),
        "R reached Pylon at Pylon's router: {direct}"
    );
    let (pylon_saw, punched) = tokio::time::timeout(T, reply_rx)
        .await
        .expect("Pylon reports its direct connection in time")
        .expect("Pylon's thread runs");
    assert!(
        pylon_saw.starts_with(&format!("/ip4/{}/tcp/", bed.lan(1).router.ip())),
        "Pylon reached R at R's router: {pylon_saw}"
    );
    assert_eq!(punched, 1, "Pylon counted its hole punch");
}

/// A js-libp2p peer (QUIC, relay client, DCUtR) behind an endpoint-independent NAT reserves
/// on the Pylon relay; a rust-libp2p peer behind another NAT dials it through the relay, the
/// two ping over the circuit, and js-libp2p's DCUtR (it took the inbound circuit, so it
/// starts the exchange) punches a direct QUIC connection between the two routers.
///
/// QUIC only: js-libp2p's TCP dials never leave from its listening port, so no TCP mapping
/// of its NAT is known in advance (its identify even drops observed TCP addresses). Its
/// QUIC dials all leave from one socket, whose mapping the relay observed; js-libp2p offers
/// it in DCUtR only once verified, which behind a NAT that drops unsolicited packets no
/// AutoNAT dial-back can do: `confirm_observed` stands in for that.
#[tokio::test]
async fn a_js_libp2p_peer_behind_nat_hole_punches_with_a_rust_libp2p_peer() {
    let bed = two_lans(Nat::EndpointIndependent, Nat::EndpointIndependent);
    let relay = start_relay(&bed).await;
    let relay_addr = relay_at(&relay, Over::Quic);
    let (js_router, rust_router) = (bed.lan(0).router.ip(), bed.lan(1).router.ip());

    // The js peer, on LAN 0: reserves over QUIC, and its observed address is its router's.
    let mut js = JsPeer::listen_in(
        bed.lan(0).host.ns(),
        &JsOptions {
            transport: JsTransport::Quic,
            relay: true,
            dcutr: true,
            host: Some(std::net::Ipv4Addr::UNSPECIFIED),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let js_id: PeerId = js.peer_id.parse().unwrap();
    let listening = js.listen_relay(&relay_addr.to_string()).await.unwrap();
    assert_eq!(listening.relay, relay.id.to_string());
    assert_eq!(relay.role.reservation_count(), 1);
    let confirmed = js.confirm_observed("quic").await.unwrap();
    assert!(
        confirmed
            .iter()
            .all(|a| a.starts_with(&format!("/ip4/{js_router}/udp/"))),
        "the relay saw js at its router: {confirmed:?}"
    );

    // The rust-libp2p peer, on LAN 1: to the relay first (its candidate), then through it.
    let mut rust = seen_by_relay(&bed, &relay_addr, Over::Quic).await;
    let (first, circuit) = circuit_to(&mut rust, &relay_addr, js_id).await;
    rust.until("R's ping of js over the circuit", |h| {
        pinged_after(h, first, js_id, circuit).then_some(())
    })
    .await;

    // js's side: the circuit came first, then a direct QUIC connection to R's router.
    let rust_id = rust.id.to_string();
    let mut opened = Vec::new();
    let direct = tokio::time::timeout(T, async {
        loop {
            let event = js
                .wait_for_peer("connection_open", &rust_id, T)
                .await
                .unwrap();
            let open: ConnectionOpen = serde_json::from_value(event).unwrap();
            opened.push(open.transport.clone());
            if open.transport.as_deref() != Some("p2p-circuit") {
                return open;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("js: no direct connection to R within {T:?}: {opened:?}"));
    assert_eq!(
        opened.first().map(|t| t.as_deref()),
        Some(Some("p2p-circuit")),
        "js met R through the circuit first: {opened:?}"
    );
    assert_eq!(direct.transport.as_deref(), Some("quic"), "{direct:?}");
    assert!(
        direct
            .remote_addr
            .starts_with(&format!("/ip4/{rust_router}/udp/")),
        "js reached R at R's router: {direct:?}"
    );

    // R's side: a direct connection to js's router, which carries a ping.
    let punched = rust
        .until("R's direct connection to js", |h| {
            connections(h, js_id)
                .find(|(i, _, endpoint)| *i > first && !endpoint.is_relayed())
                .map(|(_, id, endpoint)| (id, endpoint.get_remote_address().clone()))
        })
        .await;
    assert!(Over::Quic.is(&punched.1), "{}", punched.1);
    assert_eq!(
        punched.1.iter().next(),
        Some(Protocol::Ip4(js_router)),
        "R reached js at js's router: {}",
        punched.1
    );
    rust.until("R's ping of js over the direct connection", |h| {
        pinged_after(h, first, js_id, punched.0).then_some(())
    })
    .await;
    // js-libp2p closes the circuit once it has the direct connection, and the relay frees it.
    let closed: ConnectionClose = serde_json::from_value(
        js.wait_for_peer("connection_close", &rust_id, T)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        closed.transport.as_deref(),
        Some("p2p-circuit"),
        "{closed:?}"
    );
    pylon_testkit::wait::until("the relay to free the circuit", T, || {
        relay.role.circuit_count() == 0
    })
    .await;
    js.stop().await.unwrap();
}
