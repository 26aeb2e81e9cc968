//! `pylon`: the Pylon node binary. `run` starts the node in the foreground, `id` prints
//! its PeerId, `init` prepares a data directory and a config file, `config` prints the
//! effective configuration; `status`, `peers`, `bans`, `ban`, `unban`, `drain` and
//! `reload` steer a running node through its admin API; `health` asks its `/healthz`.

mod admin;
mod cli;
mod config;
mod fd;
mod http;
mod metrics_server;
mod telemetry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use prometheus_client::registry::Registry;
use pylon_node::storage::Health;

#[derive(Parser)]
#[command(name = "pylon", version, about = "Pylon: a libp2p infrastructure node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node in the foreground until SIGINT or SIGTERM.
    Run(Common),
    /// Print the node's PeerId (creating its key on first use).
    Id(Common),
    /// Create the data directory, the node key and a config file to edit.
    Init {
        #[command(flatten)]
        common: Common,
        /// Where to write the config file (default: DATA_DIR/pylon.toml).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults, file, environment and flags merged).
    Config(Common),
    /// Measure throughput against a peer's /perf/1.0.0 server (e.g. a Pylon with [perf]).
    Perf(PerfArgs),
    /// Show a running node: identity, addresses, reachability, uptime, roles.
    Status(ClientArgs),
    /// List a running node's peers (connected first).
    Peers {
        #[command(flatten)]
        client: ClientArgs,
        /// Only peers whose PeerId, agent, an address or a protocol contains this.
        #[arg(long)]
        q: Option<String>,
        /// Peers to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Peers to show (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// List the bans in force on a running node.
    Bans(ClientArgs),
    /// Ban a peer (PeerId) or an IP prefix (CIDR) on a running node; its connections close.
    Ban {
        #[command(flatten)]
        client: ClientArgs,
        /// A PeerId, or an IP prefix such as 203.0.113.0/24 (a bare address is a /32 or /128).
        target: String,
        /// How long, e.g. 10m, 1.5h (default: until lifted or the node restarts).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// Lift a ban (its id from `pylon bans`).
    Unban {
        #[command(flatten)]
        client: ClientArgs,
        id: u64,
    },
    /// Stop accepting connections, let open ones finish (connections.shutdown_grace), exit.
    Drain(ClientArgs),
    /// Re-read the config file and environment; name what needs a restart (also SIGHUP).
    Reload(ClientArgs),
    /// Exit 0 if a running node's /healthz answers 200, else 1 (a container HEALTHCHECK).
    Health(HealthArgs),
}

/// `pylon health`: where the node's metrics listener is (its config), or the URL outright.
#[derive(Args, Clone)]
struct HealthArgs {
    /// TOML config file of the running node (also PYLON_CONFIG), for metrics.listen.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The URL to ask instead, http://HOST:PORT[/PATH] (default path /healthz).
    #[arg(long)]
    url: Option<String>,
    /// Connecting and the answer together, e.g. 3s, 500ms.
    #[arg(long, default_value = "5s")]
    timeout: String,
}

/// How the admin commands find the running node: its config and data directory (for
/// `admin.listen` and the token file), or the address given outright.
#[derive(Args, Clone)]
struct ClientArgs {
    /// TOML config file of the running node (also PYLON_CONFIG).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory of the running node (where admin.token is).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Admin API address (host:port), instead of admin.listen.
    #[arg(long)]
    admin: Option<String>,
    /// Print the API's JSON answer.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn common(&self) -> Common {
        Common {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            listen: Vec::new(),
            roles: Vec::new(),
            profile: None,
            metrics: None,
            admin: self.admin.clone(),
        }
    }
}

#[derive(Args, Clone)]
struct PerfArgs {
    /// The server: a multiaddr ending in /p2p/<peer id> (any transport: tcp, quic-v1, ws).
    addr: String,
    /// Bytes to send, e.g. 100MiB, 1GB, 4096.
    #[arg(long, default_value = "0")]
    upload: String,
    /// Bytes to ask the server to send back.
    #[arg(long, default_value = "0")]
    download: String,
    /// Security protocol to propose on TCP and WebSocket: noise or tls.
    #[arg(long, default_value = "noise")]
    security: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Common {
    /// TOML config file (also PYLON_CONFIG).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory for the key and database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen multiaddr, repeatable; replaces the configured list.
    #[arg(long = "listen", short = 'l')]
    listen: Vec<String>,
    /// Turn a role on with its defaults, repeatable (then only the roles named run).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// What runs when no role is named: public (DHT server, AutoNAT server, a relay with
    /// conservative limits; the default) or minimal (the node core only).
    #[arg(long)]
    profile: Option<String>,
    /// Metrics listener address (host:port), or "off".
    #[arg(long)]
    metrics: Option<String>,
    /// Admin API listener address (host:port), or "off".
    #[arg(long)]
    admin: Option<String>,
}

fn load_config(common: &Common) -> anyhow::Result<config::Config> {
    let (_, config) = load_with_tree(common)?;
    Ok(config)
}

fn load_with_tree(common: &Common) -> anyhow::Result<(toml::Table, config::Config)> {
    let path = common
        .config
        .clone()
        .or_else(|| std::env::var_os("PYLON_CONFIG").map(PathBuf::from));
    let file = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            Some((p.display().to_string(), text))
        }
        None => None,
    };
    let shown = file.as_ref().map(|(p, _)| p.clone());
    let sources = config::Sources {
        file: file
            .as_ref()
            .map(|(_, text)| (shown.as_deref().unwrap_or(""), text.clone())),
        env: pylon_env()?,
        flags: config::Flags {
            data_dir: common.data_dir.clone(),
            listen: common.listen.clone(),
            metrics: common.metrics.clone(),
            admin: common.admin.clone(),
            roles: common.roles.clone(),
            profile: common.profile.clone(),
        },
        xdg_data_home: std::env::var("XDG_DATA_HOME").ok(),
        home: std::env::var("HOME").ok(),
    };
    let tree = config::merge_sources(&sources)?;
    let config = config::load(sources)?;
    Ok((tree, config))
}

/// The `PYLON_*` environment variables; a non-UTF-8 value is an error naming the variable.
fn pylon_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (key, value) in std::env::vars_os() {
        let Some(key) = key.to_str().filter(|k| k.starts_with("PYLON_")) else {
            continue;
        };
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("environment variable {key} is not valid UTF-8"))?;
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// Whether `RUST_LOG` is set (and not empty): it wins over the `log` key.
fn rust_log_set() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.to_string_lossy().trim().is_empty())
}

/// The `EnvFilter` of a checked log filter. sled logs every failed write and flush
/// itself, again at each reopen attempt while a disk is full; Pylon reports storage
/// failures once per outage (node/src/storage.rs), so sled's own lines are off unless the
/// filter names sled.
fn env_filter(filter: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let filter = if filter.contains("sled") {
        filter.to_string()
    } else {
        format!("{filter},sled=off")
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .with_context(|| format!("log filter {filter:?}"))
}

/// Logs to stderr under `RUST_LOG` when it is set and not empty, else under the `log` key
/// (already checked). A bad `RUST_LOG` is an error naming it, as a bad `log` key is.
/// Returns what sets another filter while running (a reload of the `log` key).
/// Installs the subscriber: the OpenTelemetry layer (when traces are on), the reloadable
/// log filter (which governs spans and events alike) and the log lines on stderr.
fn init_logging(filter: &str, traces: Option<telemetry::Layer>) -> anyhow::Result<admin::SetLog> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            config::log_filter(&env)
                .map_err(|m| anyhow::anyhow!("environment variable RUST_LOG={env:?}: {m}"))?;
            env
        }
        Ok(_) | Err(std::env::VarError::NotPresent) => filter.to_string(),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("environment variable RUST_LOG is not valid UTF-8")
        }
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(env_filter(&filter)?);
    use std::io::IsTerminal;
    tracing_subscriber::registry()
        .with(traces)
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .init();
    Ok(Box::new(move |log: &str| {
        let filter = env_filter(log)?;
        handle
            .reload(filter)
            .context("setting the new log filter")?;
        tracing::info!("log filter is now {log:?}");
        Ok(())
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Health checkers read 1 as unhealthy (Docker reserves 2): every failure is 1.
        Command::Health(args) => {
            return match health(&args) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pylon health: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(common) => run(common),
        Command::Id(common) => id(&common),
        Command::Init { common, output } => init(&common, output),
        Command::Config(common) => print_config(&common),
        Command::Perf(args) => perf(args),
        Command::Status(c) => admin_command(&c, cli::Command::Status),
        Command::Peers {
            client,
            q,
            offset,
            limit,
        } => admin_command(&client, cli::Command::Peers { q, offset, limit }),
        Command::Bans(c) => admin_command(&c, cli::Command::Bans),
        Command::Ban {
            client,
            target,
            duration,
        } => admin_command(&client, cli::Command::Ban { target, duration }),
        Command::Unban { client, id } => admin_command(&client, cli::Command::Unban { id }),
        Command::Drain(c) => admin_command(&c, cli::Command::Drain),
        Command::Reload(c) => admin_command(&c, cli::Command::Reload),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pylon: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `GET /healthz` on the metrics listener of the configuration (or `--url`): the line to
/// print when it answered 200, else an error saying what it did instead.
fn health(args: &HealthArgs) -> anyhow::Result<String> {
    let timeout = config::duration("--timeout", &args.timeout)?;
    let probe = match &args.url {
        Some(url) => cli::Probe::parse(url)?,
        None => {
            let config = load_config(&Common {
                config: args.config.clone(),
                data_dir: None,
                listen: Vec::new(),
                roles: Vec::new(),
                profile: None,
                metrics: None,
                admin: None,
            })?;
            let addr = config.metrics.ok_or_else(|| {
                anyhow::anyhow!(
                    "the metrics listener, which serves /healthz, is off in this \
                     configuration (metrics.listen = \"off\"); give --url"
                )
            })?;
            cli::Probe::healthz(addr)
        }
    };
    cli::health(&probe, timeout)
}

fn admin_command(args: &ClientArgs, command: cli::Command) -> anyhow::Result<()> {
    let config = load_config(&args.common())?;
    cli::run(&config, command, args.json)
}

fn id(common: &Common) -> anyhow::Result<()> {
    let config = load_config(common)?;
    let key = pylon_node::identity::load_or_generate(&config.data_dir)?;
    println!("{}", key.public().to_peer_id());
    Ok(())
}

fn init(common: &Common, output: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(common)?;
    let key = pylon_node::identity::load_or_generate(&config.data_dir)?;
    let path = output.unwrap_or_else(|| config.data_dir.join("pylon.toml"));
    if path.exists() {
        println!(
            "config file {} already exists; left as it is",
            path.display()
        );
    } else {
        let text = config::DEFAULT_TOML
            .replace("VERSION", env!("CARGO_PKG_VERSION"))
            .replace(
                "data_dir = \"\"",
                &format!("data_dir = {:?}", config.data_dir.display().to_string()),
            );
        write_new(&path, &text)?;
        println!("wrote {}", path.display());
    }
    let token_file = &config.admin_token_file;
    match pylon_dashboard::token::load_or_create(token_file)? {
        (_, true) => println!(
            "wrote the admin token to {} (mode 0600)",
            token_file.display()
        ),
        (_, false) => println!(
            "admin token file {} already exists; left as it is",
            token_file.display()
        ),
    }
    println!("data directory: {}", config.data_dir.display());
    println!("peer id: {}", key.public().to_peer_id());
    println!("start with: pylon run --config {}", path.display());
    Ok(())
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn print_config(common: &Common) -> anyhow::Result<()> {
    let (tree, _) = load_with_tree(common)?;
    print!("{}", toml::to_string(&tree)?);
    Ok(())
}

/// Parses `4096`, `100KiB`, `100MiB`, `1GiB`, `10kB`, `100MB`, `1GB`.
fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?}: expected a number of bytes, e.g. 100MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => anyhow::bail!("{s:?}: unknown unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?}: too large"))
}

fn perf(args: PerfArgs) -> anyhow::Result<()> {
    let upload = parse_bytes(&args.upload).context("--upload")?;
    let download = parse_bytes(&args.download).context("--download")?;
    let addr: pylon_node::Multiaddr = args
        .addr
        .parse()
        .with_context(|| format!("{:?} is not a multiaddr", args.addr))?;
    let Some(pylon_node::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
        anyhow::bail!("{addr}: the address must end in /p2p/<peer id>");
    };
    let security = match args.security.as_str() {
        "noise" => pylon_node::secure::Security::Noise,
        "tls" => pylon_node::secure::Security::Tls,
        other => anyhow::bail!("--security {other:?}: expected noise or tls"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut config = pylon_node::node::Config::default();
        config.host.security = vec![security];
        let metrics = pylon_node::metrics::Metrics::unregistered();
        let node = pylon_node::node::Node::start_volatile(config, metrics).await?;
        let started = std::time::Instant::now();
        let conn = node
            .host
            .dial(&addr)
            .await
            .with_context(|| format!("dialing {addr}"))?;
        let connect = started.elapsed();
        let report = pylon_node::protocols::perf::run(&node.host, &peer, upload, download)
            .await
            .context("perf")?;
        let rate = |bytes: u64, t: std::time::Duration| {
            bytes as f64 / t.as_secs_f64().max(1e-9) / (1u64 << 20) as f64
        };
        if args.json {
            let out = serde_json::json!({
                "type": "final",
                "timeSeconds": report.total_time().as_secs_f64(),
                "uploadBytes": report.uploaded,
                "downloadBytes": report.downloaded,
                "uploadSeconds": report.upload_time.as_secs_f64(),
                "downloadSeconds": report.download_time.as_secs_f64(),
                "connectSeconds": connect.as_secs_f64(),
                "transport": conn.transport(),
                "security": conn.security(),
                "muxer": conn.muxer(),
            });
            println!("{out}");
        } else {
            println!(
                "connected in {:.1} ms over {}/{}/{}",
                connect.as_secs_f64() * 1e3,
                conn.transport(),
                conn.security(),
                conn.muxer()
            );
            println!(
                "upload:   {} bytes in {:.3} s ({:.1} MiB/s)",
                report.uploaded,
                report.upload_time.as_secs_f64(),
                rate(report.uploaded, report.upload_time)
            );
            println!(
                "download: {} bytes in {:.3} s ({:.1} MiB/s)",
                report.downloaded,
                report.download_time.as_secs_f64(),
                rate(report.downloaded, report.download_time)
            );
        }
        node.shutdown(std::time::Duration::from_secs(2)).await;
        Ok(())
    })
}

fn run(common: Common) -> anyhow::Result<()> {
    let (tree, mut config) = load_with_tree(&common)?;
    let traces =
        telemetry::Config::from_sources(config.otlp_endpoint.as_deref(), |k| std::env::var(k).ok())
            .map_err(|e| anyhow::anyhow!("traces: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // The trace export runs on the runtime; its layer must be on the subscriber first.
    let (traces, layer) = match &traces {
        Some(c) => {
            let _enter = runtime.enter();
            let (t, layer) =
                telemetry::Traces::start(c).map_err(|e| anyhow::anyhow!("traces: {e}"))?;
            (Some(t), Some(layer))
        }
        None => (None, None),
    };
    let set_log = init_logging(&config.log, layer)?;
    if let (Some(_), Some(to)) = (&traces, traces_config_text(&config)) {
        tracing::info!("traces: exporting to {to}");
    }
    fd::apply(&mut config)?;
    // A reload re-reads the file and the environment with the same flags.
    let load: admin::Loader = Box::new(move || load_with_tree(&common));
    runtime.block_on(serve(config, tree, load, set_log, traces))
}

/// Where traces go, for the log line at start.
fn traces_config_text(config: &config::Config) -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .ok()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .or_else(|| config.otlp_endpoint.clone())
}

async fn serve(
    config: config::Config,
    tree: toml::Table,
    load: admin::Loader,
    set_log: admin::SetLog,
    traces: Option<telemetry::Traces>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let started = (std::time::Instant::now(), unix_ms());

    let mut registry = Registry::default();
    fd::register(&mut registry, &config);
    // Both HTTP listeners count themselves in the same families.
    let http_metrics = http::Metrics::new(&mut registry);
    let metrics = pylon_node::metrics::Metrics::new(&mut registry);
    if let Some(t) = &traces {
        t.register(&mut registry);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let admin_token = match config.admin {
        Some(_) => Some(admin::token(&config)?),
        None => None,
    };
    let node =
        pylon_node::node::Node::start_in(&config.data_dir, config.node.clone(), metrics).await?;
    // Every configured role, generically; the handles are what the admin API will list.
    let mut roles = Vec::with_capacity(config.roles.len());
    if config.roles.is_empty() {
        tracing::info!(profile = %config.profile, "no role runs");
    } else {
        tracing::info!(profile = %config.profile, "roles: {}", role_names(&config.roles));
    }
    for role in &config.roles {
        roles.push(role.start(&node, &mut registry)?);
        tracing::info!("role: {}", role.name());
    }
    if let Some(kad) = &node.kad {
        tracing::info!(
            protocol = %kad.config().protocol,
            server = kad.config().server,
            table = kad.table_len(),
            "kademlia on"
        );
    }
    let (process, mut drain) =
        admin::Process::new(node.clone(), tree, &config, load, set_log, rust_log_set())?;
    let admin_task = match (config.admin, admin_token) {
        (Some(addr), Some(token)) => Some(
            admin::start(
                &config,
                addr,
                token,
                &node,
                roles.clone(),
                process.clone(),
                http_metrics.clone(),
                started,
            )
            .await?,
        ),
        _ => None,
    };
    let metrics_task = match config.metrics {
        Some(addr) => Some(
            metrics_server::start(
                addr,
                &config.metrics_http,
                registry,
                http_metrics,
                readiness(&node, &config.roles),
            )
            .await?,
        ),
        None => None,
    };
    tracing::info!(peer_id = %node.peer_id(), data_dir = %config.data_dir.display(), "pylon started");
    for addr in node.listen_multiaddrs() {
        tracing::info!("listening on {addr}");
    }
    if let Some((addr, _)) = &metrics_task {
        tracing::info!("metrics on http://{addr}/metrics");
    }
    if let Some((addr, _)) = &admin_task {
        tracing::info!("admin API on http://{addr}/api/v1");
        tracing::info!("web dashboard on http://{addr}/ (log in with the admin token)");
    }
    let mut failure = node.host.watch_failure();
    let failed = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break None }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break None }
            _ = sighup.recv() => admin::on_sighup(&process),
            _ = drain.wait_for(|d| *d) => {
                tracing::info!(
                    "draining: no new connections; stopping once the open ones are done, \
                     within {:.0} s",
                    config.shutdown_grace.as_secs_f64()
                );
                tokio::select! {
                    _ = admin::wait_drained(&node, config.shutdown_grace) => {}
                    _ = sigterm.recv() => tracing::info!("SIGTERM while draining"),
                    _ = sigint.recv() => tracing::info!("SIGINT while draining"),
                }
                tracing::info!("drained: shutting down");
                break None;
            }
            f = failure.wait_for(|f| f.is_some()) => {
                let what = f.map(|f| f.clone().unwrap_or_default()).unwrap_or_default();
                tracing::error!("a core task failed ({what}): shutting down");
                break Some(what);
            }
        }
    };
    // Bounded: connections get their grace, the final flush its stall timeout; past
    // that, or on a second signal, the process exits at once (no destructor may block).
    let deadline =
        config.shutdown_grace + config.node.storage.stall_timeout + Duration::from_secs(5);
    let stopped = tokio::select! {
        r = tokio::time::timeout(deadline, node.stop(config.shutdown_grace)) => r,
        _ = sigterm.recv() => second_signal("SIGTERM"),
        _ = sigint.recv() => second_signal("SIGINT"),
    };
    for (_, handle) in metrics_task.into_iter().chain(admin_task) {
        handle.abort();
    }
    // What the collector has not taken yet gets a moment, no more.
    if let Some(t) = traces {
        t.shutdown(Duration::from_secs(2)).await;
    }
    match stopped {
        Ok(Ok(())) if failed.is_some() => {
            tracing::info!("stopped; storage flushed");
            anyhow::bail!(
                "a core task failed ({}); the node stopped",
                failed.unwrap_or_default()
            )
        }
        Ok(Ok(())) => {
            tracing::info!("stopped; storage flushed");
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::error!("stopped, but the final flush failed: {e}");
            anyhow::bail!(
                "the final flush of the database failed ({e}): what the node learned since \
                 its last good flush is not on disk"
            )
        }
        Err(_) => {
            tracing::error!(
                "shutdown did not finish within {:.0} s; exiting without a final flush",
                deadline.as_secs_f64()
            );
            std::process::exit(EXIT_SHUTDOWN_TIMEOUT);
        }
    }
}

fn role_names(roles: &[pylon_roles::Configured]) -> String {
    roles
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Ready when every condition holds; otherwise every reason that fails, one a line: no
/// core task failed, not draining, storage healthy, a listener bound, and — for the roles
/// that need them — a non-empty DHT routing table (bootstrap) and a known reachability
/// (relay, bootstrap: AutoNAT servers have decided, public or private; a relay or
/// bootstrap peer that cannot tell whether anyone can reach it is not ready to serve).
fn readiness(
    node: &pylon_node::node::Node,
    roles: &[pylon_roles::Configured],
) -> metrics_server::Readiness {
    use pylon_node::protocols::autonat::Verdict;
    let storage = node.storage().map(|s| s.watch_health());
    let failure = node.host.watch_failure();
    let node = node.clone();
    let has = |name: &str| roles.iter().any(|r| r.name() == name);
    let needs_table = has("bootstrap");
    let needs_reachability = has("relay") || has("bootstrap");
    std::sync::Arc::new(move || {
        let mut why = Vec::new();
        if let Some(what) = failure.borrow().as_ref() {
            why.push(format!("a core task failed: {what}"));
        }
        if node.host.is_draining() {
            why.push("draining (POST /api/v1/drain): the node is about to stop".into());
        }
        match storage.as_ref().map(|h| h.borrow().clone()) {
            None | Some(Health::Ok) => {}
            Some(Health::Stalled { since }) => why.push(format!(
                "storage: a flush has been stuck for {:.0} s",
                since.as_secs_f64()
            )),
            Some(Health::Failing { error }) => {
                why.push(format!("storage: the database is failing: {error}"))
            }
        }
        if node.host.listen_addrs().is_empty() {
            why.push("no listener is bound".into());
        }
        if needs_table && node.kad.as_ref().is_none_or(|k| k.table_len() == 0) {
            why.push(
                "the DHT routing table is empty (the bootstrap role serves peers from it; \
                 see kad.bootstrap)"
                    .into(),
            );
        }
        if needs_reachability && node.autonat.reachability() == Verdict::Unknown {
            why.push(
                "reachability unknown: no AutoNAT verdict yet (the relay and bootstrap roles \
                 serve others only if they can be reached)"
                    .into(),
            );
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    })
}

/// Exit status when shutdown overran its deadline.
const EXIT_SHUTDOWN_TIMEOUT: i32 = 3;
/// Exit status when a second signal cut shutdown short (128 + SIGINT, as shells report).
const EXIT_SECOND_SIGNAL: i32 = 130;

fn second_signal(name: &str) -> ! {
    tracing::warn!("{name} again: exiting at once, without waiting for connections or storage");
    std::process::exit(EXIT_SECOND_SIGNAL);
}
