//! A real rust-libp2p 0.57 DHT server on loopback TCP (or a bed host's address), driven
//! through commands (the Kademlia and booster interop tests).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use pylon_node::protocols::kad as pkad;
use tokio::sync::{mpsc, oneshot};

use super::RUST_AGENT;

#[derive(NetworkBehaviour)]
pub struct KadBehaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

pub type Reply<T> = oneshot::Sender<Result<T, String>>;

pub enum Cmd {
    AddAddress(PeerId, Multiaddr),
    Bootstrap(Reply<()>),
    Closest(Vec<u8>, Reply<HashSet<PeerId>>),
    Put(kad::Record, Reply<()>),
    Get(kad::RecordKey, Reply<Vec<Vec<u8>>>),
    Provide(kad::RecordKey, Reply<()>),
    Providers(kad::RecordKey, Reply<HashSet<PeerId>>),
    /// Puts a provider record, addresses and all, straight into the server's store.
    StoreProvider(kad::ProviderRecord),
}

enum Pending {
    Bootstrap(Reply<()>),
    Closest(Reply<HashSet<PeerId>>),
    Put(Reply<()>),
    Get(Reply<Vec<Vec<u8>>>, Vec<Vec<u8>>),
    Provide(Reply<()>),
    Providers(Reply<HashSet<PeerId>>, HashSet<PeerId>),
}

/// A rust-libp2p DHT server on loopback TCP, driven through commands.
pub struct RustKad {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
    commands: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustKad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustKad {
    pub async fn start() -> RustKad {
        Self::start_learning(false).await
    }

    /// A server that also puts every peer identify says serves the DHT in its table, at
    /// the listen addresses it reported (what rust-libp2p applications wire up: the
    /// Kademlia behaviour alone learns no address of a peer that dialed it).
    pub async fn start_learning(from_identify: bool) -> RustKad {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST, from_identify).await
    }

    /// [`RustKad::start_learning`] listening on `ip` (a host of a network namespace bed).
    pub async fn start_on(ip: std::net::Ipv4Addr, from_identify: bool) -> RustKad {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                let id = key.public().to_peer_id();
                let mut config = kad::Config::new(StreamProtocol::new(pkad::DEFAULT_PROTOCOL));
                config.set_periodic_bootstrap_interval(None);
                config.set_query_timeout(Duration::from_secs(15));
                let mut kad =
                    kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), config);
                kad.set_mode(Some(kad::Mode::Server));
                KadBehaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new_with_signed_peer_record("ipfs/0.1.0".into(), key)
                            .with_agent_version(RUST_AGENT.into()),
                    ),
                    kad,
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let listen = super::listen_external(&mut swarm, &format!("/ip4/{ip}/tcp/0")).await;
        let peer_id = *swarm.local_peer_id();
        let (commands, mut rx) = mpsc::channel::<Cmd>(16);
        let task = tokio::spawn(async move {
            let mut pending: HashMap<QueryId, Pending> = HashMap::new();
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        let kad = &mut swarm.behaviour_mut().kad;
                        match cmd {
                            Cmd::AddAddress(p, a) => {
                                kad.add_address(&p, a);
                            }
                            Cmd::Bootstrap(r) => match kad.bootstrap() {
                                Ok(id) => { pending.insert(id, Pending::Bootstrap(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Closest(key, r) => {
                                pending.insert(kad.get_closest_peers(key), Pending::Closest(r));
                            }
                            Cmd::Put(record, r) => match kad.put_record(record, Quorum::One) {
                                Ok(id) => { pending.insert(id, Pending::Put(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Get(key, r) => {
                                pending.insert(kad.get_record(key), Pending::Get(r, Vec::new()));
                            }
                            Cmd::Provide(key, r) => match kad.start_providing(key) {
                                Ok(id) => { pending.insert(id, Pending::Provide(r)); }
                                Err(e) => { let _ = r.send(Err(e.to_string())); }
                            },
                            Cmd::Providers(key, r) => {
                                pending.insert(kad.get_providers(key), Pending::Providers(r, HashSet::new()));
                            }
                            Cmd::StoreProvider(record) => {
                                if let Err(e) = kad.store_mut().add_provider(record) {
                                    panic!("rust-libp2p store refused a provider: {e}");
                                }
                            }
                        }
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(KadBehaviourEvent::Identify(
                            identify::Event::Received { peer_id, info, .. },
                        )) = &event
                        {
                            let serves = info
                                .protocols
                                .iter()
                                .any(|p| p.as_ref() == pkad::DEFAULT_PROTOCOL);
                            if from_identify && serves {
                                for addr in &info.listen_addrs {
                                    swarm.behaviour_mut().kad.add_address(peer_id, addr.clone());
                                }
                            }
                            continue;
                        }
                        let SwarmEvent::Behaviour(KadBehaviourEvent::Kad(
                            kad::Event::OutboundQueryProgressed { id, result, step, .. },
                        )) = event else { continue };
                        let Some(p) = pending.remove(&id) else { continue };
                        let p = match (p, result) {
                            (Pending::Bootstrap(r), QueryResult::Bootstrap(res)) => {
                                if step.last || res.is_err() {
                                    let _ = r.send(res.map(|_| ()).map_err(|e| format!("{e:?}")));
                                    continue;
                                }
                                Pending::Bootstrap(r)
                            }
                            (Pending::Closest(r), QueryResult::GetClosestPeers(res)) => {
                                let _ = r.send(
                                    res.map(|ok| ok.peers.into_iter().map(|p| p.peer_id).collect())
                                        .map_err(|e| format!("{e:?}")),
                                );
                                continue;
                            }
                            (Pending::Put(r), QueryResult::PutRecord(res)) => {
                                let _ = r.send(res.map(|_| ()).map_err(|e| format!("{e:?}")));
                                continue;
                            }
                            (Pending::Get(r, mut got), QueryResult::GetRecord(res)) => {
                                if let Ok(GetRecordOk::FoundRecord(rec)) = res {
                                    got.push(rec.record.value);
                                }
                                if step.last {
                                    let _ = r.send(Ok(got));
                                    continue;
                                }
                                Pending::Get(r, got)
                            }
                            (Pending::Provide(r), QueryResult::StartProviding(res)) => {
                                let _ = r.send(res.map(|_| ()).map_err(|e| format!("{e:?}")));
                                continue;
                            }
                            (Pending::Providers(r, mut got), QueryResult::GetProviders(res)) => {
                                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = res {
                                    got.extend(providers);
                                }
                                if step.last {
                                    let _ = r.send(Ok(got));
                                    continue;
                                }
                                Pending::Providers(r, got)
                            }
                            (p, _) => p,
                        };
                        pending.insert(id, p);
                    }
                }
            }
        });
        RustKad {
            peer_id,
            addr: listen.with(libp2p::multiaddr::Protocol::P2p(peer_id)),
            commands,
            task,
        }
    }

    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("rust-libp2p query within 30 s")
            .unwrap()
    }

    /// Puts a provider record, with the addresses it carries, into the server's store:
    /// what it answers GET_PROVIDERS with.
    pub async fn store_provider(&self, record: kad::ProviderRecord) {
        self.commands
            .send(Cmd::StoreProvider(record))
            .await
            .expect("rust-libp2p DHT task alive");
    }

    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) {
        self.commands
            .send(Cmd::AddAddress(peer, addr))
            .await
            .unwrap();
    }
}
