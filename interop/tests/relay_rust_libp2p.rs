//! Pylon's relay role serving rust-libp2p 0.57 relay clients (`libp2p-relay`): A reserves
//! a slot by listening on the Pylon relay's `/p2p-circuit` address, B dials A through it,
//! and the two rust-libp2p peers identify and ping each other over the circuit.
//! Loopback only (the NAT test bed of issue 13 comes later); every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use pylon_roles::relay::{Config, Relay};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
struct Client {
    relay: relay::client::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
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
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key, relay| Client {
            relay,
            identify: identify::Behaviour::new(identify::Config::new(
                "/interop/relay/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(200)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Drives `swarm` until `pick` returns something.
async fn until<R>(
    swarm: &mut Swarm<Client>,
    what: &str,
    mut pick: impl FnMut(SwarmEvent<ClientEvent>) -> Option<R>,
) -> R {
    tokio::time::timeout(T, async {
        loop {
            if let Some(r) = pick(swarm.select_next_some().await) {
                return r;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {T:?}"))
}

#[tokio::test]
async fn rust_libp2p_peers_meet_through_a_pylon_relay() {
    let r = kit::start(&[kit::LOCAL_TCP]).await;
    let mut registry = Registry::default();
    let relay_role = Relay::start(
        &r,
        Config::default(),
        &mut Metrics::of::<Relay>(&mut registry),
    )
    .unwrap();
    let relay_addr: Multiaddr = kit::addr_of(&r).to_string().parse().unwrap();
    let relay_id: PeerId = r.peer_id().to_string().parse().unwrap();

    // A listens through the relay: rust-libp2p dials it and reserves.
    let mut a = client();
    let a_id = *a.local_peer_id();
    a.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .unwrap();
    let limit = until(&mut a, "A's reservation", |e| match e {
        SwarmEvent::Behaviour(ClientEvent::Relay(
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                limit,
                ..
            },
        )) if relay_peer_id == relay_id => Some(limit),
        _ => None,
    })
    .await;
    let limit = limit.expect("the relay announces its limits");
    assert_eq!(limit.duration(), Some(Duration::from_secs(600)));
    assert_eq!(limit.data_in_bytes(), Some(16 * 1024 * 1024));
    assert_eq!(relay_role.reservation_count(), 1);

    // B dials A through the relay.
    let mut b = client();
    let via_relay = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a_id));
    b.dial(via_relay).unwrap();
    // Both swarms must run: A accepts the circuit, B establishes and pings.
    let a_task = tokio::spawn(async move {
        until(&mut a, "A's inbound circuit", |e| match e {
            SwarmEvent::Behaviour(ClientEvent::Relay(
                relay::client::Event::InboundCircuitEstablished { src_peer_id, .. },
            )) => Some(src_peer_id),
            _ => None,
        })
        .await;
        // Keep A running (answering pings) until the test ends.
        loop {
            a.select_next_some().await;
        }
    });
    let endpoint = until(&mut b, "B's connection to A", |e| match e {
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } if peer_id == a_id => Some(endpoint),
        _ => None,
    })
    .await;
    assert!(
        endpoint
            .get_remote_address()
            .iter()
            .any(|p| p == Protocol::P2pCircuit),
        "B reached A through the relay: {endpoint:?}"
    );
    // Identify and ping both run over the circuit; their events come in either order.
    let (mut rtt, mut identified) = (None, None);
    until(&mut b, "B's ping and identify of A over the circuit", |e| {
        match e {
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                peer,
                result: Ok(d),
                ..
            })) if peer == a_id => rtt = Some(d),
            SwarmEvent::Behaviour(ClientEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if peer_id == a_id => identified = Some(info.public_key.to_peer_id()),
            _ => {}
        }
        (rtt.is_some() && identified.is_some()).then_some(())
    })
    .await;
    assert!(rtt.unwrap() < T);
    assert_eq!(identified, Some(a_id));
    assert_eq!(relay_role.circuit_count(), 1, "one circuit carries it all");
    let status = relay_role.status();
    assert_eq!(status.circuits.len(), 1);
    assert!(status.circuits[0].bytes_up > 0 && status.circuits[0].bytes_down > 0);

    // B goes away: the circuit ends and the relay frees it.
    drop(b);
    wait::until("circuit freed", T, || relay_role.circuit_count() == 0).await;
    a_task.abort();
}

#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A rust-libp2p relay server on loopback TCP, running in its own task; its address
/// with `/p2p/`.
async fn rust_relay() -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| RelayServer {
            relay: relay::Behaviour::new(key.public().to_peer_id(), Default::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/interop/relay/1.0.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let listen = tokio::time::timeout(T, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap();
    // rust-libp2p's relay serves only with a confirmed external address.
    swarm.add_external_address(listen.clone());
    let addr = listen.with(Protocol::P2p(*swarm.local_peer_id()));
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (addr, task)
}

/// A Pylon node behind a rust-libp2p relay: Pylon's relay client reserves there, and a
/// rust-libp2p peer reaches the Pylon node through it and pings it.
#[tokio::test]
async fn a_pylon_node_is_reached_through_a_rust_libp2p_relay() {
    let (relay_addr, relay_task) = rust_relay().await;
    let a = kit::start(&[kit::LOCAL_TCP]).await;
    let a_client = &a.relay;
    let pylon_relay_addr: pylon_node::Multiaddr = relay_addr.to_string().parse().unwrap();
    let reserved = tokio::time::timeout(T, a_client.reserve(&pylon_relay_addr))
        .await
        .unwrap()
        .unwrap();
    // rust-libp2p's defaults, as Pylon's client read them: 2 min and 128 KiB per circuit,
    // and no voucher (INTEROP-NOTES).
    let limit = reserved.limit.unwrap();
    assert_eq!((limit.duration, limit.data), (Some(120), Some(128 * 1024)));
    assert!(reserved.voucher.is_none());
    assert!(
        reserved.expires > std::time::Instant::now(),
        "an expiry in the future"
    );
    let a_id: PeerId = a.peer_id().to_string().parse().unwrap();

    let mut b = client();
    b.dial(
        relay_addr
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(a_id)),
    )
    .unwrap();
    let rtt = until(
        &mut b,
        "B's ping of the Pylon node through the relay",
        |e| match e {
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) if peer == a_id => Some(rtt),
            _ => None,
        },
    )
    .await;
    assert!(rtt < T);
    let conn = kit::connection(&a, b.local_peer_id().to_string().parse().unwrap(), T).await;
    assert_eq!(conn.transport(), "p2p-circuit");
    relay_task.abort();
}

/// The other way round: a rust-libp2p peer reserves on the Pylon relay and a Pylon node
/// dials it through the relay with Pylon's relay client.
#[tokio::test]
async fn a_pylon_node_dials_a_rust_libp2p_peer_through_the_pylon_relay() {
    let r = kit::start(&[kit::LOCAL_TCP]).await;
    let mut registry = Registry::default();
    let relay_role = Relay::start(
        &r,
        Config::default(),
        &mut Metrics::of::<Relay>(&mut registry),
    )
    .unwrap();
    let relay_addr: Multiaddr = kit::addr_of(&r).to_string().parse().unwrap();
    let mut a = client();
    let a_id = *a.local_peer_id();
    a.listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        .unwrap();
    until(&mut a, "A's reservation", |e| match e {
        SwarmEvent::Behaviour(ClientEvent::Relay(
            relay::client::Event::ReservationReqAccepted { .. },
        )) => Some(()),
        _ => None,
    })
    .await;
    let a_task = tokio::spawn(async move {
        loop {
            a.select_next_some().await;
        }
    });

    let b = kit::start(&[kit::LOCAL_TCP]).await;
    let to_a: pylon_node::Multiaddr = relay_addr
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a_id))
        .to_string()
        .parse()
        .unwrap();
    let conn = tokio::time::timeout(T, b.host.dial(&to_a))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.transport(), "p2p-circuit");
    // Pylon pings the rust-libp2p peer over the circuit.
    let mut s = conn.open_stream(&["/ipfs/ping/1.0.0"]).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&[5u8; 32]).await.unwrap();
    let mut pong = [0u8; 32];
    tokio::time::timeout(T, s.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [5u8; 32]);
    assert_eq!(relay_role.circuit_count(), 1);
    a_task.abort();
}
