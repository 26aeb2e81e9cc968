//! The relay role on real nodes in this process (loopback TCP, Noise, yamux): clients
//! speaking the hop and stop protocols message by message, so every answer is checked
//! on the wire. Interop with rust-libp2p's relay client: `interop/tests/relay_rust_libp2p.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use pylon_node::host::{Extension, Stream};
use pylon_node::node::Node;
use pylon_node::protocols::relay::proto::{self, HopMessage, Status, StopMessage};
use pylon_node::protocols::relay::{voucher, HOP, STOP};
use pylon_node::varint;
use pylon_node::PeerId;
use pylon_roles::relay::{Config, Relay};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// A relay node with `config`; its registry (to read the metrics).
async fn relay(config: Config) -> (Node, Arc<Relay>, Registry) {
    let node = kit::start(&[kit::LOCAL_TCP]).await;
    let mut registry = Registry::default();
    let relay = Relay::start(&node, config, &mut Metrics::of::<Relay>(&mut registry)).unwrap();
    (node, relay, registry)
}

fn metric(registry: &Registry, line_start: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A client connected to `relay`.
async fn client(relay: &Node) -> Node {
    let c = kit::start(&[kit::LOCAL_TCP]).await;
    c.host.dial(&kit::addr_of(relay)).await.unwrap();
    c
}

async fn hop(client: &Node, relay: &Node, msg: &HopMessage) -> (HopMessage, Stream) {
    let mut s = client
        .host
        .open_stream(&relay.peer_id(), &[HOP])
        .await
        .unwrap();
    proto::write(&mut s, msg).await.unwrap();
    let answer = tokio::time::timeout(T, proto::read::<HopMessage, _>(&mut s))
        .await
        .unwrap()
        .unwrap();
    (answer, s)
}

/// Answers every `STOP` with OK, then echoes the circuit's bytes back; counts the calls.
struct Echo {
    callers: tokio::sync::mpsc::Sender<PeerId>,
}

impl Extension for Echo {
    fn protocol_ids(&self) -> Vec<String> {
        vec![STOP.to_string()]
    }

    fn handle_stream(self: Arc<Self>, mut s: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Ok(msg) = proto::read::<StopMessage, _>(&mut s).await else {
                return;
            };
            let Ok(caller) = msg.caller() else { return };
            let _ = self.callers.send(caller).await;
            proto::write(&mut s, &StopMessage::answer(Status::Ok))
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        })
    }
}

fn echo(node: &Node) -> tokio::sync::mpsc::Receiver<PeerId> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    node.host.install(Arc::new(Echo { callers: tx }));
    rx
}

#[tokio::test]
async fn a_reserved_peer_is_reached_through_a_circuit() {
    let (r, relay, registry) = relay(Config::default()).await;
    let a = client(&r).await;
    let mut callers = echo(&a);

    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    let reservation = answer.reservation.unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expire = reservation.expire.unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&expire),
        "expire {expire}, now {now}"
    );
    let relay_addr = kit::addr_of(&r);
    assert!(
        reservation.relay_addrs().contains(&relay_addr),
        "{:?} lacks {relay_addr}",
        reservation.relay_addrs()
    );
    let v = voucher::open(&reservation.voucher.unwrap()).unwrap();
    assert_eq!(
        (v.relay, v.peer, v.expiration),
        (r.peer_id(), a.peer_id(), expire)
    );
    let limit = answer.limit.unwrap();
    assert_eq!(limit.duration, Some(600), "seconds, as the spec says");
    assert_eq!(limit.data, Some(16 * 1024 * 1024));
    assert_eq!(relay.reservation_count(), 1);
    assert!(
        r.host.is_protected(&a.peer_id()),
        "a reservation holder's connection is kept from shedding"
    );

    let b = client(&r).await;
    let (answer, mut circuit) = hop(&b, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    assert_eq!(answer.limit.unwrap().duration, Some(600));
    assert_eq!(
        callers.recv().await,
        Some(b.peer_id()),
        "A learns who calls"
    );
    circuit.write_all(b"over the circuit").await.unwrap();
    circuit.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(T, circuit.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"over the circuit");

    wait::until("circuit closed", T, || relay.circuit_count() == 0).await;
    assert_eq!(
        metric(
            &registry,
            "libp2p_relaysvc_reservations_total{type=\"opened\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&registry, "libp2p_relaysvc_data_transferred_bytes_total"),
        32.0,
        "16 bytes each way"
    );
    assert_eq!(
        metric(
            &registry,
            "pylon_relay_circuits_ended_total{outcome=\"closed\"}"
        ),
        1.0
    );
    // A refresh renews; the status view lists the reservation.
    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    assert_eq!(
        metric(
            &registry,
            "libp2p_relaysvc_reservations_total{type=\"renewed\"}"
        ),
        1.0
    );
    let status = relay.status();
    assert_eq!(status.reservations.len(), 1);
    assert_eq!(status.reservations[0].peer, a.peer_id().to_string());
}

#[tokio::test]
async fn refusals_carry_the_spec_statuses() {
    let (r, relay, registry) = relay(Config {
        max_reservations_per_ip: 1,
        ..Config::default()
    })
    .await;
    let a = client(&r).await;
    let _stop = echo(&a);
    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    // A second peer from the same IP (127.0.0.1): over the per-IP limit.
    let b = client(&r).await;
    let (answer, _) = hop(&b, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::ReservationRefused));
    assert_eq!(
        metric(
            &registry,
            "libp2p_relaysvc_reservation_rejections_total{reason=\"reservations_per_ip\"}"
        ),
        1.0
    );
    // A circuit to a peer without a reservation.
    let (answer, _) = hop(&a, &r, &HopMessage::connect(b.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::NoReservation));
    // To itself.
    let (answer, _) = hop(&a, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::PermissionDenied));
    // A client sending a STATUS, and one sending bytes that are no message.
    let (answer, _) = hop(&b, &r, &HopMessage::answer(Status::Ok)).await;
    assert_eq!(answer.status_of(), Some(Status::UnexpectedMessage));
    let mut s = b.host.open_stream(&r.peer_id(), &[HOP]).await.unwrap();
    varint::write_frame(&mut s, &[0xff; 40]).await.unwrap();
    let answer: HopMessage = proto::read(&mut s).await.unwrap();
    assert_eq!(answer.status_of(), Some(Status::MalformedMessage));
    assert_eq!(
        metric(
            &registry,
            "pylon_relay_bad_requests_total{status=\"malformed_message\"}"
        ),
        1.0
    );
    // A peer that disconnects loses its reservation.
    a.host.disconnect(&r.peer_id());
    wait::until("reservation released", T, || relay.reservation_count() == 0).await;
    assert!(
        !r.host.is_protected(&a.peer_id()),
        "released with the reservation"
    );
    let (answer, _) = hop(&b, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::NoReservation));
}

#[tokio::test]
async fn a_circuit_past_its_data_limit_is_cut() {
    let (r, relay, registry) = relay(Config {
        circuit_data: 1000,
        ..Config::default()
    })
    .await;
    let a = client(&r).await;
    let _stop = echo(&a);
    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    let b = client(&r).await;
    let (answer, mut circuit) = hop(&b, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.limit.unwrap().data, Some(1000));
    // 5000 bytes up: the relay passes 1000, then resets both streams.
    let _ = circuit.write_all(&[9u8; 5000]).await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(T, circuit.read_to_end(&mut back))
        .await
        .unwrap();
    assert!(back.len() <= 1000, "{} bytes came back", back.len());
    wait::until("circuit cut", T, || relay.circuit_count() == 0).await;
    assert_eq!(
        metric(
            &registry,
            "pylon_relay_circuits_ended_total{outcome=\"data_limit\"}"
        ),
        1.0
    );
}

#[test]
fn contradicting_limits_are_refused_naming_both_keys() {
    let bad = Config {
        max_reservations_per_ip: 64,
        ..Config::default()
    };
    let e = Relay::check(&bad).unwrap_err().to_string();
    assert!(
        e.contains("roles.relay.max_reservations_per_ip")
            && e.contains("roles.relay.max_reservations_per_subnet"),
        "{e}"
    );
    let bad = Config {
        max_circuits: 8,
        ..Config::default()
    };
    let e = Relay::check(&bad).unwrap_err().to_string();
    assert!(e.contains("max_circuits_per_peer"), "{e}");
    assert!(Relay::check(&Config::default()).is_ok());
}

/// Pylon's own relay client: A keeps a reservation (its listen addresses gain the circuit
/// address), B dials A through the relay as a transport; the relayed connection is
/// secured and muxed like any other and carries a ping.
#[tokio::test]
async fn pylon_nodes_meet_through_the_relay_with_the_relay_client() {
    use pylon_node::protocols::relay::client;
    let (r, relay, _registry) = relay(Config::default()).await;
    let a = kit::start(&[kit::LOCAL_TCP]).await;
    let a_client = &a.relay;
    let relay_addr = kit::addr_of(&r);
    a_client.listen_via(relay_addr.clone());
    let circuit_addr = relay_addr.clone().with(multiaddr::Protocol::P2pCircuit);
    kit::until(&a, "A listens through the relay", T, || {
        a.host.listen_addrs().contains(&circuit_addr)
    })
    .await;
    assert_eq!(relay.reservation_count(), 1);
    assert_eq!(a_client.reservations()[0].relay, r.peer_id());

    let b = kit::start(&[kit::LOCAL_TCP]).await;
    let to_a = circuit_addr
        .clone()
        .with(multiaddr::Protocol::P2p(a.peer_id()));
    let conn = tokio::time::timeout(T, b.host.dial(&to_a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer(), a.peer_id());
    assert_eq!(conn.transport(), client::LABEL);
    assert_eq!(conn.remote_addr(), &circuit_addr);
    let theirs = kit::connection(&a, b.peer_id(), T).await;
    assert_eq!(theirs.transport(), client::LABEL);
    let mut ping = conn.open_stream(&["/ipfs/ping/1.0.0"]).await.unwrap();
    ping.write_all(&[3u8; 32]).await.unwrap();
    let mut pong = [0u8; 32];
    tokio::time::timeout(T, ping.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [3u8; 32]);
    assert_eq!(relay.circuit_count(), 1);

    // A dial through the relay to a peer holding no reservation: the relay's status.
    let stranger = kit::start(&[kit::LOCAL_TCP]).await;
    let to_stranger = circuit_addr.with(multiaddr::Protocol::P2p(stranger.peer_id()));
    let err = b.host.dial(&to_stranger).await.unwrap_err();
    assert!(
        matches!(err, pylon_node::host::DialError::RelayRefused(204)),
        "{err:?}"
    );

    // A STOP from a peer A holds no reservation with is refused.
    let c = client(&a).await;
    let mut s = c.host.open_stream(&a.peer_id(), &[STOP]).await.unwrap();
    proto::write(&mut s, &StopMessage::connect(c.peer_id(), None))
        .await
        .unwrap();
    let answer: StopMessage = proto::read(&mut s).await.unwrap();
    assert_eq!(answer.status_of(), Some(Status::PermissionDenied));
}

/// Access lists and the trusted class on the wire: a denied peer and, in private mode, a
/// stranger get PERMISSION_DENIED; circuits to a trusted peer carry no limits (more than
/// `circuit_data` passes).
#[tokio::test]
async fn access_lists_and_the_trusted_class() {
    let denied = kit::start(&[kit::LOCAL_TCP]).await;
    let fleet = kit::start(&[kit::LOCAL_TCP]).await;
    let friend = kit::start(&[kit::LOCAL_TCP]).await;
    let (r, relay, registry) = relay(Config {
        circuit_data: 1000,
        deny: vec![denied.peer_id().to_string()],
        allow: vec![friend.peer_id().to_string()],
        trusted: vec![fleet.peer_id().to_string()],
        private: true,
        ..Config::default()
    })
    .await;
    for n in [&denied, &fleet, &friend] {
        n.host.dial(&kit::addr_of(&r)).await.unwrap();
    }
    let (answer, _) = hop(&denied, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::PermissionDenied));
    let stranger = client(&r).await;
    let (answer, _) = hop(&stranger, &r, &HopMessage::reserve()).await;
    assert_eq!(
        answer.status_of(),
        Some(Status::PermissionDenied),
        "private"
    );
    assert_eq!(
        metric(
            &registry,
            "libp2p_relaysvc_reservation_rejections_total{reason=\"denied\"}"
        ),
        2.0
    );

    // The trusted peer reserves: no limits announced, none applied.
    let _stop = echo(&fleet);
    let (answer, _) = hop(&fleet, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    assert_eq!(answer.limit, None, "no limit for the trusted class");
    let (answer, mut circuit) = hop(&friend, &r, &HopMessage::connect(fleet.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    assert_eq!(answer.limit, None);
    let sent = vec![4u8; 5000];
    circuit.write_all(&sent).await.unwrap();
    circuit.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(T, circuit.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back, sent,
        "5000 bytes both ways past a 1000-byte circuit_data"
    );
    // A stranger may not even call the trusted peer in private mode.
    let (answer, _) = hop(&stranger, &r, &HopMessage::connect(fleet.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::PermissionDenied));
    assert_eq!(relay.reservation_count(), 1);
}

/// Faults: a caller that vanishes mid-circuit frees the circuit and its per-peer slot; a
/// relay that restarts (a new node on the same key is not needed: the client dials the
/// address again) gets the reservation taken again by the client's `listen_via`.
#[tokio::test]
async fn a_vanished_peer_frees_its_circuit_and_a_restarted_relay_is_reserved_again() {
    let (r, relay, _registry) = relay(Config {
        max_circuits_per_peer: 1,
        ..Config::default()
    })
    .await;
    let a = client(&r).await;
    let _stop = echo(&a);
    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    let b = client(&r).await;
    let (answer, _circuit) = hop(&b, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    // a takes part in one circuit: its per-peer limit (1) is reached.
    let c = client(&r).await;
    let (answer, _) = hop(&c, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::ResourceLimitExceeded));
    // b vanishes: its connection to the relay goes, the circuit with it.
    b.shutdown(Duration::from_millis(100)).await;
    wait::until("the circuit freed", T, || relay.circuit_count() == 0).await;
    let (answer, _circuit) = hop(&c, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::Ok), "the slot came back");

    // A relay restart on the same port: the client's listen_via reserves again.
    let relay_addr = kit::addr_of(&r);
    let port = kit::port_of(&r);
    let key = r.host.keypair().clone();
    let d = kit::start(&[kit::LOCAL_TCP]).await;
    d.relay.listen_via(relay_addr.clone());
    kit::until(&d, "d reserved", T, || !d.relay.reservations().is_empty()).await;
    r.shutdown(Duration::from_millis(100)).await;
    drop(relay);
    kit::until(&d, "d lost the reservation", T, || {
        d.relay.reservations().is_empty()
    })
    .await;
    let config = pylon_node::node::Config {
        listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
        ..Default::default()
    };
    let r2 = pylon_node::node::Node::start(
        key,
        config,
        pylon_node::node::Stores::memory(),
        pylon_node::metrics::Metrics::unregistered(),
    )
    .await
    .unwrap();
    let mut registry = Registry::default();
    let relay2 = Relay::start(
        &r2,
        Config::default(),
        &mut Metrics::of::<Relay>(&mut registry),
    )
    .unwrap();
    assert_eq!(kit::addr_of(&r2), relay_addr, "the same relay, back");
    wait::until(
        "d reserved on the restarted relay",
        Duration::from_secs(60),
        || relay2.reservation_count() == 1,
    )
    .await;
}

/// Hole punching on loopback (a lab: loopback candidates allowed): A reaches B through
/// the relay, B starts DCUtR over the relayed connection, both dial at the same moment,
/// and a direct TCP connection replaces the circuit for new streams.
#[tokio::test]
async fn dcutr_upgrades_a_relayed_connection_to_a_direct_one() {
    use pylon_node::protocols::dcutr;
    let (r, _relay, _registry) = relay(Config::default()).await;
    let lab = || pylon_node::node::Config {
        dcutr: dcutr::Config {
            enabled: true,
            allow_loopback: true,
        },
        ..kit::config(&[kit::LOCAL_TCP])
    };
    let b = kit::start_with(lab()).await;
    let relay_addr = kit::addr_of(&r);
    b.relay.listen_via(relay_addr.clone());
    let circuit = relay_addr.with(multiaddr::Protocol::P2pCircuit);
    kit::until(&b, "B listens through the relay", T, || {
        b.host.listen_addrs().contains(&circuit)
    })
    .await;
    let a = kit::start_with(lab()).await;
    let relayed = tokio::time::timeout(
        T,
        a.host
            .dial(&circuit.clone().with(multiaddr::Protocol::P2p(b.peer_id()))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(relayed.transport(), "p2p-circuit");
    // The direct connection: A's preferred connection to B is no longer the circuit.
    kit::until(&a, "a direct connection from A to B", T, || {
        a.host
            .connection(&b.peer_id())
            .is_some_and(|c| c.transport() == "tcp")
    })
    .await;
    let direct = a.host.connection(&b.peer_id()).unwrap();
    assert!(
        direct.established() > relayed.established(),
        "the circuit came first"
    );
    let mut ping = a
        .host
        .open_stream(&b.peer_id(), &["/ipfs/ping/1.0.0"])
        .await
        .unwrap();
    ping.write_all(&[8u8; 32]).await.unwrap();
    let mut pong = [0u8; 32];
    tokio::time::timeout(T, ping.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    let outcome = |node: &Node, side: &'static str| {
        node.host
            .metrics()
            .holepunch_outcomes
            .get_or_create(&pylon_node::metrics::HolepunchLabels {
                side,
                outcome: "success",
            })
            .get()
    };
    wait::until("B counts its punch", T, || outcome(&b, "initiator") == 1).await;
}

/// DCUtR answers only on a relayed connection: a peer connected directly that opens the
/// protocol and asks for a punch to addresses of its choosing gets the stream reset and
/// no dial, and the refusal is counted.
#[tokio::test]
async fn dcutr_is_refused_on_a_direct_connection() {
    use pylon_node::protocols::dcutr::{self, proto::HolePunch};
    let lab = || pylon_node::node::Config {
        dcutr: dcutr::Config {
            enabled: true,
            allow_loopback: true,
        },
        ..kit::config(&[kit::LOCAL_TCP])
    };
    let a = kit::start_with(lab()).await;
    let b = kit::start_with(lab()).await;
    b.host.dial(&kit::addr_of(&a)).await.unwrap();
    let mut s = b
        .host
        .open_stream(&a.peer_id(), &[dcutr::PROTOCOL])
        .await
        .unwrap();
    let victim: multiaddr::Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
    for msg in [HolePunch::connect(&[victim]), HolePunch::sync()] {
        use prost::Message;
        let _ = varint::write_frame(&mut s, &msg.encode_to_vec()).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(T, s.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        read.is_err() || answer.is_empty(),
        "no CONNECT answer: {answer:?}"
    );
    let refused = a
        .host
        .metrics()
        .protocol_errors
        .get_or_create(&pylon_node::metrics::ErrorLabels {
            protocol: "dcutr",
            reason: "not_relayed_or_busy",
        })
        .get();
    assert_eq!(refused, 1);
    let dialed = a
        .host
        .metrics()
        .holepunch_addresses
        .get_or_create(&pylon_node::metrics::HolepunchAddrLabels {
            side: "receiver",
            transport: "tcp",
            outcome: "failed",
        })
        .get();
    assert_eq!(dialed, 0, "nothing dialed for it");
}

/// Answers nothing: takes the relay's `STOP` and holds it.
struct Silent;

impl Extension for Silent {
    fn protocol_ids(&self) -> Vec<String> {
        vec![STOP.to_string()]
    }

    fn handle_stream(self: Arc<Self>, mut s: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        })
    }
}

/// A target that takes the `STOP` and never answers: the caller gets CONNECTION_FAILED
/// once the relay's answer timeout (10 s) passes, and the circuit's slot is free again.
#[tokio::test]
async fn a_target_that_never_answers_stop_fails_the_circuit_and_frees_its_slot() {
    let (r, relay, registry) = relay(Config::default()).await;
    let a = client(&r).await;
    a.host.install(Arc::new(Silent));
    let (answer, _) = hop(&a, &r, &HopMessage::reserve()).await;
    assert_eq!(answer.status_of(), Some(Status::Ok));
    let b = client(&r).await;
    let (answer, _) = hop(&b, &r, &HopMessage::connect(a.peer_id())).await;
    assert_eq!(answer.status_of(), Some(Status::ConnectionFailed));
    assert_eq!(relay.circuit_count(), 0);
    assert_eq!(
        metric(
            &registry,
            "libp2p_relaysvc_connection_request_response_status_total{status=\"connection_failed\"}"
        ),
        1.0
    );
}
