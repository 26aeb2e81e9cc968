//! Pylon's relay role with js-libp2p 3.x relay clients (`@libp2p/circuit-relay-v2`'s
//! `circuitRelayTransport`, in `interop/js/peer.mjs --relay`), both ways: a js peer reserves
//! on the Pylon relay and a Pylon node reaches it through the relay; a Pylon node reserves
//! and the js peer reaches it. Each side pings the other over the circuit, and the js side
//! reports what its relay client read from our answers: the reservation's expiry and voucher,
//! and each circuit's limits (js reads `Limit.duration` as seconds, as the spec says, though
//! js-libp2p's own relay *server* announces milliseconds: INTEROP-NOTES).
//! Loopback only; every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use pylon_interop::js::{
    ConnectionClose, ConnectionLimits, ConnectionOpen, JsOptions, JsPeer, Ping,
};
use pylon_node::node::Node;
use pylon_node::protocols::ping as pylon_ping;
use pylon_node::{Multiaddr, PeerId};
use pylon_roles::relay::{Config, Relay};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;
use pylon_testkit::wait;

const T: Duration = Duration::from_secs(30);

/// A Pylon node running the relay role with `config`, and its address with `/p2p/`.
fn relay_with(node: &Node, config: Config) -> (Arc<Relay>, Multiaddr) {
    let mut registry = Registry::default();
    let relay = Relay::start(node, config, &mut Metrics::of::<Relay>(&mut registry)).unwrap();
    (relay, kit::addr_of(node))
}

/// A js-libp2p peer with the circuit relay transport (listening on loopback TCP too).
async fn js_relay_client() -> JsPeer {
    JsPeer::listen_with(&JsOptions {
        relay: true,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `relay_addr/p2p-circuit/p2p/peer`.
fn via(relay_addr: &Multiaddr, peer: &str) -> String {
    format!("{relay_addr}/p2p-circuit/p2p/{peer}")
}

/// The next `connection_open` of the js peer with `peer`.
async fn js_connection(js: &mut JsPeer, peer: &PeerId) -> ConnectionOpen {
    serde_json::from_value(
        js.wait_for_peer("connection_open", &peer.to_string(), T)
            .await
            .unwrap(),
    )
    .unwrap()
}

/// js-libp2p's view of a relayed connection's limits, read at its opening: the relay's
/// duration taken as seconds (a second may have begun to run), and its data limit less what
/// the security and muxer handshakes already carried (js counts both directions together).
fn assert_limits(limits: Option<ConnectionLimits>, config: &Config) {
    let limits = limits.expect("a relayed connection is limited");
    let secs = config.circuit_duration.as_secs();
    let seconds = limits.seconds.expect("a duration limit");
    assert!(
        (secs - 1..=secs).contains(&seconds),
        "js read {seconds} s for our {secs} s"
    );
    let bytes = limits.bytes.expect("a data limit");
    assert!(
        bytes <= config.circuit_data && bytes > config.circuit_data - 64 * 1024,
        "js read {bytes} bytes for our {}",
        config.circuit_data
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A js-libp2p peer listens on the Pylon relay's `/p2p-circuit` address (it reserves), a Pylon
/// node dials it through the relay and pings it, and the js peer sees the inbound relayed
/// connection and pings back over it.
#[tokio::test]
async fn a_pylon_node_reaches_a_js_libp2p_peer_through_a_pylon_relay() {
    let r = kit::start(&[kit::LOCAL_TCP]).await;
    let config = Config::default();
    let (relay, relay_addr) = relay_with(&r, config.clone());
    let mut js = js_relay_client().await;
    let js_peer: PeerId = js.peer_id.parse().unwrap();

    let before = unix_now();
    let listening = js.listen_relay(&relay_addr.to_string()).await.unwrap();
    assert_eq!(listening.relay, r.peer_id().to_string());
    let circuit_addr = via(&relay_addr, &js.peer_id);
    assert!(
        listening.addrs.contains(&circuit_addr),
        "{circuit_addr} missing from {:?}",
        listening.addrs
    );
    assert_eq!(relay.reservation_count(), 1);
    // js read our expiry as Unix seconds (it refreshes 5 minutes before it).
    let reservation = listening.reservation;
    let ttl = config.reservation_ttl.as_secs();
    assert!(
        (before + ttl..=unix_now() + ttl + 1).contains(&reservation.expire),
        "expire {} for a {ttl} s reservation made at {before}",
        reservation.expire
    );
    assert!(reservation.expires_in_ms > ((ttl - 60) * 1000) as f64);
    // js-libp2p decodes the voucher envelope (it does not check the signature).
    let voucher = reservation
        .voucher
        .expect("the Pylon relay issues a voucher");
    assert_eq!(voucher.relay, r.peer_id().to_string());
    assert_eq!(voucher.peer, js.peer_id);
    assert_eq!(voucher.expiration, reservation.expire);

    // A Pylon node dials the js peer through the relay and pings it.
    let b = kit::start(&[kit::LOCAL_TCP]).await;
    let conn = tokio::time::timeout(T, b.host.dial(&circuit_addr.parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.transport(), "p2p-circuit");
    let rtt = tokio::time::timeout(T, pylon_ping::ping(&b.host, &js_peer))
        .await
        .unwrap()
        .unwrap();
    assert!(rtt < T);

    // The js peer saw an inbound relayed connection from B, with our limits.
    let seen = js_connection(&mut js, &b.peer_id()).await;
    assert_eq!(seen.direction, "inbound");
    assert_eq!(seen.transport.as_deref(), Some("p2p-circuit"));
    assert_eq!(seen.remote_addr, via(&relay_addr, &b.peer_id().to_string()));
    assert_limits(seen.limits, &config);
    // And pinged B over it (after identify).
    let ping: Ping = serde_json::from_value(
        js.wait_for_peer("ping", &b.peer_id().to_string(), T)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ping.remote_addr.as_deref(), Some(seen.remote_addr.as_str()));
    let again = js.ping(&b.peer_id().to_string()).await.unwrap();
    assert_eq!(again.remote_addr, ping.remote_addr);
    // One circuit carried it all, and B knows no other way to the js peer.
    assert_eq!(relay.circuit_count(), 1);
    assert_eq!(
        b.host.connection(&js_peer).unwrap().transport(),
        "p2p-circuit"
    );

    // B goes away: the circuit ends, js sees it close, and the relay frees it.
    let b_id = b.peer_id();
    b.shutdown(T).await;
    let closed: ConnectionClose = serde_json::from_value(
        js.wait_for_peer("connection_close", &b_id.to_string(), T)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(closed.transport.as_deref(), Some("p2p-circuit"));
    wait::until("circuit freed", T, || relay.circuit_count() == 0).await;
    js.stop().await.unwrap();
}

/// A Pylon node holds a reservation on the Pylon relay; the js peer dials it through the
/// relay and pings it.
#[tokio::test]
async fn a_js_libp2p_peer_reaches_a_pylon_node_through_a_pylon_relay() {
    let r = kit::start(&[kit::LOCAL_TCP]).await;
    let config = Config::default();
    let (relay, relay_addr) = relay_with(&r, config.clone());
    let d = kit::start(&[kit::LOCAL_TCP]).await;
    let reserved = tokio::time::timeout(T, d.relay.reserve(&relay_addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reserved.relay, r.peer_id());
    assert_eq!(relay.reservation_count(), 1);

    let mut js = js_relay_client().await;
    let js_peer: PeerId = js.peer_id.parse().unwrap();
    let to_d = via(&relay_addr, &d.peer_id().to_string());
    let conn = js.connect(&to_d).await.unwrap();
    assert_eq!(conn.peer_id, d.peer_id().to_string());
    assert_eq!(conn.direction, "outbound");
    assert_eq!(conn.transport.as_deref(), Some("p2p-circuit"));
    assert_eq!(conn.remote_addr, to_d);
    assert_limits(conn.limits, &config);

    let ping = js.ping(&d.peer_id().to_string()).await.unwrap();
    assert_eq!(ping.remote_addr.as_deref(), Some(to_d.as_str()));
    assert!(ping.rtt_ms >= 0.0);
    // The Pylon node accepted it as a relayed connection, and pings back over it.
    let theirs = kit::connection(&d, js_peer, T).await;
    assert_eq!(theirs.transport(), "p2p-circuit");
    tokio::time::timeout(T, pylon_ping::ping(&d.host, &js_peer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(relay.circuit_count(), 1);
    js.stop().await.unwrap();
}

/// js-libp2p takes our `Limit.duration` as seconds and does not end a circuit itself: with
/// a 3 s circuit limit on the relay, the js peer reads 3 s, and the relayed connection stays
/// up until the relay cuts it, not before.
#[tokio::test]
async fn js_libp2p_keeps_a_circuit_until_the_pylon_relay_ends_it() {
    let r = kit::start(&[kit::LOCAL_TCP]).await;
    let config = Config {
        circuit_duration: Duration::from_secs(3),
        circuit_data: 1024 * 1024,
        ..Config::default()
    };
    let (relay, relay_addr) = relay_with(&r, config.clone());
    let mut js = js_relay_client().await;
    let js_peer: PeerId = js.peer_id.parse().unwrap();
    js.listen_relay(&relay_addr.to_string()).await.unwrap();

    let b = kit::start(&[kit::LOCAL_TCP]).await;
    // Before the dial, so before the relay's clock for the circuit starts.
    let dialed = Instant::now();
    let conn = tokio::time::timeout(
        T,
        b.host.dial(&via(&relay_addr, &js.peer_id).parse().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = js_connection(&mut js, &b.peer_id()).await;
    assert_limits(seen.limits, &config);
    tokio::time::timeout(T, pylon_ping::ping(&b.host, &js_peer))
        .await
        .unwrap()
        .unwrap();
    js.ping(&b.peer_id().to_string()).await.unwrap();

    // The relay cuts the circuit at its limit; js keeps it until then.
    let closed: ConnectionClose = serde_json::from_value(
        js.wait_for_peer("connection_close", &b.peer_id().to_string(), T)
            .await
            .unwrap(),
    )
    .unwrap();
    let lived = dialed.elapsed();
    assert_eq!(closed.transport.as_deref(), Some("p2p-circuit"));
    assert!(
        lived >= config.circuit_duration,
        "the relayed connection ended after {lived:?}, before the relay's {:?}",
        config.circuit_duration
    );
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    wait::until("circuit freed", T, || relay.circuit_count() == 0).await;
    // The reservation outlives the circuit.
    assert_eq!(relay.reservation_count(), 1);
    js.stop().await.unwrap();
}
