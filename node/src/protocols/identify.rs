//! identify and identify push (`specs/identify/README.md`).
//!
//! On every new connection we ask the remote who it is; we answer the same question with
//! our listen addresses, protocols, the address we observe them at, our agent and a
//! signed peer record (RFC 0003 in an RFC 0002 envelope). When our addresses or protocols
//! change we push the news to connected peers that speak `/ipfs/id/push/1.0.0`.
//!
//! Received records are verified (envelope signature, key = record PeerId = connection
//! PeerId, `seq` newer than the one held) and stored in the peerstore; a record that fails
//! is dropped with a counted reason, and the rest of the message is still used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multiaddr::{Multiaddr, Protocol};
use prost::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::addresses;
use crate::limits::RateLimiter;
use futures::future::BoxFuture;

use crate::host::{self, Connection, Host, Stream};
use crate::identity::{decode_public_key, PeerId, PublicKey};
use crate::metrics::{PushSupportLabels, RecordLabels, TriggerLabels};
use crate::peerstore::{self, Peerstore, RecordOutcome};
use crate::record::{self, VerifiedPeerRecord};
use crate::{proto, varint};

pub const PROTOCOL: &str = "/ipfs/id/1.0.0";
pub const PUSH_PROTOCOL: &str = "/ipfs/id/push/1.0.0";
/// Largest identify message we read.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most listen addresses we take from one message.
pub const MAX_LISTEN_ADDRS: usize = 64;
/// Most protocols we take from one message.
pub const MAX_PROTOCOLS: usize = 256;
/// A peer may push this many times in a burst, then [`PUSHES_PER_SECOND`].
pub const PUSH_BURST: u32 = 5;
pub const PUSHES_PER_SECOND: u32 = 1;
/// Peers whose push budget is tracked at once (entries leave with the peer).
const MAX_PUSH_PEERS: usize = 65_536;
/// How long we wait after a change before pushing, so a burst of changes is one push.
const PUSH_DEBOUNCE: Duration = Duration::from_millis(100);
/// Peers pushed to at once.
const PUSH_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    pub protocol_version: String,
    pub agent_version: String,
    /// How long addresses learned through identify stay dialable.
    pub addr_ttl: Duration,
    /// Bound on one identify exchange.
    pub timeout: Duration,
    /// Which of our addresses we advertise, and to whom.
    pub addresses: addresses::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            protocol_version: "ipfs/0.1.0".into(),
            agent_version: concat!("pylon/", env!("CARGO_PKG_VERSION")).into(),
            addr_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
            addresses: addresses::Config::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stream: {0}")]
    Stream(#[from] host::StreamError),
    #[error("timed out")]
    Timeout,
    #[error("reading message: {0}")]
    Read(#[from] varint::FrameError),
    #[error("malformed message: {0}")]
    Malformed(#[from] proto::DecodeError),
    #[error("public key does not belong to the connected peer")]
    KeyMismatch,
    #[error("storing: {0}")]
    Store(#[from] peerstore::Error),
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Stream(_) => "stream",
            Error::Timeout => "timeout",
            Error::Read(varint::FrameError::Io(_)) => "io",
            Error::Read(varint::FrameError::Decode(_)) => "bad_frame",
            Error::Malformed(_) => "malformed",
            Error::KeyMismatch => "key_mismatch",
            Error::Store(_) => "store",
        }
    }
}

/// What a peer told us about itself, after checks.
#[derive(Debug, Clone)]
pub struct Info {
    pub peer: PeerId,
    pub public_key: Option<PublicKey>,
    pub listen_addrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
    pub observed_addr: Option<Multiaddr>,
    pub protocol_version: Option<String>,
    pub agent_version: Option<String>,
    /// The verified signed record, if one came and passed.
    pub record: Option<VerifiedPeerRecord>,
    /// Why a record that came was not accepted.
    pub record_error: Option<record::Error>,
    /// True for identify push.
    pub push: bool,
}

/// Published after each identify exchange.
#[derive(Debug, Clone)]
pub enum Event {
    Identified(Box<Info>),
    Failed { peer: PeerId, error: String },
}

struct OwnRecord {
    addrs: Vec<Multiaddr>,
    seq: u64,
    envelope: Vec<u8>,
}

/// Called with every identify outcome (see [`Identify::observe`]).
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// The identify service of a host.
pub struct Identify {
    /// Ourselves, for the tasks the host callbacks spawn.
    me: Weak<Identify>,
    host: Host,
    peerstore: Peerstore,
    config: Config,
    own: Mutex<Vec<OwnRecord>>,
    observed: Mutex<addresses::Observed>,
    /// What AutoNAT found about our addresses.
    verified: Mutex<addresses::Verified>,
    /// The addresses we announce instead of the rest (`addresses.announce`, or what
    /// [`Identify::set_announce`] put since).
    announce: Mutex<Vec<Multiaddr>>,
    events: broadcast::Sender<Event>,
    observers: RwLock<Vec<Observer>>,
    /// Push rate budget of each connected peer (entries leave with the peer).
    push_limiter: Mutex<RateLimiter<PeerId>>,
    push_scheduled: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Identify {
    /// Installs identify on `host` (both protocols, and an identify exchange on every new
    /// connection).
    pub fn install(host: &Host, peerstore: Peerstore, config: Config) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let announce = config.addresses.announce.clone();
        let this = Arc::new_cyclic(|me| Identify {
            me: me.clone(),
            host: host.clone(),
            peerstore,
            config,
            own: Mutex::new(Vec::new()),
            observed: Mutex::new(addresses::Observed::default()),
            verified: Mutex::new(addresses::Verified::default()),
            announce: Mutex::new(announce),
            push_limiter: Mutex::new(RateLimiter::new(
                PUSH_BURST,
                PUSHES_PER_SECOND,
                MAX_PUSH_PEERS,
            )),
            push_scheduled: AtomicBool::new(false),
            events,
            observers: RwLock::new(Vec::new()),
        });
        host.install(this.clone());
        this
    }

    /// Every identify outcome, for observers that may lag (tests, metrics): a lagging
    /// receiver loses the oldest. Code that must see every one uses [`Identify::observe`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Calls `f` with every identify outcome from now on, synchronously and in order
    /// (on identify's task: keep it quick, spawn for async work).
    pub fn observe(&self, f: Observer) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    fn emit(&self, event: Event) {
        let observers = self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for f in observers {
            f(&event);
        }
        let _ = self.events.send(event);
    }

    /// The addresses we advertise to a peer on the local network (or loopback).
    pub fn advertised_addrs(&self) -> Vec<Multiaddr> {
        self.advertised_addrs_to(false)
    }

    /// The addresses we advertise to a peer on the public internet.
    pub fn advertised_to_public(&self) -> Vec<Multiaddr> {
        self.advertised_addrs_to(true)
    }

    /// The addresses we advertise to a peer that reached us from `remote`.
    pub fn advertised_addrs_for(&self, remote: &Multiaddr) -> Vec<Multiaddr> {
        self.advertised_addrs_to(addresses::is_public(remote))
    }

    fn advertised_addrs_to(&self, public_peer: bool) -> Vec<Multiaddr> {
        let cfg = addresses::Config {
            announce: lock(&self.announce).clone(),
            ..self.config.addresses.clone()
        };
        let confirmed = lock(&self.observed).confirmed(cfg.observed_confirmations);
        let verified = lock(&self.verified).clone();
        addresses::advertise(
            &self.host.interface_listen_addrs(),
            &confirmed,
            &verified,
            &cfg,
            public_peer,
        )
    }

    /// Takes AutoNAT's verdicts on our addresses into what we advertise; when that changes
    /// what public peers hear, tells connected peers (identify push).
    pub fn set_verified(&self, verified: addresses::Verified) {
        self.change_advertised(|| *lock(&self.verified) = verified);
    }

    /// What AutoNAT found about our addresses, as last set.
    pub fn verified(&self) -> addresses::Verified {
        lock(&self.verified).clone()
    }

    /// Announces `addrs` instead of the rest from now on, as `addresses.announce` does
    /// from the start (empty: back to listen, observed and verified addresses); tells
    /// connected peers when that changes what they hear.
    pub fn set_announce(&self, addrs: Vec<Multiaddr>) {
        self.change_advertised(|| *lock(&self.announce) = addrs);
    }

    /// Makes `change` and pushes our identify to connected peers if what public peers
    /// hear of our addresses changed.
    fn change_advertised(&self, change: impl FnOnce()) {
        let before = self.advertised_addrs_to(true);
        change();
        if self.advertised_addrs_to(true) != before {
            self.count_trigger(host::LocalChange::ListenAddrs);
            if let Some(me) = self.me.upgrade() {
                self.host.spawn(async move { me.push_all().await });
            }
        }
    }

    /// Every address a peer said it observed us at, the best supported first (unconfirmed:
    /// hole punching candidates).
    pub fn observed_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.observed).reported()
    }

    /// Addresses peers observed us at that enough distinct peers agree on.
    pub fn confirmed_observed_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.observed).confirmed(self.config.addresses.observed_confirmations)
    }

    /// Our signed peer record for local peers (re-sealed when our addresses change).
    pub fn own_record(&self) -> Option<Vec<u8>> {
        self.own_record_with(self.advertised_addrs())
    }

    /// A signed record of `addrs`. The last two are cached (public peers may see a
    /// shorter list than local ones); a new list gets a higher `seq`.
    fn own_record_with(&self, addrs: Vec<Multiaddr>) -> Option<Vec<u8>> {
        let mut own = lock(&self.own);
        if let Some(o) = own.iter().find(|o| o.addrs == addrs) {
            return Some(o.envelope.clone());
        }
        // seq: wall-clock milliseconds, forced upward so it always increases.
        let seq = now_ms().max(own.iter().map(|o| o.seq + 1).max().unwrap_or(0));
        match record::seal_peer_record(self.host.keypair(), seq, &addrs) {
            Ok(envelope) => {
                if own.len() >= 2 {
                    own.remove(0);
                }
                own.push(OwnRecord {
                    addrs,
                    seq,
                    envelope: envelope.clone(),
                });
                Some(envelope)
            }
            Err(e) => {
                tracing::warn!("cannot sign our peer record: {e}");
                None
            }
        }
    }

    fn our_message(&self, conn: &Connection) -> proto::Identify {
        let addrs = self.advertised_addrs_for(conn.remote_addr());
        proto::Identify {
            public_key: Some(self.host.keypair().public().encode_protobuf()),
            listen_addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            protocols: self.host.protocols(),
            observed_addr: Some(conn.remote_addr().to_vec()),
            protocol_version: Some(self.config.protocol_version.clone()),
            agent_version: Some(self.config.agent_version.clone()),
            signed_peer_record: self.own_record_with(addrs),
        }
    }

    async fn respond(&self, mut stream: Stream) {
        let ours = self.our_message(stream.connection());
        let msg = ours.encode_to_vec();
        let send = async {
            varint::write_frame(&mut stream, &msg).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(self.config.timeout, send).await {
            Err(_) => self.host.metrics().protocol_error("identify", "timeout"),
            Ok(Ok(())) => self.host.metrics().identify.sent(
                false,
                ours.protocols.len(),
                ours.listen_addrs.len(),
            ),
            Ok(Err(_)) => {}
        }
    }

    /// Asks the peer on `conn` to identify itself, checks and stores the answer.
    pub async fn identify(&self, conn: &Connection) -> Result<Info, Error> {
        let result = tokio::time::timeout(self.config.timeout, async {
            let mut stream = conn.open_stream(&[PROTOCOL]).await?;
            // Read one message; rust-libp2p may keep the stream open after it.
            let bytes = varint::read_frame(&mut stream, MAX_MESSAGE_LEN).await?;
            let _ = stream.shutdown().await;
            self.process(conn, &bytes, false).await
        })
        .await
        .unwrap_or(Err(Error::Timeout));
        self.publish(conn.peer(), &result);
        result
    }

    async fn receive_push(&self, mut stream: Stream) {
        let conn = stream.connection().clone();
        {
            // Each push costs a peerstore write: one per peer per interval is plenty.
            // A token bucket per peer: bursts of PUSH_BURST, then PUSHES_PER_SECOND.
            let now = tokio::time::Instant::now().into_std();
            if !lock(&self.push_limiter).allow(&conn.peer(), now) {
                self.host.metrics().protocol_error("identify", "push_rate");
                return; // dropping the stream resets it
            }
        }
        let result = tokio::time::timeout(self.config.timeout, async {
            let bytes = varint::read_frame(&mut stream, MAX_MESSAGE_LEN).await?;
            self.process(&conn, &bytes, true).await
        })
        .await
        .unwrap_or(Err(Error::Timeout));
        self.publish(conn.peer(), &result);
    }

    fn publish(&self, peer: PeerId, result: &Result<Info, Error>) {
        let event = match result {
            Ok(info) => {
                self.host.metrics().identify.received(
                    info.push,
                    info.protocols.len(),
                    info.listen_addrs.len(),
                );
                Event::Identified(Box::new(info.clone()))
            }
            Err(e) => {
                self.host.metrics().protocol_error("identify", e.reason());
                tracing::debug!(%peer, "identify failed: {e}");
                Event::Failed {
                    peer,
                    error: e.to_string(),
                }
            }
        };
        self.emit(event);
    }

    /// Pushes our current identify message to every connected peer that supports push.
    pub async fn push_all(&self) {
        use futures::StreamExt;
        // One connection per peer that announced push support, pushed to concurrently so a
        // stalling peer does not hold up the others.
        let mut targets: HashMap<PeerId, Connection> = HashMap::new();
        for conn in self.host.connections() {
            let supports = self
                .peerstore
                .get(&conn.peer())
                .is_some_and(|p| p.protocols.iter().any(|proto| proto == PUSH_PROTOCOL));
            if supports {
                targets.entry(conn.peer()).or_insert(conn);
            }
        }
        futures::stream::iter(targets.into_values())
            .for_each_concurrent(PUSH_CONCURRENCY, |conn| async move {
                let ours = self.our_message(&conn);
                let msg = ours.encode_to_vec();
                let push = async {
                    let mut s = conn
                        .open_stream(&[PUSH_PROTOCOL])
                        .await
                        .map_err(std::io::Error::other)?;
                    varint::write_frame(&mut s, &msg).await?;
                    s.shutdown().await
                };
                match tokio::time::timeout(self.config.timeout, push)
                    .await
                    .map_err(std::io::Error::other)
                {
                    Ok(Err(e)) | Err(e) => {
                        tracing::debug!(peer = %conn.peer(), "identify push failed: {e}");
                    }
                    Ok(Ok(())) => self.host.metrics().identify.sent(
                        true,
                        ours.protocols.len(),
                        ours.listen_addrs.len(),
                    ),
                }
            })
            .await;
    }

    async fn process(&self, conn: &Connection, bytes: &[u8], push: bool) -> Result<Info, Error> {
        let msg: proto::Identify = proto::decode(bytes, MAX_MESSAGE_LEN)?;
        let peer = conn.peer();
        let public_key = match &msg.public_key {
            Some(k) => {
                let key = decode_public_key(k).map_err(|_| Error::KeyMismatch)?;
                if key.to_peer_id() != peer {
                    return Err(Error::KeyMismatch);
                }
                Some(key)
            }
            None => None,
        };
        let listen_addrs: Vec<Multiaddr> = msg
            .listen_addrs
            .iter()
            .take(MAX_LISTEN_ADDRS)
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .map(|a| strip_own_p2p(a, &peer))
            .collect();
        let observed_addr = msg
            .observed_addr
            .as_ref()
            .and_then(|a| Multiaddr::try_from(a.clone()).ok());
        if let Some(observed) = &observed_addr {
            lock(&self.observed).record(observed, peer);
        }
        let protocols: Vec<String> = msg.protocols.iter().take(MAX_PROTOCOLS).cloned().collect();

        let (record, record_error) = match msg.signed_peer_record.as_deref() {
            None => (None, None),
            Some(env) => match record::open_peer_record(env).and_then(|r| {
                let outcome = self.peerstore.check_record(&peer, &r)?;
                Ok((r, outcome))
            }) {
                Ok((r, outcome)) => {
                    let label = match outcome {
                        RecordOutcome::Accepted => "accepted",
                        RecordOutcome::Unchanged => "unchanged",
                    };
                    self.count_record(label, r.format().as_str());
                    (Some(r), None)
                }
                Err(e) => {
                    self.count_record("rejected", e.reason());
                    tracing::debug!(%peer, "signed peer record rejected: {e}");
                    (None, Some(e))
                }
            },
        };
        let update = peerstore::Update {
            addrs: listen_addrs.clone(),
            addr_ttl_ms: u64::try_from(self.config.addr_ttl.as_millis()).unwrap_or(u64::MAX),
            // A push may leave fields out; only replace what was sent.
            protocols: (!push || !msg.protocols.is_empty()).then(|| protocols.clone()),
            agent_version: msg.agent_version.clone(),
            protocol_version: msg.protocol_version.clone(),
            public_key: public_key
                .clone()
                .or_else(|| Some(conn.remote_key().clone())),
            record: record.clone(),
        };
        self.peerstore.apply(peer, update, now_ms());
        Ok(Info {
            peer,
            public_key,
            listen_addrs,
            protocols,
            observed_addr,
            protocol_version: msg.protocol_version,
            agent_version: msg.agent_version,
            record,
            record_error,
            push,
        })
    }

    /// Counts a change that makes us push (`libp2p_identify_identify_pushes_triggered_total`).
    fn count_trigger(&self, change: host::LocalChange) {
        let trigger = match change {
            host::LocalChange::Protocols => "protocols_updated",
            host::LocalChange::ListenAddrs => "addresses_updated",
        };
        self.host
            .metrics()
            .identify
            .pushes_triggered
            .get_or_create(&TriggerLabels { trigger })
            .inc();
    }

    fn count_record(&self, outcome: &'static str, kind: &'static str) {
        self.host
            .metrics()
            .signed_records
            .get_or_create(&RecordLabels { outcome, kind })
            .inc();
    }
}

/// Listen addresses sometimes carry the peer's own `/p2p/` suffix; store them without it.
fn strip_own_p2p(addr: Multiaddr, peer: &PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) if p == *peer => {
            let mut a = addr;
            a.pop();
            a
        }
        _ => addr,
    }
}

impl host::Extension for Identify {
    fn protocol_ids(&self) -> Vec<String> {
        vec![PROTOCOL.to_string(), PUSH_PROTOCOL.to_string()]
    }

    fn handle_stream(self: Arc<Self>, stream: Stream) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if stream.protocol() == PUSH_PROTOCOL {
                self.receive_push(stream).await
            } else {
                self.respond(stream).await
            }
        })
    }

    fn on_connection_established(&self, conn: &Connection) {
        let (Some(me), conn) = (self.me.upgrade(), conn.clone()) else {
            return;
        };
        self.host.spawn(async move {
            let support = match me.identify(&conn).await {
                Ok(info) if info.protocols.iter().any(|p| p == PUSH_PROTOCOL) => "supported",
                Ok(_) => "not supported",
                Err(_) => "unknown",
            };
            me.host
                .metrics()
                .identify
                .push_support
                .get_or_create(&PushSupportLabels { support })
                .inc();
        });
    }

    fn on_connection_closed(&self, conn: &Connection, _reason: &str) {
        if self.host.connection(&conn.peer()).is_none() {
            lock(&self.push_limiter).forget(&conn.peer());
        }
    }

    fn on_local_change(&self, change: host::LocalChange) {
        self.count_trigger(change);
        // Changes come in bursts (a node registering its protocols): push once, shortly
        // after the burst.
        if !self.push_scheduled.swap(true, Ordering::AcqRel) {
            let Some(me) = self.me.upgrade() else {
                return;
            };
            self.host.spawn(async move {
                tokio::time::sleep(PUSH_DEBOUNCE).await;
                me.push_scheduled.store(false, Ordering::Release);
                me.push_all().await
            });
        }
    }
}
