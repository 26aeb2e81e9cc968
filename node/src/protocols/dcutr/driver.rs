//! DCUtR on the host: runs the [`super::core`] exchange on every relayed connection.
//!
//! When a relayed connection comes *in* (we hold the reservation: the spec's B), we start
//! the exchange on a `/libp2p/dcutr` stream over it; when the remote starts it (we dialed
//! through the relay: A), we answer. TCP addresses are punched by a simultaneous open
//! from our listen port — A takes the dialer's part of the upgrade, B the listener's
//! (`Host::dial_as_listener`) — and QUIC addresses are dialed from both sides. Once a
//! direct connection exists, new streams go over it (`Host::connection` prefers direct
//! connections) and the initiator closes the relayed one after a grace period.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use multiaddr::{Multiaddr, Protocol};

use super::core::{self, Action, Initiator, Outcome, Responder, MESSAGE_TIMEOUT};
use super::proto::{HolePunch, CONNECT, MAX_MESSAGE, SYNC};
use super::PROTOCOL;
use crate::host::{Connection, Direction, Extension, Host, Stream};
use crate::identity::PeerId;
use crate::metrics::{HolepunchAddrLabels, HolepunchLabels};
use crate::protocols::identify::Identify;
use crate::protocols::relay::client::LABEL as RELAYED;
use crate::varint;

/// How long the relayed connection stays open once a direct one exists.
const RELAY_GRACE: Duration = Duration::from_secs(10);

/// Settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Hole punch relayed connections (and answer peers that do).
    pub enabled: bool,
    /// Offer and dial loopback addresses (a lab on one machine; never in production).
    pub allow_loopback: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            allow_loopback: false,
        }
    }
}

/// The protocol on one host.
pub struct Dcutr {
    host: Host,
    identify: Arc<Identify>,
    config: Config,
    me: Weak<Dcutr>,
    /// Peers with an exchange running (one at a time per peer).
    running: Mutex<HashSet<PeerId>>,
    /// Peers whose exchange we are answering (one at a time per peer).
    answering: Mutex<HashSet<PeerId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn relayed(conn: &Connection) -> bool {
    conn.transport() == RELAYED
}

impl Dcutr {
    /// Installs the protocol on `host`; `identify` tells us where others see us.
    pub fn install(host: &Host, identify: Arc<Identify>, config: Config) -> Arc<Dcutr> {
        let d = Arc::new_cyclic(|me| Dcutr {
            host: host.clone(),
            identify,
            config,
            me: me.clone(),
            running: Mutex::new(HashSet::new()),
            answering: Mutex::new(HashSet::new()),
        });
        if d.config.enabled {
            host.install(d.clone());
        }
        d
    }

    /// Our candidate addresses now.
    fn ours(&self) -> Vec<Multiaddr> {
        core::candidates(
            &self.identify.observed_addrs(),
            &self.host.interface_listen_addrs(),
            self.config.allow_loopback,
        )
    }

    fn count(&self, side: &'static str, outcome: &'static str) {
        self.host
            .metrics()
            .holepunch_outcomes
            .get_or_create(&HolepunchLabels { side, outcome })
            .inc();
    }

    /// Dials every address at once, `as_listener` for TCP on the initiator's side; the
    /// first connection wins.
    async fn punch(
        &self,
        side: &'static str,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Option<Connection> {
        let mut dials = futures::stream::FuturesUnordered::new();
        for addr in addrs {
            let tcp = addr.iter().any(|p| matches!(p, Protocol::Tcp(_)));
            let target = addr.with(Protocol::P2p(peer));
            let host = self.host.clone();
            dials.push(async move {
                let result = if tcp && side == "initiator" {
                    host.dial_as_listener(&target).await
                } else {
                    host.dial(&target).await
                };
                (tcp, result)
            });
        }
        while let Some((tcp, result)) = dials.next().await {
            if let Err(e) = &result {
                tracing::debug!(%peer, side, "hole punch dial failed: {e}");
            }
            let outcome = if result.is_ok() { "success" } else { "failed" };
            self.host
                .metrics()
                .holepunch_addresses
                .get_or_create(&HolepunchAddrLabels {
                    side,
                    transport: if tcp { "tcp" } else { "quic-v1" },
                    outcome,
                })
                .inc();
            if let Ok(c) = result {
                return Some(c);
            }
        }
        // Our dials failed, but the remote's may have reached us: in a simultaneous open
        // one side's connect often lands on the other's listener instead.
        self.direct(&peer)
    }

    /// A direct (not relayed) connection to `peer`, if one exists.
    fn direct(&self, peer: &PeerId) -> Option<Connection> {
        self.host.connection(peer).filter(|c| !relayed(c))
    }

    /// The spec's B: drives the exchange over `relayed`, up to three attempts.
    async fn initiate(self: Arc<Self>, relayed: Connection) {
        let peer = relayed.peer();
        let mut exchange = Initiator::new(self.ours(), self.config.allow_loopback);
        let outcome = loop {
            let Some(action) = exchange.poll(Instant::now()) else {
                match exchange.deadline() {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => break Outcome::Failed,
                }
                continue;
            };
            match action {
                Action::SendConnect(ours) => match self.connect_round(&relayed, &ours).await {
                    Some(theirs) => {
                        if let Some(Action::SendSync) =
                            exchange.on_connect(Instant::now(), theirs.addrs.clone())
                        {
                            let mut s = theirs.stream;
                            if write(&mut s, &HolePunch::sync()).await.is_err() {
                                if let Some(Action::Done(o)) = exchange.on_dial_failed() {
                                    break o;
                                }
                            }
                        }
                    }
                    None => {
                        if relayed.is_closed() {
                            break Outcome::Failed;
                        }
                        if let Some(Action::Done(o)) = exchange.on_dial_failed() {
                            break o;
                        }
                    }
                },
                Action::Dial(theirs) => match self.punch("initiator", peer, theirs).await {
                    Some(_) => {
                        exchange.on_connected();
                        break Outcome::Direct;
                    }
                    None => {
                        if let Some(Action::Done(o)) = exchange.on_dial_failed() {
                            break o;
                        }
                    }
                },
                Action::Done(o) => break o,
                Action::SendSync => {}
            }
        };
        self.count(
            "initiator",
            match outcome {
                Outcome::Direct => "success",
                Outcome::NoAddresses => "no_suitable_address",
                Outcome::Failed => "failed",
            },
        );
        if outcome == Outcome::Direct {
            tracing::debug!(%peer, "hole punched: direct connection");
            let shutdown = self.host.shutdown_token();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(RELAY_GRACE) => relayed.close(),
            }
        }
        lock(&self.running).remove(&peer);
    }

    /// One `CONNECT` round on a fresh stream: their answer and the stream (for `SYNC`).
    async fn connect_round(&self, relayed: &Connection, ours: &[Multiaddr]) -> Option<Answer> {
        let round = async {
            let mut s = relayed.open_stream(&[PROTOCOL]).await.ok()?;
            write(&mut s, &HolePunch::connect(ours)).await.ok()?;
            let answer = read(&mut s).await?;
            (answer.kind() == Some(CONNECT)).then(|| Answer {
                addrs: answer.addrs(),
                stream: s,
            })
        };
        tokio::time::timeout(MESSAGE_TIMEOUT, round)
            .await
            .ok()
            .flatten()
    }

    /// The spec's A: answers `CONNECT`s and dials on `SYNC`.
    async fn respond(self: Arc<Self>, mut s: Stream) {
        let peer = s.peer();
        let mut exchange = Responder::new(self.ours(), self.config.allow_loopback);
        while let Ok(Some(msg)) = tokio::time::timeout(MESSAGE_TIMEOUT, read(&mut s)).await {
            match msg.kind() {
                Some(CONNECT) => {
                    if let Action::SendConnect(ours) = exchange.on_connect(msg.addrs()) {
                        if write(&mut s, &HolePunch::connect(&ours)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(SYNC) => {
                    let Some(Action::Dial(theirs)) = exchange.on_sync() else {
                        self.count("receiver", "no_suitable_address");
                        return;
                    };
                    let outcome = match self.punch("receiver", peer, theirs).await {
                        Some(_) => "success",
                        None => "failed",
                    };
                    self.count("receiver", outcome);
                    return;
                }
                _ => {
                    self.host
                        .metrics()
                        .protocol_error("dcutr", "unexpected_message");
                    return;
                }
            }
        }
    }
}

struct Answer {
    addrs: Vec<Multiaddr>,
    stream: Stream,
}

async fn write(s: &mut Stream, msg: &HolePunch) -> std::io::Result<()> {
    use prost::Message;
    use tokio::io::AsyncWriteExt;
    varint::write_frame(s, &msg.encode_to_vec()).await?;
    s.flush().await
}

async fn read(s: &mut Stream) -> Option<HolePunch> {
    let frame = varint::read_frame(s, MAX_MESSAGE).await.ok()?;
    crate::proto::decode(&frame, MAX_MESSAGE).ok()
}

impl Extension for Dcutr {
    fn protocol_ids(&self) -> Vec<String> {
        vec![PROTOCOL.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        // The exchange belongs on a relayed connection, one at a time per peer: anything
        // else would let a peer make us dial addresses of its choosing at will.
        let peer = stream.peer();
        if !relayed(stream.connection()) || !lock(&self.answering).insert(peer) {
            self.host
                .metrics()
                .protocol_error("dcutr", "not_relayed_or_busy");
            return Box::pin(async move { drop(stream) });
        }
        Box::pin(async move {
            let me = self.clone();
            self.respond(stream).await;
            lock(&me.answering).remove(&peer);
        })
    }

    fn on_connection_established(&self, conn: &Connection) {
        if !relayed(conn) || conn.direction() != Direction::Inbound {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        if !lock(&self.running).insert(conn.peer()) {
            return;
        }
        let conn = conn.clone();
        self.host.spawn(me.initiate(conn));
    }
}
