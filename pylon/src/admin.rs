//! The binary's side of the admin API (`pylon-dashboard` serves the routes): its
//! listener, and what only the process can do — show the configuration in force,
//! re-read it (`POST /reload`, SIGHUP) and drain.
//!
//! Reload re-reads the config file and the environment with the command line's flags,
//! checks the result as `pylon run` would, and applies what can change while running:
//! `log` (the log filter, unless `RUST_LOG` overrides it) and `connections.deny` (the
//! config's bans; bans set through the API stay). Every other key that changed is named
//! as waiting for a restart, until the file says again what is running. A configuration
//! that does not check changes nothing.
//!
//! Not here: the routes and their JSON (`pylon-dashboard`), the shutdown itself (the
//! binary's `serve`, which drain hands over to).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pylon_dashboard::{ConfigView, Control, Reload};
use pylon_node::host::{BanId, BanTarget};
use pylon_node::node::Node;
use toml::{Table, Value};

use crate::config::Config;
use crate::http;

/// Keys that take effect on reload; every other changed key needs a restart.
pub(crate) const LIVE_KEYS: &[&str] = &["log", "connections.deny"];

/// The origin of the bans that come from `connections.deny`.
pub(crate) const CONFIG_ORIGIN: &str = "config";

/// Loads the configuration again: the merged tree and the checked config.
pub(crate) type Loader = Box<dyn Fn() -> anyhow::Result<(Table, Config)> + Send + Sync>;
/// Sets the log filter (a checked `log` value).
pub(crate) type SetLog = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// The process as the admin API and SIGHUP steer it.
pub(crate) struct Process {
    node: Node,
    load: Loader,
    set_log: SetLog,
    /// `RUST_LOG` is set: it wins over the `log` key, at start and on reload.
    rust_log: bool,
    grace: Duration,
    drain: tokio::sync::watch::Sender<bool>,
    state: Mutex<State>,
}

struct State {
    /// The configuration in force: as started, with applied reloads.
    tree: Table,
    /// Keys whose new values wait for a restart.
    pending: Vec<String>,
    /// The bans made from `connections.deny`, lifted when a reload changes the list.
    config_bans: Vec<BanId>,
}

impl Process {
    /// Applies the config's bans and returns the process, with the receiver that sees a
    /// drain request.
    pub(crate) fn new(
        node: Node,
        tree: Table,
        config: &Config,
        load: Loader,
        set_log: SetLog,
        rust_log: bool,
    ) -> anyhow::Result<(Arc<Process>, tokio::sync::watch::Receiver<bool>)> {
        let config_bans = ban_all(&node, &config.deny)?;
        let (drain, drained) = tokio::sync::watch::channel(false);
        let process = Arc::new(Process {
            node,
            load,
            set_log,
            rust_log,
            grace: config.shutdown_grace,
            drain,
            state: Mutex::new(State {
                tree,
                pending: Vec::new(),
                config_bans,
            }),
        });
        Ok((process, drained))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Control::reload`], with the error as an `anyhow` chain.
    fn reload_inner(&self) -> anyhow::Result<Reload> {
        let (new_tree, new_config) = (self.load)()?;
        let mut state = self.state();
        let changed = changed_keys(&state.tree, &new_tree);
        let mut report = Reload::default();
        for key in &changed {
            match key.as_str() {
                "log" if self.rust_log => report.notes.push(
                    "log changed, but RUST_LOG is set and wins over it: the filter stays".into(),
                ),
                "log" => {
                    (self.set_log)(&new_config.log)?;
                    report.applied.push(key.clone());
                }
                "connections.deny" => {
                    for id in state.config_bans.drain(..) {
                        self.node.host.unban(id);
                    }
                    state.config_bans = ban_all(&self.node, &new_config.deny)?;
                    report.applied.push(key.clone());
                }
                _ => {}
            }
            if LIVE_KEYS.contains(&key.as_str()) {
                let value = lookup(&new_tree, key).cloned();
                set_key(&mut state.tree, key, value);
            }
        }
        state.pending = changed_keys(&state.tree, &new_tree);
        report.restart_required = state.pending.clone();
        Ok(report)
    }
}

/// Bans every target of `connections.deny`, for good.
fn ban_all(node: &Node, targets: &[BanTarget]) -> anyhow::Result<Vec<BanId>> {
    targets
        .iter()
        .map(|t| {
            node.host
                .ban(*t, None, CONFIG_ORIGIN)
                .map(|b| b.id)
                .with_context(|| format!("connections.deny: banning {t}"))
        })
        .collect()
}

impl Control for Process {
    fn config(&self) -> ConfigView {
        let state = self.state();
        let mut config = serde_json::to_value(&state.tree).unwrap_or_default();
        redact(&mut config);
        ConfigView {
            config,
            restart_required: state.pending.clone(),
        }
    }

    fn reload(&self) -> Result<Reload, String> {
        self.reload_inner().map_err(|e| format!("{e:#}"))
    }

    fn drain(&self) -> Duration {
        self.node.host.drain();
        self.drain.send_replace(true);
        self.grace
    }
}

/// Reloads on SIGHUP, logging what changed.
pub(crate) fn on_sighup(process: &Process) {
    match process.reload_inner() {
        Ok(r) => {
            tracing::info!(
                target: pylon_dashboard::AUDIT,
                action = "reload",
                "target" = "config",
                result = %format!(
                    "applied [{}], restart required for [{}]",
                    r.applied.join(", "),
                    r.restart_required.join(", ")
                ),
                "SIGHUP"
            );
            for note in r.notes {
                tracing::warn!("reload: {note}");
            }
        }
        Err(e) => tracing::error!(
            target: pylon_dashboard::AUDIT,
            action = "reload",
            "target" = "config",
            result = %format!("refused: {e:#}"),
            "SIGHUP: the configuration does not check; nothing was applied"
        ),
    }
}

/// Waits, after a drain request, until no connection is left or `grace` has passed.
pub(crate) async fn wait_drained(node: &Node, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut events = node.host.subscribe();
    while !node.host.connections().is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            // Any event (or a lag) is a cue to look again.
            e = events.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = e {
                    return;
                }
            }
        }
    }
}

/// Secrets in the configuration: keys naming one, whatever section they are in (none
/// today holds a secret itself — the token and the keys are files, whose paths show).
fn redact(v: &mut serde_json::Value) {
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        !k.ends_with("_file")
            && ["token", "secret", "password", "passphrase"]
                .iter()
                .any(|s| k.contains(s))
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if secret(k) {
                    *v = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Dotted keys (`connections.max`, `roles.relay`) whose values differ between two
/// configuration trees, sorted. Tables are compared key by key; any other value (arrays
/// included) as a whole. A whole section added or removed is one key.
pub(crate) fn changed_keys(old: &Table, new: &Table) -> Vec<String> {
    fn walk(prefix: &str, old: &Table, new: &Table, out: &mut Vec<String>) {
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for k in keys {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match (old.get(k), new.get(k)) {
                (Some(Value::Table(a)), Some(Value::Table(b))) => walk(&key, a, b, out),
                (a, b) if a == b => {}
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn lookup<'a>(tree: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = tree.get(parts.next()?)?;
    for p in parts {
        value = value.as_table()?.get(p)?;
    }
    Some(value)
}

fn set_key(tree: &mut Table, key: &str, value: Option<Value>) {
    let (path, last) = match key.rsplit_once('.') {
        Some((path, last)) => (Some(path), last),
        None => (None, key),
    };
    let mut table = tree;
    for p in path.into_iter().flat_map(|p| p.split('.')) {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(t) = entry else {
            return;
        };
        table = t;
    }
    match value {
        Some(v) => {
            table.insert(last.to_string(), v);
        }
        None => {
            table.remove(last);
        }
    }
}

/// The admin token, from `admin.token_file` or created there; checked before the node
/// starts, so an unsafe token file stops `pylon run` at once.
pub(crate) fn token(config: &Config) -> anyhow::Result<pylon_dashboard::Token> {
    let token_file: &PathBuf = &config.admin_token_file;
    let (token, created) = pylon_dashboard::token::load_or_create(token_file)?;
    if created {
        tracing::info!("created the admin token file {}", token_file.display());
    }
    Ok(token)
}

/// Starts the admin API and the web dashboard on `addr`: the routes of `pylon-dashboard`
/// with `token`, the bounds of `[admin]`, and the dashboard's history sampler. Returns the
/// bound address and the server task.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    config: &Config,
    addr: SocketAddr,
    token: pylon_dashboard::Token,
    node: &Node,
    roles: Vec<pylon_roles::Running>,
    control: Arc<Process>,
    http_metrics: http::Metrics,
    started: (Instant, u64),
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "the admin API listens on {addr}, not a loopback address: whoever reaches it with \
             the token can steer the node; keep it behind a firewall or a TLS proxy"
        );
    }
    let host = &config.node.host;
    let admin = Arc::new(pylon_dashboard::Admin {
        node: node.clone(),
        roles,
        token,
        control,
        info: pylon_dashboard::Info {
            version: env!("CARGO_PKG_VERSION").to_string(),
            agent_version: config.node.identify.agent_version.clone(),
            protocol_version: config.node.identify.protocol_version.clone(),
            started: started.0,
            started_unix_ms: started.1,
            limits: pylon_dashboard::Limits {
                max_connections: host.max_connections,
                max_connections_per_peer: host.max_connections_per_peer,
                max_streams_per_connection: host.max_streams_per_connection,
                max_pending_incoming: host.max_pending_incoming,
                max_peers: config.node.peerstore.max_peers,
            },
        },
        history: pylon_dashboard::History::default(),
    });
    let listener = http::Listener::bind(addr, "admin", config.admin_http.clone(), http_metrics)
        .await
        .with_context(|| format!("cannot bind the admin listener {addr} (admin.listen)"))?;
    let bound = listener.local_addr()?;
    let router = pylon_dashboard::router(admin.clone());
    // The dashboard's history sampler lives and ends with the listener: one task.
    let handle = tokio::spawn(async move {
        tokio::select! {
            () = listener.serve(router) => {}
            () = pylon_dashboard::sample(admin) => {}
        }
    });
    Ok((bound, handle))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tree(text: &str) -> Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn changed_keys_are_named_by_their_path() {
        let old = tree(
            "log = \"info\"\nlisten = [\"/ip4/0.0.0.0/tcp/1\"]\n[connections]\nmax = 1\ndeny = []\n[roles]\n",
        );
        let new = tree(
            "log = \"debug\"\nlisten = [\"/ip4/0.0.0.0/tcp/2\"]\n[connections]\nmax = 1\ndeny = [\"10.0.0.0/8\"]\n[roles.relay]\nmax_circuits = 3\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            ["connections.deny", "listen", "log", "roles.relay"]
        );
        assert!(changed_keys(&new, &new).is_empty());
    }

    #[test]
    fn keys_are_set_and_removed_by_their_path() {
        let mut t = tree("[a]\nb = 1\n");
        set_key(&mut t, "a.c.d", Some(Value::Integer(2)));
        set_key(&mut t, "log", Some(Value::String("x".into())));
        set_key(&mut t, "a.b", None);
        assert_eq!(t, tree("log = \"x\"\n[a.c]\nd = 2\n"));
        assert_eq!(lookup(&t, "a.c.d"), Some(&Value::Integer(2)));
        assert_eq!(lookup(&t, "a.x"), None);
    }

    #[test]
    fn secrets_are_redacted_and_paths_kept() {
        let mut v = serde_json::json!({
            "admin": {"token_file": "/d/admin.token", "token": "s3cr3t"},
            "x": [{"api_secret": "s"}],
            "websocket": {"tls_key": "/k.pem"},
        });
        redact(&mut v);
        assert_eq!(v["admin"]["token_file"], "/d/admin.token");
        assert_eq!(v["admin"]["token"], "<redacted>");
        assert_eq!(v["x"][0]["api_secret"], "<redacted>");
        assert_eq!(v["websocket"]["tls_key"], "/k.pem");
    }
}
