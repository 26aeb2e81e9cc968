//! `pylon health`, the container image's HEALTHCHECK: exit 0 when the node's `/healthz`
//! answers 200, 1 on anything else (refused, an error status, silence past the timeout, a
//! bad URL, metrics off), each failure said on stderr. Every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

mod common;
use common::{bin, Running, T};

/// `pylon health` with `args` and `env`, no `PYLON_*` of the caller's.
async fn health(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("health").args(args).envs(env.iter().copied());
    for (key, _) in std::env::vars() {
        if key.starts_with("PYLON_") {
            cmd.env_remove(key);
        }
    }
    let out = tokio::time::timeout(T, cmd.kill_on_drop(true).output())
        .await
        .expect("pylon health ends on its own")
        .unwrap();
    // Health checkers read 1 as unhealthy; Docker reserves 2.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A listener that answers every request with `status` (on `addr`), or never answers.
async fn fake(addr: &str, status: Option<&'static str>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            match status {
                Some(status) => {
                    let body = "from the fake\n";
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                }
                None => held.push(s),
            }
        }
    });
    (format!("127.0.0.1:{port}"), task)
}

#[tokio::test]
async fn a_running_node_is_healthy_through_its_config_or_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut pylon = Running::start(dir.path(), &[]);
    let (_, metrics) = pylon.addresses().await;

    // Through the configuration (the container's way: PYLON_METRICS__LISTEN).
    let listen = ("PYLON_METRICS__LISTEN", metrics.as_str());
    let out = health(&[], &[listen]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line, format!("http://{metrics}/healthz: 200 OK ok\n"));

    // Through a config file, as `pylon run --config` reads it.
    let file = dir.path().join("pylon.toml");
    std::fs::write(&file, format!("[metrics]\nlisten = \"{metrics}\"\n")).unwrap();
    let out = health(&["--config", file.to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // A URL outright, another path of the same listener.
    let url = format!("http://{metrics}/readyz");
    let out = health(&["--url", &url], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("/readyz: 200 OK"));

    // Stopped: refused, exit 1, the URL named.
    pylon.stop("-TERM").await;
    let out = health(&[], &[listen]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("http://{metrics}/healthz")) && err.contains("cannot connect"),
        "{err}"
    );
}

#[tokio::test]
async fn a_listener_on_every_interface_is_asked_on_loopback() {
    let (addr, _server) = fake("0.0.0.0:0", Some("200 OK")).await;
    let port = addr.rsplit_once(':').unwrap().1;
    let bound = format!("0.0.0.0:{port}");
    let out = health(&[], &[("PYLON_METRICS__LISTEN", &bound)]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with(&format!("http://127.0.0.1:{port}/healthz: 200 OK")));
}

#[tokio::test]
async fn anything_but_200_is_unhealthy() {
    let (addr, _server) = fake("127.0.0.1:0", Some("503 Service Unavailable")).await;
    let out = health(&["--url", &format!("http://{addr}")], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("503 Service Unavailable") && err.contains("from the fake"),
        "{err}"
    );

    // A listener that never answers: unhealthy once the timeout is up, not later.
    let (addr, _server) = fake("127.0.0.1:0", None).await;
    let started = Instant::now();
    let out = health(
        &[
            "--url",
            &format!("http://{addr}/healthz"),
            "--timeout",
            "300ms",
        ],
        &[],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no answer within 300ms"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn bad_input_is_unhealthy_and_says_why() {
    for (args, env, needle) in [
        (&["--url", "https://127.0.0.1:9464"][..], &[][..], "--url"),
        (
            &["--url", "http://127.0.0.1/healthz"],
            &[],
            "the port is needed",
        ),
        (&["--timeout", "soon"], &[], "--timeout"),
        (
            &[],
            &[("PYLON_METRICS__LISTEN", "off")][..],
            "metrics.listen = \"off\"",
        ),
        (
            &["--config", "/nonexistent/pylon.toml"],
            &[],
            "/nonexistent/pylon.toml",
        ),
    ] {
        let out = health(args, env).await;
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?} {env:?}: {err}");
    }
}
