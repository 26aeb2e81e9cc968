//! Drives the real `pylon` binary: spawned as a process, reached over loopback, stopped
//! by signal. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use pylon_node::metrics::Metrics;
use pylon_node::node;
use pylon_node::protocols::{identify, ping};
use pylon_testkit::wait;
use tokio::process::Command;

mod common;
use common::{
    bin, client, field_after, http_get, kad_node, peer_of, pylon_command, subcommand, wait_http,
    wait_metric, Running, LOCAL_TCP, T,
};

#[tokio::test]
async fn run_serves_identify_ping_metrics_and_stops_on_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]);
    let started = pylon.wait_log("pylon started").await;
    let (listen, metrics) = pylon.addresses().await;
    let peer = peer_of(&listen);
    assert!(started.contains(&peer.to_string()));

    // `pylon id` agrees with the running node.
    let out = subcommand("id", dir.path()).output().await.unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        peer.to_string()
    );

    // A peer connects, identifies and pings.
    let c = client().await;
    let mut events = c.identify.subscribe();
    c.host.dial(&listen).await.unwrap();
    let info = tokio::time::timeout(T, async {
        loop {
            if let identify::Event::Identified(info) = events.recv().await.unwrap() {
                return info;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        info.agent_version.as_deref(),
        Some(concat!("pylon/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(info.record.as_ref().unwrap().peer_id(), peer);
    ping::ping(&c.host, &peer).await.unwrap();

    // Metrics: the connection is counted, with go-libp2p's family names and no PeerId.
    let body = http_get(&metrics, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("libp2p_swarm_connections_opened_total{dir=\"inbound\",transport=\"tcp\",security=\"noise\",muxer=\"yamux\""), "{body}");
    assert!(
        body.contains("libp2p_swarm_handshake_latency_seconds_bucket"),
        "{body}"
    );
    assert!(!body.contains(&peer.to_string()) && !body.contains(&c.peer_id().to_string()));

    // SIGTERM: the connection is closed politely, storage flushed, exit 0.
    let mut host_events = c.host.subscribe();
    pylon.stop("-TERM").await;
    tokio::time::timeout(T, async {
        loop {
            if let pylon_node::host::Event::ConnectionClosed { .. } =
                host_events.recv().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .unwrap();

    // Restart (SIGINT this time): same PeerId, and the peer we met is still in the store.
    let mut again = Running::start(dir.path(), &[]);
    let started = again.wait_log("pylon started").await;
    assert!(started.contains(&peer.to_string()), "{started}");
    again.stop("-INT").await;
    c.shutdown(T).await;
    let storage = pylon_node::storage::Storage::open(
        &dir.path().join(node::DB_DIR),
        Default::default(),
        pylon_node::storage::Metrics::unregistered(),
    )
    .unwrap();
    let ps = pylon_node::peerstore::Peerstore::open(
        storage.tree("peers").unwrap(),
        Default::default(),
        Metrics::unregistered(),
    )
    .unwrap();
    assert_eq!(
        ps.get(&c.peer_id()).unwrap().agent_version.as_deref(),
        info.agent_version.as_deref()
    );
}

#[tokio::test]
async fn bad_config_names_the_key_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[connections]\nhandshake_timeout = \"soon\"\n").unwrap();
    let out = subcommand("run", dir.path())
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("connections.handshake_timeout") && err.contains("soon"),
        "{err}"
    );

    let out = subcommand("run", dir.path())
        .args(["--listen", "/ip4/1.2.3.4/udp/9"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("listen[0]"));

    let out = subcommand("id", dir.path())
        .env("PYLON_PEERSTORE__MAX_PEERS", "many")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("peerstore.max_peers"));

    // A port another process holds (a second node on one host, its defaults the same):
    // the error names the key and the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (key, metrics, admin) in [
        ("metrics.listen", addr.as_str(), "127.0.0.1:0"),
        ("admin.listen", "127.0.0.1:0", addr.as_str()),
    ] {
        let out = subcommand("run", dir.path())
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--profile", "minimal"])
            .args(["--metrics", metrics, "--admin", admin])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{key}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(key) && err.contains(&addr), "{key}: {err}");
    }
}

#[tokio::test]
async fn init_writes_a_config_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = subcommand("init", &data).output().await.unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(data.join("pylon.toml")).unwrap();
    assert!(text.contains(&format!("data_dir = {:?}", data.display().to_string())));
    let out = Command::new(bin())
        .arg("config")
        .arg("--config")
        .arg(data.join("pylon.toml"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn perf_client_measures_a_perf_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("perf.toml");
    std::fs::write(&config, "[perf]\n").unwrap();
    let mut server = Running::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ],
    );
    let line = server.wait_log("listening on /ip4/127.0.0.1/udp/").await;
    let addr = field_after(&line, "listening on ").to_string();
    let out = tokio::time::timeout(
        T,
        Command::new(bin())
            .args([
                "perf",
                &addr,
                "--upload",
                "3MiB",
                "--download",
                "2MiB",
                "--json",
            ])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["uploadBytes"], 3 << 20);
    assert_eq!(report["downloadBytes"], 2 << 20);
    assert_eq!(report["transport"], "quic-v1");
    assert!(report["timeSeconds"].as_f64().unwrap() > 0.0);
    // Bad sizes and addresses are refused with a message, exit 2.
    for args in [
        vec!["perf", addr.as_str(), "--upload", "3 parsecs"],
        vec!["perf", "/ip4/127.0.0.1/tcp/1"],
    ] {
        let out = Command::new(bin()).args(&args).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(!out.stderr.is_empty());
    }
    server.stop("-INT").await;
}

/// The bootstrap role across `kill -9`: records, providers and the routing table that
/// were acknowledged are still there after a restart, and the first FIND_NODE is
/// answered from the saved table before any peer has reconnected.
#[tokio::test]
async fn bootstrap_role_survives_kill_9_with_its_table_and_records() {
    use pylon_node::protocols::kad::{proto, MessageType};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pylon.toml"),
        "[roles.bootstrap]\nmax_connections_per_ip = 64\n",
    )
    .unwrap();
    let config = dir.path().join("pylon.toml").display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let args = ["--config", config.as_str()];
    let start = || Running::spawn(pylon_command(dir.path(), &listen, &args, &[]));
    let mut pylon = start();
    pylon.wait_log("role: bootstrap").await;
    let (addr, hostport) = pylon.addresses().await;
    let boot = peer_of(&addr);

    // Five DHT servers join through it; a client stores a record and provides content.
    let mut servers = Vec::new();
    for _ in 0..5 {
        servers.push(kad_node(true, vec![addr.clone()]).await);
    }
    wait_metric(&hostport, "libp2p_kad_routing_table_peers 5").await;
    let client = kad_node(false, vec![addr.clone()]).await;
    let ck = client.kad.as_ref().unwrap();
    // The routing table reports nothing: polled.
    wait::until("the client's routing table filled", T, || {
        ck.table_len() > 0
    })
    .await;
    let mut key = b"/pk/".to_vec();
    key.extend_from_slice(&client.peer_id().to_bytes());
    let value = client.host.keypair().public().encode_protobuf();
    assert_eq!(
        ck.put_value(&key, &value).await.unwrap(),
        6,
        "all six acknowledged"
    );
    let mut content = vec![0x12, 0x20]; // a SHA-256 multihash
    content.extend_from_slice(&[7u8; 32]);
    assert!(ck.provide(&content).await.unwrap() >= 6);
    // ADD_PROVIDER has no reply: the server counts it once it is stored and flushed.
    wait_metric(
        &hostport,
        "libp2p_kad_inbound_requests_total{kind=\"add_provider\",outcome=\"ok\"} 1",
    )
    .await;

    pylon.child.kill().await.unwrap(); // SIGKILL: no shutdown, no flush
    client.shutdown(T).await;

    let mut pylon = start();
    pylon.wait_log("role: bootstrap").await;
    let started = pylon.wait_log("kademlia on").await;
    assert!(started.contains("table=5"), "{started}");
    // A newcomer's first request: answered from the saved table.
    let newcomer = kad_node(false, Vec::new()).await;
    let nk = newcomer.kad.as_ref().unwrap();
    let ask = |kind, key: &[u8]| proto::Message::new(kind, key.to_vec());
    let reply = nk
        .query(
            boot,
            std::slice::from_ref(&addr),
            &ask(MessageType::FindNode, &newcomer.peer_id().to_bytes()),
        )
        .await
        .unwrap();
    let mut got: Vec<Vec<u8>> = reply.closer_peers.iter().map(|p| p.id.clone()).collect();
    let mut want: Vec<Vec<u8>> = servers.iter().map(|s| s.peer_id().to_bytes()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the five servers, from the saved table");
    let reply = nk
        .query(
            boot,
            std::slice::from_ref(&addr),
            &ask(MessageType::GetValue, &key),
        )
        .await
        .unwrap();
    assert_eq!(reply.record.map(|r| r.value), Some(value));
    let reply = nk
        .query(
            boot,
            std::slice::from_ref(&addr),
            &ask(MessageType::GetProviders, &content),
        )
        .await
        .unwrap();
    assert_eq!(reply.provider_peers.len(), 1);
    assert_eq!(reply.provider_peers[0].id, client.peer_id().to_bytes());
    pylon.stop("-TERM").await;
}

/// Two real processes: a `pylon --role relay`, and a `pylon` that holds a reservation on it
/// (`relay_client.listen_via` from the environment). A peer that cannot reach the second
/// node directly reaches it through the relay and pings it; the relay stopped by SIGINT
/// mid-circuit exits cleanly and the circuit ends.
#[tokio::test]
async fn a_node_is_reachable_through_a_relay_from_the_config() {
    let relay_dir = tempfile::tempdir().unwrap();
    let mut relay = Running::start(relay_dir.path(), &["--role", "relay"]);
    let (relay_addr, relay_metrics) = relay.addresses().await;

    let node_dir = tempfile::tempdir().unwrap();
    let listen_via = relay_addr.to_string();
    let mut node = Running::spawn(pylon_command(
        node_dir.path(),
        LOCAL_TCP,
        &[],
        &[("PYLON_RELAY_CLIENT__LISTEN_VIA", listen_via.as_str())],
    ));
    let (node_addr, _) = node.addresses().await;
    let node_id = match node_addr.iter().last() {
        Some(pylon_node::multiaddr::Protocol::P2p(id)) => id,
        other => panic!("no /p2p/ in {node_addr}: {other:?}"),
    };
    wait_metric(&relay_metrics, "pylon_relay_reservations 1").await;

    let peer = client().await;
    let through = relay_addr
        .with(pylon_node::multiaddr::Protocol::P2pCircuit)
        .with(pylon_node::multiaddr::Protocol::P2p(node_id));
    let conn = tokio::time::timeout(T, peer.host.dial(&through))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.transport(), "p2p-circuit");
    let rtt = tokio::time::timeout(T, ping::ping(&peer.host, &node_id))
        .await
        .unwrap();
    assert!(rtt.is_ok(), "{rtt:?}");
    wait_metric(
        &relay_metrics,
        "libp2p_relaysvc_connections_total{type=\"opened\"} 1",
    )
    .await;
    // SIGINT while the circuit is open: the relay flushes and exits 0 within its grace,
    // and the caller's relayed connection ends with it rather than hanging.
    relay.stop("-INT").await;
    tokio::time::timeout(T, conn.closed())
        .await
        .expect("the circuit closes when the relay stops");
    node.stop("-TERM").await;
}

/// `/readyz` names what a role still lacks: a bootstrap node with an empty routing table
/// and no reachability verdict is not ready, and says both; once it joined a DHT peer that
/// is also an AutoNAT server (lab settings: loopback dialed, one confirmation enough) and
/// that server reached it, it is ready.
#[tokio::test]
async fn readiness_names_what_a_role_still_lacks_until_it_has_it() {
    use pylon_roles::autonat::AutoNat;
    use pylon_roles::{Metrics as RoleMetrics, Role};

    // The peer to join: a DHT server and an AutoNAT server, on loopback.
    let peer = pylon_testkit::node::kad_node(true, Vec::new()).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let _autonat = AutoNat::start(
        &peer,
        pylon_roles::autonat::Config {
            allow_loopback: true,
            ..Default::default()
        },
        &mut RoleMetrics::of::<AutoNat>(&mut registry),
    )
    .unwrap();

    // First alone: nothing to join, nobody to ask.
    let lonely_dir = tempfile::tempdir().unwrap();
    let mut lonely = Running::start(lonely_dir.path(), &["--role", "bootstrap"]);
    let (_, lonely_metrics) = lonely.addresses().await;
    let body = wait_http(&lonely_metrics, "/readyz", "503").await;
    assert!(body.contains("routing table is empty"), "{body}");
    assert!(body.contains("reachability unknown"), "{body}");
    lonely.stop("-TERM").await;

    // Then with the peer to join and to ask.
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = pylon_testkit::node::addr_of(&peer).to_string();
    let mut pylon = Running::spawn(pylon_command(
        dir.path(),
        LOCAL_TCP,
        &["--role", "bootstrap"],
        &[
            ("PYLON_KAD__BOOTSTRAP", bootstrap.as_str()),
            ("PYLON_AUTONAT__ALLOW_LOOPBACK", "true"),
            ("PYLON_AUTONAT__CONFIRMATIONS", "1"),
        ],
    ));
    let (_, metrics) = pylon.addresses().await;
    wait_http(&metrics, "/readyz", "200 OK").await;
    pylon.stop("-TERM").await;
}
