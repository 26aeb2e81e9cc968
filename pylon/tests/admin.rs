//! The admin API of a real `pylon run` process, with peers in this process: the token,
//! every read endpoint validated against the OpenAPI document the node serves, the
//! actions (disconnect, bans and their expiry, drain, reload and SIGHUP), and the
//! `pylon status|peers|bans|ban|unban|drain|reload` commands. Loopback only; every wait
//! is bounded by `T`, conditions the process does not report are polled.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pylon_node::node::Node;
use pylon_node::Multiaddr;
use pylon_testkit::wait;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::Command;

mod common;
use common::http::read_to_close;
use common::{
    bin, client, field_after, http_get, kad_node, peer_of, pylon_command, subcommand, Running,
    LOCAL_TCP, T,
};

// ---- An HTTP client that shows everything, and the OpenAPI document ---------------------

/// An answer of the API.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    json: Value,
}

/// One request on a connection of its own; the whole answer.
async fn http(
    hostport: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(hostport).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (text, _) = read_to_close(&mut s, T).await;
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head[9..12].parse().unwrap();
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    let json = serde_json::from_str(&payload)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {head}\n{payload}"));
    Answer {
        status,
        head: head.to_string(),
        json,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The admin API of a running node, with its token.
struct Api {
    hostport: String,
    token: String,
    /// The OpenAPI document the node serves.
    spec: Value,
}

impl Api {
    async fn of(pylon: &mut Running, data_dir: &Path) -> Api {
        let hostport = pylon.admin().await;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let auth = format!("Bearer {token}");
        let spec = http(&hostport, "GET", "/api/v1/openapi.json", Some(&auth), None).await;
        assert_eq!(spec.status, 200);
        Api {
            hostport,
            token,
            spec: spec.json,
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let auth = format!("Bearer {}", self.token);
        http(
            &self.hostport,
            method,
            &format!("/api/v1{path}"),
            Some(&auth),
            body,
        )
        .await
    }

    /// `method path`, its answer checked against the document's schema for `route` (the
    /// path template) and the status it came with.
    async fn checked(&self, method: &str, path: &str, route: &str, body: Option<&str>) -> Answer {
        let answer = self.send(method, path, body).await;
        self.validate(method, route, &answer);
        answer
    }

    async fn get(&self, path: &str) -> Answer {
        let route = path.split('?').next().unwrap().to_string();
        let answer = self.checked("GET", path, &route, None).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.json);
        answer
    }

    /// Validates an answer with the JSON schema the document gives for it.
    fn validate(&self, method: &str, route: &str, answer: &Answer) {
        let op = &self.spec["paths"][route][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {route} is not in the document");
        let mut response = &op["responses"][answer.status.to_string()];
        if let Some(r) = response["$ref"].as_str() {
            response = self.spec.pointer(r.trim_start_matches('#')).unwrap();
        }
        assert!(
            response.is_object(),
            "{method} {route} answered {}, a status the document does not list: {}",
            answer.status,
            answer.json
        );
        let schema = &response["content"]["application/json"]["schema"];
        let wrapper = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.spec["components"],
        });
        let validator = jsonschema::validator_for(&wrapper).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&answer.json)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {route} ({}) does not match the document:\n{}\n{:#}",
            answer.status,
            errors.join("\n"),
            answer.json
        );
    }
}

// ---- Helpers ---------------------------------------------------------------------------

/// A `pylon run` on `dir` with `config` as its file and the test's usual flags.
fn start(dir: &Path, config: &str, extra: &[&str]) -> Running {
    let file = dir.join("pylon.toml");
    std::fs::write(&file, config).unwrap();
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Running::spawn(pylon_command(dir, LOCAL_TCP, &args, &[]))
}

/// `c` dials `addr` and is refused: the dial fails, or the connection it got is closed by
/// the node at once (a peer ban is applied once the handshake names the peer).
async fn refused(c: &Node, addr: &Multiaddr) {
    match tokio::time::timeout(T, c.host.dial(addr)).await.unwrap() {
        Err(_) => {}
        Ok(conn) => tokio::time::timeout(T, conn.closed())
            .await
            .expect("the node closes a banned peer's connection"),
    }
}

/// Polls until `c`, dialing `addr`, gets a connection the node keeps: a ping over it is
/// answered (a refused connection has no stream to ping on).
async fn redial_succeeds(c: &Node, addr: &Multiaddr) {
    let node = peer_of(addr);
    wait::until_async("a redial succeeded", T, async || {
        c.host.dial(addr).await.is_ok()
            && pylon_node::protocols::ping::ping(&c.host, &node)
                .await
                .is_ok()
    })
    .await;
}

/// Polls `GET path` until `check` holds on its JSON; returns it.
async fn poll(api: &Api, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait::until_async(what, T, async || {
        last = api.send("GET", path, None).await.json;
        check(&last)
    })
    .await;
    last
}

/// Polls until the node lists a connection of `peer` (a dialer's connection is up before
/// the node has registered its side).
async fn node_has(api: &Api, peer: &pylon_node::PeerId) {
    let path = format!("/connections?peer={peer}");
    poll(api, &path, "the node has the connection", |v| {
        v["total"] == 1
    })
    .await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---- Tests -----------------------------------------------------------------------------

/// `pylon init` writes a private 32-byte hex token and never replaces it; `pylon run`
/// makes one when there is none; a token file readable by others stops the node.
#[tokio::test]
async fn the_token_file_is_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = subcommand("init", &data).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = data.join("admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(token.trim().len(), 64);
    assert!(token.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    let out = subcommand("init", &data).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("left as it is"));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);

    // `pylon run` on a fresh data directory creates one (and says so); an admin address
    // that is not loopback is warned about.
    let fresh = tempfile::tempdir().unwrap();
    let mut cmd = subcommand("run", fresh.path());
    cmd.args([
        "--listen",
        LOCAL_TCP,
        "--metrics",
        "off",
        "--admin",
        "0.0.0.0:0",
    ]);
    let mut pylon = Running::spawn(cmd);
    pylon.wait_log("created the admin token file").await;
    let warning = pylon.wait_log("not a loopback address").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(pylon.admin().await.starts_with("0.0.0.0:"));
    assert_eq!(mode(&fresh.path().join("admin.token")), 0o600);
    pylon.stop("-TERM").await;

    // Readable by the group: refused, naming the file, before the node starts.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut cmd = pylon_command(&data, LOCAL_TCP, &[], &[]);
    let out = tokio::time::timeout(T, cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token") && err.contains("chmod 600"),
        "{err}"
    );
}

/// No token, a wrong one, a malformed body, an unknown route: JSON errors with the right
/// status, each as the document describes it, and nothing done.
#[tokio::test]
async fn the_api_refuses_without_the_token_and_explains_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]);
    let api = Api::of(&mut pylon, dir.path()).await;
    for auth in [
        None,
        Some("Bearer 00112233445566778899aabbccddeeff"),
        Some("Basic x"),
    ] {
        for (method, path) in [("GET", "/api/v1/identity"), ("POST", "/api/v1/drain")] {
            let a = http(&api.hostport, method, path, auth, None).await;
            assert_eq!(a.status, 401, "{method} {path} {auth:?}: {}", a.json);
            assert!(a.head.contains("www-authenticate: Bearer"), "{}", a.head);
            api.validate(method, &path["/api/v1".len()..], &a);
        }
    }
    let a = api
        .checked("POST", "/bans", "/bans", Some("{\"peer\": "))
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.json["error"].as_str().unwrap().contains("malformed JSON"),
        "{}",
        a.json
    );
    let a = api
        .checked("POST", "/bans", "/bans", Some(r#"{"cidr": "127.0.0.1/8"}"#))
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.json["error"].as_str().unwrap().contains("127.0.0.0"),
        "{}",
        a.json
    );
    let a = api.checked("GET", "/peers?limit=x", "/peers", None).await;
    assert_eq!(a.status, 400);
    let a = api.send("GET", "/nope", None).await;
    assert_eq!(a.status, 404);
    assert!(a.json["error"].as_str().unwrap().contains("/api/v1/nope"));
    // Nothing was done: the node runs on, with no ban.
    assert_eq!(api.get("/bans").await.json["bans"], json!([]));
    assert!(!api.get("/identity").await.json["draining"]
        .as_bool()
        .unwrap());
    pylon.stop("-TERM").await;
}

/// Every read endpoint answers as the document says, and shows what the test did: a
/// connected peer, a DHT server in the routing table, a record stored.
#[tokio::test]
async fn read_endpoints_match_the_document_and_show_real_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = start(dir.path(), "[kad]\nserver = true\n", &["--role", "relay"]);
    let (listen, metrics) = pylon.addresses().await;
    let api = Api::of(&mut pylon, dir.path()).await;
    let me = peer_of(&listen);

    let c = client().await;
    c.host.dial(&listen).await.unwrap();
    let server = kad_node(true, vec![listen.clone()]).await;
    let writer = kad_node(false, vec![listen.clone()]).await;
    let wk = writer.kad.as_ref().unwrap();
    wait::until("the writer's table has the node", T, || wk.table_len() > 0).await;
    let mut key = b"/pk/".to_vec();
    key.extend_from_slice(&writer.peer_id().to_bytes());
    let value = writer.host.keypair().public().encode_protobuf();
    assert!(wk.put_value(&key, &value).await.unwrap() >= 1);

    let id = api.get("/identity").await.json;
    assert_eq!(id["peer_id"], me.to_string());
    assert_eq!(id["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(id["roles"], json!(["relay"]));
    assert!(id["listen_addrs"]
        .as_array()
        .unwrap()
        .contains(&json!(listen.to_string())));
    assert!(id["protocols"]
        .as_array()
        .unwrap()
        .contains(&json!("/ipfs/kad/1.0.0")));
    assert_eq!(id["reachability"], "unknown");

    // The peer identified: agent and protocols, connected.
    let q = format!("/peers?q={}", c.peer_id());
    let peers = poll(&api, &q, "the client identified", |v| {
        v["peers"][0]["agent_version"].is_string()
    })
    .await;
    assert_eq!(peers["total"], 1);
    let p = &peers["peers"][0];
    assert_eq!(p["peer_id"], c.peer_id().to_string());
    assert_eq!(p["connected"], true);
    assert!(p["protocols"]
        .as_array()
        .unwrap()
        .contains(&json!("/ipfs/id/1.0.0")));
    api.get(&q).await;
    let all = api.get("/peers?limit=1").await.json;
    assert_eq!(all["peers"].as_array().unwrap().len(), 1);
    assert!(all["total"].as_u64().unwrap() >= 3, "{all}");

    let conns = api
        .get(&format!("/connections?peer={}", c.peer_id()))
        .await
        .json;
    assert_eq!(conns["total"], 1);
    let conn = &conns["connections"][0];
    assert_eq!(
        (
            &conn["direction"],
            &conn["transport"],
            &conn["security"],
            &conn["muxer"]
        ),
        (
            &json!("inbound"),
            &json!("tcp"),
            &json!("noise"),
            &json!("yamux")
        )
    );
    let quic = api.get("/connections?transport=quic-v1").await.json;
    assert_eq!(quic["total"], 0);

    let buckets = poll(&api, "/kad/buckets", "the DHT server in the table", |v| {
        v["peers"].as_u64() >= Some(1)
    })
    .await;
    let listed: Vec<&Value> = buckets["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["peers"].as_array().unwrap())
        .collect();
    assert!(listed
        .iter()
        .any(|p| p["peer_id"] == json!(server.peer_id().to_string())));
    api.get("/kad/buckets").await;

    let records = api.get("/kad/records").await.json;
    assert_eq!(records["total"], 1);
    let r = &records["records"][0];
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r["key"], hex);
    assert_eq!(r["namespace"], "pk");
    assert_eq!(r["value_bytes"], value.len());
    assert!(r["expires_in_secs"].as_u64().unwrap() > 47 * 3600);

    let roles = api.get("/roles").await.json;
    assert_eq!(roles["roles"][0]["name"], "relay");
    assert!(roles["roles"][0]["status"]["max_reservations"].is_number());

    let config = api.get("/config").await.json;
    assert_eq!(config["config"]["kad"]["server"], true);
    assert_eq!(config["config"]["admin"]["listen"], "127.0.0.1:0");
    assert_eq!(config["restart_required"], json!([]));

    let res = api.get("/resources").await.json;
    assert!(res["connections"]["in_use"].as_u64().unwrap() >= 3, "{res}");
    assert_eq!(res["connections"]["limit"], 4096);
    assert!(res["fds"]["open"].as_u64().unwrap() > 10);
    assert!(res["memory"]["resident_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(res["threads"].as_u64().unwrap() >= 2);

    // The dashboard's history: a sample is taken at start, then every 5 s.
    poll(&api, "/history", "the first sample", |v| {
        v["samples"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    let history = api.get("/history").await.json;
    assert_eq!(history["interval_secs"], 5);
    assert_eq!(history["capacity"], 720);
    assert_eq!(history["roles"], json!(["relay"]));
    assert!(
        history["samples"][0]["requests"]["relay"].is_u64(),
        "{history}"
    );
    let last = history["samples"].as_array().unwrap().last().unwrap()["unix_ms"]
        .as_u64()
        .unwrap();
    // Only what came after (a sample may have been taken in between).
    let newer = api.get(&format!("/history?since={last}")).await.json;
    assert!(
        newer["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["unix_ms"].as_u64() > Some(last)),
        "{newer}"
    );
    // What its bandwidth chart reads: stream payload, counted both ways.
    let mut exposition = String::new();
    wait::until_async("stream bytes counted", T, async || {
        exposition = http_get(&metrics, "/metrics").await;
        ["received", "sent"].iter().all(|d| {
            let name = format!("pylon_stream_bytes_total{{direction=\"{d}\"}}");
            common::http::sample::<f64>(&exposition, &name).is_some_and(|v| v > 0.0)
        })
    })
    .await;
    pylon.stop("-TERM").await;
}

/// Disconnect closes the peer's connection; a peer ban refuses its redial until lifted;
/// a CIDR ban on 127.0.0.0/8 closes and refuses every loopback peer (the admin API, on
/// its own listener, answers on); a short ban lapses by itself.
#[tokio::test]
async fn disconnect_and_bans_act_on_real_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]);
    let (listen, _) = pylon.addresses().await;
    let api = Api::of(&mut pylon, dir.path()).await;
    let c = client().await;
    let conn = c.host.dial(&listen).await.unwrap();
    node_has(&api, &c.peer_id()).await;
    let route = "/peers/{peer}/disconnect";
    let path = format!("/peers/{}/disconnect", c.peer_id());
    let a = api.checked("POST", &path, route, None).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["connections_closed"], 1);
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    let a = api.checked("POST", &path, route, None).await;
    assert_eq!(a.status, 404, "not connected any more");

    // A peer ban: the open connection closes, a redial is refused, until lifted.
    let conn = c.host.dial(&listen).await.unwrap();
    let body = format!(r#"{{"peer": "{}", "duration": "10m"}}"#, c.peer_id());
    let ban = api.checked("POST", "/bans", "/bans", Some(&body)).await;
    assert_eq!(ban.status, 201, "{}", ban.json);
    assert_eq!(ban.json["kind"], "peer");
    assert!(ban.json["expires_in_secs"].as_u64().unwrap() <= 600);
    tokio::time::timeout(T, conn.closed()).await.unwrap();
    refused(&c, &listen).await;
    let audit = pylon.wait_log("action=\"ban\"").await;
    assert!(
        audit.contains("pylon::audit")
            && audit.contains(&c.peer_id().to_string())
            && audit.contains("for 10m")
            && audit.contains("ok, id"),
        "{audit}"
    );
    let bans = api.get("/bans").await.json;
    assert_eq!(bans["bans"].as_array().unwrap().len(), 1);
    let other = client().await;
    other.host.dial(&listen).await.unwrap();
    let id = ban.json["id"].as_u64().unwrap();
    let lifted = api
        .checked("DELETE", &format!("/bans/{id}"), "/bans/{id}", None)
        .await;
    assert_eq!(lifted.status, 200);
    redial_succeeds(&c, &listen).await;

    // 127.0.0.0/8: both loopback peers are cut off and refused; HTTP still works.
    let cidr = api
        .checked("POST", "/bans", "/bans", Some(r#"{"cidr": "127.0.0.0/8"}"#))
        .await;
    assert_eq!(cidr.status, 201);
    assert_eq!(cidr.json["expires_in_secs"], Value::Null);
    poll(&api, "/connections", "loopback connections closed", |v| {
        v["total"] == 0
    })
    .await;
    let fresh = client().await;
    assert!(tokio::time::timeout(T, fresh.host.dial(&listen))
        .await
        .unwrap()
        .is_err());
    refused(&c, &listen).await;
    let id = cidr.json["id"].as_u64().unwrap();
    api.checked("DELETE", &format!("/bans/{id}"), "/bans/{id}", None)
        .await;
    redial_succeeds(&fresh, &listen).await;

    // A ban of one second lapses by itself.
    let body = format!(r#"{{"peer": "{}", "duration": "1s"}}"#, other.peer_id());
    let short = api.checked("POST", "/bans", "/bans", Some(&body)).await;
    assert_eq!(short.status, 201);
    poll(&api, "/bans", "the short ban lapsed", |v| {
        v["bans"] == json!([])
    })
    .await;
    redial_succeeds(&other, &listen).await;
    assert!(!pylon.log.iter().any(|l| l.contains(&api.token)));
    pylon.stop("-TERM").await;
}

/// Drain: not ready, no new connections, the open one may finish; once it is gone the
/// node stops as on SIGTERM (storage flushed, exit 0).
#[tokio::test]
async fn drain_refuses_newcomers_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // A grace longer than the test's bound: the node stops because the peer leaves.
    let mut pylon = start(dir.path(), "[connections]\nshutdown_grace = \"60s\"\n", &[]);
    let (listen, metrics) = pylon.addresses().await;
    let api = Api::of(&mut pylon, dir.path()).await;
    let c = client().await;
    let conn = c.host.dial(&listen).await.unwrap();
    node_has(&api, &c.peer_id()).await;
    assert!(http_get(&metrics, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    let a = api.checked("POST", "/drain", "/drain", None).await;
    assert_eq!(a.status, 202, "{}", a.json);
    assert_eq!(a.json["grace_secs"], 60.0);
    pylon.wait_log("draining: no new connections").await;
    let ready = http_get(&metrics, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    let newcomer = client().await;
    assert!(tokio::time::timeout(T, newcomer.host.dial(&listen))
        .await
        .unwrap()
        .is_err());
    assert!(!conn.is_closed(), "the open connection is left to finish");
    pylon_node::protocols::ping::ping(&c.host, &peer_of(&listen))
        .await
        .unwrap();
    c.host.disconnect(&peer_of(&listen));
    pylon.wait_log("drained: shutting down").await;
    pylon.wait_log("storage flushed").await;
    let status = pylon.exit().await.expect("exits after draining");
    assert!(status.success(), "{status}");
}

/// Reload (API) and SIGHUP re-read the file: the log filter changes while running, a
/// changed listen address is named as needing a restart, a bad file changes nothing.
#[tokio::test]
async fn reload_and_sighup_apply_the_log_filter_and_name_restart_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pylon.toml");
    let write = |log: &str, listen: &[&str]| {
        let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
        std::fs::write(
            &file,
            format!("log = {log:?}\nlisten = [{}]\n", listen.join(", ")),
        )
        .unwrap();
    };
    write("info", &[LOCAL_TCP]);
    let mut cmd = subcommand("run", dir.path());
    cmd.arg("--config")
        .arg(&file)
        .args(["--metrics", "off", "--admin", "127.0.0.1:0"]);
    // No RUST_LOG: the file's `log` key sets the filter.
    let mut pylon = Running::spawn_logging(cmd, None);
    let line = pylon.wait_log("listening on ").await;
    let listen: Multiaddr = field_after(&line, "listening on ").parse().unwrap();
    let api = Api::of(&mut pylon, dir.path()).await;

    // SIGHUP: a debug filter for the host, and a second listen address.
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    write("info,pylon_node::host=debug", &[LOCAL_TCP, quic]);
    pylon.signal("-HUP");
    let audit = pylon.wait_log("SIGHUP").await;
    assert!(
        audit.contains("pylon::audit") && audit.contains("applied [log]"),
        "{audit}"
    );
    assert!(audit.contains("restart required for [listen]"), "{audit}");
    let c = client().await;
    c.host.dial(&listen).await.unwrap();
    let debug = pylon.wait_log("connection established").await;
    assert!(debug.contains("DEBUG"), "{debug}");

    // The API: back to info; listen still waits for a restart.
    write("info", &[LOCAL_TCP, quic]);
    let r = api.checked("POST", "/reload", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["applied"], json!(["log"]));
    assert_eq!(r.json["restart_required"], json!(["listen"]));
    pylon.wait_log("log filter is now \"info\"").await;
    let config = api.get("/config").await.json;
    assert_eq!(config["config"]["log"], "info");
    assert_eq!(config["restart_required"], json!(["listen"]));
    assert_eq!(config["config"]["listen"], json!([LOCAL_TCP]), "what runs");

    // A file that does not check: 422, nothing applied.
    write("debugg", &[LOCAL_TCP]);
    let r = api.checked("POST", "/reload", "/reload", None).await;
    assert_eq!(r.status, 422);
    let e = r.json["error"].as_str().unwrap();
    assert!(
        e.contains("log") && e.contains("nothing was applied"),
        "{e}"
    );
    assert_eq!(api.get("/config").await.json["config"]["log"], "info");

    // The file as it was at start: nothing waits any more.
    write("info", &[LOCAL_TCP]);
    let r = api.checked("POST", "/reload", "/reload", None).await;
    assert_eq!(r.json["restart_required"], json!([]));
    assert_eq!(r.json["applied"], json!([]));
    pylon.stop("-TERM").await;
}

/// `pylon` as the operator's client: the commands against the running node, and their
/// errors (no node, a wrong token, a token file others can read) with a non-zero exit.
#[tokio::test]
async fn the_cli_steers_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]);
    let (listen, _) = pylon.addresses().await;
    let admin = pylon.admin().await;
    let me = peer_of(&listen);
    let c = client().await;
    c.host.dial(&listen).await.unwrap();

    let cli = |args: &[&str], data_dir: &Path, admin: &str| {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin", admin]);
        async move {
            let out = tokio::time::timeout(T, cmd.output())
                .await
                .unwrap()
                .unwrap();
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let d = dir.path();
    let (status, out, err) = cli(&["status"], d, &admin).await;
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&me.to_string()) && out.contains("reachability"),
        "{out}"
    );
    let (_, out, _) = cli(&["status", "--json"], d, &admin).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["identity"]["peer_id"], me.to_string());

    let id = c.peer_id().to_string();
    let q = &id[id.len() - 8..];
    let mut out = String::new();
    wait::until_async("pylon peers shows the client", T, async || {
        out = cli(&["peers", "--q", q], d, &admin).await.1;
        out.contains(&id) && out.contains("yes")
    })
    .await;
    assert!(out.contains("1 of 1 peers"), "{out}");

    let (status, out, err) = cli(&["ban", &id, "--for", "10m"], d, &admin).await;
    assert!(status.success(), "{err}");
    assert!(out.starts_with(&format!("banned peer {id} (ban ")), "{out}");
    let (_, out, _) = cli(&["ban", "198.51.100.0/24"], d, &admin).await;
    assert!(
        out.contains("cidr 198.51.100.0/24") && out.contains("until lifted"),
        "{out}"
    );
    let (_, out, _) = cli(&["bans", "--json"], d, &admin).await;
    let bans: Value = serde_json::from_str(&out).unwrap();
    let first = bans["bans"][0]["id"].as_u64().unwrap();
    let (status, out, _) = cli(&["unban", &first.to_string()], d, &admin).await;
    assert!(status.success() && out.starts_with("lifted peer"), "{out}");
    let (status, _, err) = cli(&["unban", "999"], d, &admin).await;
    assert!(!status.success() && err.contains("no ban 999"), "{err}");
    let (status, _, err) = cli(&["ban", "not-a-target"], d, &admin).await;
    assert!(!status.success() && err.contains("400"), "{err}");
    let (status, out, _) = cli(&["reload"], d, &admin).await;
    assert!(
        status.success() && out.contains("applied: nothing"),
        "{out}"
    );

    // Errors: another data directory's token, no node there, a token file others read.
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(subcommand("init", elsewhere.path())
        .output()
        .await
        .unwrap()
        .status
        .success());
    let (status, _, err) = cli(&["status"], elsewhere.path(), &admin).await;
    assert!(
        !status.success() && err.contains("refused the token"),
        "{err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (status, _, err) = cli(&["status"], d, &nobody).await;
    assert!(
        !status.success() && err.contains("cannot reach the admin API"),
        "{err}"
    );
    let token = elsewhere.path().join("admin.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, _, err) = cli(&["status"], elsewhere.path(), &admin).await;
    assert!(!status.success() && err.contains("chmod 600"), "{err}");
    let (status, _, err) = cli(&["peers"], d, "off").await;
    assert!(
        !status.success() && err.contains("admin API is off"),
        "{err}"
    );

    // `pylon drain`: the node stops once the peer leaves (the default grace is 5 s).
    let (status, out, err) = cli(&["drain"], d, &admin).await;
    assert!(
        status.success() && out.starts_with("draining"),
        "{out}{err}"
    );
    pylon.wait_log("drained: shutting down").await;
    let exit = pylon.exit().await.expect("exits after draining");
    assert!(exit.success(), "{exit}");
}
