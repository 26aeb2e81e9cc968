//! The booster role among real DHT peers: 30 rust-libp2p 0.57 servers on loopback and a
//! Pylon node running 8 heads.
//! - rust-libp2p lookups for random keys reach the heads, and find them among the closest;
//! - a GET_PROVIDERS that misses on the head closest to a key is prefetched from the
//!   rust-libp2p network, and the next request is answered from the shared store (a cache
//!   hit); a GET_VALUE miss likewise; a js-libp2p client that knows only that head finds
//!   the provider through it;
//! - a flood of GET_PROVIDERS for random keys starts no more lookups than the budget;
//! - after a restart on the same data directory the heads have the same identities and
//!   the shared store its provider records.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use common::rust_kad::{Cmd, RustKad};
use common::*;
use libp2p::kad::RecordKey;
use multiaddr::Protocol;
use prometheus_client::registry::Registry;
use pylon_interop::js::{JsKadMode, JsPeer};
use pylon_node::identity::Keypair;
use pylon_node::metrics::{KadLabels, Metrics as NodeMetrics};
use pylon_node::node::{self, Node};
use pylon_node::protocols::kad::{self as pkad, Key, MessageType};
use pylon_node::PeerId;
use pylon_roles::booster::{self, Booster};
use pylon_roles::{Metrics, Role};
use pylon_testkit::node as kit;

const RUST_SERVERS: usize = 30;
const HEADS: u32 = 8;

/// 30 rust-libp2p DHT servers, each told of a few others, then bootstrapped.
async fn rust_network() -> Vec<RustKad> {
    let mut servers = Vec::new();
    for _ in 0..RUST_SERVERS {
        servers.push(RustKad::start_learning(true).await);
    }
    for (i, s) in servers.iter().enumerate() {
        for step in [1, 7, 13] {
            let o = &servers[(i + step) % RUST_SERVERS];
            s.add_address(o.peer_id, o.addr.clone()).await;
        }
    }
    futures::future::join_all(servers.iter().map(|s| s.ask(Cmd::Bootstrap))).await;
    servers
}

fn rust_addrs(servers: &[RustKad], n: usize) -> Vec<libp2p::Multiaddr> {
    servers.iter().take(n).map(|s| s.addr.clone()).collect()
}

/// The booster's settings for loopback: heads on ports the system picks.
fn booster_config() -> booster::Config {
    booster::Config {
        heads: HEADS,
        max_heads: 16,
        listen: vec!["/ip4/127.0.0.1/tcp/{port}".into()],
        port_base: 0,
        ..Default::default()
    }
}

/// The main node's config: a DHT server joining through `bootstrap`, as the role wants it.
fn main_config(bootstrap: Vec<libp2p::Multiaddr>, role: &booster::Config) -> node::Config {
    let mut config = kit::kad_config(true, bootstrap);
    config.host.max_pending_incoming_per_ip = 0;
    config.host.max_pending_incoming_per_subnet = 0;
    Booster::require(role, &mut config).unwrap();
    if let Some(kad) = config.kad.as_mut() {
        kad.refresh_interval = None;
    }
    config
}

/// The PeerIds of a node key's heads.
fn head_ids(key: &Keypair, role: &booster::Config) -> Vec<PeerId> {
    let depth = booster::keys::depth_for(role.max_heads);
    (0..role.heads)
        .map(|i| {
            booster::keys::head_keypair(key, i, depth)
                .public()
                .to_peer_id()
        })
        .collect()
}

struct Running {
    node: Node,
    booster: Arc<Booster>,
    _registry: Registry,
}

impl Running {
    /// The heads' nodes, by index.
    fn head_nodes(&self) -> Vec<Node> {
        self.booster.heads().into_iter().map(|(_, h)| h).collect()
    }

    /// The head whose PeerId is `id`.
    fn head(&self, id: PeerId) -> Node {
        self.head_nodes()
            .into_iter()
            .find(|h| h.peer_id() == id)
            .expect("a head with that PeerId runs")
    }
}

/// Starts the booster on `node` and waits for its heads, each with a routing table. (The
/// test configs turn the periodic refresh off: the node and each head look themselves up
/// here, as their first refresh would.)
async fn boost(node: Node, role: booster::Config) -> Running {
    let kad = node.kad.clone().unwrap();
    eventually("the node joined", || kad.table_len() > 0).await;
    kad.bootstrap().await.unwrap();
    let mut registry = Registry::default();
    let booster = Booster::start(
        &node,
        role.clone(),
        &mut Metrics::of::<Booster>(&mut registry),
    )
    .unwrap();
    eventually("every head up", || {
        booster.heads().len() == role.heads as usize
    })
    .await;
    let heads = booster.heads();
    futures::future::join_all(
        heads
            .iter()
            .map(|(_, h)| async move { h.kad.as_ref().unwrap().bootstrap().await }),
    )
    .await;
    for (i, h) in &heads {
        let n = h.kad.as_ref().unwrap().table_len();
        assert!(n >= 10, "head {i}: {n} peers in its table");
    }
    Running {
        node,
        booster,
        _registry: registry,
    }
}

fn inbound(node: &Node, kind: &'static str) -> u64 {
    node.host
        .metrics()
        .kad_inbound
        .get_or_create(&KadLabels {
            kind,
            outcome: "ok",
        })
        .get()
}

/// A `kind` request for `key` sent by `client` straight to `head`: its answer.
async fn ask(client: &Node, head: &Node, kind: MessageType, key: &[u8]) -> pkad::proto::Message {
    let msg = pkad::proto::Message::new(kind, key.to_vec());
    client
        .kad
        .as_ref()
        .unwrap()
        .query(head.peer_id(), &[kit::addr_of(head)], &msg)
        .await
        .unwrap()
}

/// A GET_PROVIDERS for `key` sent by `client` straight to `head`: the providers named.
async fn ask_providers(client: &Node, head: &Node, key: &[u8]) -> HashSet<PeerId> {
    ask(client, head, MessageType::GetProviders, key)
        .await
        .provider_peers
        .iter()
        .filter_map(|p| PeerId::from_bytes(&p.id).ok())
        .collect()
}

/// A GET_VALUE for `key` sent by `client` straight to `head`: the record's value.
async fn ask_value(client: &Node, head: &Node, key: &[u8]) -> Option<Vec<u8>> {
    ask(client, head, MessageType::GetValue, key)
        .await
        .record
        .map(|r| r.value)
}

/// The closest of `heads` to `key` if at most two of `others` are closer to it than that
/// head: the head then counts itself among the key's closest.
fn head_near(key: &[u8], heads: &[PeerId], others: &[PeerId]) -> Option<PeerId> {
    let target = Key::new(key);
    let dist = |p: &PeerId| Key::from_peer(p).distance(&target);
    let head = *heads.iter().min_by_key(|h| dist(h)).unwrap();
    (others.iter().filter(|o| dist(o) < dist(&head)).count() <= 2).then_some(head)
}

/// A content key (a SHA-256 multihash) next to one of `heads` ([`head_near`]).
fn key_near_a_head(heads: &[PeerId], others: &[PeerId]) -> (Vec<u8>, PeerId) {
    (0u32..)
        .find_map(|i| {
            let key = sha256_multihash(&i.to_be_bytes());
            head_near(&key, heads, others).map(|head| (key, head))
        })
        .unwrap()
}

/// A `/pk/` record (key, value) whose key is next to one of `heads` ([`head_near`]).
fn pk_record_near_a_head(heads: &[PeerId], others: &[PeerId]) -> (Vec<u8>, Vec<u8>, PeerId) {
    loop {
        let owner = Keypair::generate_ed25519();
        let key = pk_key(&owner.public().to_peer_id());
        if let Some(head) = head_near(&key, heads, others) {
            return (key, owner.public().encode_protobuf(), head);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_lookups_reach_the_heads() {
    let servers = rust_network().await;
    let role = booster_config();
    let main = kit::start_with(main_config(rust_addrs(&servers, 3), &role)).await;
    let run = boost(main, role).await;
    let heads: Vec<Node> = run.head_nodes();
    let head_ids: HashSet<PeerId> = heads.iter().map(|h| h.peer_id()).collect();

    // The heads are balanced: the expected ids, no two in the same eighth of the keyspace.
    let expected: HashSet<PeerId> = head_ids_of(&run).into_iter().collect();
    assert_eq!(head_ids, expected);
    let eighths: HashSet<u8> = head_ids
        .iter()
        .map(|p| Key::from_peer(p).hash()[0] >> 5)
        .collect();
    assert_eq!(eighths.len(), HEADS as usize, "one head per eighth");

    // The heads never list each other (nor the main identity) in their tables.
    for h in &heads {
        let table: HashSet<PeerId> = h
            .kad
            .as_ref()
            .unwrap()
            .table_entries()
            .iter()
            .map(|e| e.peer)
            .collect();
        assert!(table.is_disjoint(&head_ids), "a head lists a sibling");
        assert!(!table.contains(&run.node.peer_id()));
    }

    // rust-libp2p learns of the heads and its lookups for random keys go through them.
    futures::future::join_all(servers.iter().map(|s| s.ask(Cmd::Bootstrap))).await;
    let before: u64 = heads.iter().map(|h| inbound(h, "find_node")).sum();
    let mut with_a_head = 0;
    for i in 0u32..20 {
        let key = sha256_multihash(&[b"lookup".as_slice(), &i.to_be_bytes()].concat());
        let s = &servers[i as usize % RUST_SERVERS];
        let found = s.ask(|r| Cmd::Closest(key.clone(), r)).await.unwrap();
        if found
            .iter()
            .any(|p| head_ids.contains(&p.to_string().parse().unwrap()))
        {
            with_a_head += 1;
        }
    }
    let after: u64 = heads.iter().map(|h| inbound(h, "find_node")).sum();
    println!("booster: 20 rust-libp2p lookups, {with_a_head} with a head among the closest; heads answered {} FIND_NODE", after - before);
    assert!(after > before, "the heads answered the lookups' requests");
    assert!(
        with_a_head >= 10,
        "{with_a_head} of 20 lookups found a head"
    );
}

fn head_ids_of(run: &Running) -> Vec<PeerId> {
    (0..HEADS).map(|i| run.booster.head_peer_id(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_miss_is_prefetched_and_the_next_request_is_a_cache_hit() {
    let servers = rust_network().await;
    let role = booster_config();
    // The node key first: the key to look up is chosen next to one of its heads.
    let key = Keypair::generate_ed25519();
    let heads = head_ids(&key, &role);
    let rust_ids: Vec<PeerId> = servers
        .iter()
        .map(|s| s.peer_id.to_string().parse().unwrap())
        .collect();
    let (content, near) = key_near_a_head(&heads, &rust_ids);

    let (record_key, record_value, record_head) = pk_record_near_a_head(&heads, &rust_ids);

    // A rust-libp2p server provides it (and another puts the record) before Pylon joins:
    // only the rust network holds them.
    let provider: PeerId = servers[5].peer_id.to_string().parse().unwrap();
    servers[5]
        .ask(|r| Cmd::Provide(RecordKey::new(&content), r))
        .await
        .unwrap();
    servers[7]
        .ask(|r| {
            Cmd::Put(
                libp2p::kad::Record::new(record_key.clone(), record_value.clone()),
                r,
            )
        })
        .await
        .unwrap();

    let main = Node::start(
        key,
        main_config(rust_addrs(&servers, 3), &role),
        node::Stores::memory(),
        NodeMetrics::unregistered(),
    )
    .await
    .unwrap();
    let run = boost(main, role).await;
    let head = run.head(near);

    // The first request misses and starts the prefetch; the second is answered from the
    // shared store.
    let client = pylon_kad(false, Vec::new()).await;
    let first = ask_providers(&client, &head, &content).await;
    assert!(first.is_empty(), "nothing held yet: {first:?}");
    eventually("the prefetch cached the provider", || {
        let s = run.booster.status();
        s.prefetch_running == 0 && s.heads.iter().any(|h| h.prefetches == 1)
    })
    .await;
    let second = ask_providers(&client, &head, &content).await;
    assert!(second.contains(&provider), "{second:?}");
    let status = run.booster.status();
    let h = status
        .heads
        .iter()
        .find(|h| h.peer_id == near.to_string())
        .unwrap();
    assert_eq!((h.gets, h.found, h.cache_hits), (2, 1, 1), "{h:?}");
    // Every head answers from the shared store.
    let other = run
        .head_nodes()
        .into_iter()
        .find(|h| h.peer_id() != near)
        .unwrap();
    assert!(ask_providers(&client, &other, &content)
        .await
        .contains(&provider));

    // A record miss is prefetched the same way.
    let record_head = run.head(record_head);
    assert_eq!(ask_value(&client, &record_head, &record_key).await, None);
    eventually("the prefetch stored the record", || {
        record_head
            .kad
            .as_ref()
            .unwrap()
            .store()
            .get(&record_key, 0)
            .unwrap()
            .is_some()
    })
    .await;
    assert_eq!(
        ask_value(&client, &record_head, &record_key).await,
        Some(record_value)
    );

    // A js-libp2p client that knows only that head finds the provider through it.
    let mut js = JsPeer::listen_kad(JsKadMode::Client).await.unwrap();
    js.kad_bootstrap(&kit::addr_of(&head).to_string())
        .await
        .unwrap();
    let found = js.kad_providers(&content).await.unwrap();
    assert!(
        found
            .providers
            .iter()
            .any(|p| p.peer_id == provider.to_string() && p.from == near.to_string()),
        "the head named the provider: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_keys_is_not_a_lookup_amplifier() {
    let servers = rust_network().await;
    let role = booster::Config {
        prefetch_concurrency: 2,
        prefetch_per_minute: 6,
        ..booster_config()
    };
    let main = kit::start_with(main_config(rust_addrs(&servers, 3), &role)).await;
    let run = boost(main, role).await;
    let heads: Vec<Node> = run.head_nodes();
    let client = pylon_kad(false, Vec::new()).await;
    let mut asked = 0;
    for i in 0u32..200 {
        let key = sha256_multihash(&[b"flood".as_slice(), &i.to_be_bytes()].concat());
        let head = &heads[i as usize % heads.len()];
        ask_providers(&client, head, &key).await;
        asked += 1;
    }
    let started: u64 = run
        .booster
        .status()
        .heads
        .iter()
        .map(|h| h.prefetches)
        .sum();
    println!("booster flood: {asked} random-key GET_PROVIDERS -> {started} prefetch lookups");
    assert!(started <= 6, "{started} lookups for a budget of 6 a minute");
    assert!(started >= 1, "the budget is used, not refused outright");
    let gets: u64 = run.booster.status().heads.iter().map(|h| h.gets).sum();
    assert_eq!(
        gets, asked,
        "every request counted once, the heads' own lookups not"
    );
    // The refusals are counted.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &run._registry).unwrap();
    let refused: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("pylon_booster_prefetch_total{")
                && (l.contains("\"busy\"") || l.contains("\"over_budget\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 1.0, "refusals counted:\n{text}");
}

/// The crawl measures the rust-libp2p network, and the controller adds heads toward a
/// target one head cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crawl_measures_the_network_and_the_controller_adds_heads() {
    let servers = rust_network().await;
    let role = booster::Config {
        heads: 1,
        target_coverage: 0.95,
        crawl_per_second: 500,
        ..booster_config()
    };
    let main = kit::start_with(main_config(rust_addrs(&servers, 3), &role)).await;
    let run = boost(main, role).await;
    run.booster
        .measure_and_resize(std::time::Instant::now())
        .await;
    let status = run.booster.status();
    let m = status.measured.expect("a measurement");
    println!(
        "booster crawl: {} peers, coverage {:.2} with {} head(s) -> {} heads",
        m.network_size,
        m.coverage,
        m.heads,
        status.heads.len()
    );
    // Every rust-libp2p server answered; our own identities are not counted.
    assert_eq!(m.network_size, RUST_SERVERS, "{m:?}");
    assert!(m.coverage > 0.0 && m.coverage < 0.95, "{m:?}");
    assert_eq!(m.heads, 1);
    eventually("the controller's heads up", || {
        run.booster.heads().len() > 1
    })
    .await;
    assert!(run.booster.heads().len() <= 16, "within max_heads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_the_shared_store_survive_a_restart() {
    let servers = rust_network().await;
    let role = booster_config();
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: &Path| {
        let config = main_config(rust_addrs(&servers, 3), &role);
        let dir = dir.to_path_buf();
        async move {
            Node::start_in(&dir, config, NodeMetrics::unregistered())
                .await
                .unwrap()
        }
    };
    let run = boost(start(dir.path()).await, role.clone()).await;
    let ids: HashSet<PeerId> = run
        .booster
        .heads()
        .iter()
        .map(|(_, h)| h.peer_id())
        .collect();
    // A provider record announced to the first head (ADD_PROVIDER on a stream of its own).
    let (_, first_head) = run.booster.heads().into_iter().next().unwrap();
    let client = pylon_kad(false, Vec::new()).await;
    let content = sha256_multihash(b"kept across a restart");
    let mut add = pkad::proto::Message::new(MessageType::AddProvider, content.clone());
    add.provider_peers = vec![pkad::proto::Peer {
        id: client.peer_id().to_bytes(),
        addrs: vec![kit::addr_of(&client).to_vec()],
        connection: 0,
    }];
    client.host.dial(&kit::addr_of(&first_head)).await.unwrap();
    let mut stream = client
        .host
        .open_stream(&first_head.peer_id(), &[pkad::DEFAULT_PROTOCOL])
        .await
        .unwrap();
    pylon_node::varint::write_frame(&mut stream, &add.to_bytes())
        .await
        .unwrap();
    eventually("the record in the shared store", || {
        !first_head
            .kad
            .as_ref()
            .unwrap()
            .store()
            .providers(&content, now_ms())
            .unwrap()
            .is_empty()
    })
    .await;
    run.node
        .stop(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        run.booster.heads().is_empty(),
        "the heads stop with the node"
    );
    drop(run);

    let again = boost(start(dir.path()).await, role).await;
    let ids_again: HashSet<PeerId> = again
        .booster
        .heads()
        .iter()
        .map(|(_, h)| h.peer_id())
        .collect();
    assert_eq!(ids, ids_again, "the same identities");
    for (_, head) in again.booster.heads() {
        let got = ask_providers(&client, &head, &content).await;
        assert!(
            got.contains(&client.peer_id()),
            "head {}: {got:?}",
            head.peer_id()
        );
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// With an announce list (the node behind a load balancer or in Kubernetes), a
/// rust-libp2p peer that identifies a head hears the node's announced host on that head's
/// own port of each transport — not the node's port, where it would meet another PeerId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_announce_the_nodes_announced_addresses_on_their_own_ports() {
    let role = booster::Config {
        heads: 2,
        max_heads: 4,
        listen: vec![
            "/ip4/127.0.0.1/tcp/{port}".into(),
            "/ip4/127.0.0.1/udp/{port}/quic-v1".into(),
        ],
        port_base: 0,
        autoscale: false,
        ..Default::default()
    };
    let mut config = main_config(Vec::new(), &role);
    config.identify.addresses.announce = vec![
        "/ip4/203.0.113.7/tcp/4001".parse().unwrap(),
        "/dns4/boot.example.com/udp/4001/quic-v1".parse().unwrap(),
    ];
    let node = kit::start_with(config).await;
    let mut registry = Registry::default();
    let booster = Booster::start(&node, role, &mut Metrics::of::<Booster>(&mut registry)).unwrap();
    eventually("both heads up", || booster.heads().len() == 2).await;
    let mut rust = RustPeer::start().await;
    for (i, head) in booster.heads() {
        let listen = head.host.listen_addrs();
        let port = |quic: bool| {
            listen
                .iter()
                .filter(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
                .find_map(|a| match a.iter().nth(1) {
                    Some(Protocol::Tcp(n) | Protocol::Udp(n)) => Some(n),
                    _ => None,
                })
                .unwrap()
        };
        let want: Vec<libp2p::Multiaddr> = vec![
            format!("/ip4/203.0.113.7/tcp/{}", port(false))
                .parse()
                .unwrap(),
            format!("/dns4/boot.example.com/udp/{}/quic-v1", port(true))
                .parse()
                .unwrap(),
        ];
        let id: libp2p::PeerId = head.peer_id().to_string().parse().unwrap();
        let tcp = listen
            .iter()
            .find(|a| !a.iter().any(|p| matches!(p, Protocol::QuicV1)));
        let dial: libp2p::Multiaddr = format!("{}/p2p/{id}", tcp.unwrap()).parse().unwrap();
        rust.dial(dial).await;
        let info = rust.identified(id).await;
        assert_eq!(
            info.listen_addrs, want,
            "head {i} (listening on {listen:?})"
        );
        // The role's status shows the operator the same.
        let status = booster.status();
        let shown = status.heads.iter().find(|h| h.index == i).unwrap();
        let want: Vec<String> = want.iter().map(ToString::to_string).collect();
        assert_eq!(shown.advertised, want, "head {i} in the status");
    }
}
