//! Fair admission of inbound handshakes (issue 11, "Handshake slots taken by one host"):
//! stalled sockets from one address, or from hundreds of addresses over several /24s
//! (held, or reopened the moment the server drops them), do not keep honest clients out,
//! and a TCP flood does not refuse QUIC.
//!
//! Real hosts over loopback. All of 127.0.0.0/8 is loopback on Linux, so the flood and
//! the honest clients leave from chosen source addresses: an honest client binds its
//! socket, then runs the dialer's side of the libp2p handshake (Noise, yamux agreed
//! inside it) and counts as served once the server reports the connection. Every wait is
//! bounded; the server's progress is read from its metrics, not guessed with sleeps.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use pylon_node::host::{self, Event, Host};
use pylon_node::metrics::{DialErrorLabels, Metrics};
use pylon_node::secure::{self, Security};
use pylon_node::{Keypair, Multiaddr, PeerId};
use pylon_testkit::wait;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// Handshakes in progress at once per transport, small to keep the floods small.
const MAX_PENDING: usize = 32;
/// Honest handshakes tried while a flood is held open.
const HONEST: usize = 10;
/// One honest handshake, from connect to the server reporting the connection.
const ATTEMPT: Duration = Duration::from_secs(3);
/// Waiting for the server to take in a flood.
const SETTLE: Duration = Duration::from_secs(10);
/// A whole test.
const TEST: Duration = Duration::from_secs(45);

struct Server {
    host: Host,
    registry: Registry,
    tcp: SocketAddr,
}

/// A host listening on 127.0.0.1 over TCP (and QUIC with `quic`), with the default
/// admission budgets and `max_pending_incoming` = [`MAX_PENDING`].
async fn server(quic: bool) -> Server {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let config = host::Config {
        max_pending_incoming: MAX_PENDING,
        ..Default::default()
    };
    let host = Host::new(Keypair::generate_ed25519(), config, metrics).unwrap();
    let bound = host
        .listen(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    if quic {
        host.listen(&"/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .await
            .unwrap();
    }
    let port = match bound.iter().nth(1) {
        Some(multiaddr::Protocol::Tcp(p)) => p,
        _ => unreachable!(),
    };
    Server {
        host,
        registry,
        tcp: (Ipv4Addr::LOCALHOST, port).into(),
    }
}

impl Server {
    /// Refusals, evictions and failures of inbound TCP handshakes, every label together.
    fn tcp_handshake_errors(&self) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .filter(|l| l.starts_with("libp2p_swarm_handshake_errors_total{transport=\"tcp\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Inbound TCP connections refused or evicted for `error` (all limits: fault `limit`).
    fn tcp_errors(&self, error: &'static str) -> u64 {
        self.host
            .metrics()
            .handshake_errors
            .get_or_create(&DialErrorLabels {
                transport: "tcp",
                error,
                fault: "limit",
                ip_version: "ip4",
            })
            .get()
    }

    /// Stalled sockets, one per source address: connected, silent, held open. Returns
    /// once the server has taken in every one: each is either in its handshake or
    /// counted as refused, evicted or failed.
    async fn flood(&self, sources: &[Ipv4Addr]) -> Vec<TcpStream> {
        let mut held = Vec::with_capacity(sources.len());
        for source in sources {
            held.push(connect_from(*source, self.tcp).await.unwrap());
        }
        // An accepted socket entering its handshake has no event: polled.
        wait::until(
            "the server takes in the flood within the bound",
            SETTLE,
            || {
                let seen = self.host.pending_incoming("tcp") as u64 + self.tcp_handshake_errors();
                seen >= held.len() as u64
            },
        )
        .await;
        held
    }
}

/// Runs a whole test within [`TEST`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST, test)
        .await
        .expect("test within its bound");
}

/// Whether one honest `attempt` succeeds within [`ATTEMPT`].
async fn served(attempt: impl Future<Output = Option<()>>) -> bool {
    tokio::time::timeout(ATTEMPT, attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// [`HONEST`] attempts, one after another; how many were served.
async fn honest_served<F: Future<Output = bool>>(mut attempt: impl FnMut() -> F) -> usize {
    let mut served = 0;
    for _ in 0..HONEST {
        if attempt().await {
            served += 1;
        }
    }
    served
}

/// Connects from `source` (port chosen by the kernel) to `to`.
async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(to).await
}

/// One honest TCP handshake from `source`: served when our Noise handshake completes
/// and the server reports the connection.
async fn honest_tcp(server: &Server, source: Ipv4Addr) -> bool {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let config = secure::Config::new(
        &key,
        vec![Security::Noise],
        vec![host::YAMUX_PROTOCOL.to_string()],
    )
    .unwrap();
    let mut events = server.host.subscribe();
    let attempt = async {
        let tcp = connect_from(source, server.tcp).await.ok()?;
        let secured = secure::outbound(tcp, &config, Some(server.host.peer_id()))
            .await
            .ok()?;
        // Held until the server has the connection.
        let _secured = secured;
        established(&server.host, &mut events, me).await;
        Some(())
    };
    served(attempt).await
}

/// Waits for the server's `ConnectionEstablished` with `peer`.
async fn established(
    host: &Host,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    peer: PeerId,
) {
    loop {
        match events.recv().await {
            Ok(Event::ConnectionEstablished(c)) if c.peer() == peer => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                if host.connection(&peer).is_some() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

/// One honest QUIC handshake to `addr`, from a host of its own.
async fn honest_quic(server: &Server, addr: &Multiaddr) -> bool {
    let client = Host::new(
        Keypair::generate_ed25519(),
        host::Config::default(),
        Metrics::unregistered(),
    )
    .unwrap();
    let mut events = server.host.subscribe();
    let ok = served(async {
        client.dial(addr).await.ok()?;
        established(&server.host, &mut events, client.peer_id()).await;
        Some(())
    })
    .await;
    client.shutdown(Duration::from_millis(100)).await;
    ok
}

/// 127.1.S.1 ..= 127.1.S.`per_subnet` for S in 0..`subnets`.
fn spread(subnets: u8, per_subnet: u8) -> Vec<Ipv4Addr> {
    (0..subnets)
        .flat_map(|s| (1..=per_subnet).map(move |h| Ipv4Addr::new(127, 1, s, h)))
        .collect()
}

#[tokio::test]
async fn stalled_sockets_from_one_address_leave_room_for_honest_clients() {
    bounded(async {
        let server = server(false).await;
        // Twice the pending pool, from one address.
        let sources = vec![Ipv4Addr::LOCALHOST; 2 * MAX_PENDING];
        let _held = server.flood(&sources).await;
        let served = honest_served(|| honest_tcp(&server, Ipv4Addr::new(127, 0, 0, 2))).await;
        println!("one-address flood: {served}/{HONEST} honest handshakes served");
        assert!(served >= HONEST - 1, "{served}/{HONEST} served");
        assert!(
            server.tcp_errors("pending_ip_limit") > 0,
            "refusals counted"
        );
    })
    .await;
}

#[tokio::test]
async fn stalled_sockets_from_hundreds_of_addresses_leave_room_for_honest_clients() {
    bounded(async {
        let server = server(false).await;
        // 300 addresses in five /24s: every one passes the per-IP budget, five subnets
        // of 32 pass the per-subnet budget, together far more than the pool.
        let sources = spread(5, 60);
        let _held = server.flood(&sources).await;
        assert_eq!(
            server.host.pending_incoming("tcp"),
            MAX_PENDING,
            "the pool is full"
        );
        let served = honest_served(|| honest_tcp(&server, Ipv4Addr::new(127, 2, 0, 1))).await;
        println!("300-address flood: {served}/{HONEST} honest handshakes served");
        assert!(served >= HONEST - 1, "{served}/{HONEST} served");
        assert!(
            server.tcp_errors("pending_subnet_limit") > 0,
            "refusals counted"
        );
        assert!(
            server.tcp_errors("pending_evicted") > 0,
            "evictions counted"
        );
    })
    .await;
}

/// Reconnects from `source` as soon as the server drops the socket, until `stop` or
/// until the shared `budget` of connections is spent.
async fn churn(
    to: SocketAddr,
    source: Ipv4Addr,
    budget: Arc<AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut buf = [0u8; 64];
    while budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        let Ok(mut held) = connect_from(source, to).await else {
            continue;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = held.read(&mut buf) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_flood_from_hundreds_of_addresses_leaves_room_for_honest_clients() {
    bounded(async {
        let server = server(false).await;
        // The same 300 addresses, each socket reopened the moment the server drops it
        // (refused, evicted or timed out), up to 20 000 connections in all.
        let sources = spread(5, 60);
        let _held = server.flood(&sources).await;
        let budget = Arc::new(AtomicUsize::new(20_000));
        let stop = tokio_util::sync::CancellationToken::new();
        let attackers: Vec<_> = sources
            .iter()
            .map(|s| tokio::spawn(churn(server.tcp, *s, budget.clone(), stop.clone())))
            .collect();
        let served = honest_served(|| honest_tcp(&server, Ipv4Addr::new(127, 2, 0, 1))).await;
        let spent = 20_000 - budget.load(Ordering::Relaxed);
        stop.cancel();
        for a in attackers {
            a.await.unwrap();
        }
        println!(
            "reconnecting 300-address flood ({spent} reconnections): \
             {served}/{HONEST} honest handshakes served"
        );
        assert!(served >= HONEST - 1, "{served}/{HONEST} served");
    })
    .await;
}

#[tokio::test]
async fn a_tcp_flood_does_not_refuse_quic() {
    bounded(async {
        let server = server(true).await;
        let sources = spread(5, 60);
        let _held = server.flood(&sources).await;
        assert_eq!(
            server.host.pending_incoming("tcp"),
            MAX_PENDING,
            "the TCP pool is full"
        );
        let evicted = server.tcp_errors("pending_evicted");
        let quic: Multiaddr = server
            .host
            .listen_addrs()
            .into_iter()
            .find(|a| a.iter().any(|p| matches!(p, multiaddr::Protocol::QuicV1)))
            .unwrap();
        let served = honest_served(|| honest_quic(&server, &quic)).await;
        println!("TCP flood: {served}/{HONEST} QUIC handshakes served");
        assert!(
            served >= HONEST - 1,
            "{served}/{HONEST} QUIC clients served"
        );
        // QUIC took no TCP handshake's place.
        assert_eq!(server.tcp_errors("pending_evicted"), evicted);
    })
    .await;
}
