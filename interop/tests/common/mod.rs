//! Shared pieces of the interop tests: a Pylon node and a real rust-libp2p peer.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use pylon_node::node::Node;
use pylon_testkit::node as kit;
use pylon_testkit::wait;
use tokio::sync::{broadcast, mpsc, oneshot};

pub const T: Duration = Duration::from_secs(20);
pub mod ns_pylon;
pub mod ns_swarm;
pub mod rust_kad;

pub const RUST_AGENT: &str = "rust-libp2p-interop";

/// A Pylon node listening on loopback TCP.
pub async fn pylon() -> Node {
    pylon_on("/ip4/127.0.0.1/tcp/0").await
}

/// A Pylon node listening on one loopback address.
pub async fn pylon_on(listen: &str) -> Node {
    pylon_with(listen, pylon_node::secure::Security::Noise).await
}

/// A Pylon node listening on one loopback address, dialing with `security`.
pub async fn pylon_with(listen: &str, security: pylon_node::secure::Security) -> Node {
    let mut config = kit::config(&[listen]);
    config.host.security = vec![security];
    kit::start_with(config).await
}

pub fn pylon_addr(node: &Node) -> Multiaddr {
    node.listen_multiaddrs()
        .into_iter()
        .find(|a| a.to_string().starts_with("/ip4/127.0.0.1/"))
        .unwrap()
}

/// Waits for pylon's identify result about `peer`.
pub async fn pylon_identified(
    events: &mut broadcast::Receiver<pylon_node::protocols::identify::Event>,
    peer: PeerId,
) -> pylon_node::protocols::identify::Info {
    use pylon_node::protocols::identify::Event;
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await.unwrap() {
                Event::Identified(info) if info.peer == peer => return *info,
                Event::Failed { peer: p, error } if p == peer => {
                    panic!("pylon failed to identify {p}: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("pylon identified the peer in time")
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// What the rust-libp2p peer reports.
#[derive(Debug)]
pub enum RustEvent {
    Identified {
        peer: PeerId,
        info: Box<identify::Info>,
    },
    IdentifyError {
        peer: PeerId,
        error: String,
    },
    Ping {
        peer: PeerId,
        result: Result<Duration, String>,
    },
    Connected {
        peer: PeerId,
        endpoint: libp2p::core::ConnectedPoint,
    },
    Closed {
        peer: PeerId,
    },
}

enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
}

/// The transport and security a [`RustPeer`] listens and dials with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RustKind {
    /// TCP + Noise + yamux.
    Noise,
    /// TCP + TLS (proposed first) or Noise, yamux.
    Tls,
    /// QUIC v1.
    Quic,
    /// WebSocket over TCP + Noise + yamux.
    Ws,
}

/// Has `swarm` listen on `addr` and waits (within `T`) for the address it got, which it
/// then holds as a confirmed external address: rust-libp2p's identify advertises only
/// those, and its relay and DHT server serve only with one.
pub async fn listen_external<B: NetworkBehaviour>(
    swarm: &mut libp2p::Swarm<B>,
    addr: &str,
) -> Multiaddr {
    swarm.listen_on(addr.parse().unwrap()).unwrap();
    let listen = tokio::time::timeout(T, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the rust-libp2p peer listens on {addr} within {T:?}"));
    swarm.add_external_address(listen.clone());
    listen
}

/// A rust-libp2p 0.57 node (one transport, see [`RustKind`]; identify with signed records,
/// ping, raw streams) running in its own task.
pub struct RustPeer {
    pub peer_id: PeerId,
    /// Listen address with `/p2p/`.
    pub addr: Multiaddr,
    pub events: mpsc::UnboundedReceiver<RustEvent>,
    pub control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustPeer {
    /// A peer on TCP that dials with Noise (and accepts Noise).
    pub async fn start() -> RustPeer {
        Self::start_on(RustKind::Noise).await
    }

    /// A peer on TCP that proposes `/tls/1.0.0` before `/noise` and accepts both.
    pub async fn start_with_tls(tls_first: bool) -> RustPeer {
        Self::start_on(if tls_first {
            RustKind::Tls
        } else {
            RustKind::Noise
        })
        .await
    }

    /// A peer listening (and dialing) on the given transport.
    pub async fn start_on(kind: RustKind) -> RustPeer {
        // The two transports have different types until the swarm is built.
        macro_rules! finish {
            ($builder:expr) => {
                $builder
                    .with_behaviour(|key| Behaviour {
                        identify: identify::Behaviour::new(
                            identify::Config::new_with_signed_peer_record("ipfs/0.1.0".into(), key)
                                .with_agent_version(RUST_AGENT.into()),
                        ),
                        ping: ping::Behaviour::new(
                            ping::Config::new().with_interval(Duration::from_secs(1)),
                        ),
                        stream: libp2p_stream::Behaviour::new(),
                    })
                    .unwrap()
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
                    .build()
            };
        }
        let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
        let mut swarm = match kind {
            RustKind::Tls => finish!(builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    (libp2p::tls::Config::new, noise::Config::new),
                    yamux::Config::default,
                )
                .unwrap()),
            RustKind::Noise => finish!(builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default
                )
                .unwrap()),
            RustKind::Quic => finish!(builder.with_quic()),
            RustKind::Ws => finish!(builder
                .with_websocket(noise::Config::new, yamux::Config::default)
                .await
                .unwrap()),
        };
        let listen_on = match kind {
            RustKind::Tls | RustKind::Noise => "/ip4/127.0.0.1/tcp/0",
            RustKind::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
            RustKind::Ws => "/ip4/127.0.0.1/tcp/0/ws",
        };
        let listen = listen_external(&mut swarm, listen_on).await;
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        // A test's record of the real peer's events, read by the test as it goes; a bound
        // would stall the peer's swarm behind a test that looks elsewhere.
        #[allow(clippy::disallowed_methods)]
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (commands, mut cmd_rx) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        Some(Command::Dial(addr, reply)) => {
                            let _ = reply.send(swarm.dial(addr).map_err(|e| e.to_string()));
                        }
                        None => break,
                    },
                    event = swarm.select_next_some() => {
                        let out = match event {
                            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                                Some(RustEvent::Identified { peer: peer_id, info: Box::new(info) })
                            }
                            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. })) => {
                                Some(RustEvent::IdentifyError { peer: peer_id, error: error.to_string() })
                            }
                            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                                Some(RustEvent::Ping { peer, result: result.map_err(|e| e.to_string()) })
                            }
                            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                                Some(RustEvent::Connected { peer: peer_id, endpoint })
                            }
                            SwarmEvent::ConnectionClosed { peer_id, .. } => Some(RustEvent::Closed { peer: peer_id }),
                            _ => None,
                        };
                        if let Some(e) = out {
                            let _ = ev_tx.send(e);
                        }
                    }
                }
            }
        });
        let addr = listen.with(libp2p::multiaddr::Protocol::P2p(peer_id));
        RustPeer {
            peer_id,
            addr,
            events,
            control,
            commands,
            task,
        }
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Dial(addr, tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    /// Waits for an event matching `pick`, failing on identify errors from `peer`.
    pub async fn wait<R>(&mut self, what: &str, mut pick: impl FnMut(RustEvent) -> Option<R>) -> R {
        let events = &mut self.events;
        tokio::time::timeout(T, async {
            loop {
                let e = events.recv().await.expect("rust peer task ended");
                if let RustEvent::IdentifyError { peer, error } = &e {
                    panic!("rust-libp2p identify of {peer} failed: {error}");
                }
                if let Some(r) = pick(e) {
                    return r;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("rust-libp2p peer: no {what} within {T:?}"))
    }

    pub async fn identified(&mut self, peer: PeerId) -> identify::Info {
        self.wait("identify", |e| match e {
            RustEvent::Identified { peer: p, info } if p == peer => Some(*info),
            _ => None,
        })
        .await
    }

    pub async fn pinged(&mut self, peer: PeerId) -> Duration {
        self.wait("ping", |e| match e {
            RustEvent::Ping { peer: p, result } if p == peer => {
                Some(result.expect("ping answered"))
            }
            _ => None,
        })
        .await
    }

    /// Opens a raw stream for `protocol` to a connected peer.
    pub async fn raw_stream(&mut self, peer: PeerId, protocol: &'static str) -> libp2p::Stream {
        tokio::time::timeout(
            T,
            self.control
                .open_stream(peer, StreamProtocol::new(protocol)),
        )
        .await
        .unwrap()
        .unwrap()
    }
}

/// A Pylon node with the DHT on (server or client mode), refresh off.
pub async fn pylon_kad(server: bool, bootstrap: Vec<Multiaddr>) -> Node {
    let mut config = kit::kad_config(server, bootstrap);
    // Every test peer shares 127.0.0.1 and many join at once: no per-source handshake
    // budget (it would treat them as one host).
    config.host.max_pending_incoming_per_ip = 0;
    config.host.max_pending_incoming_per_subnet = 0;
    kit::start_with(config).await
}

pub fn kad_of(node: &Node) -> &std::sync::Arc<pylon_node::protocols::kad::Kad> {
    node.kad.as_ref().unwrap()
}

/// Polls `check` until it holds, failing after [`T`] ([`wait::until`]: the DHT state
/// checked has no event).
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    wait::until(what, T, check).await
}

/// The `/pk/` record key of a peer.
pub fn pk_key(peer: &PeerId) -> Vec<u8> {
    let mut k = b"/pk/".to_vec();
    k.extend_from_slice(&peer.to_bytes());
    k
}

/// The SHA-256 multihash of `data` (a provider key every implementation accepts).
pub fn sha256_multihash(data: &[u8]) -> Vec<u8> {
    let mut mh = vec![0x12, 0x20];
    mh.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    mh
}
