//! Kad's answers (`specs/kad-dht/README.md#rpc-messages`) as a function of the routing
//! table, the record store, what we know of other peers, the request and the time — no
//! streams, no clock, no host.
//!
//! [`Server::answer`] reads; it never writes. A PUT_VALUE that passes every check comes
//! back as [`Answer::Store`] holding an [`Accepted`] record (only this module can build
//! one), and an ADD_PROVIDER as [`Answer::Provide`]: the driver writes to the store and
//! then replies, so what we acknowledge is durable. Everything else is a ready
//! [`Answer::Reply`], or a [`Refusal`] whose label the driver counts before resetting the
//! stream.
//!
//! What it is not: framing, request-rate and stream limits (the driver's, before a
//! request gets here), or deciding who enters the routing table.

use multiaddr::Multiaddr;

use super::key::Key;
use super::proto::{self, MessageType};
use super::table::RoutingTable;
use super::{parse_addrs, store, validator, Config, KadStore, MAX_PEER_ADDRS, MAX_RESPONSE_PEERS};
use crate::addresses;
use crate::identity::PeerId;

/// What the server knows of peers beyond its routing table (the peerstore, the host's
/// connections, identify's view of our own addresses), as the answers need it.
pub trait Peers {
    /// The addresses of `peer`'s verified signed peer record, when we hold one.
    fn signed_addrs(&self, peer: &PeerId) -> Option<Vec<Multiaddr>>;
    /// Addresses of `peer` learned otherwise (identify, answers) and still fresh.
    fn live_addrs(&self, peer: &PeerId, now_ms: u64) -> Vec<Multiaddr>;
    /// `peer`'s signed envelope (RFC 0002) holding its peer record, byte for byte as it
    /// signed it, when we hold a verified one.
    fn signed_envelope(&self, peer: &PeerId) -> Option<Vec<u8>>;
    /// Do we hold a connection to `peer`?
    fn is_connected(&self, peer: &PeerId) -> bool;
    /// Our own addresses as we announce them to a requester at `remote`.
    fn own_addrs_for(&self, remote: &Multiaddr) -> Vec<Multiaddr>;
    /// Our own signed peer record envelope.
    fn own_envelope(&self) -> Option<Vec<u8>>;
}

/// Who asked.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub peer: PeerId,
    /// The remote address of the connection the request came on.
    pub remote: &'a Multiaddr,
    /// It reached us from a public address: it gets no private or loopback addresses
    /// (unless [`Config::private_addrs_to_public`]).
    pub public: bool,
}

impl<'a> Requester<'a> {
    pub fn new(peer: PeerId, remote: &'a Multiaddr) -> Self {
        Requester {
            peer,
            remote,
            public: addresses::is_public(remote),
        }
    }
}

/// A PUT_VALUE whose record passed the namespace's validator and is not older than the
/// one held. Only [`Server::answer`] builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    record: proto::Record,
    /// The request without its record (put back by [`Accepted::into_echo`]).
    rest: proto::Message,
}

impl Accepted {
    pub fn key(&self) -> &[u8] {
        &self.record.key
    }

    pub fn value(&self) -> &[u8] {
        &self.record.value
    }

    /// The reply once the record is stored: the request, echoed.
    //= specs/kad-dht/README.md#rpc-messages
    //# The target node validates `record`, and if it is valid, it stores it in
    //# the datastore and as a response echoes the request.
    pub fn into_echo(self) -> proto::Message {
        let mut echo = self.rest;
        echo.record = Some(self.record);
        echo
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Send this reply.
    Reply(proto::Message),
    /// Store the record durably, then reply with [`Accepted::into_echo`].
    Store(Accepted),
    /// ADD_PROVIDER: record the requester as a provider of `key` at `addrs` when it listed
    /// itself (`None`: it did not); `foreign` entries named other peers and are not kept.
    /// No reply, as in the spec.
    Provide {
        key: Vec<u8>,
        addrs: Option<Vec<Multiaddr>>,
        foreign: usize,
    },
}

/// Why a request is refused (the stream is reset); [`Refusal::label`] is the metric's
/// `reason`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("unknown message type")]
    UnknownType,
    #[error("key empty or too long")]
    BadKey,
    #[error("PUT_VALUE without a record")]
    NoRecord,
    #[error("the record's key is not the message's")]
    KeyMismatch,
    #[error("invalid record: {0}")]
    Invalid(#[from] validator::Error),
    #[error("older than the record held")]
    Outdated,
    #[error("store: {0}")]
    Store(#[from] store::Error),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownType => "unknown_type",
            Refusal::BadKey => "bad_key",
            Refusal::NoRecord => "no_record",
            Refusal::KeyMismatch => "key_mismatch",
            Refusal::Invalid(e) => e.label(),
            Refusal::Outdated => "outdated",
            Refusal::Store(e) => e.label(),
        }
    }

    /// Did the requester break a rule (rather than our database failing)?
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, Refusal::Store(store::Error::Storage(_)))
    }
}

/// The server's view: borrowed parts, so a driver can hold its locks only while
/// answering, and a test or a simulator can build one from plain values.
pub struct Server<'a, P: ?Sized> {
    pub config: &'a Config,
    pub table: &'a RoutingTable,
    pub store: &'a KadStore,
    pub peers: &'a P,
}

impl<P: Peers + ?Sized> Server<'_, P> {
    /// Answers one request from `from` at `now_ms` (Unix milliseconds).
    pub fn answer(
        &self,
        from: &Requester<'_>,
        request: proto::Message,
        now_ms: u64,
    ) -> Result<Answer, Refusal> {
        let kind = request.kind().ok_or(Refusal::UnknownType)?;
        if kind != MessageType::Ping
            && (request.key.is_empty() || request.key.len() > self.config.store.max_key_len)
        {
            return Err(Refusal::BadKey);
        }
        match kind {
            MessageType::FindNode => {
                let mut reply = proto::Message::new(kind, request.key);
                reply.closer_peers = self.closer_peers(from, &reply.key, true, now_ms);
                Ok(Answer::Reply(reply))
            }
            MessageType::GetValue => {
                let mut reply = proto::Message::new(kind, request.key);
                if let Some(r) = self.store.get(&reply.key, now_ms)? {
                    reply.record = Some(proto::Record {
                        key: r.key,
                        value: r.value,
                        time_received: validator::format_rfc3339(r.received_ms),
                    });
                }
                if let Some(envelope) = self.peer_record_for(&reply.key, reply.record.as_ref()) {
                    reply.record = Some(proto::Record {
                        key: reply.key.clone(),
                        value: envelope,
                        time_received: validator::format_rfc3339(now_ms),
                    });
                }
                reply.closer_peers = self.closer_peers(from, &reply.key, false, now_ms);
                Ok(Answer::Reply(reply))
            }
            MessageType::PutValue => {
                let mut rest = request;
                let record = rest.record.take().ok_or(Refusal::NoRecord)?;
                if record.key != rest.key {
                    return Err(Refusal::KeyMismatch);
                }
                let validators = &self.config.validators;
                validators.validate(&record.key, &record.value, now_ms)?;
                if let Some(held) = self.store.get(&record.key, now_ms)? {
                    if held.value != record.value
                        && validators.select(&record.key, &[&held.value, &record.value]) == 0
                    {
                        return Err(Refusal::Outdated);
                    }
                }
                Ok(Answer::Store(Accepted { record, rest }))
            }
            MessageType::AddProvider => {
                //= specs/kad-dht/README.md#rpc-messages
                //# all `providerPeers` that match the RPC sender's PeerID are recorded as
                //# providers.
                // The sender's first entry is its record (one store write, however many
                // times it repeats itself); entries for other peers are counted, not kept.
                let mut own = None;
                let mut foreign = 0;
                for p in request.provider_peers.iter().take(MAX_RESPONSE_PEERS) {
                    if PeerId::from_bytes(&p.id).ok() != Some(from.peer) {
                        foreign += 1;
                    } else if own.is_none() {
                        own = Some(parse_addrs(&p.addrs));
                    }
                }
                Ok(Answer::Provide {
                    key: request.key,
                    addrs: own,
                    foreign,
                })
            }
            MessageType::GetProviders => {
                let mut reply = proto::Message::new(kind, request.key);
                let providers = self.store.providers(&reply.key, now_ms)?;
                reply.provider_peers = providers
                    .iter()
                    .map(|p| {
                        self.peer_entry(&p.peer, &p.addrs, from.public, now_ms)
                            .unwrap_or_else(|| proto::Peer {
                                id: p.peer.to_bytes(),
                                ..Default::default()
                            })
                    })
                    .collect();
                reply.closer_peers = self.closer_peers(from, &reply.key, false, now_ms);
                Ok(Answer::Reply(reply))
            }
            MessageType::Ping => Ok(Answer::Reply(request)),
        }
    }

    /// The k peers of our table closest to `key` (seen within
    /// [`Config::serve_verified_within`] when set), never the requester. For FIND_NODE of
    /// a specific peer (`find_node`) we also add that peer when we know where it is —
    /// ourselves included — as go-libp2p does (specs issue 609: rust-libp2p leaves itself
    /// out).
    pub fn closer_peers(
        &self,
        from: &Requester<'_>,
        key: &[u8],
        find_node: bool,
        now_ms: u64,
    ) -> Vec<proto::Peer> {
        let k = self.config.table.k;
        let target = Key::new(key);
        let seen_since = self
            .config
            .serve_verified_within
            .map_or(0, |w| now_ms.saturating_sub(w.as_millis() as u64));
        let closest = self.table.closest_where(&target, k, |e| {
            e.peer != from.peer && e.last_seen_ms >= seen_since
        });
        let mut out: Vec<proto::Peer> = closest
            .iter()
            .filter_map(|e| self.peer_entry(&e.peer, &e.addrs, from.public, now_ms))
            .collect();
        if find_node {
            if let Ok(wanted) = PeerId::from_bytes(key) {
                let listed = closest.iter().any(|e| e.peer == wanted);
                if wanted != from.peer && !listed {
                    let entry = if wanted == *self.table.local() {
                        let addrs = self.peers.own_addrs_for(from.remote);
                        (!addrs.is_empty()).then(|| proto::Peer {
                            id: wanted.to_bytes(),
                            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
                            connection: proto::ConnectionType::Connected as i32,
                        })
                    } else {
                        self.peer_entry(&wanted, &[], from.public, now_ms)
                    };
                    out.extend(entry);
                }
            }
        }
        out
    }

    /// A peer as we describe it to others: addresses from its verified signed record
    /// when we hold one, else `known`, else what else we learned; private ones only to
    /// private requesters. `None` when no address is left.
    fn peer_entry(
        &self,
        peer: &PeerId,
        known: &[Multiaddr],
        public_requester: bool,
        now_ms: u64,
    ) -> Option<proto::Peer> {
        let mut addrs = match self.peers.signed_addrs(peer) {
            Some(signed) => signed,
            None if !known.is_empty() => known.to_vec(),
            None => self.peers.live_addrs(peer, now_ms),
        };
        if public_requester && !self.config.private_addrs_to_public {
            addrs.retain(addresses::is_public);
        }
        addrs.truncate(MAX_PEER_ADDRS);
        if addrs.is_empty() {
            return None;
        }
        let connection = if self.peers.is_connected(peer) {
            proto::ConnectionType::Connected
        } else {
            proto::ConnectionType::NotConnected
        };
        Some(proto::Peer {
            id: peer.to_bytes(),
            addrs: addrs.iter().map(|a| a.to_vec()).collect(),
            connection: connection as i32,
        })
    }

    /// For a `/peer-record/<id>` key: the peer's verified signed record (or ours), when it
    /// is newer than the stored value.
    fn peer_record_for(&self, key: &[u8], stored: Option<&proto::Record>) -> Option<Vec<u8>> {
        let (ns, id) = validator::split_key(key)?;
        if ns != validator::PEER_RECORD_NAMESPACE.as_bytes() {
            return None;
        }
        let peer = PeerId::from_bytes(id).ok()?;
        let envelope = if peer == *self.table.local() {
            self.peers.own_envelope()?
        } else {
            self.peers.signed_envelope(&peer)?
        };
        match stored {
            Some(s)
                if self
                    .config
                    .validators
                    .select(key, &[s.value.as_slice(), envelope.as_slice()])
                    == 0 =>
            {
                None
            }
            _ => Some(envelope),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::identity::Keypair;
    use crate::peerstore::MemoryStore;
    use crate::protocols::kad::table;

    const NOW: u64 = 1_700_000_000_000;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// What the server knows beyond its table, as plain maps.
    #[derive(Default)]
    struct Known {
        signed: HashMap<PeerId, Vec<Multiaddr>>,
        live: HashMap<PeerId, Vec<Multiaddr>>,
        envelopes: HashMap<PeerId, Vec<u8>>,
        connected: HashSet<PeerId>,
        own_addrs: Vec<Multiaddr>,
        own_envelope: Option<Vec<u8>>,
    }

    impl Peers for Known {
        fn signed_addrs(&self, peer: &PeerId) -> Option<Vec<Multiaddr>> {
            self.signed.get(peer).cloned()
        }
        fn live_addrs(&self, peer: &PeerId, _now_ms: u64) -> Vec<Multiaddr> {
            self.live.get(peer).cloned().unwrap_or_default()
        }
        fn signed_envelope(&self, peer: &PeerId) -> Option<Vec<u8>> {
            self.envelopes.get(peer).cloned()
        }
        fn is_connected(&self, peer: &PeerId) -> bool {
            self.connected.contains(peer)
        }
        fn own_addrs_for(&self, remote: &Multiaddr) -> Vec<Multiaddr> {
            let public = addresses::is_public(remote);
            self.own_addrs
                .iter()
                .filter(|a| !public || addresses::is_public(a))
                .cloned()
                .collect()
        }
        fn own_envelope(&self) -> Option<Vec<u8>> {
            self.own_envelope.clone()
        }
    }

    struct Fixture {
        local: Keypair,
        config: Config,
        table: RoutingTable,
        store: KadStore,
        known: Known,
    }

    impl Fixture {
        fn new() -> Self {
            Self::with(Config::default())
        }

        fn with(config: Config) -> Self {
            let local = Keypair::generate_ed25519();
            let mem = || -> Arc<dyn crate::peerstore::Store> { Arc::new(MemoryStore::default()) };
            Fixture {
                table: RoutingTable::new(local.public().to_peer_id(), config.table.clone()),
                store: KadStore::open(mem(), mem(), mem(), config.store.clone(), NOW).unwrap(),
                local,
                config,
                known: Known::default(),
            }
        }

        fn server(&self) -> Server<'_, Known> {
            Server {
                config: &self.config,
                table: &self.table,
                store: &self.store,
                peers: &self.known,
            }
        }

        fn ask(&self, from: PeerId, remote: &str, msg: proto::Message) -> Result<Answer, Refusal> {
            let remote = ma(remote);
            self.server()
                .answer(&Requester::new(from, &remote), msg, NOW)
        }

        fn reply(&self, from: PeerId, remote: &str, msg: proto::Message) -> proto::Message {
            match self.ask(from, remote, msg) {
                Ok(Answer::Reply(m)) => m,
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        fn local(&self) -> PeerId {
            self.local.public().to_peer_id()
        }
    }

    fn listed(reply: &[proto::Peer]) -> HashMap<PeerId, Vec<Multiaddr>> {
        reply
            .iter()
            .map(|p| (PeerId::from_bytes(&p.id).unwrap(), parse_addrs(&p.addrs)))
            .collect()
    }

    fn msg(kind: MessageType, key: &[u8]) -> proto::Message {
        proto::Message::new(kind, key.to_vec())
    }

    #[test]
    fn find_node_gives_the_k_closest_never_the_requester() {
        let mut f = Fixture::with(Config {
            table: table::Config {
                k: 5,
                ..table::Config::default()
            },
            ..Config::default()
        });
        let peers: Vec<PeerId> = (0..40).map(|_| peer()).collect();
        for p in &peers {
            f.table.insert(*p, vec![ma("/ip4/10.0.0.1/tcp/1")], NOW);
        }
        let key = b"some key";
        let reply = f.reply(
            peers[0],
            "/ip4/10.1.1.1/tcp/5",
            msg(MessageType::FindNode, key),
        );
        assert_eq!(reply.key, key);
        let got: Vec<PeerId> = reply
            .closer_peers
            .iter()
            .map(|p| PeerId::from_bytes(&p.id).unwrap())
            .collect();
        // (Buckets of 5 keep only some of the 40.)
        let mut want: Vec<PeerId> = f
            .table
            .iter()
            .map(|e| e.peer)
            .filter(|p| *p != peers[0])
            .collect();
        assert!(want.len() > 5);
        want.sort_by_key(|p| Key::from_peer(p).distance(&Key::new(key)));
        want.truncate(5);
        assert_eq!(
            got, want,
            "the 5 nearest, nearest first, without the requester"
        );
        // Connected peers are marked so.
        f.known.connected.insert(want[0]);
        let reply = f.reply(
            peers[0],
            "/ip4/10.1.1.1/tcp/5",
            msg(MessageType::FindNode, key),
        );
        assert_eq!(
            reply.closer_peers[0].connection,
            proto::ConnectionType::Connected as i32
        );
        assert_eq!(
            reply.closer_peers[1].connection,
            proto::ConnectionType::NotConnected as i32
        );
    }

    #[test]
    fn public_requesters_get_only_public_addresses() {
        let mut f = Fixture::new();
        let (mixed, private) = (peer(), peer());
        f.table.insert(
            mixed,
            vec![ma("/ip4/10.0.0.1/tcp/1"), ma("/ip4/8.8.8.8/tcp/1")],
            NOW,
        );
        f.table
            .insert(private, vec![ma("/ip4/192.168.1.1/tcp/1")], NOW);
        let key = peer().to_bytes();
        let public = listed(
            &f.reply(
                peer(),
                "/ip4/9.9.9.9/tcp/5",
                msg(MessageType::FindNode, &key),
            )
            .closer_peers,
        );
        assert_eq!(public.len(), 1, "the private-only peer is left out");
        assert_eq!(public[&mixed], vec![ma("/ip4/8.8.8.8/tcp/1")]);
        let local = listed(
            &f.reply(
                peer(),
                "/ip4/10.1.1.1/tcp/5",
                msg(MessageType::FindNode, &key),
            )
            .closer_peers,
        );
        assert_eq!(local.len(), 2);
        assert_eq!(local[&mixed].len(), 2);
        // Never the requester itself.
        let asked_by_mixed = listed(
            &f.reply(
                mixed,
                "/ip4/10.1.1.1/tcp/5",
                msg(MessageType::FindNode, &key),
            )
            .closer_peers,
        );
        assert!(!asked_by_mixed.contains_key(&mixed));
        // Unless the operator allows it.
        f.config.private_addrs_to_public = true;
        let public = listed(
            &f.reply(
                peer(),
                "/ip4/9.9.9.9/tcp/5",
                msg(MessageType::FindNode, &key),
            )
            .closer_peers,
        );
        assert_eq!(public.len(), 2);
    }

    #[test]
    fn signed_record_addresses_win_over_the_tables() {
        let mut f = Fixture::new();
        let p = peer();
        f.table.insert(p, vec![ma("/ip4/10.0.0.1/tcp/1")], NOW);
        f.known.signed.insert(p, vec![ma("/ip4/10.0.0.2/tcp/2")]);
        let got = listed(
            &f.reply(
                peer(),
                "/ip4/10.1.1.1/tcp/5",
                msg(MessageType::FindNode, b"k"),
            )
            .closer_peers,
        );
        assert_eq!(got[&p], vec![ma("/ip4/10.0.0.2/tcp/2")]);
    }

    #[test]
    fn only_recently_seen_peers_are_handed_out() {
        let mut f = Fixture::with(Config {
            serve_verified_within: Some(Duration::from_secs(3600)),
            ..Config::default()
        });
        let (fresh, stale) = (peer(), peer());
        f.table.insert(fresh, vec![ma("/ip4/10.0.0.1/tcp/1")], NOW);
        let two_hours_ago = NOW - 2 * 3600 * 1000;
        f.table
            .insert(stale, vec![ma("/ip4/10.0.0.2/tcp/1")], two_hours_ago);
        let ask = |f: &Fixture| {
            listed(
                &f.reply(
                    peer(),
                    "/ip4/10.1.1.1/tcp/5",
                    msg(MessageType::FindNode, b"k"),
                )
                .closer_peers,
            )
        };
        assert_eq!(ask(&f).keys().copied().collect::<Vec<_>>(), vec![fresh]);
        // A liveness check or an answer refreshes it.
        f.table.seen(&stale, NOW);
        assert_eq!(ask(&f).len(), 2);
    }

    #[test]
    fn find_node_for_ourselves_or_a_known_peer_includes_it() {
        let mut f = Fixture::new();
        f.known.own_addrs = vec![ma("/ip4/10.0.0.9/tcp/4001"), ma("/ip4/8.8.8.9/tcp/4001")];
        let me = f.local();
        let remote = "/ip4/127.0.0.1/tcp/5";
        // Our own key: we answer with ourselves and our addresses, as go-libp2p does.
        let got = listed(
            &f.reply(peer(), remote, msg(MessageType::FindNode, &me.to_bytes()))
                .closer_peers,
        );
        assert_eq!(got[&me].len(), 2);
        // ... the public ones to a public requester.
        let got = listed(
            &f.reply(
                peer(),
                "/ip4/9.9.9.9/tcp/5",
                msg(MessageType::FindNode, &me.to_bytes()),
            )
            .closer_peers,
        );
        assert_eq!(got[&me], vec![ma("/ip4/8.8.8.9/tcp/4001")]);
        // GET_VALUE/GET_PROVIDERS closer peers never list us.
        let reply = f.reply(peer(), remote, msg(MessageType::GetValue, &me.to_bytes()));
        assert!(reply.closer_peers.is_empty());
        // A peer known to the peerstore but not in the table is added for FIND_NODE.
        let known = peer();
        f.known.live.insert(known, vec![ma("/ip4/10.9.9.9/tcp/1")]);
        let got = listed(
            &f.reply(
                peer(),
                remote,
                msg(MessageType::FindNode, &known.to_bytes()),
            )
            .closer_peers,
        );
        assert_eq!(got[&known], vec![ma("/ip4/10.9.9.9/tcp/1")]);
        // ... but never to itself.
        assert!(f
            .reply(known, remote, msg(MessageType::FindNode, &known.to_bytes()))
            .closer_peers
            .is_empty());
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        let f = Fixture::new();
        let remote = "/ip4/10.1.1.1/tcp/5";
        let label = |r: Result<Answer, Refusal>| r.err().map(|e| e.label());
        assert_eq!(
            label(f.ask(peer(), remote, msg(MessageType::FindNode, b""))),
            Some("bad_key")
        );
        assert_eq!(
            label(f.ask(peer(), remote, msg(MessageType::GetValue, &[7u8; 201]))),
            Some("bad_key")
        );
        // PING needs no key, and is echoed.
        let ping = msg(MessageType::Ping, b"");
        assert_eq!(
            f.ask(peer(), remote, ping.clone()).unwrap(),
            Answer::Reply(ping)
        );
        let mut unknown = msg(MessageType::FindNode, b"k");
        unknown.r#type = 42;
        assert_eq!(label(f.ask(peer(), remote, unknown)), Some("unknown_type"));
        assert_eq!(
            label(f.ask(peer(), remote, msg(MessageType::PutValue, b"/pk/x"))),
            Some("no_record")
        );
        let mut put = msg(MessageType::PutValue, b"/pk/x");
        put.record = Some(proto::Record {
            key: b"/pk/y".to_vec(),
            value: b"v".to_vec(),
            time_received: String::new(),
        });
        assert_eq!(label(f.ask(peer(), remote, put)), Some("key_mismatch"));
        let mut put = msg(MessageType::PutValue, b"/nope/x");
        put.record = Some(proto::Record {
            key: b"/nope/x".to_vec(),
            value: b"v".to_vec(),
            time_received: String::new(),
        });
        let refusal = f.ask(peer(), remote, put).unwrap_err();
        assert_eq!(refusal.label(), "unknown_namespace");
        assert!(refusal.is_peer_fault());
    }

    /// A `/pk/` record: a public key under its PeerId's multihash.
    fn pk_record(key: &Keypair) -> (Vec<u8>, Vec<u8>) {
        let mut k = b"/pk/".to_vec();
        k.extend_from_slice(&key.public().to_peer_id().to_bytes());
        (k, key.public().encode_protobuf())
    }

    #[tokio::test]
    async fn put_value_is_accepted_stored_by_the_driver_then_served() {
        let f = Fixture::new();
        let remote = "/ip4/10.1.1.1/tcp/5";
        let (key, value) = pk_record(&Keypair::generate_ed25519());
        let mut put = msg(MessageType::PutValue, &key);
        put.record = Some(proto::Record {
            key: key.clone(),
            value: value.clone(),
            time_received: String::new(),
        });
        let Answer::Store(accepted) = f.ask(peer(), remote, put.clone()).unwrap() else {
            panic!("a valid record is to be stored");
        };
        assert_eq!((accepted.key(), accepted.value()), (&key[..], &value[..]));
        // Nothing is written by the answer itself.
        assert!(f.store.get(&key, NOW).unwrap().is_none());
        f.store
            .put(accepted.key(), accepted.value(), NOW)
            .await
            .unwrap();
        assert_eq!(accepted.into_echo(), put, "the request, echoed");
        let reply = f.reply(peer(), remote, msg(MessageType::GetValue, &key));
        let record = reply.record.unwrap();
        assert_eq!(record.value, value);
        assert_eq!(record.time_received, validator::format_rfc3339(NOW));
    }

    #[tokio::test]
    async fn providers_are_the_senders_own_and_served_with_addresses() {
        let f = Fixture::new();
        let remote = "/ip4/10.1.1.1/tcp/5";
        let (sender, other) = (peer(), peer());
        let mut add = msg(MessageType::AddProvider, b"content");
        for (p, a) in [
            (other, "/ip4/10.0.0.7/tcp/1"),
            (sender, "/ip4/10.0.0.8/tcp/1"),
            (sender, "/ip4/10.0.0.9/tcp/1"),
        ] {
            add.provider_peers.push(proto::Peer {
                id: p.to_bytes(),
                addrs: vec![ma(a).to_vec()],
                connection: 0,
            });
        }
        let answer = f.ask(sender, remote, add).unwrap();
        assert_eq!(
            answer,
            Answer::Provide {
                key: b"content".to_vec(),
                addrs: Some(vec![ma("/ip4/10.0.0.8/tcp/1")]),
                foreign: 1,
            },
            "the sender's first entry; the other peer's counted"
        );
        f.store
            .add_provider(b"content", sender, &[ma("/ip4/10.0.0.8/tcp/1")], NOW)
            .await
            .unwrap();
        let reply = f.reply(peer(), remote, msg(MessageType::GetProviders, b"content"));
        assert_eq!(
            listed(&reply.provider_peers)[&sender],
            vec![ma("/ip4/10.0.0.8/tcp/1")]
        );
        // A public requester gets the provider without its private addresses: the id only.
        let reply = f.reply(
            peer(),
            "/ip4/9.9.9.9/tcp/5",
            msg(MessageType::GetProviders, b"content"),
        );
        assert_eq!(reply.provider_peers.len(), 1);
        assert!(reply.provider_peers[0].addrs.is_empty());
    }

    #[test]
    fn peer_records_are_served_from_what_we_verified() {
        let mut f = Fixture::new();
        let remote = "/ip4/10.1.1.1/tcp/5";
        let p = peer();
        let key = |p: &PeerId| {
            let mut k = format!("/{}/", validator::PEER_RECORD_NAMESPACE).into_bytes();
            k.extend_from_slice(&p.to_bytes());
            k
        };
        // Neither stored nor known: no record.
        assert!(f
            .reply(peer(), remote, msg(MessageType::GetValue, &key(&p)))
            .record
            .is_none());
        f.known.envelopes.insert(p, b"envelope of p".to_vec());
        f.known.own_envelope = Some(b"our envelope".to_vec());
        let got = f.reply(peer(), remote, msg(MessageType::GetValue, &key(&p)));
        assert_eq!(got.record.unwrap().value, b"envelope of p");
        let me = f.local();
        let got = f.reply(peer(), remote, msg(MessageType::GetValue, &key(&me)));
        assert_eq!(got.record.unwrap().value, b"our envelope");
    }
}
