//! Configuration: the embedded default, a TOML file, `PYLON_*` environment variables and
//! command-line flags, merged in that order, then checked into typed values. Every error
//! names the offending key and value. The `[roles.NAME]` sections are read by their roles
//! (`pylon_roles::configure`), and what each role needs from the node is applied by the
//! role (`Role::require`), not here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use multiaddr::Multiaddr;
use pylon_roles::config::bad;
#[cfg(test)]
use pylon_roles::config::MAX_DURATION;
pub(crate) use pylon_roles::config::{duration, Error};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

pub(crate) const DEFAULT_TOML: &str = include_str!("default.toml");

/// What the `public` profile adds to a config that names no role (profile.rs).
const PUBLIC_PROFILE_TOML: &str = include_str!("profile_public.toml");

/// The profiles `profile` may name.
const PROFILES: [&str; 2] = ["public", "minimal"];

// ---- The raw (file) form: strings as written, checked later -------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// Applied while merging ([`apply_profile`]); kept to be reported.
    profile: String,
    data_dir: String,
    listen: Vec<String>,
    log: String,
    metrics: Option<RawMetrics>,
    admin: Option<RawAdmin>,
    identify: RawIdentify,
    connections: RawConnections,
    peerstore: RawPeerstore,
    storage: RawStorage,
    dns: RawDns,
    websocket: RawWebsocket,
    perf: Option<RawPerf>,
    kad: Option<RawKad>,
    #[serde(default)]
    relay_client: RawRelayClient,
    #[serde(default)]
    autonat: RawAutonat,
    #[serde(default)]
    telemetry: RawTelemetry,
    /// `[roles.NAME]` sections, each read by its role (`pylon_roles::configure`).
    roles: Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
    #[serde(default = "default_header_timeout")]
    header_timeout: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "default_request_timeout")]
    request_timeout: String,
    #[serde(default = "default_http_max_connections")]
    max_connections: usize,
}

/// `[admin]`: the admin API's listener (on by default, on loopback), its token file and
/// the same bounds as `[metrics]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    #[serde(default)]
    token_file: String,
    #[serde(default = "default_header_timeout")]
    header_timeout: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "default_request_timeout")]
    request_timeout: String,
    #[serde(default = "default_http_max_connections")]
    max_connections: usize,
}

fn default_header_timeout() -> String {
    "10s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_request_timeout() -> String {
    "30s".into()
}
fn default_http_max_connections() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentify {
    agent_version: String,
    protocol_version: String,
    addr_ttl: String,
    timeout: String,
    announce: Vec<String>,
    advertise_private: bool,
    observed_confirmations: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    max: usize,
    max_per_peer: usize,
    max_pending_incoming: usize,
    max_pending_incoming_per_ip: usize,
    max_pending_incoming_per_subnet: usize,
    max_incoming_per_ip: usize,
    max_incoming_per_subnet: usize,
    max_streams_per_connection: usize,
    dial_timeout: String,
    handshake_timeout: String,
    handshake_timeout_floor: String,
    negotiation_timeout: String,
    shutdown_grace: String,
    port_reuse: bool,
    security: Vec<String>,
    inline_muxer: bool,
    #[serde(default, deserialize_with = "pylon_roles::config::string_list")]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Vec<String>,
    timeout: String,
}

/// The AutoNAT client (on unless `enabled = false`): our own reachability. Every key has a
/// default: `autonat::Config::default`'s (README, "Configuration", is tested against it).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAutonat {
    enabled: bool,
    confirmations: usize,
    refresh: String,
    retry: String,
    request_timeout: String,
    allow_loopback: bool,
}

impl Default for RawAutonat {
    fn default() -> Self {
        use pylon_roles::config::format_duration;
        let c = pylon_node::protocols::autonat::Config::default();
        RawAutonat {
            enabled: c.enabled,
            confirmations: c.confirmations,
            refresh: format_duration(c.refresh),
            retry: format_duration(c.retry),
            request_timeout: format_duration(c.request_timeout),
            allow_loopback: c.allow_loopback,
        }
    }
}

/// Reads `[autonat]`.
fn autonat(raw: &RawAutonat) -> Result<pylon_node::protocols::autonat::Config, Error> {
    if !(1..=16).contains(&raw.confirmations) {
        return Err(bad(
            "autonat.confirmations",
            &raw.confirmations.to_string(),
            "must be 1 to 16 (distinct servers that must agree)",
        ));
    }
    Ok(pylon_node::protocols::autonat::Config {
        enabled: raw.enabled,
        confirmations: raw.confirmations,
        refresh: duration("autonat.refresh", &raw.refresh)?,
        retry: duration("autonat.retry", &raw.retry)?,
        request_timeout: duration("autonat.request_timeout", &raw.request_timeout)?,
        allow_loopback: raw.allow_loopback,
        ..Default::default()
    })
}

/// Traces (`pylon/src/telemetry.rs`): the collector, unless the `OTEL_*` environment says
/// otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    /// OTLP/HTTP base URL (`http://collector:4318`); empty = traces off unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[serde(default)]
    otlp_endpoint: String,
}

/// `kad.server`: `true`, `false` or `"auto"` (follow our reachability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum RawServerMode {
    Fixed(bool),
    Word(String),
}

/// The relay client (always on): the relays to stay reachable through.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelayClient {
    #[serde(default)]
    listen_via: Vec<String>,
}

/// Present = the perf server is on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerf {
    #[serde(default, deserialize_with = "pylon_roles::config::string_list")]
    allow: Vec<String>,
    #[serde(default = "default_perf_idle")]
    idle_timeout: String,
}

/// Present = the Kademlia DHT is on. Every key has a default: `kad::Config::default`'s
/// (README, "Configuration", is tested against it).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKad {
    protocol: String,
    server: RawServerMode,
    #[serde(deserialize_with = "pylon_roles::config::string_list")]
    bootstrap: Vec<String>,
    k: usize,
    alpha: usize,
    request_timeout: String,
    query_timeout: String,
    refresh_interval: String,
    max_message_size: usize,
    max_records: usize,
    max_record_size: usize,
    record_ttl: String,
    max_provider_records: usize,
    max_providers_per_key: usize,
    provider_ttl: String,
    peer_requests_burst: u32,
    peer_requests_per_second: u32,
    subnet_requests_burst: u32,
    subnet_requests_per_second: u32,
    max_peers_per_subnet_in_bucket: usize,
    max_peers_per_subnet: usize,
    private_addrs_to_public: bool,
}

impl Default for RawKad {
    fn default() -> Self {
        RawKad::from(&pylon_node::protocols::kad::Config::default())
    }
}

/// The file form of a DHT config: what [`kad`] reads back into the same config.
impl From<&pylon_node::protocols::kad::Config> for RawKad {
    fn from(c: &pylon_node::protocols::kad::Config) -> Self {
        use pylon_roles::config::format_duration;
        RawKad {
            protocol: c.protocol.clone(),
            server: if c.auto_server {
                RawServerMode::Word("auto".into())
            } else {
                RawServerMode::Fixed(c.server)
            },
            bootstrap: c.bootstrap.iter().map(|a| a.to_string()).collect(),
            k: c.table.k,
            alpha: c.alpha,
            request_timeout: format_duration(c.request_timeout),
            query_timeout: format_duration(c.query_timeout),
            refresh_interval: c
                .refresh_interval
                .map_or_else(|| "off".into(), format_duration),
            max_message_size: c.max_message_len,
            max_records: c.store.max_records,
            max_record_size: c.store.max_value_len,
            record_ttl: format_duration(c.store.record_ttl),
            max_provider_records: c.store.max_provider_records,
            max_providers_per_key: c.store.max_providers_per_key,
            provider_ttl: format_duration(c.store.provider_ttl),
            peer_requests_burst: c.peer_rate.0,
            peer_requests_per_second: c.peer_rate.1,
            subnet_requests_burst: c.group_rate.0,
            subnet_requests_per_second: c.group_rate.1,
            max_peers_per_subnet_in_bucket: c.table.max_per_group_bucket,
            max_peers_per_subnet: c.table.max_per_group_table,
            private_addrs_to_public: c.private_addrs_to_public,
        }
    }
}

fn default_perf_idle() -> String {
    "30s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebsocket {
    tls_certificate: String,
    tls_key: String,
    extra_roots: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerstore {
    max_peers: usize,
    max_addrs_per_peer: usize,
    max_protocols_per_peer: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    flush_interval: String,
    stall_timeout: String,
    retry_interval: String,
}

// ---- The checked form ----------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub data_dir: PathBuf,
    pub log: String,
    pub metrics: Option<SocketAddr>,
    /// Timeouts and connection cap of the metrics listener (`[metrics]`).
    pub metrics_http: crate::http::Config,
    /// The admin API's address (`admin.listen`); `None` when it is off.
    pub admin: Option<SocketAddr>,
    /// Timeouts and connection cap of the admin listener (`[admin]`).
    pub admin_http: crate::http::Config,
    /// The admin token's file (`admin.token_file`, by default `DATA_DIR/admin.token`).
    pub admin_token_file: PathBuf,
    /// Peers and IP prefixes never connected to or from (`connections.deny`).
    pub deny: Vec<pylon_node::host::BanTarget>,
    /// `telemetry.otlp_endpoint`, if set (the `OTEL_*` environment may override it).
    pub otlp_endpoint: Option<String>,
    pub shutdown_grace: Duration,
    /// The node's config, with what the roles need from it applied.
    pub node: pylon_node::node::Config,
    /// The roles whose `[roles.NAME]` is present, in `pylon_roles::all()` order.
    pub roles: Vec<pylon_roles::Configured>,
    /// `profile` ("public" or "minimal"), already applied to `roles` and `node.kad`.
    pub profile: String,
}

/// Overrides from the command line, applied last.
#[derive(Debug, Default, Clone)]
pub(crate) struct Flags {
    pub data_dir: Option<PathBuf>,
    pub listen: Vec<String>,
    pub metrics: Option<String>,
    pub admin: Option<String>,
    pub roles: Vec<String>,
    pub profile: Option<String>,
}

/// Where the configuration comes from, all inputs explicit (no hidden environment reads).
pub(crate) struct Sources<'a> {
    pub file: Option<(&'a str, String)>,
    pub env: Vec<(String, String)>,
    pub flags: Flags,
    /// `$XDG_DATA_HOME` and `$HOME`, for the default data directory.
    pub xdg_data_home: Option<String>,
    pub home: Option<String>,
}

/// Merges every source and checks the result.
pub(crate) fn load(src: Sources<'_>) -> Result<Config, Error> {
    let merged = merge_sources(&src)?;
    check(merged, &src)
}

/// The merged TOML tree (for `pylon config`).
pub(crate) fn merge_sources(src: &Sources<'_>) -> Result<Table, Error> {
    let mut tree = default_tree();
    if let Some((path, text)) = &src.file {
        let file: Table = toml::from_str(text).map_err(|e| Error::File {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        merge(&mut tree, file);
    }
    for (name, value) in &src.env {
        apply_env(&mut tree, name, value)?;
    }
    let f = &src.flags;
    if let Some(d) = &f.data_dir {
        tree.insert("data_dir".into(), Value::String(d.display().to_string()));
    }
    if !f.listen.is_empty() {
        tree.insert(
            "listen".into(),
            Value::Array(f.listen.iter().cloned().map(Value::String).collect()),
        );
    }
    // Only the addresses: the sections' other keys (timeouts, cap) stay as configured.
    for (section, flag) in [("metrics", &f.metrics), ("admin", &f.admin)] {
        let Some(addr) = flag else {
            continue;
        };
        let entry = tree
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => {
                t.insert("listen".into(), Value::String(addr.clone()));
            }
            other => {
                let mut t = Table::new();
                t.insert("listen".into(), Value::String(addr.clone()));
                *other = Value::Table(t);
            }
        }
    }
    if let Some(p) = &f.profile {
        tree.insert("profile".into(), Value::String(p.clone()));
    }
    for role in &f.roles {
        let roles = tree
            .entry("roles")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = roles {
            t.entry(role.clone())
                .or_insert_with(|| Value::Table(Table::new()));
        }
    }
    apply_profile(&mut tree)?;
    Ok(tree)
}

/// `profile`: what a node that names no role runs. `"public"` (the embedded default)
/// adds profile_public.toml — a DHT server once AutoNAT finds us reachable, the AutoNAT
/// server and a relay with go-libp2p's conservative limits — to a config whose
/// `[roles]` is empty, keeping a `[kad]` the config has; `"minimal"` adds nothing. A
/// config that names any role (a `[roles.NAME]` section, `--role`) gets exactly those.
fn apply_profile(tree: &mut Table) -> Result<(), Error> {
    let profile = match tree.get("profile") {
        Some(Value::String(p)) => p.clone(),
        Some(other) => return Err(bad("profile", &other.to_string(), "must be a string")),
        None => return Ok(()),
    };
    if !PROFILES.contains(&profile.as_str()) {
        return Err(bad(
            "profile",
            &profile,
            &format!("must be one of {}", PROFILES.join(", ")),
        ));
    }
    let roles_named = match tree.get("roles") {
        Some(Value::Table(t)) => !t.is_empty(),
        _ => false,
    };
    if profile != "public" || roles_named {
        return Ok(());
    }
    // Checked by a unit test; it always parses.
    let mut public: Table = toml::from_str(PUBLIC_PROFILE_TOML)
        .unwrap_or_else(|e| unreachable!("profile_public.toml: {e}"));
    if tree.contains_key("kad") {
        public.remove("kad");
    }
    merge(tree, public);
    Ok(())
}

fn default_tree() -> Table {
    let text = DEFAULT_TOML.replace("VERSION", env!("CARGO_PKG_VERSION"));
    // The embedded default is checked by a unit test; it always parses.
    toml::from_str(&text).unwrap_or_else(|e| unreachable!("embedded default config: {e}"))
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// `PYLON_A__B=v` sets key `a.b`. Values parse as TOML (numbers, booleans, arrays) and
/// fall back to a plain string; a comma-separated string sets a list key. A key the
/// embedded default does not write (a role's section, commented out there) has no type
/// to go by: its value is read as a TOML number, boolean or array when it is one.
fn apply_env(tree: &mut Table, name: &str, value: &str) -> Result<(), Error> {
    let Some(rest) = name.strip_prefix("PYLON_") else {
        return Ok(());
    };
    if rest == "CONFIG" {
        return Ok(()); // picks the file, handled by the binary
    }
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let key = path.join(".");
    let mut table = tree;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(Error::Key {
                    key: key.clone(),
                    message: format!("`{seg}` is not a section"),
                });
            }
        };
    }
    let last = &path[path.len() - 1];
    let parsed = match table.get(last) {
        Some(Value::Array(_)) => Value::Array(
            value
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        ),
        Some(Value::String(_)) => Value::String(value.to_string()),
        None => match toml_value(value) {
            Some(
                v @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Array(_)),
            ) => v,
            _ => Value::String(value.to_string()),
        },
        Some(_) => toml_value(value).unwrap_or_else(|| Value::String(value.to_string())),
    };
    table.insert(last.clone(), parsed);
    Ok(())
}

/// `value` as a TOML value, if it is one.
fn toml_value(value: &str) -> Option<Value> {
    toml::from_str::<Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
}

fn check(tree: Table, src: &Sources<'_>) -> Result<Config, Error> {
    let text = toml::to_string(&tree).map_err(|e| Error::Key {
        key: "<root>".into(),
        message: e.to_string(),
    })?;
    let de = toml::Deserializer::new(&text);
    let raw: Raw = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().message().to_string();
        Error::Key { key, message }
    })?;
    let roles = pylon_roles::configure(&raw.roles)?;

    let data_dir = if raw.data_dir.is_empty() {
        match (&src.xdg_data_home, &src.home) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("pylon"),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".local/share/pylon"),
            _ => PathBuf::from("pylon-data"),
        }
    } else {
        PathBuf::from(&raw.data_dir)
    };
    let listen = list("listen", &raw.listen, |s| {
        let addr: Multiaddr = s.parse().map_err(|e: multiaddr::Error| e.to_string())?;
        pylon_node::transport::parse(&addr).map_err(|e| e.to_string())?;
        Ok(addr)
    })?;
    listen_peer_ids(&listen, &data_dir)?;
    log_filter(&raw.log).map_err(|m| bad("log", &raw.log, &m))?;
    let metrics_http = match &raw.metrics {
        Some(m) => listener_http(
            "metrics",
            (&m.header_timeout, &m.idle_timeout, &m.request_timeout),
            m.max_connections,
        )?,
        None => crate::http::Config::default(),
    };
    let admin_http = match &raw.admin {
        Some(a) => listener_http(
            "admin",
            (&a.header_timeout, &a.idle_timeout, &a.request_timeout),
            a.max_connections,
        )?,
        None => crate::http::Config::default(),
    };
    let admin_token_file = match raw.admin.as_ref().map(|a| a.token_file.as_str()) {
        None | Some("") => data_dir.join(pylon_dashboard::token::TOKEN_FILE),
        Some(path) => PathBuf::from(path),
    };
    let admin = raw
        .admin
        .as_ref()
        .filter(|a| !a.listen.is_empty() && a.listen != "off")
        .map(|a| {
            a.listen
                .parse::<SocketAddr>()
                .map_err(|e| bad("admin.listen", &a.listen, &e.to_string()))
        })
        .transpose()?;
    let metrics = raw
        .metrics
        .filter(|m| !m.listen.is_empty() && m.listen != "off")
        .map(|m| {
            m.listen
                .parse::<SocketAddr>()
                .map_err(|e| bad("metrics.listen", &m.listen, &e.to_string()))
        })
        .transpose()?;
    let c = &raw.connections;
    for (key, v) in [
        ("connections.max", c.max),
        ("connections.max_per_peer", c.max_per_peer),
        ("connections.max_pending_incoming", c.max_pending_incoming),
        ("peerstore.max_peers", raw.peerstore.max_peers),
        (
            "peerstore.max_addrs_per_peer",
            raw.peerstore.max_addrs_per_peer,
        ),
        (
            "peerstore.max_protocols_per_peer",
            raw.peerstore.max_protocols_per_peer,
        ),
    ] {
        if v == 0 {
            return Err(bad(key, "0", "must be at least 1"));
        }
    }
    if !(1..=4096).contains(&c.max_streams_per_connection) {
        return Err(bad(
            "connections.max_streams_per_connection",
            &c.max_streams_per_connection.to_string(),
            "must be between 1 and 4096",
        ));
    }
    let dns = pylon_node::dns::Config {
        nameservers: list("dns.nameservers", &raw.dns.nameservers, |s| {
            s.parse::<SocketAddr>().map_err(|e| e.to_string())
        })?,
        timeout: duration("dns.timeout", &raw.dns.timeout)?,
    };
    let deny = list("connections.deny", &c.deny, |s| {
        s.parse::<pylon_roles::relay::Entry>().map(|e| match e {
            pylon_roles::relay::Entry::Peer(p) => pylon_node::host::BanTarget::Peer(p),
            pylon_roles::relay::Entry::Prefix(p) => pylon_node::host::BanTarget::Prefix(p),
        })
    })?;
    let websocket = websocket(&raw.websocket)?;
    if websocket.server.is_none() {
        for (i, addr) in listen.iter().enumerate() {
            if let Ok((pylon_node::transport::Target::Ws(ws), _)) =
                pylon_node::transport::parse(addr)
            {
                if ws.secure {
                    return Err(bad(
                        &format!("listen[{i}]"),
                        &addr.to_string(),
                        "a /wss address needs websocket.tls_certificate and websocket.tls_key",
                    ));
                }
            }
        }
    }
    let host = pylon_node::host::Config {
        dial_timeout: duration("connections.dial_timeout", &c.dial_timeout)?,
        handshake_timeout: duration("connections.handshake_timeout", &c.handshake_timeout)?,
        handshake_timeout_floor: duration(
            "connections.handshake_timeout_floor",
            &c.handshake_timeout_floor,
        )?,
        negotiation_timeout: duration("connections.negotiation_timeout", &c.negotiation_timeout)?,
        max_connections: c.max,
        max_connections_per_peer: c.max_per_peer,
        max_pending_incoming: c.max_pending_incoming,
        max_pending_incoming_per_ip: c.max_pending_incoming_per_ip,
        max_pending_incoming_per_subnet: c.max_pending_incoming_per_subnet,
        max_incoming_per_ip: c.max_incoming_per_ip,
        max_incoming_per_subnet: c.max_incoming_per_subnet,
        max_streams_per_connection: c.max_streams_per_connection,
        dns,
        port_reuse: c.port_reuse,
        inline_muxer: c.inline_muxer,
        security: list("connections.security", &c.security, |s| match s {
            "noise" => Ok(pylon_node::secure::Security::Noise),
            "tls" => Ok(pylon_node::secure::Security::Tls),
            _ => Err("expected \"noise\" or \"tls\"".to_string()),
        })?,
        websocket,
    };
    let identify = pylon_node::protocols::identify::Config {
        protocol_version: raw.identify.protocol_version.clone(),
        agent_version: raw.identify.agent_version.clone(),
        addr_ttl: duration("identify.addr_ttl", &raw.identify.addr_ttl)?,
        timeout: duration("identify.timeout", &raw.identify.timeout)?,
        addresses: pylon_node::addresses::Config {
            announce: list("identify.announce", &raw.identify.announce, |s| {
                s.parse::<Multiaddr>().map_err(|e| e.to_string())
            })?,
            advertise_private: raw.identify.advertise_private,
            observed_confirmations: raw.identify.observed_confirmations.max(1),
        },
    };
    let perf = match &raw.perf {
        None => None,
        Some(p) => Some(pylon_node::protocols::perf::Config {
            allow: list("perf.allow", &p.allow, |s| {
                s.parse::<pylon_node::PeerId>().map_err(|e| e.to_string())
            })?
            .into_iter()
            .collect(),
            idle_timeout: Some(duration("perf.idle_timeout", &p.idle_timeout)?),
        }),
    };
    let kad = raw.kad.as_ref().map(kad).transpose()?;
    let listen_via = list(
        "relay_client.listen_via",
        &raw.relay_client.listen_via,
        |s| {
            let addr: Multiaddr = s.parse().map_err(|e: multiaddr::Error| e.to_string())?;
            match addr.iter().last() {
                Some(multiaddr::Protocol::P2p(_)) => Ok(addr),
                _ => Err("must end with /p2p/<relay id>".to_string()),
            }
        },
    )?;
    let peerstore = pylon_node::peerstore::Config {
        max_peers: raw.peerstore.max_peers,
        max_addrs_per_peer: raw.peerstore.max_addrs_per_peer,
        max_protocols_per_peer: raw.peerstore.max_protocols_per_peer,
        ..Default::default()
    };
    let mut node = pylon_node::node::Config {
        listen,
        host,
        identify,
        peerstore,
        perf,
        kad,
        storage: pylon_node::storage::Config {
            flush_interval: duration("storage.flush_interval", &raw.storage.flush_interval)?,
            stall_timeout: duration("storage.stall_timeout", &raw.storage.stall_timeout)?,
            retry_interval: duration("storage.retry_interval", &raw.storage.retry_interval)?,
        },
        relay_client: pylon_node::protocols::relay::client::Config { listen_via },
        // On, loopback candidates off: nothing an operator needs to set.
        dcutr: Default::default(),
        autonat: autonat(&raw.autonat)?,
    };
    // What each role needs from the node (the bootstrap role: a DHT server, inbound caps).
    for role in &roles {
        role.require(&mut node)?;
    }
    Ok(Config {
        data_dir,
        log: raw.log,
        metrics,
        metrics_http,
        admin,
        admin_http,
        admin_token_file,
        deny,
        otlp_endpoint: match raw.telemetry.otlp_endpoint.as_str() {
            "" => None,
            url if url.starts_with("http://") => Some(url.to_owned()),
            url => {
                return Err(bad(
                    "telemetry.otlp_endpoint",
                    url,
                    "must be an http:// URL of an OTLP/HTTP collector (port 4318)",
                ))
            }
        },
        shutdown_grace: duration("connections.shutdown_grace", &c.shutdown_grace)?,
        node,
        roles,
        profile: raw.profile,
    })
}

/// A listen address may end in `/p2p/<id>` only when the id is this node's own: the key in
/// `data_dir` (read, never created, and only when such an address is configured).
fn listen_peer_ids(listen: &[Multiaddr], data_dir: &Path) -> Result<(), Error> {
    let mut own = None;
    for (i, addr) in listen.iter().enumerate() {
        let Ok((_, Some(peer))) = pylon_node::transport::parse(addr) else {
            continue;
        };
        let key = format!("listen[{i}]");
        if own.is_none() {
            let loaded = pylon_node::identity::load(data_dir)
                .map_err(|e| bad(&key, &addr.to_string(), &e.to_string()))?;
            own = Some(loaded.map(|k| k.public().to_peer_id()));
        }
        match own {
            Some(Some(id)) if id == peer => {}
            Some(Some(id)) => {
                return Err(bad(
                    &key,
                    &addr.to_string(),
                    &format!("ends in /p2p/{peer}, which is not this node (it is {id}); drop the /p2p suffix"),
                ))
            }
            _ => {
                return Err(bad(
                    &key,
                    &addr.to_string(),
                    &format!("ends in /p2p/{peer}, but this node has no key yet (its PeerId is made on first start); drop the /p2p suffix"),
                ))
            }
        }
    }
    Ok(())
}

/// Checks the bounds of an HTTP listener's section (`metrics`, `admin`): the header, idle
/// and request timeouts, and the connection cap.
fn listener_http(
    section: &str,
    (header, idle, request): (&str, &str, &str),
    max_connections: usize,
) -> Result<crate::http::Config, Error> {
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&max_connections) {
        return Err(bad(
            &format!("{section}.max_connections"),
            &max_connections.to_string(),
            &format!("must be between 1 and {MAX_HTTP_CONNECTIONS}"),
        ));
    }
    Ok(crate::http::Config {
        header_timeout: duration(&format!("{section}.header_timeout"), header)?,
        idle_timeout: duration(&format!("{section}.idle_timeout"), idle)?,
        request_timeout: duration(&format!("{section}.request_timeout"), request)?,
        max_connections,
    })
}

/// Most connections an HTTP listener may be allowed: each costs a file descriptor.
const MAX_HTTP_CONNECTIONS: usize = 4096;

/// Checks a log filter (tracing `EnvFilter` syntax): comma-separated directives, each a
/// level (`info`) or `target=level` (`pylon_node=debug`). EnvFilter alone would take a
/// bare word that is not a level (`debugg`) as a target name with every level on, and the
/// node would log nothing at all; such a word is refused here.
pub(crate) fn log_filter(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l));
    if s.trim().is_empty() {
        return Err("empty; use a level (error, warn, info, debug, trace) or \"off\"".into());
    }
    // EnvFilter takes no spaces around directives; an empty one (a trailing comma) is fine.
    for d in s.split(',').filter(|d| !d.is_empty()) {
        match d.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() && is_level(level) => {}
            Some(_) => {
                return Err(format!(
                    "{d:?}: expected target=level with a level of off, error, warn, info, debug or trace"
                ))
            }
            None if is_level(d) => {}
            None => {
                return Err(format!(
                    "{d:?} is not a level (off, error, warn, info, debug, trace); \
                     to set one target's level write target=level, e.g. pylon_node=debug"
                ))
            }
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Checks `[kad]`.
fn kad(raw: &RawKad) -> Result<pylon_node::protocols::kad::Config, Error> {
    use pylon_node::protocols::kad;
    let protocol = &raw.protocol;
    if !protocol.starts_with('/') || protocol.len() > 128 {
        return Err(bad(
            "kad.protocol",
            protocol,
            "a protocol id like \"/ipfs/kad/1.0.0\" or \"/myapp/kad/1.0.0\"",
        ));
    }
    for (key, v) in [
        ("kad.k", raw.k),
        ("kad.alpha", raw.alpha),
        ("kad.max_records", raw.max_records),
        ("kad.max_provider_records", raw.max_provider_records),
        ("kad.max_providers_per_key", raw.max_providers_per_key),
        (
            "kad.max_peers_per_subnet_in_bucket",
            raw.max_peers_per_subnet_in_bucket,
        ),
        ("kad.max_peers_per_subnet", raw.max_peers_per_subnet),
    ] {
        if v == 0 {
            return Err(bad(key, "0", "must be at least 1"));
        }
    }
    if raw.k > 256 {
        return Err(bad("kad.k", &raw.k.to_string(), "must be at most 256"));
    }
    if !(1024..=4 * 1024 * 1024).contains(&raw.max_message_size) {
        return Err(bad(
            "kad.max_message_size",
            &raw.max_message_size.to_string(),
            "must be between 1024 and 4194304",
        ));
    }
    if raw.max_record_size == 0 || raw.max_record_size > raw.max_message_size {
        return Err(bad(
            "kad.max_record_size",
            &raw.max_record_size.to_string(),
            "must be at least 1 and at most kad.max_message_size",
        ));
    }
    for (key, v) in [
        ("kad.peer_requests_burst", raw.peer_requests_burst),
        ("kad.peer_requests_per_second", raw.peer_requests_per_second),
        ("kad.subnet_requests_burst", raw.subnet_requests_burst),
        (
            "kad.subnet_requests_per_second",
            raw.subnet_requests_per_second,
        ),
    ] {
        if v == 0 {
            return Err(bad(key, "0", "must be at least 1"));
        }
    }
    let refresh_interval = match raw.refresh_interval.as_str() {
        "off" => None,
        s => Some(duration("kad.refresh_interval", s)?),
    };
    let bootstrap = list("kad.bootstrap", &raw.bootstrap, |s| {
        let addr: Multiaddr = s.parse().map_err(|e: multiaddr::Error| e.to_string())?;
        match addr.iter().last() {
            Some(multiaddr::Protocol::P2p(_)) => Ok(addr),
            _ => Err("must end in /p2p/<peer id>".to_string()),
        }
    })?;
    let (server, auto_server) =
        match &raw.server {
            RawServerMode::Fixed(on) => (*on, false),
            RawServerMode::Word(w) if w == "auto" => (false, true),
            RawServerMode::Word(w) => return Err(bad(
                "kad.server",
                w,
                "must be true, false or \"auto\" (server mode while AutoNAT finds us reachable)",
            )),
        };
    Ok(kad::Config {
        protocol: protocol.clone(),
        server,
        auto_server,
        bootstrap,
        table: kad::table::Config {
            k: raw.k,
            max_per_group_bucket: raw.max_peers_per_subnet_in_bucket,
            max_per_group_table: raw.max_peers_per_subnet,
            ..Default::default()
        },
        store: kad::store::Config {
            max_records: raw.max_records,
            max_value_len: raw.max_record_size,
            record_ttl: duration("kad.record_ttl", &raw.record_ttl)?,
            max_provider_records: raw.max_provider_records,
            max_providers_per_key: raw.max_providers_per_key,
            provider_ttl: duration("kad.provider_ttl", &raw.provider_ttl)?,
            ..Default::default()
        },
        alpha: raw.alpha,
        request_timeout: duration("kad.request_timeout", &raw.request_timeout)?,
        query_timeout: duration("kad.query_timeout", &raw.query_timeout)?,
        max_message_len: raw.max_message_size,
        peer_rate: (raw.peer_requests_burst, raw.peer_requests_per_second),
        group_rate: (raw.subnet_requests_burst, raw.subnet_requests_per_second),
        refresh_interval,
        private_addrs_to_public: raw.private_addrs_to_public,
        ..Default::default()
    })
}

/// Loads the `/wss` certificate, key and extra roots named in `[websocket]`.
fn websocket(raw: &RawWebsocket) -> Result<pylon_node::host::WsConfig, Error> {
    use pylon_node::transport::WsTls;
    let server = match (raw.tls_certificate.as_str(), raw.tls_key.as_str()) {
        ("", "") => None,
        ("", _) => {
            return Err(bad(
                "websocket.tls_certificate",
                "",
                "needed with websocket.tls_key",
            ))
        }
        (_, "") => {
            return Err(bad(
                "websocket.tls_key",
                "",
                "needed with websocket.tls_certificate",
            ))
        }
        (cert, key) => Some(
            WsTls::server_config(Path::new(cert), Path::new(key))
                .map_err(|m| bad("websocket.tls_certificate", cert, &m))?,
        ),
    };
    let extra_roots = list("websocket.extra_roots", &raw.extra_roots, |s| {
        use pylon_node::rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::pem_file_iter(s)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| e.to_string())
    })?
    .into_iter()
    .flatten()
    .collect();
    Ok(pylon_node::host::WsConfig {
        server,
        extra_roots,
    })
}

/// Parses every item of a list key; an error names `key[i]` and the item.
fn list<T>(
    key: &str,
    items: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Error> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|m| bad(&format!("{key}[{i}]"), s, &m)))
        .collect()
}

/// default.toml and README.md held to the defaults in code.
#[cfg(test)]
#[path = "config_docs.rs"]
mod docs;

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: Option<&str>, env: &[(&str, &str)], flags: Flags) -> Sources<'static> {
        Sources {
            file: file.map(|f| ("test.toml", f.to_string())),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags,
            xdg_data_home: None,
            home: Some("/home/op".into()),
        }
    }

    #[test]
    fn embedded_default_is_valid_and_useful() {
        let c = load(sources(None, &[], Flags::default())).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/home/op/.local/share/pylon"));
        let listen: Vec<String> = c.node.listen.iter().map(|a| a.to_string()).collect();
        assert!(listen.contains(&"/ip4/0.0.0.0/tcp/4001".to_string()));
        assert!(listen.contains(&"/ip4/0.0.0.0/udp/4001/quic-v1".to_string()));
        assert!(c.node.host.websocket.server.is_none());
        assert!(c.node.perf.is_none(), "perf must be off by default");
        assert_eq!(c.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            c.node.identify.agent_version,
            concat!("pylon/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(c.node.host.handshake_timeout, Duration::from_secs(10));
        // Fair admission of inbound handshakes is on by default (issue 11).
        let defaults = pylon_node::host::Config::default();
        assert_eq!(
            (
                c.node.host.max_pending_incoming_per_ip,
                c.node.host.max_pending_incoming_per_subnet,
                c.node.host.handshake_timeout_floor,
            ),
            (
                defaults.max_pending_incoming_per_ip,
                defaults.max_pending_incoming_per_subnet,
                defaults.handshake_timeout_floor,
            )
        );
        assert!(c.node.host.max_pending_incoming_per_ip > 0);
    }

    /// The embedded default serves what a public node is for; naming a role, or the
    /// minimal profile, runs exactly what was asked.
    #[test]
    fn profiles() {
        let names = |c: &Config| c.roles.iter().map(|r| r.name()).collect::<Vec<_>>();
        let public = load(sources(None, &[], Flags::default())).unwrap();
        assert_eq!(public.profile, "public");
        assert_eq!(names(&public), ["relay", "autonat"]);
        let kad = public.node.kad.as_ref().expect("the DHT");
        assert!(kad.auto_server);
        let tree = merge_sources(&sources(None, &[], Flags::default())).unwrap();
        let relay = &tree["roles"]["relay"];
        assert_eq!(relay["max_reservations"].as_integer(), Some(128));
        assert_eq!(relay["circuit_data"].as_integer(), Some(131072));

        let minimal = load(sources(
            Some("profile = \"minimal\""),
            &[],
            Flags::default(),
        ))
        .unwrap();
        assert!(minimal.roles.is_empty() && minimal.node.kad.is_none());
        let minimal = load(sources(
            None,
            &[("PYLON_PROFILE", "minimal")],
            Flags::default(),
        ))
        .unwrap();
        assert!(minimal.roles.is_empty());
        let flags = Flags {
            profile: Some("minimal".into()),
            ..Default::default()
        };
        assert!(load(sources(None, &[], flags)).unwrap().roles.is_empty());

        // A named role: only it, and no DHT added.
        let flags = Flags {
            roles: vec!["autonat".into()],
            ..Default::default()
        };
        let one = load(sources(None, &[], flags)).unwrap();
        assert_eq!(names(&one), ["autonat"]);
        assert!(one.node.kad.is_none());
        let one = load_file("[roles.relay]\nmax_circuits = 99");
        assert_eq!(names(&one), ["relay"]);
        // The operator's own [kad] is kept under the public profile.
        let own = load_file("[kad]\nserver = false");
        assert_eq!(names(&own), ["relay", "autonat"]);
        let kad = own.node.kad.as_ref().expect("the DHT");
        assert!(!kad.server && !kad.auto_server);

        assert_eq!(
            file_err("profile = \"everything\""),
            "config key `profile` has invalid value \"everything\": must be one of public, minimal"
        );
        assert!(file_err("profile = 3").contains("`profile`"));
    }

    #[test]
    fn pending_handshake_budgets() {
        let file = "[connections]\nmax_pending_incoming_per_ip = 3\n\
                    max_pending_incoming_per_subnet = 0\nhandshake_timeout_floor = \"500ms\"\n";
        let c = load_file(file);
        assert_eq!(c.node.host.max_pending_incoming_per_ip, 3);
        assert_eq!(
            c.node.host.max_pending_incoming_per_subnet, 0,
            "0 = no budget"
        );
        assert_eq!(
            c.node.host.handshake_timeout_floor,
            Duration::from_millis(500)
        );
        let e = file_err("[connections]\nhandshake_timeout_floor = \"0s\"\n");
        assert!(e.contains("connections.handshake_timeout_floor"), "{e}");
        let e = file_err("[connections]\nmax_pending_incoming_per_ip = -1\n");
        assert!(e.contains("max_pending_incoming_per_ip"), "{e}");
    }

    #[test]
    fn precedence_file_env_flags() {
        let file = "data_dir = \"/from/file\"\nlisten = [\"/ip4/127.0.0.1/tcp/1\"]\n[connections]\nmax = 7\n";
        let env = [
            ("PYLON_DATA_DIR", "/from/env"),
            ("PYLON_CONNECTIONS__MAX_PER_PEER", "3"),
            ("OTHER", "x"),
        ];
        let c = load(sources(Some(file), &env, Flags::default())).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.node.host.max_connections, 7);
        assert_eq!(c.node.host.max_connections_per_peer, 3);
        assert_eq!(
            c.node.listen,
            vec!["/ip4/127.0.0.1/tcp/1".parse::<Multiaddr>().unwrap()]
        );
        let flags = Flags {
            data_dir: Some("/from/flag".into()),
            listen: vec!["/ip4/127.0.0.1/tcp/2".into(), "/memory/5".into()],
            metrics: Some("127.0.0.1:1".into()),
            admin: None,
            roles: vec![],
            profile: None,
        };
        let c = load(sources(Some(file), &env, flags)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.node.listen.len(), 2);
        assert_eq!(c.metrics, Some("127.0.0.1:1".parse().unwrap()));
        // A list from the environment, comma-separated.
        let env = [("PYLON_LISTEN", "/ip4/127.0.0.1/tcp/3, /ip6/::1/tcp/3")];
        assert_eq!(
            load(sources(None, &env, Flags::default()))
                .unwrap()
                .node
                .listen
                .len(),
            2
        );
    }

    fn err(file: Option<&str>, env: &[(&str, &str)], flags: Flags) -> String {
        load(sources(file, env, flags)).unwrap_err().to_string()
    }

    /// The configuration from `file` alone (no environment, no flags).
    fn load_file(file: &str) -> Config {
        load(sources(Some(file), &[], Flags::default())).unwrap()
    }

    /// The error from `file` alone (no environment, no flags).
    fn file_err(file: &str) -> String {
        err(Some(file), &[], Flags::default())
    }

    #[test]
    fn errors_name_key_and_value() {
        // Each file, and what its error must name.
        for (file, names) in [
            ("[connections]\nmax = \"lots\"\n", &["connections.max"][..]),
            (
                "[connections]\nhandshake_timeout = \"10 parsecs\"\n",
                &["connections.handshake_timeout", "10 parsecs"],
            ),
            ("typo_key = 1\n", &["typo_key"]),
            // Half a key pair, unreadable files.
            (
                "[websocket]\ntls_key = \"/k.pem\"\n",
                &["websocket.tls_certificate"],
            ),
            (
                "[websocket]\ntls_certificate = \"/nonexistent.pem\"\ntls_key = \"/k.pem\"\n",
                &["/nonexistent.pem"],
            ),
            (
                "[websocket]\nextra_roots = [\"/nonexistent-ca.pem\"]\n",
                &["websocket.extra_roots[0]"],
            ),
            ("[perf]\nallow = [\"not-a-peer\"]\n", &["perf.allow[0]"]),
            (
                "[relay_client]\nlisten_via = [\"/ip4/10.0.0.1/tcp/4001\"]\n",
                &["relay_client.listen_via[0]", "/p2p/<relay id>"],
            ),
            (
                "[dns]\nnameservers = [\"1.2.3.4\"]\n",
                &["dns.nameservers[0]", "1.2.3.4"],
            ),
            ("[kad]\nprotocol = \"kad\"\n", &["kad.protocol"]),
            (
                "[kad]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n",
                &["kad.bootstrap[0]", "/p2p/"],
            ),
            ("[kad]\nk = 0\n", &["kad.k"]),
            (
                "[kad]\nmax_record_size = 999999999\n",
                &["kad.max_record_size"],
            ),
            ("[kad]\nwhat = 1\n", &["what"]),
            (
                "[roles.bootstrap]\ngrace_period = \"soon\"\n",
                &["roles.bootstrap.grace_period"],
            ),
            ("not toml [", &["test.toml"]),
        ] {
            let e = file_err(file);
            assert!(names.iter().all(|n| e.contains(n)), "{file:?}: {e}");
        }
        assert!(load_file("[perf]\n").node.perf.unwrap().allow.is_empty());

        let e = err(
            None,
            &[("PYLON_PEERSTORE__MAX_PEERS", "0")],
            Flags::default(),
        );
        assert!(e.contains("peerstore.max_peers"), "{e}");
        // /wss without a certificate.
        let e = err(
            None,
            &[("PYLON_LISTEN", "/ip4/0.0.0.0/tcp/443/wss")],
            Flags::default(),
        );
        assert!(
            e.contains("listen[0]") && e.contains("tls_certificate"),
            "{e}"
        );
        let flags = Flags {
            listen: vec!["/ip4/1.2.3.4/udp/1".into()],
            ..Default::default()
        };
        let e = err(None, &[], flags);
        assert!(
            e.contains("listen[0]") && e.contains("/ip4/1.2.3.4/udp/1"),
            "{e}"
        );
        let flags = Flags {
            metrics: Some("not-an-addr".into()),
            ..Default::default()
        };
        assert!(err(None, &[], flags).contains("metrics.listen"));
        let flags = Flags {
            roles: vec!["lighthouse".into()],
            ..Default::default()
        };
        let e = err(None, &[], flags);
        assert!(e.contains("roles") && e.contains("lighthouse"), "{e}");
    }

    #[test]
    fn kad_and_the_bootstrap_role() {
        let minimal = Flags {
            profile: Some("minimal".into()),
            ..Default::default()
        };
        let c = load(sources(None, &[], minimal)).unwrap();
        assert!(
            c.node.kad.is_none() && c.roles.is_empty(),
            "off in the minimal profile"
        );
        let c = load_file("[kad]\nprotocol = \"/myapp/kad/1.0.0\"\nrefresh_interval = \"off\"\n");
        let kad = c.node.kad.unwrap();
        assert_eq!(kad.protocol, "/myapp/kad/1.0.0");
        assert!(!kad.server && kad.refresh_interval.is_none());
        // --role bootstrap: a DHT server with the role's limits, [kad] settings kept.
        let flags = Flags {
            roles: vec!["bootstrap".into()],
            ..Default::default()
        };
        let c = load(sources(
            Some("[kad]\nk = 16\n[connections]\nmax_incoming_per_ip = 4\n"),
            &[],
            flags,
        ))
        .unwrap();
        let kad = c.node.kad.unwrap();
        assert!(kad.server && kad.persist_table);
        assert_eq!(kad.table.k, 16);
        assert_eq!(kad.serve_verified_within, Some(Duration::from_secs(3600)));
        assert_eq!(c.node.host.max_incoming_per_ip, 4, "the tighter cap");
        assert_eq!(c.node.host.max_incoming_per_subnet, 64);
        let bootstrap = c.roles[0].config::<pylon_roles::bootstrap::Bootstrap>();
        assert_eq!(bootstrap.unwrap().grace_period, Duration::from_secs(30));
        // A role's keys from the environment, though the default does not write them:
        // numbers are numbers, durations stay strings.
        let env = [
            ("PYLON_ROLES__BOOTSTRAP__MAX_CONNECTIONS_PER_IP", "64"),
            ("PYLON_ROLES__BOOTSTRAP__GRACE_PERIOD", "5s"),
        ];
        let flags = Flags {
            roles: vec!["bootstrap".into()],
            ..Default::default()
        };
        let c = load(sources(None, &env, flags)).unwrap();
        let bootstrap = c.roles[0]
            .config::<pylon_roles::bootstrap::Bootstrap>()
            .unwrap();
        assert_eq!(bootstrap.max_connections_per_ip, 64);
        assert_eq!(bootstrap.grace_period, Duration::from_secs(5));
    }

    /// Lists of sections the embedded default leaves commented out come from the
    /// environment comma-separated too.
    #[test]
    fn comma_separated_lists_from_the_environment() {
        let a = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWGC6TvWhfapngNDsCf7RGSGkrjRZ7dKYQPM6Lq4NN2pw5";
        let b = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWGC6TvWhfapngNDsCf7RGSGkrjRZ7dKYQPM6Lq4NN2pw5";
        let both = format!("{a}, {b}");
        let env = [
            ("PYLON_KAD__BOOTSTRAP", both.as_str()),
            ("PYLON_ROLES__RELAY__DENY", "10.6.0.0/16,203.0.113.7"),
        ];
        let c = load(sources(None, &env, Flags::default())).unwrap();
        assert_eq!(c.node.kad.unwrap().bootstrap.len(), 2);
        let relay = c.roles[0].config::<pylon_roles::relay::Relay>().unwrap();
        assert_eq!(relay.deny, ["10.6.0.0/16", "203.0.113.7"]);
    }

    #[test]
    fn metrics_can_be_turned_off() {
        let c = load_file("[metrics]\nlisten = \"off\"\n");
        assert!(c.metrics.is_none());
        let c = load(sources(
            None,
            &[("PYLON_METRICS__LISTEN", "")],
            Flags::default(),
        ))
        .unwrap();
        assert!(c.metrics.is_none());
    }

    #[test]
    fn the_admin_api_and_the_deny_list() {
        let c = load_file("[admin]\nlisten = \"off\"\n");
        assert!(c.admin.is_none());
        assert_eq!(
            c.admin_token_file,
            PathBuf::from("/home/op/.local/share/pylon/admin.token")
        );
        let file = "[admin]\ntoken_file = \"/etc/pylon/token\"\nmax_connections = 4\n";
        let flags = Flags {
            admin: Some("[::1]:0".into()),
            ..Default::default()
        };
        let c = load(sources(Some(file), &[], flags)).unwrap();
        assert_eq!(c.admin, Some("[::1]:0".parse().unwrap()));
        assert_eq!(c.admin_token_file, PathBuf::from("/etc/pylon/token"));
        assert_eq!(c.admin_http.max_connections, 4);
        let peer = "12D3KooWGC6TvWhfapngNDsCf7RGSGkrjRZ7dKYQPM6Lq4NN2pw5";
        let env = [(
            "PYLON_CONNECTIONS__DENY",
            &format!("{peer}, 10.6.0.0/16")[..],
        )];
        let c = load(sources(None, &env, Flags::default())).unwrap();
        assert_eq!(
            c.deny,
            [
                pylon_node::host::BanTarget::Peer(peer.parse().unwrap()),
                pylon_node::host::BanTarget::Prefix("10.6.0.0/16".parse().unwrap()),
            ]
        );
        for (file, names) in [
            (
                "[admin]\nlisten = \"localhost\"\n",
                &["admin.listen", "localhost"][..],
            ),
            ("[admin]\nmax_connections = 0\n", &["admin.max_connections"]),
            (
                "[admin]\nidle_timeout = \"never\"\n",
                &["admin.idle_timeout"],
            ),
            ("[admin]\ntoken = \"x\"\n", &["token"]),
            (
                "[connections]\ndeny = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n",
                &["connections.deny[1]", "10.0.0.1/8"],
            ),
        ] {
            let e = file_err(file);
            assert!(names.iter().all(|n| e.contains(n)), "{file:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("k", "2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "s", "10", "0s", "-1s", "1y", "99999999999999999999s"] {
            assert!(duration("k", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractional_durations() {
        assert_eq!(duration("k", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("k", "0.5m").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("k", "1.25h").unwrap(), Duration::from_secs(4500));
        assert_eq!(duration("k", "0.5ms").unwrap(), Duration::from_micros(500));
        assert_eq!(duration("k", "2.0d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(
            duration("k", "0.000000001s").unwrap(),
            Duration::from_nanos(1)
        );
        for bad in [
            ".5s",
            "1.s",
            "1.2.3s",
            "0.0s",
            "1,5s",
            "0.0000000001s",
            "1.5",
        ] {
            let e = duration("connections.dial_timeout", bad).unwrap_err();
            assert!(
                e.to_string().contains("connections.dial_timeout"),
                "{bad}: {e}"
            );
        }
        // Through the file, too.
        let c = load_file("[connections]\ndial_timeout = \"1.5s\"\n");
        assert_eq!(c.node.host.dial_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn absurd_durations_are_refused_naming_the_key() {
        assert_eq!(
            duration("k", "36525d").unwrap(),
            MAX_DURATION,
            "100 years is the most"
        );
        for bad in [
            "36526d",
            "999999999999999999d",
            "99999999999999999999999999999999999999999999s",
            "18446744073709551616s",
            "876601h",
        ] {
            let e = duration("kad.record_ttl", bad).unwrap_err().to_string();
            assert!(
                e.contains("kad.record_ttl") && e.contains(bad) && e.contains("100 years"),
                "{bad}: {e}"
            );
        }
        let e = file_err("[kad]\nrecord_ttl = \"999999999999999999d\"\n");
        assert!(e.contains("kad.record_ttl"), "{e}");
    }

    #[test]
    fn log_filter_must_be_levels_or_target_levels() {
        for good in [
            "info",
            "DEBUG",
            "off",
            "info,pylon_node=debug",
            "warn,pylon_node::host=trace,hyper=off,",
            "pylon_node[conn]=debug",
        ] {
            assert!(log_filter(good).is_ok(), "{good}: {:?}", log_filter(good));
            let env = [("PYLON_LOG", good)];
            assert!(
                load(sources(None, &env, Flags::default())).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "debugg",
            "info,debugg",
            "pylon_node",
            "pylon_node=loud",
            "info, pylon_node=debug",
            "=debug",
            "",
            " ",
        ] {
            let e = file_err(&format!("log = {bad:?}\n"));
            assert!(e.contains("config key `log`"), "{bad}: {e}");
        }
        let e = file_err("log = \"debugg\"\n");
        assert!(e.contains("debugg") && e.contains("not a level"), "{e}");
    }

    #[test]
    fn metrics_listener_bounds() {
        let c = load(sources(None, &[], Flags::default())).unwrap();
        assert_eq!(c.metrics_http, crate::http::Config::default());
        let file = "[metrics]\nheader_timeout = \"1.5s\"\nidle_timeout = \"5s\"\n\
                    request_timeout = \"2s\"\nmax_connections = 8\n";
        // --metrics replaces the address only; the section's other keys stay.
        let flags = Flags {
            metrics: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let c = load(sources(Some(file), &[], flags)).unwrap();
        assert_eq!(
            c.metrics_http,
            crate::http::Config {
                header_timeout: Duration::from_millis(1500),
                idle_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(2),
                max_connections: 8,
            }
        );
        assert_eq!(c.metrics, Some("127.0.0.1:0".parse().unwrap()));
        // A file that names only the address gets the defaults.
        let c = load_file("[metrics]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(c.metrics_http, crate::http::Config::default());
        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections", "100000"),
            ("header_timeout", "\"0s\""),
            ("idle_timeout", "\"forever\""),
        ] {
            let e = file_err(&format!("[metrics]\n{key} = {value}\n"));
            assert!(e.contains(&format!("metrics.{key}")), "{e}");
        }
    }

    #[test]
    fn listen_p2p_suffix_must_be_our_own() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let flags = |listen: String| Flags {
            data_dir: Some(dir.path().into()),
            listen: vec![listen],
            ..Default::default()
        };
        let listen_err = |listen: String| err(None, &[], flags(listen));
        let other = pylon_node::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        // No key yet: no /p2p suffix can be ours (and loading the config makes no key).
        let e = listen_err(format!("/ip4/127.0.0.1/tcp/1/p2p/{other}"));
        assert!(e.contains("listen[0]") && e.contains("no key yet"), "{e}");
        assert!(!dir.path().join(pylon_node::identity::KEY_FILE).exists());
        let own = pylon_node::identity::load_or_generate(dir.path())
            .unwrap()
            .public()
            .to_peer_id();
        let e = listen_err(format!("/ip4/127.0.0.1/tcp/1/p2p/{other}"));
        assert!(
            e.contains("listen[0]")
                && e.contains(&other.to_string())
                && e.contains(&own.to_string()),
            "{e}"
        );
        let e = listen_err(format!("/ip4/127.0.0.1/tcp/1/ws/p2p/{other}"));
        assert!(e.contains("listen[0]"), "{e}");
        // Our own PeerId, and no suffix, are fine.
        for ok in [
            format!("/ip4/127.0.0.1/tcp/1/p2p/{own}"),
            "/ip4/127.0.0.1/tcp/1".to_string(),
        ] {
            assert!(
                load(sources(None, &[], flags(ok.clone()))).is_ok(),
                "{ok} in {data}"
            );
        }
    }
}
