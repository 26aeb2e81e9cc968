//! The web dashboard in a real headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `dashboard/e2e`): a `pylon run` with the relay, AutoNAT and
//! bootstrap roles, real peers from this process (one holding a relay reservation, one
//! DHT server), and `node dashboard/e2e/ui.mjs` logging in, checking the page's numbers
//! against the admin API, visiting every page and disconnecting a peer through the page.
//! This side then checks the peer's connection really closed. The screenshot is kept at
//! `target/dashboard-screenshot.png`.
//!
//! Needs `apt-get install chromium` and `npm ci --prefix dashboard/e2e` (ops/test.sh does
//! both). Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pylon_testkit::wait;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

mod common;
use common::{client, http_get, kad_node, peer_of, Running, T};

/// The bound on the browser script as a whole (Chromium starts slowly on a busy machine).
const BROWSER: Duration = Duration::from_secs(180);

const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboard/e2e");

/// Debian's Chromium, or `DASHBOARD_CHROMIUM`.
fn chromium() -> PathBuf {
    let path = std::env::var_os("DASHBOARD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "no Chromium at {}: `apt-get install chromium` (ops/test.sh does), or set DASHBOARD_CHROMIUM",
        path.display()
    );
    path
}

/// Where the screenshot goes: `target/` (the directory of the build running this test).
fn screenshot_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/dashboard_ui-<hash>
    let target = exe.ancestors().nth(3).unwrap_or(Path::new("."));
    target.join("dashboard-screenshot.png")
}

/// `GET /api/v1{path}` with the token: the JSON body.
async fn api(hostport: &str, token: &str, path: &str) -> Value {
    let request = format!(
        "GET /api/v1{path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(hostport).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (text, _) = common::http::read_to_close(&mut s, T).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}\n{body}"
    );
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_node_and_disconnects_a_peer_in_chromium() {
    let chromium = chromium();
    assert!(
        Path::new(E2E).join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix dashboard/e2e`"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(
        dir.path(),
        &[
            "--role",
            "relay",
            "--role",
            "autonat",
            "--role",
            "bootstrap",
        ],
    );
    let (listen, _) = pylon.addresses().await;
    let admin = pylon.admin().await;
    pylon.wait_log("web dashboard on http://").await;
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let me = peer_of(&listen);

    // Real peers: one with a relay reservation (kept), one to disconnect through the
    // page, one DHT server in the routing table.
    let keep = client().await;
    keep.relay.reserve(&listen).await.unwrap();
    let gone = client().await;
    let gone_conn = gone.host.dial(&listen).await.unwrap();
    let dht = kad_node(true, vec![listen.clone()]).await;
    let mut identity = Value::Null;
    wait::until_async(
        "the node has the three peers, one in its table",
        T,
        async || {
            identity = api(&admin, &token, "/identity").await;
            let table = api(&admin, &token, "/kad/buckets").await;
            let reservations = api(&admin, &token, "/roles").await["roles"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == "relay")
                .map(|r| r["status"]["reservations"].as_array().unwrap().len());
            identity["connected_peers"] == 3 && table["peers"] == 1 && reservations == Some(1)
        },
    )
    .await;
    assert_eq!(identity["peer_id"], me.to_string());
    assert_eq!(identity["connections"], 3, "{identity}");
    // The page itself: served without the token, locked down.
    let page = http_get(&admin, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'self'"));
    assert!(!page.contains(&token));

    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let spec = json!({
        "url": format!("http://{admin}/"),
        "token": token,
        "screenshot": shot,
        "chromium": chromium,
        "expect": {
            "peer_id": identity["peer_id"],
            "roles": identity["roles"],
            "connections": identity["connections"],
            "connected_peers": identity["connected_peers"],
            "keep": keep.peer_id().to_string(),
            "disconnect": gone.peer_id().to_string(),
        },
    });
    let mut browser = tokio::process::Command::new("node")
        .arg("ui.mjs")
        .current_dir(E2E)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (ops/test.sh installs Debian's nodejs)");
    let mut stdin = browser.stdin.take().unwrap();
    stdin.write_all(spec.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(BROWSER, browser.wait_with_output())
        .await
        .expect("the browser script ends within its bound")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the browser script printed no result ({e}):\n{stdout}\n{stderr}")
    });
    assert_eq!(result["ok"], true);
    assert_eq!(result["seen"]["peer_id"], me.to_string());
    assert_eq!(result["seen"]["connections_after"], 2);
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    println!("dashboard screenshot: {}", shot.display());

    // The disconnect was real: the peer's side of the connection closed, the node lists
    // none of it, and the peer whose disconnect was cancelled is still there.
    tokio::time::timeout(T, gone_conn.closed())
        .await
        .expect("the disconnected peer's connection closes");
    let gone_id = gone.peer_id();
    let conns = api(&admin, &token, &format!("/connections?peer={gone_id}")).await;
    assert_eq!(conns["total"], 0, "{conns}");
    let kept = api(
        &admin,
        &token,
        &format!("/connections?peer={}", keep.peer_id()),
    )
    .await;
    assert_eq!(kept["total"], 1, "{kept}");
    let audit = pylon.wait_log("action=\"disconnect\"").await;
    assert!(
        audit.contains(&gone_id.to_string()) && audit.contains("closing 1 connection"),
        "{audit}"
    );
    assert!(!pylon.log.iter().any(|l| l.contains(&token)));
    drop(dht);
    pylon.stop("-TERM").await;
}
