//! The admin commands of the command line — `pylon status`, `peers`, `bans`, `ban`,
//! `unban`, `drain`, `reload` — as clients of a running node's admin API: the address
//! from `admin.listen` (or `--admin`), the token from the token file of the data
//! directory. Each error says what to check (is the node running? is this its data
//! directory?) and makes the command exit non-zero.
//!
//! `pylon health` is the one client of the metrics listener: `GET /healthz`, for a
//! container's HEALTHCHECK (the image has no curl).
//!
//! Not here: the API itself (`pylon-dashboard`). The HTTP client is hyper's, one request
//! per connection, every step under a timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::http::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Connecting to the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read.
const MAX_ANSWER: usize = 16 << 20;

/// Where the API is and how to authenticate.
pub(crate) struct Client {
    addr: SocketAddr,
    token: pylon_dashboard::Token,
    token_file: PathBuf,
}

impl Client {
    /// From the configuration: `admin.listen` and `admin.token_file`.
    pub(crate) fn new(config: &crate::config::Config) -> anyhow::Result<Client> {
        let addr = config.admin.map(local).ok_or_else(|| {
            anyhow::anyhow!(
                "the admin API is off in this configuration (admin.listen = \"off\"); \
                 give its address with --admin HOST:PORT"
            )
        })?;
        let token = pylon_dashboard::token::load(&config.admin_token_file)?;
        Ok(Client {
            addr,
            token,
            token_file: config.admin_token_file.clone(),
        })
    }

    /// `method path` with an optional JSON body: the answer's JSON, or an error that
    /// says what went wrong.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("http://{}/api/v1{path}", self.addr);
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, self.send(method, path, body))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {REQUEST_TIMEOUT:?}"))??;
        let json: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{url} answered {status} with something that is not JSON: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        if status.is_success() {
            return Ok(json);
        }
        let message = json["error"].as_str().unwrap_or("(no message)").to_string();
        if status == StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "the admin API at {} refused the token in {}: {message} (is this the data \
                 directory, and the token file, of the node that is running there?)",
                self.addr,
                self.token_file.display()
            );
        }
        anyhow::bail!("{status}: {message}")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, axum::body::Bytes)> {
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.addr))?
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot reach the admin API at {}: {e} (is `pylon run` running with this \
                     configuration? the address is admin.listen, or --admin)",
                        self.addr
                    )
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the admin API")?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::HOST, self.addr.to_string())
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.secret()),
            );
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                axum::body::Body::from(v.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let response = sender
            .send_request(req.body(body)?)
            .await
            .context("the admin API closed the connection")?;
        let status = response.status();
        let bytes = axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_ANSWER)
            .await
            .context("reading the admin API's answer")?;
        driver.abort();
        Ok((status, bytes))
    }
}

/// Where to connect to reach a listener bound to `addr`: the address itself, or loopback
/// for a listener on every interface (`0.0.0.0`, `::`), as in a container image.
fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// What `pylon health` asks: `GET path` from `authority` (`host:port`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    authority: String,
    path: String,
}

/// The most of an answer's body shown in an error.
const MAX_SHOWN: usize = 512;

impl Probe {
    /// `/healthz` on the metrics listener bound to `addr`.
    pub(crate) fn healthz(addr: SocketAddr) -> Probe {
        Probe {
            authority: local(addr).to_string(),
            path: "/healthz".into(),
        }
    }

    /// `http://HOST:PORT[/PATH]`; no path means `/healthz`.
    pub(crate) fn parse(url: &str) -> anyhow::Result<Probe> {
        let bad = |why: &str| anyhow::anyhow!("--url {url:?}: {why}");
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST:PORT[/PATH]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/healthz"),
        };
        let port = authority
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .map(|(_, port)| port);
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(bad("expected HOST:PORT after http:// (the port is needed)"));
        }
        Ok(Probe {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// `GET` the probe's URL within `timeout` (connecting included): the line to print if it
/// answered 200, an error naming what it did instead otherwise.
pub(crate) fn health(probe: &Probe, timeout: Duration) -> anyhow::Result<String> {
    let url = probe.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let ask = async {
        let stream = tokio::net::TcpStream::connect(&probe.authority)
            .await
            .with_context(|| format!("cannot connect to {}", probe.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        let driver = tokio::spawn(conn);
        let request = Request::builder()
            .method(Method::GET)
            .uri(&probe.path)
            .header(header::HOST, &probe.authority)
            .body(axum::body::Body::empty())?;
        let response = sender
            .send_request(request)
            .await
            .context("the connection closed without an answer")?;
        let status = response.status();
        let body = axum::body::Body::new(response.into_body());
        // A body larger than this is not a health answer; its status still counts.
        let body = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        driver.abort();
        anyhow::Ok((status, body))
    };
    // The timer is the runtime's: made inside it.
    let answer = runtime.block_on(async { tokio::time::timeout(timeout, ask).await });
    let (status, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(e.context(url)),
        Err(_) => anyhow::bail!("{url}: no answer within {timeout:?}"),
    };
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_SHOWN)]);
    let text = text.trim();
    if status == StatusCode::OK {
        Ok(format!("{url}: {status} {text}"))
    } else {
        anyhow::bail!("{url} answered {status}: {text}")
    }
}

/// What an admin command does, once its client is ready.
pub(crate) enum Command {
    Status,
    Peers {
        q: Option<String>,
        offset: usize,
        limit: usize,
    },
    Bans,
    Ban {
        target: String,
        duration: Option<String>,
    },
    Unban {
        id: u64,
    },
    Drain,
    Reload,
}

/// Runs `command` against the node; prints text, or the API's JSON with `json`.
pub(crate) fn run(
    config: &crate::config::Config,
    command: Command,
    json: bool,
) -> anyhow::Result<()> {
    let client = Client::new(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let out = match command {
            Command::Status => {
                let identity = client.call(Method::GET, "/identity", None).await?;
                let roles = client.call(Method::GET, "/roles", None).await?;
                if json {
                    serde_json::json!({ "identity": identity, "roles": roles["roles"] })
                } else {
                    print!("{}", status_text(&identity, &roles));
                    return Ok(());
                }
            }
            Command::Peers { q, offset, limit } => {
                let mut path = format!("/peers?offset={offset}&limit={limit}");
                if let Some(q) = q {
                    let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
                    path.push_str(&format!("&q={q}"));
                }
                let peers = client.call(Method::GET, &path, None).await?;
                if !json {
                    print!("{}", peers_text(&peers));
                    return Ok(());
                }
                peers
            }
            Command::Bans => {
                let bans = client.call(Method::GET, "/bans", None).await?;
                if !json {
                    print!("{}", bans_text(&bans));
                    return Ok(());
                }
                bans
            }
            Command::Ban { target, duration } => {
                let kind = if target.parse::<pylon_node::PeerId>().is_ok() {
                    "peer"
                } else {
                    "cidr"
                };
                let mut body = serde_json::json!({ kind: target });
                if let Some(d) = duration {
                    body["duration"] = Value::String(d);
                }
                let ban = client.call(Method::POST, "/bans", Some(body)).await?;
                if !json {
                    println!("banned {}", ban_line(&ban));
                    return Ok(());
                }
                ban
            }
            Command::Unban { id } => {
                let removed = client
                    .call(Method::DELETE, &format!("/bans/{id}"), None)
                    .await?;
                if !json {
                    println!("lifted {}", ban_line(&removed["removed"]));
                    return Ok(());
                }
                removed
            }
            Command::Drain => {
                let d = client.call(Method::POST, "/drain", None).await?;
                if !json {
                    println!(
                        "draining: no new connections; the node stops once the open ones are \
                         done, within {} s",
                        d["grace_secs"].as_f64().unwrap_or(0.0)
                    );
                    return Ok(());
                }
                d
            }
            Command::Reload => {
                let r = client.call(Method::POST, "/reload", None).await?;
                if !json {
                    print!("{}", reload_text(&r));
                    return Ok(());
                }
                r
            }
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    })
}

fn list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn status_text(identity: &Value, roles: &Value) -> String {
    let s = |k: &str| identity[k].as_str().unwrap_or("?").to_string();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("peer id", s("peer_id"));
    line(
        "version",
        format!("{} (agent {})", s("version"), s("agent_version")),
    );
    line(
        "uptime",
        duration_text(identity["uptime_secs"].as_u64().unwrap_or(0)),
    );
    line("reachability", s("reachability"));
    line(
        "connections",
        format!(
            "{} ({} peers){}",
            identity["connections"],
            identity["connected_peers"],
            if identity["draining"] == Value::Bool(true) {
                ", draining"
            } else {
                ""
            }
        ),
    );
    for (name, key) in [
        ("listening", "listen_addrs"),
        ("advertised", "advertised_addrs"),
    ] {
        let addrs = list(&identity[key]);
        if addrs.is_empty() {
            line(name, "-".into());
        }
        for (i, a) in addrs.into_iter().enumerate() {
            line(if i == 0 { name } else { "" }, a);
        }
    }
    let roles = roles["roles"].as_array().cloned().unwrap_or_default();
    if roles.is_empty() {
        line("roles", "none".into());
    }
    for r in roles {
        let name = r["name"].as_str().unwrap_or("?");
        line(&format!("role {name}"), summary(&r["status"]));
    }
    out
}

/// A role's status on one line: `key=value`, lists by their length (a busy relay's
/// reservations would fill the screen; `--json` shows them).
fn summary(status: &Value) -> String {
    let Some(fields) = status.as_object() else {
        return status.to_string();
    };
    fields
        .iter()
        .map(|(k, v)| match v {
            Value::Array(a) => format!("{k}={}", a.len()),
            Value::Object(_) => format!("{k}={{…}}"),
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn peers_text(peers: &Value) -> String {
    let mut out = String::new();
    let items = peers["peers"].as_array().cloned().unwrap_or_default();
    if !items.is_empty() {
        out.push_str(&format!(
            "{:<54} {:<9} {:<24} ADDRESS\n",
            "PEER", "CONNECTED", "AGENT"
        ));
    }
    for p in &items {
        let addrs = list(&p["addrs"]);
        out.push_str(&format!(
            "{:<54} {:<9} {:<24} {}\n",
            p["peer_id"].as_str().unwrap_or("?"),
            if p["connected"] == Value::Bool(true) {
                "yes"
            } else {
                "no"
            },
            p["agent_version"].as_str().unwrap_or("-"),
            addrs.first().map_or("-", String::as_str),
        ));
    }
    let offset = peers["offset"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "{} of {} peers (from {})\n",
        items.len(),
        peers["total"],
        offset
    ));
    out
}

fn ban_line(ban: &Value) -> String {
    let expiry = match ban["expires_in_secs"].as_u64() {
        Some(s) => format!("for {}", duration_text(s)),
        None => "until lifted".into(),
    };
    format!(
        "{} {} (ban {}, {}, {expiry})",
        ban["kind"].as_str().unwrap_or("?"),
        ban["target"].as_str().unwrap_or("?"),
        ban["id"],
        ban["origin"].as_str().unwrap_or("?"),
    )
}

fn bans_text(bans: &Value) -> String {
    let items = bans["bans"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "no bans\n".into();
    }
    items.iter().map(|b| format!("{}\n", ban_line(b))).collect()
}

fn reload_text(r: &Value) -> String {
    let mut out = String::new();
    let applied = list(&r["applied"]);
    let restart = list(&r["restart_required"]);
    out.push_str(&format!(
        "applied: {}\n",
        if applied.is_empty() {
            "nothing".into()
        } else {
            applied.join(", ")
        }
    ));
    if !restart.is_empty() {
        out.push_str(&format!("restart required for: {}\n", restart.join(", ")));
    }
    for note in list(&r["notes"]) {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn health_urls() {
        let p = Probe::parse("http://127.0.0.1:9464").unwrap();
        assert_eq!(p.url(), "http://127.0.0.1:9464/healthz");
        let p = Probe::parse("http://[::1]:9464/readyz").unwrap();
        assert_eq!(p.url(), "http://[::1]:9464/readyz");
        let p = Probe::parse("http://pylon.local:1/").unwrap();
        assert_eq!(
            (p.authority.as_str(), p.path.as_str()),
            ("pylon.local:1", "/")
        );
        for bad in [
            "https://127.0.0.1:9464/healthz",
            "127.0.0.1:9464",
            "http://127.0.0.1/healthz",
            "http://127.0.0.1:port/healthz",
            "http://127.0.0.1:99999",
            "http://:9464",
            "",
        ] {
            let e = Probe::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--url") && e.contains(bad), "{bad}: {e}");
        }
        // A listener on every interface is asked on loopback.
        for (bound, asked) in [
            ("0.0.0.0:9464", "http://127.0.0.1:9464/healthz"),
            ("[::]:9464", "http://[::1]:9464/healthz"),
            ("10.0.0.7:9464", "http://10.0.0.7:9464/healthz"),
        ] {
            assert_eq!(Probe::healthz(bound.parse().unwrap()).url(), asked);
        }
    }

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(duration_text(5), "5s");
        assert_eq!(duration_text(125), "2m 5s");
        assert_eq!(duration_text(7325), "2h 2m");
        assert_eq!(duration_text(90000), "1d 1h");
    }

    #[test]
    fn answers_become_lines() {
        let ban = json!({"id": 3, "kind": "cidr", "target": "10.0.0.0/8", "origin": "admin", "expires_in_secs": 600});
        assert_eq!(ban_line(&ban), "cidr 10.0.0.0/8 (ban 3, admin, for 10m 0s)");
        let r = json!({"applied": ["log"], "restart_required": ["listen"], "notes": []});
        assert_eq!(
            reload_text(&r),
            "applied: log\nrestart required for: listen\n"
        );
        let peers = json!({"total": 0, "offset": 0, "limit": 100, "peers": []});
        assert_eq!(peers_text(&peers), "0 of 0 peers (from 0)\n");
        let status =
            json!({"circuits": [1, 2], "max_circuits": 8, "reachability": "public", "x": {}});
        assert_eq!(
            summary(&status),
            "circuits=2 max_circuits=8 reachability=public x={…}"
        );
    }
}
