//! Kademlia interop with real js-libp2p 3.x DHT nodes (`@libp2p/kad-dht`, driven through
//! `interop/js/peer.mjs --kad`), both directions:
//! - js-libp2p DHT servers and a DHT client that know only a Pylon server bootstrap from it,
//!   then find their closest peers, store and fetch a `/pk/` record, provide and find
//!   providers, with Pylon's part in each checked;
//! - a Pylon client that knows only one js-libp2p server does the same against them.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::*;
use pylon_interop::js::{JsKadMode, JsPeer};
use pylon_node::protocols::kad as pkad;
use pylon_node::PeerId;
use pylon_testkit::wait;

/// js DHT servers in the network (plus one js client and the Pylon server).
const JS_SERVERS: usize = 3;

fn ids<'a>(peers: impl IntoIterator<Item = &'a JsPeer>) -> HashSet<String> {
    peers.into_iter().map(|p| p.peer_id.clone()).collect()
}

/// Kademlia's distance between two keys: the XOR of their SHA-256 hashes (big-endian order).
fn distance(a: &[u8], b: &[u8]) -> [u8; 32] {
    let ha = ring::digest::digest(&ring::digest::SHA256, a);
    let hb = ring::digest::digest(&ring::digest::SHA256, b);
    std::array::from_fn(|i| ha.as_ref()[i] ^ hb.as_ref()[i])
}

/// A random key that all of `near` are closer to than `far`.
fn key_beyond(far: &PeerId, near: &HashSet<PeerId>) -> [u8; 32] {
    for _ in 0..10_000 {
        let key = rand::random::<[u8; 32]>();
        let limit = distance(&key, &far.to_bytes());
        if near.iter().all(|p| distance(&key, &p.to_bytes()) < limit) {
            return key;
        }
    }
    panic!("no key with {far} farther than {near:?}");
}

/// Waits until the js peer's routing table holds all of `peers` (asked again and again:
/// the js peer reports nothing).
async fn js_table_holds(js: &mut JsPeer, peers: &HashSet<String>) {
    let mut table = HashSet::new();
    let held = wait::within(T, async || {
        table = js.kad_table().await.unwrap().into_iter().collect();
        table.is_superset(peers)
    })
    .await;
    assert!(
        held,
        "js routing table {table:?} still lacks some of {peers:?} after {T:?}"
    );
}

/// The address without its `/p2p/<id>` suffix.
fn transport_part(addr: &str) -> &str {
    addr.rsplit_once("/p2p/").map_or(addr, |(head, _)| head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_dht_bootstraps_from_pylon_and_pylon_client_uses_it() {
    let server = pylon_kad(true, Vec::new()).await;
    let server_id = server.peer_id().to_string();
    let server_addr = pylon_addr(&server).to_string();

    // Three js DHT servers and one js DHT client, each told only about Pylon.
    let mut servers = Vec::new();
    for _ in 0..JS_SERVERS {
        servers.push(JsPeer::listen_kad(JsKadMode::Server).await.unwrap());
    }
    let mut client = JsPeer::listen_kad(JsKadMode::Client).await.unwrap();
    for js in servers.iter_mut().chain([&mut client]) {
        js.kad_bootstrap(&server_addr).await.unwrap();
        assert!(js.kad_table().await.unwrap().contains(&server_id));
    }
    // Pylon admitted the js servers (identify listed /ipfs/kad/1.0.0), not the client.
    let js_server_ids: HashSet<PeerId> =
        servers.iter().map(|s| s.peer_id.parse().unwrap()).collect();
    eventually("the js servers in Pylon's table", || {
        kad_of(&server)
            .table_entries()
            .iter()
            .map(|e| e.peer)
            .collect::<HashSet<_>>()
            == js_server_ids
    })
    .await;

    // Peer routing: a network smaller than k, so the closest peers are all the servers.
    // js-libp2p only follows a referred peer that is closer to the key than the peer that
    // named it, so with a key that every js server is closer to than Pylon, Pylon's FIND_NODE
    // answer alone must lead the js client to all of them.
    let target = key_beyond(&server.peer_id(), &js_server_ids);
    let mut everyone: HashSet<String> = ids(&servers);
    everyone.insert(server_id.clone());
    let found = client.kad_closest(&target).await.unwrap();
    assert_eq!(
        found.peers.iter().cloned().collect::<HashSet<_>>(),
        everyone,
        "the js client found every DHT server through Pylon ({server_id}): {found:?}"
    );
    let found = servers[0].kad_closest(&target).await.unwrap();
    let mut others = everyone.clone();
    others.remove(&servers[0].peer_id);
    assert_eq!(
        found.peers.iter().cloned().collect::<HashSet<_>>(),
        others,
        "a js server found the others through Pylon ({server_id}): {found:?}"
    );

    // The js client's lookup put every server in its table (js-libp2p admits peers that
    // answered); later queries start from all of them.
    js_table_holds(&mut client, &everyone).await;

    // A /pk/ record put by a js server: Pylon validates and stores it, the js client fetches it,
    // Pylon among those that hand it out.
    let record_owner = libp2p_identity::Keypair::generate_ed25519();
    let key = pk_key(&record_owner.public().to_peer_id());
    let value = record_owner.public().encode_protobuf();
    let put = servers[0].kad_put(&key, &value).await.unwrap();
    assert!(put.acks.contains(&server_id), "Pylon acknowledged: {put:?}");
    assert!(
        put.acks.iter().all(|a| others.contains(a)) && put.errors.is_empty(),
        "only DHT servers acknowledged, and none failed: {put:?}"
    );
    let stored = kad_of(&server).store().get(&key, 0).unwrap();
    assert_eq!(
        stored.map(|r| r.value),
        Some(value.clone()),
        "the record on Pylon"
    );
    let got = client.kad_get(&key).await.unwrap();
    assert_eq!(got.value.as_ref(), Some(&value), "{got:?}");
    assert!(
        got.records
            .iter()
            .any(|r| r.from == server_id && r.value == value),
        "Pylon returned the record to js: {got:?}"
    );

    // Providers: announced by a js server (with its addresses), held by Pylon, found by the
    // js client in Pylon's answer.
    let content = sha256_multihash(b"pylon kad interop with js-libp2p");
    let provided = servers[1].kad_provide(&content).await.unwrap();
    assert!(provided.sent_to.contains(&server_id), "{provided:?}");
    let provider = &servers[1];
    let provider_id: PeerId = provider.peer_id.parse().unwrap();
    let provider_addrs: Vec<String> = provider
        .addrs
        .iter()
        .map(|a| transport_part(a).to_string())
        .collect();
    eventually("the js provider record on Pylon", || {
        kad_of(&server)
            .store()
            .providers(&content, 0)
            .unwrap()
            .iter()
            .any(|p| p.peer == provider_id)
    })
    .await;
    let held = kad_of(&server).store().providers(&content, 0).unwrap();
    let held = held.iter().find(|p| p.peer == provider_id).unwrap();
    for a in &provider_addrs {
        assert!(
            held.addrs
                .iter()
                .any(|h| transport_part(&h.to_string()) == a.as_str()),
            "{a} missing from Pylon's provider record {held:?}"
        );
    }
    let found = client.kad_providers(&content).await.unwrap();
    let from_pylon = found
        .providers
        .iter()
        .find(|p| p.from == server_id && p.peer_id == provider.peer_id)
        .unwrap_or_else(|| panic!("Pylon handed out the js provider: {found:?}"));
    for a in &provider_addrs {
        assert!(
            from_pylon
                .addrs
                .iter()
                .any(|h| transport_part(h) == a.as_str()),
            "{a} missing from Pylon's answer {from_pylon:?}"
        );
    }

    // The other direction: a Pylon client that knows one js-libp2p server.
    let js_boot: multiaddr::Multiaddr = servers[2].addrs[0].parse().unwrap();
    let pclient = pylon_kad(false, vec![js_boot]).await;
    let ck = kad_of(&pclient);
    eventually(
        "the js bootstrap server in the Pylon client's table",
        || ck.table_len() >= 1,
    )
    .await;
    ck.bootstrap().await.unwrap();
    let found: HashSet<String> = ck
        .closest_peers(&target)
        .await
        .into_iter()
        .map(|f| f.peer.to_string())
        .collect();
    assert_eq!(found, everyone, "the Pylon client found every server");
    // The record and the provider, from js servers' answers.
    let lookup = ck
        .lookup(key.clone(), pkad::MessageType::GetValue, None)
        .await;
    let js_ids = ids(&servers);
    assert!(
        lookup
            .records
            .iter()
            .any(|(from, v)| js_ids.contains(&from.to_string()) && *v == value),
        "a js server gave the Pylon client the record: {:?}",
        lookup.records
    );
    assert_eq!(ck.get_value(&key).await.unwrap(), Some(value.clone()));
    let providers = ck.providers(&content, 4).await.unwrap();
    assert!(
        providers.iter().any(|p| p.peer == provider_id),
        "{providers:?}"
    );

    // The Pylon client stores its own /pk/ record and provides; the js client finds both in
    // the js servers' answers (js keeps a provider record only if it carries addresses).
    let own_key = pk_key(&pclient.peer_id());
    let own_value = pclient.host.keypair().public().encode_protobuf();
    let acks = ck.put_value(&own_key, &own_value).await.unwrap();
    assert_eq!(acks, JS_SERVERS + 1, "every DHT server acknowledged");
    let got = client.kad_get(&own_key).await.unwrap();
    assert_eq!(got.value.as_ref(), Some(&own_value), "{got:?}");
    assert!(
        got.records
            .iter()
            .any(|r| js_ids.contains(&r.from) && r.value == own_value),
        "a js server returned the Pylon client's record: {got:?}"
    );
    let content2 = sha256_multihash(b"provided by a pylon client to js-libp2p");
    assert_eq!(ck.provide(&content2).await.unwrap(), JS_SERVERS + 1);
    let found = client.kad_providers(&content2).await.unwrap();
    let pclient_id = pclient.peer_id().to_string();
    assert!(
        found
            .providers
            .iter()
            .any(|p| js_ids.contains(&p.from) && p.peer_id == pclient_id && !p.addrs.is_empty()),
        "a js server handed out the Pylon client as provider: {found:?}"
    );
    // A client-mode Pylon stays out of the js servers' tables.
    for js in &mut servers {
        assert!(!js.kad_table().await.unwrap().contains(&pclient_id));
    }

    client.stop().await.unwrap();
    for js in servers {
        js.stop().await.unwrap();
    }
    pclient.shutdown(T).await;
    server.shutdown(T).await;
}
