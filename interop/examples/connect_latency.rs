//! Connection establishment on loopback (TCP+Noise, TCP+TLS, QUIC), dial → first ping answered, Pylon↔Pylon
//! against rust-libp2p↔rust-libp2p in the same run (alternating rounds), as the
//! test-plans `handshakePlusOneRTT` measure. Both sides run what a real node runs on a
//! new connection: identify (with signed records) and ping. Prints a markdown table.
//!
//! `cargo run --release -p pylon-interop --example connect_latency -- [connections per round] [rounds]`

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, Swarm};
use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::ping as pylon_ping;

/// Transport and security of one row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Noise,
    Tls,
    Quic,
}

impl Kind {
    fn listen(self) -> &'static str {
        match self {
            Kind::Noise | Kind::Tls => "/ip4/127.0.0.1/tcp/0",
            Kind::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }
}

/// A Pylon variant: transport and security, and whether the muxer is agreed in the handshake.
#[derive(Clone, Copy)]
struct Variant {
    kind: Kind,
    inline_muxer: bool,
}

async fn pylon_node(v: Variant) -> anyhow::Result<Node> {
    let mut config = node::Config {
        listen: vec![v.kind.listen().parse()?],
        ..Default::default()
    };
    config.host.security = vec![if v.kind == Kind::Tls {
        pylon_node::secure::Security::Tls
    } else {
        pylon_node::secure::Security::Noise
    }];
    config.host.inline_muxer = v.inline_muxer;
    // PYLON_BENCH_PORT_REUSE=0 turns port reuse off (redialing one peer in a loop reuses a
    // 4-tuple that may still be in TIME_WAIT).
    config.host.port_reuse = std::env::var("PYLON_BENCH_PORT_REUSE").map_or(true, |v| v != "0");
    Ok(Node::start_volatile(config, Metrics::unregistered()).await?)
}

async fn pylon_round(n: usize, v: Variant) -> anyhow::Result<Vec<Duration>> {
    let server = pylon_node(v).await?;
    let client = pylon_node(v).await?;
    let addr = server
        .listen_multiaddrs()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no listen addr"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let conn = client.host.dial(&addr).await?;
        let mut stream = conn.open_stream_lazy(pylon_ping::PROTOCOL).await?;
        pylon_ping::ping_on(&mut stream).await?;
        out.push(started.elapsed());
        drop(stream);
        conn.close();
        conn.closed().await;
    }
    client.shutdown(Duration::from_secs(5)).await;
    server.shutdown(Duration::from_secs(5)).await;
    Ok(out)
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

fn rust_swarm(kind: Kind) -> anyhow::Result<Swarm<Behaviour>> {
    // The two security upgrades have different types until the swarm is built.
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_behaviour(|key| Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new_with_signed_peer_record("ipfs/0.1.0".into(), key),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new().with_interval(Duration::from_secs(3600)),
                    ),
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build()
        };
    }
    let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    let nodelay = tcp::Config::default().nodelay(true);
    Ok(match kind {
        Kind::Tls => {
            finish!(builder.with_tcp(nodelay, libp2p::tls::Config::new, yamux::Config::default)?)
        }
        Kind::Noise => {
            finish!(builder.with_tcp(nodelay, noise::Config::new, yamux::Config::default)?)
        }
        Kind::Quic => finish!(builder.with_quic()),
    })
}

async fn rust_round(n: usize, kind: Kind) -> anyhow::Result<Vec<Duration>> {
    let mut server = rust_swarm(kind)?;
    server.listen_on(kind.listen().parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let mut client = rust_swarm(kind)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.dial(
            addr.clone()
                .with(libp2p::multiaddr::Protocol::P2p(server_id)),
        )?;
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                    result: Ok(_), ..
                })) => break,
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                    result: Err(e), ..
                })) => {
                    anyhow::bail!("ping failed: {e}")
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    anyhow::bail!("dial failed: {error}")
                }
                _ => {}
            }
        }
        out.push(started.elapsed());
        let _ = client.disconnect_peer_id(server_id);
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = client.select_next_some().await {
                break;
            }
        }
    }
    server_task.abort();
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200);
    let rounds = args.get(1).copied().unwrap_or(3);
    let pylon = |name, kind, inline_muxer| (name, Some(Variant { kind, inline_muxer }), kind);
    let variants = [
        pylon("Pylon TCP+Noise, muxer inlined", Kind::Noise, true),
        pylon("Pylon TCP+Noise, muxer by multistream", Kind::Noise, false),
        ("rust-libp2p TCP+Noise", None, Kind::Noise),
        pylon("Pylon TCP+TLS, muxer inlined", Kind::Tls, true),
        pylon("Pylon TCP+TLS, muxer by multistream", Kind::Tls, false),
        ("rust-libp2p TCP+TLS", None, Kind::Tls),
        pylon("Pylon QUIC v1", Kind::Quic, false),
        ("rust-libp2p QUIC v1", None, Kind::Quic),
    ];
    let mut results: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    // Warm-up, then alternate so drift on this noisy machine hits every variant alike.
    for (_, v, kind) in &variants {
        match v {
            Some(v) => drop(pylon_round(20, *v).await?),
            None => drop(rust_round(20, *kind).await?),
        }
    }
    for _ in 0..rounds {
        for (i, (_, v, kind)) in variants.iter().enumerate() {
            let r = match v {
                Some(v) => pylon_round(n, *v).await?,
                None => rust_round(n, *kind).await?,
            };
            results[i].extend(r);
        }
    }
    for r in &mut results {
        r.sort();
    }
    println!("| loopback, dial → first ping answered (identify running) | n | p50 ms | p90 ms | p99 ms | p50 / rust-libp2p same transport |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, _, kind)) in variants.iter().enumerate() {
        let rust_index = variants
            .iter()
            .position(|(_, v, k)| v.is_none() && k == kind)
            .unwrap_or(i);
        let (v, rust) = (&results[i], &results[rust_index]);
        println!(
            "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.2} |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 0.5) / pct(rust, 0.5)
        );
    }
    Ok(())
}
