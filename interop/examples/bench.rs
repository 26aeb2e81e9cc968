//! Pylon's benchmark suite: Pylon and rust-libp2p 0.57 measured on loopback in the same
//! run, each talking to itself (Pylon↔Pylon, rust-libp2p↔rust-libp2p), plus what this
//! machine allows without libp2p (plain TCP copy, one core's AEAD rate). Prints markdown.
//!
//! ```sh
//! cargo run --release -p pylon-interop --example bench -- [--quick] [--repeat N] [--size MiB] [--only SECTIONS]
//! ```
//! Sections (comma-separated for `--only`): `limits`, `throughput`, `concurrency`,
//! `connect`, `memory`, `kad`, `relay`, `booster`, `server`. Every figure is the median of
//! `--repeat` runs with min–max.
//! Throughput uses the perf protocol (`/perf/1.0.0`; rust-libp2p's side is the same
//! protocol on `libp2p-stream`); connection setup is dial → first ping answered with
//! identify running (the test-plans `handshakePlusOneRTT` measure); memory is the RSS
//! growth of a server process holding idle connections (opened by a Pylon client, 32 at a
//! time, whose rate is the accept rate); CPU is getrusage of this process (client and
//! server) per GiB moved. `kad` measures the Kademlia requests per second a server
//! answers (FIND_NODE, GET_PROVIDERS; the same Pylon load generator for both servers) and
//! Pylon's memory per routing-table peer and per stored record. `relay` puts a Pylon relay
//! and a rust-libp2p relay (each in its own process, `serve relay IMP`) between the same
//! Pylon clients: perf throughput over a circuit and the relay process's CPU per GiB,
//! the latency a circuit adds, and the relay's RSS per reservation and per open circuit;
//! then the same relays with rust-libp2p relay clients (`libp2p-relay`'s client, one
//! swarm per peer): throughput with the relay's CPU per GiB, and RSS per reservation.
//! `booster` measures the RSS one booster head adds to a Pylon process (a DHT identity
//! with its own ports and a table warm-started from the node's 200 peers) beside what
//! one more rust-libp2p DHT server adds to a process (the alternative: a process of
//! rust-libp2p nodes), each in a fresh process (`boostermem IMP N`).
//! `server` measures what serving other implementations costs: the same rust-libp2p
//! client against a Pylon server and a rust-libp2p server, each in its own process
//! (`serve IMP KIND perf`): perf throughput with the server process's CPU per GiB
//! (`/proc/PID/stat`), and the server's RSS per idle TCP connection opened from several
//! rust-libp2p swarms, with the server's own count of connections held (`count` on its
//! stdin).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use pylon_node::metrics::Metrics;
use pylon_node::node::{self, Node};
use pylon_node::protocols::{perf, ping as pylon_ping};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

const PERF: StreamProtocol = StreamProtocol::new("/perf/1.0.0");
const MIB: f64 = 1024.0 * 1024.0;
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Noise,
    Tls,
    Quic,
}

impl Kind {
    fn listen(self) -> &'static str {
        match self {
            Kind::Noise | Kind::Tls => "/ip4/127.0.0.1/tcp/0",
            Kind::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Noise => "TCP+Noise+yamux",
            Kind::Tls => "TCP+TLS+yamux",
            Kind::Quic => "QUIC",
        }
    }
    fn parse(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "noise" => Kind::Noise,
            "tls" => Kind::Tls,
            "quic" => Kind::Quic,
            _ => anyhow::bail!("unknown kind {s}"),
        })
    }
    fn arg(self) -> &'static str {
        match self {
            Kind::Noise => "noise",
            Kind::Tls => "tls",
            Kind::Quic => "quic",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Imp {
    Pylon,
    Rust,
}

impl Imp {
    fn arg(self) -> &'static str {
        match self {
            Imp::Pylon => "pylon",
            Imp::Rust => "rust",
        }
    }
}

// ---- Pylon ------------------------------------------------------------------------------

async fn pylon_node(
    kind: Kind,
    listen: bool,
    perf_server: bool,
    inline_muxer: bool,
) -> anyhow::Result<Node> {
    let mut config = node::Config {
        listen: if listen {
            vec![kind.listen().parse()?]
        } else {
            vec![]
        },
        perf: perf_server.then(perf::Config::default),
        ..Default::default()
    };
    config.host.security = vec![if kind == Kind::Tls {
        pylon_node::secure::Security::Tls
    } else {
        pylon_node::secure::Security::Noise
    }];
    config.host.inline_muxer = inline_muxer;
    config.host.max_connections = 30_000;
    config.host.max_connections_per_peer = 30_000;
    config.host.max_pending_incoming = 1024;
    // Every benchmark client dials from 127.0.0.1: no per-source handshake budgets.
    config.host.max_pending_incoming_per_ip = 0;
    config.host.max_pending_incoming_per_subnet = 0;
    // Redialing one peer in a loop: TIME_WAIT would make port reuse fall back anyway.
    config.host.port_reuse = false;
    Ok(Node::start_volatile(config, Metrics::unregistered()).await?)
}

fn pylon_addr(node: &Node) -> anyhow::Result<Multiaddr> {
    node.listen_multiaddrs()
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

// ---- rust-libp2p ------------------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    /// On with [`rust_swarm`]'s `relay_client`: reserving on and dialing through relays.
    relay_client: Toggle<relay::client::Behaviour>,
}

/// A rust-libp2p swarm on `kind`'s transport with identify (signed peer records), ping
/// every `ping_interval` and libp2p-stream; with `relay_client` also the relay client
/// transport and behaviour (`/p2p-circuit` addresses; Noise+yamux over the circuit).
fn rust_swarm(
    kind: Kind,
    ping_interval: Duration,
    relay_client: bool,
) -> anyhow::Result<Swarm<Behaviour>> {
    let behaviour = move |key: &libp2p::identity::Keypair,
                          client: Option<relay::client::Behaviour>| Behaviour {
        identify: identify::Behaviour::new(identify::Config::new_with_signed_peer_record(
            "ipfs/0.1.0".into(),
            key,
        )),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
        stream: libp2p_stream::Behaviour::new(),
        relay_client: Toggle::from(client),
    };
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    macro_rules! finish {
        ($builder:expr) => {
            if relay_client {
                $builder
                    .with_relay_client(noise::Config::new, yamux::Config::default)?
                    .with_behaviour(|key, relay| behaviour(key, Some(relay)))?
                    .with_swarm_config(idle)
                    .build()
            } else {
                $builder
                    .with_behaviour(|key| behaviour(key, None))?
                    .with_swarm_config(idle)
                    .build()
            }
        };
    }
    let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    let nodelay = tcp::Config::default().nodelay(true);
    Ok(match kind {
        Kind::Tls => {
            finish!(builder.with_tcp(nodelay, libp2p::tls::Config::new, yamux::Config::default)?)
        }
        Kind::Noise => {
            finish!(builder.with_tcp(nodelay, noise::Config::new, yamux::Config::default)?)
        }
        Kind::Quic => finish!(builder.with_quic()),
    })
}

type DialReply = oneshot::Sender<Result<(), String>>;
/// Where to dial, whom, the reply once established and, if asked, once further in.
type DialRequest = (Multiaddr, PeerId, DialReply, Option<(Until, DialReply)>);

/// How far [`RustNode::dial`] waits into a new connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Until {
    Established,
    /// The first ping on it answered.
    Pinged,
    /// Identify done both ways: the peer's answer received and ours sent.
    Identified,
}

/// Where to listen (a relay's `/p2p-circuit` address), and the reply with the first
/// address the listener reports.
type ListenRequest = (Multiaddr, oneshot::Sender<Result<Multiaddr, String>>);

/// A rust-libp2p swarm in its own task: dials on request, serves perf when asked, reports
/// the first ping answered or identify done per connection, and counts its open
/// connections; as a relay client ([`RustNode::relay_client`]) it also listens through
/// relays on request and counts the reservations it holds.
struct RustNode {
    peer_id: PeerId,
    addr: Option<Multiaddr>,
    control: libp2p_stream::Control,
    dials: mpsc::Sender<DialRequest>,
    listens: mpsc::Sender<ListenRequest>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Listeners through a relay with an address (reservation accepted), not closed since.
    reserved: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RustNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RustNode {
    async fn start(kind: Kind, listen: bool, perf_server: bool) -> anyhow::Result<RustNode> {
        RustNode::launch(kind, listen, perf_server, false).await
    }

    /// A node with the relay client transport and behaviour, listening nowhere but
    /// through relays ([`RustNode::listen`]); reaches peers through relays by dialing
    /// `<relay>/p2p-circuit/p2p/<peer>` ([`via`]).
    async fn relay_client(kind: Kind, perf_server: bool) -> anyhow::Result<RustNode> {
        RustNode::launch(kind, false, perf_server, true).await
    }

    async fn launch(
        kind: Kind,
        listen: bool,
        perf_server: bool,
        relay_client: bool,
    ) -> anyhow::Result<RustNode> {
        let mut swarm = rust_swarm(kind, Duration::from_secs(3600), relay_client)?;
        let addr = if listen {
            swarm.listen_on(kind.listen().parse()?)?;
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    break Some(
                        address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id())),
                    );
                }
            }
        } else {
            None
        };
        let peer_id = *swarm.local_peer_id();
        let mut control = swarm.behaviour().stream.new_control();
        if perf_server {
            let mut incoming = control.accept(PERF).map_err(|e| anyhow::anyhow!("{e}"))?;
            tokio::spawn(async move {
                while let Some((_, stream)) = incoming.next().await {
                    tokio::spawn(async move {
                        if let Err(e) = rust_perf_serve(stream).await {
                            eprintln!("rust-libp2p perf server: {e}");
                        }
                    });
                }
            });
        }
        let (dials, mut rx) = mpsc::channel::<DialRequest>(1024);
        let (listens, mut listen_rx) = mpsc::channel::<ListenRequest>(16);
        let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = open.clone();
        let reserved = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let holding = reserved.clone();
        let task = tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            // Listeners asked for and not yet with an address, and those with one.
            let mut listening: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr, String>>> =
                HashMap::new();
            let mut listened = std::collections::HashSet::new();
            let mut established: HashMap<ConnectionId, DialReply> = HashMap::new();
            let mut pinged: HashMap<ConnectionId, DialReply> = HashMap::new();
            // Whether the peer's identify answer arrived and whether ours was sent.
            let mut identified: HashMap<ConnectionId, (bool, bool, DialReply)> = HashMap::new();
            loop {
                tokio::select! {
                    Some((addr, peer, done, then)) = rx.recv() => {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(vec![addr])
                            .condition(PeerCondition::Always)
                            .build();
                        let id = opts.connection_id();
                        match swarm.dial(opts) {
                            Ok(()) => {
                                established.insert(id, done);
                                match then {
                                    Some((Until::Pinged, p)) => {
                                        pinged.insert(id, p);
                                    }
                                    Some((Until::Identified, p)) => {
                                        identified.insert(id, (false, false, p));
                                    }
                                    Some((Until::Established, _)) | None => {}
                                }
                            }
                            Err(e) => {
                                let _ = done.send(Err(e.to_string()));
                            }
                        }
                    }
                    Some((addr, reply)) = listen_rx.recv() => match swarm.listen_on(addr) {
                        Ok(id) => {
                            listening.insert(id, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    },
                    event = swarm.select_next_some() => match event {
                        // Through a relay: its reservation accepted (the relay client's
                        // listener reports the relay's addresses then).
                        SwarmEvent::NewListenAddr { listener_id, address } => {
                            if let Some(tx) = listening.remove(&listener_id) {
                                listened.insert(listener_id);
                                holding.fetch_add(1, Relaxed);
                                let _ = tx.send(Ok(address));
                            }
                        }
                        SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                            if listened.remove(&listener_id) {
                                holding.fetch_sub(1, Relaxed);
                            }
                            if let Some(tx) = listening.remove(&listener_id) {
                                let _ = tx.send(Err(match reason {
                                    Ok(()) => "listener closed".to_string(),
                                    Err(e) => format!("listener closed: {e}"),
                                }));
                            }
                        }
                        SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                            counted.fetch_add(1, Relaxed);
                            if let Some(tx) = established.remove(&connection_id) {
                                let _ = tx.send(Ok(()));
                            }
                        }
                        SwarmEvent::ConnectionClosed { connection_id, .. } => {
                            counted.fetch_sub(1, Relaxed);
                            if let Some((_, _, tx)) = identified.remove(&connection_id) {
                                let _ = tx.send(Err("closed before identify".into()));
                            }
                        }
                        SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                            if let Some(tx) = established.remove(&connection_id) {
                                let _ = tx.send(Err(error.to_string()));
                            }
                        }

                        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { connection, result, .. })) => {
                            if let Some(tx) = pinged.remove(&connection) {
                                let _ = tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
                            }
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                            let id = e.connection_id();
                            let outcome = match (identified.get_mut(&id), e) {
                                (Some(entry), identify::Event::Received { .. }) => {
                                    entry.0 = true;
                                    entry.1.then_some(Ok(()))
                                }
                                (Some(entry), identify::Event::Sent { .. }) => {
                                    entry.1 = true;
                                    entry.0.then_some(Ok(()))
                                }
                                (Some(_), identify::Event::Error { error, .. }) => {
                                    Some(Err(error.to_string()))
                                }
                                _ => None,
                            };
                            if let Some(r) = outcome {
                                if let Some((_, _, tx)) = identified.remove(&id) {
                                    let _ = tx.send(r);
                                }
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        Ok(RustNode {
            peer_id,
            addr,
            control,
            dials,
            listens,
            open,
            reserved,
            task,
        })
    }

    /// Listens on `addr` (`<relay>/p2p-circuit`: reserves a slot on the relay) and waits
    /// for the listener's first address (the reservation accepted).
    async fn listen(&self, addr: Multiaddr) -> anyhow::Result<Multiaddr> {
        let (reply, reply_rx) = oneshot::channel();
        self.listens.send((addr, reply)).await?;
        reply_rx.await?.map_err(|e| anyhow::anyhow!(e))
    }

    /// Reservations held on relays, by this node's count.
    fn reservations(&self) -> usize {
        self.reserved.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Dials `addr` (a new connection even if one exists) and waits `until` that far into
    /// the connection.
    async fn dial(&self, addr: &Multiaddr, peer: PeerId, until: Until) -> anyhow::Result<()> {
        let (done, done_rx) = oneshot::channel();
        let (then_tx, then_rx) = oneshot::channel();
        let then = (until != Until::Established).then_some((until, then_tx));
        self.dials.send((addr.clone(), peer, done, then)).await?;
        done_rx.await?.map_err(|e| anyhow::anyhow!(e))?;
        if until != Until::Established {
            then_rx.await?.map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(())
    }

    /// Connections open now.
    fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }
}

async fn rust_perf_serve(mut stream: libp2p::Stream) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    let mut remaining = u64::from_be_bytes(header);
    let mut buf = vec![0u8; CHUNK];
    while stream.read(&mut buf).await? > 0 {}
    let zeros = vec![0u8; CHUNK];
    while remaining > 0 {
        let n = remaining.min(CHUNK as u64) as usize;
        stream.write_all(&zeros[..n]).await?;
        remaining -= n as u64;
    }
    stream.close().await
}

/// Streams libp2p-stream's accept queue dropped (it drops inbound streams when its
/// channel is full) and the client opened again.
static RUST_RETRIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A perf client run on rust-libp2p; a stream the server's libp2p-stream queue dropped
/// before answering is opened again (counted in [`RUST_RETRIES`]).
async fn rust_perf_run(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        match rust_perf_once(control, peer, upload, download).await {
            Err(Dropped(e)) if attempts < 8 => {
                attempts += 1;
                RUST_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!("retrying dropped perf stream: {e}");
            }
            Err(Dropped(e)) => return Err(e),
            Ok(r) => return r,
        }
    }
}

/// The stream failed before the server sent a byte.
struct Dropped(anyhow::Error);

async fn rust_perf_once(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<anyhow::Result<()>, Dropped> {
    let mut stream = control
        .open_stream(peer, PERF)
        .await
        .map_err(|e| Dropped(anyhow::anyhow!("{e}")))?;
    let early = async {
        stream.write_all(&download.to_be_bytes()).await?;
        let zeros = vec![0u8; CHUNK];
        let mut left = upload;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.write_all(&zeros[..n]).await?;
            left -= n as u64;
        }
        stream.close().await
    };
    if let Err(e) = early.await {
        return Err(Dropped(e.into()));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if got == 0 => return Err(Dropped(e.into())),
            Err(e) => return Ok(Err(e.into())),
        }
    }
    if got == 0 && download > 0 {
        return Err(Dropped(anyhow::anyhow!("stream ended without data")));
    }
    Ok(if got == download {
        Ok(())
    } else {
        Err(anyhow::anyhow!("got {got} of {download} bytes"))
    })
}

// ---- measurements -----------------------------------------------------------------------

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec().max(0) as u64)
                    + Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// One transfer's result: MiB/s and CPU seconds per GiB moved.
#[derive(Clone, Copy)]
struct Rate {
    mibs: f64,
    cpu_per_gib: f64,
}

impl Rate {
    /// `bytes` moved in `took`, for `cpu` of CPU time.
    fn of(bytes: u64, took: Duration, cpu: Duration) -> Rate {
        Rate {
            mibs: bytes as f64 / MIB / took.as_secs_f64(),
            cpu_per_gib: cpu.as_secs_f64() / (bytes as f64 / (MIB * 1024.0)),
        }
    }
}

async fn timed<F: std::future::Future<Output = anyhow::Result<()>>>(
    bytes: u64,
    f: F,
) -> anyhow::Result<Rate> {
    let (cpu0, t0) = (cpu_time(), Instant::now());
    f.await?;
    Ok(Rate::of(bytes, t0.elapsed(), cpu_time() - cpu0))
}

/// Runs `f`, which moves `bytes` through process `pid` (a server or a relay), timed:
/// MiB/s with `pid`'s CPU seconds per GiB, and this process's (the clients').
async fn timed_through<F: std::future::Future<Output = anyhow::Result<()>>>(
    bytes: u64,
    pid: u32,
    f: F,
) -> anyhow::Result<(Rate, f64)> {
    let (cpu0, own0, t0) = (proc_cpu(pid)?, cpu_time(), Instant::now());
    f.await?;
    let (cpu, own, t) = (proc_cpu(pid)? - cpu0, cpu_time() - own0, t0.elapsed());
    Ok((Rate::of(bytes, t, cpu), Rate::of(bytes, t, own).cpu_per_gib))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Upload,
    Download,
    /// 16 concurrent downloads on one connection.
    Streams16,
    /// 16 concurrent downloads, one per connection (16 clients).
    Connections16,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Upload => "1 stream, upload",
            Shape::Download => "1 stream, download",
            Shape::Streams16 => "16 streams on 1 connection, download",
            Shape::Connections16 => "16 connections, download",
        }
    }
}

async fn transfer(imp: Imp, kind: Kind, shape: Shape, bytes: u64) -> anyhow::Result<Rate> {
    let clients = if shape == Shape::Connections16 { 16 } else { 1 };
    let per = bytes / 16;
    match imp {
        Imp::Pylon => {
            let server = pylon_node(kind, true, true, true).await?;
            let addr = pylon_addr(&server)?;
            let mut conns = Vec::new();
            let mut nodes = Vec::new();
            for _ in 0..clients {
                let c = pylon_node(kind, false, false, true).await?;
                conns.push(c.host.dial(&addr).await?);
                nodes.push(c);
            }
            // Let identify finish on the new connections (outside the timing).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rate = timed(bytes, async {
                match shape {
                    Shape::Upload => drop(perf::run_on(&conns[0], bytes, 0).await?),
                    Shape::Download => drop(perf::run_on(&conns[0], 0, bytes).await?),
                    Shape::Streams16 => {
                        let runs = (0..16).map(|_| perf::run_on(&conns[0], 0, per));
                        for r in futures::future::join_all(runs).await {
                            r?;
                        }
                    }
                    Shape::Connections16 => {
                        let runs = conns.iter().map(|c| perf::run_on(c, 0, per));
                        for r in futures::future::join_all(runs).await {
                            r?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            for n in nodes {
                n.shutdown(Duration::from_secs(2)).await;
            }
            server.shutdown(Duration::from_secs(2)).await;
            Ok(rate)
        }
        Imp::Rust => {
            let server = RustNode::start(kind, true, true).await?;
            let addr = server
                .addr
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no addr"))?;
            let mut nodes = Vec::new();
            for _ in 0..clients {
                let c = RustNode::start(kind, false, false).await?;
                c.dial(&addr, server.peer_id, Until::Established).await?;
                nodes.push(c);
            }
            let peer = server.peer_id;
            // Let identify finish on the new connections (outside the timing, as for Pylon).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let rate = timed(bytes, async {
                match shape {
                    Shape::Upload => {
                        rust_perf_run(&mut nodes[0].control.clone(), peer, bytes, 0).await?
                    }
                    Shape::Download => {
                        rust_perf_run(&mut nodes[0].control.clone(), peer, 0, bytes).await?
                    }
                    Shape::Streams16 => {
                        let runs = (0..16).map(|_| {
                            let mut control = nodes[0].control.clone();
                            async move { rust_perf_run(&mut control, peer, 0, per).await }
                        });
                        for r in futures::future::join_all(runs).await {
                            r?;
                        }
                    }
                    Shape::Connections16 => {
                        let runs = nodes.iter().map(|n| {
                            let mut control = n.control.clone();
                            async move { rust_perf_run(&mut control, peer, 0, per).await }
                        });
                        for r in futures::future::join_all(runs).await {
                            r?;
                        }
                    }
                }
                Ok(())
            })
            .await;
            rate
        }
    }
}

/// Dial → first ping answered, `n` times, one connection at a time.
async fn connect_latency(
    imp: Imp,
    kind: Kind,
    inline_muxer: bool,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    match imp {
        Imp::Pylon => {
            let server = pylon_node(kind, true, false, inline_muxer).await?;
            let client = pylon_node(kind, false, false, inline_muxer).await?;
            let addr = pylon_addr(&server)?;
            for _ in 0..n {
                let started = Instant::now();
                let conn = client.host.dial(&addr).await?;
                let mut stream = conn.open_stream_lazy(pylon_ping::PROTOCOL).await?;
                pylon_ping::ping_on(&mut stream).await?;
                out.push(started.elapsed());
                drop(stream);
                conn.close();
                conn.closed().await;
            }
            client.shutdown(Duration::from_secs(2)).await;
            server.shutdown(Duration::from_secs(2)).await;
        }
        Imp::Rust => {
            let server = RustNode::start(kind, true, false).await?;
            let addr = server
                .addr
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no addr"))?;
            // The client's first ping goes out at once on a new connection.
            let client = RustNode::start(kind, false, false).await?;
            for _ in 0..n {
                let started = Instant::now();
                client.dial(&addr, server.peer_id, Until::Pinged).await?;
                out.push(started.elapsed());
            }
        }
    }
    Ok(out)
}

/// Server memory per idle connection (KiB) at each of `counts` connections held, and
/// connections per second accepted while opening the first batch. The server runs in a
/// child process (this binary, `serve` mode) so its RSS is its own.
/// Stops at the first batch that fails, keeping the figures of the batches before it.
async fn memory(imp: Imp, kind: Kind, counts: &[usize]) -> anyhow::Result<(Vec<f64>, f64)> {
    let server = Served::spawn(&["serve", imp.arg(), kind.arg()], 1).await?;
    let (pid, addr) = (server.pid, server.first()?.clone());
    let server_peer = server.peer()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid)?;
    let mut per_conn = Vec::new();
    let mut accept_rate = 0.0;
    let mut held = 0usize;
    const PARALLEL: usize = 32;
    // One client for both servers (Pylon's: it holds 10k QUIC connections where a single
    // rust-libp2p swarm timed out its handshakes), so the figures are the servers'.
    let client = pylon_node(kind, false, false, true).await?;
    let mut conns = Vec::new();
    for (i, &target) in counts.iter().enumerate() {
        let todo = target.saturating_sub(held);
        let started = Instant::now();
        let dials = futures::stream::iter(0..todo)
            .map(|_| client.host.dial(&addr))
            .buffer_unordered(PARALLEL);
        let results: Vec<_> = dials.collect().await;
        let mut failed = None;
        for conn in results {
            match conn {
                Ok(conn) if conn.peer() == server_peer => conns.push(conn),
                Ok(_) => anyhow::bail!("connected to the wrong peer"),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            if per_conn.is_empty() {
                return Err(e.into());
            }
            eprintln!("{imp:?} {kind:?}: opening {target} connections failed: {e}");
            MEMORY_FAILURES.with(|f| {
                f.borrow_mut()
                    .push(format!("{imp:?} {kind:?} at {target}: {e}"))
            });
            break;
        }
        if i == 0 {
            accept_rate = todo as f64 / started.elapsed().as_secs_f64();
        }
        held = target;
        // Let identify and the muxers settle before reading the server's RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(pid)?;
        per_conn.push((rss.saturating_sub(base)) as f64 / held as f64);
    }
    drop(conns);
    client.shutdown(Duration::from_secs(5)).await;
    server.stop().await;
    Ok((per_conn, accept_rate))
}

thread_local! {
    /// Batches of the memory measure that failed after an earlier one succeeded.
    static MEMORY_FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// `serve IMP KIND [perf]` mode: a server holding connections until stdin closes, with
/// `perf` also a perf server; answers `count` on stdin with the connections it has open
/// (`serve relay IMP`: a relay, see [`serve_relay`]).
async fn serve(imp: &str, kind: &str, perf_server: bool) -> anyhow::Result<()> {
    if imp == "relay" {
        return serve_relay(kind).await;
    }
    let kind = Kind::parse(kind)?;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    match imp {
        "pylon" => {
            let node = pylon_node(kind, true, perf_server, true).await?;
            println!("{}", pylon_addr(&node)?);
            while let Some(line) = stdin.next_line().await? {
                if line == "count" {
                    let conns = node.host.connections();
                    println!("{}", conns.iter().filter(|c| !c.is_closed()).count());
                }
            }
            node.shutdown(Duration::from_secs(2)).await;
        }
        "rust" => {
            let node = RustNode::start(kind, true, perf_server).await?;
            println!(
                "{}",
                node.addr
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no addr"))?
            );
            while let Some(line) = stdin.next_line().await? {
                if line == "count" {
                    println!("{}", node.open_connections());
                }
            }
        }
        other => anyhow::bail!("unknown implementation {other}"),
    }
    Ok(())
}

// ---- relay ------------------------------------------------------------------------------

/// How long a served process may take to print its addresses or a count: a bound for a
/// child that hangs, far above what either takes.
const SERVED_ANSWER: Duration = Duration::from_secs(30);

/// A server in a child process (this binary in `serve` mode): its pid and the addresses
/// it printed first, one a line. Closing its stdin asks it to exit; it is killed if it
/// does not.
struct Served {
    child: tokio::process::Child,
    pid: u32,
    addrs: Vec<Multiaddr>,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Served {
    async fn spawn(args: &[&str], addrs: usize) -> anyhow::Result<Served> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut printed = Vec::with_capacity(addrs);
        for _ in 0..addrs {
            let line = tokio::time::timeout(SERVED_ANSWER, lines.next_line())
                .await
                .with_context(|| format!("server {args:?} printed no address in time"))??
                .ok_or_else(|| anyhow::anyhow!("server {args:?} printed no address"))?;
            printed.push(line.parse()?);
        }
        Ok(Served {
            child,
            pid,
            addrs: printed,
            stdin,
            lines,
        })
    }

    /// The first address printed.
    fn first(&self) -> anyhow::Result<&Multiaddr> {
        self.addrs
            .first()
            .ok_or_else(|| anyhow::anyhow!("no address"))
    }

    /// The address on `kind`'s transport (TCP or QUIC), with `/p2p/`.
    fn addr(&self, kind: Kind) -> anyhow::Result<&Multiaddr> {
        let quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::QuicV1));
        self.addrs
            .iter()
            .find(|a| quic(a) == (kind == Kind::Quic))
            .ok_or_else(|| anyhow::anyhow!("no {} address", kind.name()))
    }

    fn peer(&self) -> anyhow::Result<PeerId> {
        match self.first()?.iter().last() {
            Some(Protocol::P2p(peer)) => Ok(peer),
            _ => anyhow::bail!("no /p2p/ in {}", self.first()?),
        }
    }

    /// The served process's answer to `count` on its stdin: numbers on one line.
    async fn count_line(&mut self) -> anyhow::Result<Vec<usize>> {
        use tokio::io::AsyncWriteExt;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("stdin closed"))?;
        stdin.write_all(b"count\n").await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(SERVED_ANSWER, self.lines.next_line())
            .await
            .context("server printed no count in time")??
            .ok_or_else(|| anyhow::anyhow!("server printed no count"))?;
        line.split_whitespace()
            .map(str::parse::<usize>)
            .collect::<Result<_, _>>()
            .with_context(|| format!("server printed {line:?} for its count"))
    }

    /// A relay's own count of the reservations and circuits it holds.
    async fn counts(&mut self) -> anyhow::Result<(usize, usize)> {
        match self.count_line().await?[..] {
            [r, c] => Ok((r, c)),
            ref other => anyhow::bail!("relay printed {other:?} for its count"),
        }
    }

    /// A plain server's own count of the connections it has open.
    async fn connections(&mut self) -> anyhow::Result<usize> {
        match self.count_line().await?[..] {
            [n] => Ok(n),
            ref other => anyhow::bail!("server printed {other:?} for its count"),
        }
    }

    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// User + system CPU time of process `pid`.
fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let (user, system) = proc_cpu_split(pid)?;
    Ok(user + system)
}

/// User and system CPU time of process `pid` from `/proc/PID/stat` (fields 14 and 15, in
/// USER_HZ ticks: 1/100 s on Linux).
fn proc_cpu_split(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: short"))?
            .parse()?)
    };
    // Field 3 (state) is index 0 here: utime (14) is 11, stime (15) is 12.
    Ok((
        Duration::from_millis(ticks(11)? * 10),
        Duration::from_millis(ticks(12)? * 10),
    ))
}

/// The limits of both relays, out of the way of the measures: reservations and circuits
/// up to this many in total and per IP, subnet or peer, circuits unlimited in data and
/// an hour long, no rate limits.
const RELAY_LIMIT: usize = 20_000;
const RELAY_CIRCUIT_TIME: Duration = Duration::from_secs(3600);
/// Circuits per caller–target pair in the memory measure (under every stream cap).
const CIRCUITS_PER_PAIR: usize = 100;

/// Pylon's relay as shipped but for the limits (its circuit buffer stays 16 KiB).
fn pylon_relay_config() -> pylon_roles::relay::Config {
    pylon_roles::relay::Config {
        max_reservations: RELAY_LIMIT,
        max_reservations_per_ip: RELAY_LIMIT,
        max_reservations_per_subnet: RELAY_LIMIT,
        max_circuits: RELAY_LIMIT,
        max_circuits_per_peer: RELAY_LIMIT,
        circuit_duration: RELAY_CIRCUIT_TIME,
        circuit_data: 0,
        ..Default::default()
    }
}

fn rust_relay_config() -> relay::Config {
    relay::Config {
        max_reservations: RELAY_LIMIT,
        max_reservations_per_peer: RELAY_LIMIT,
        reservation_duration: Duration::from_secs(3600),
        reservation_rate_limiters: Vec::new(),
        max_circuits: RELAY_LIMIT,
        max_circuits_per_peer: RELAY_LIMIT,
        max_circuit_duration: RELAY_CIRCUIT_TIME,
        // 0 = no limit (its copy checks `max_circuit_bytes > 0`).
        max_circuit_bytes: 0,
        circuit_src_rate_limiters: Vec::new(),
    }
}

#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// `serve relay pylon|rust`: a relay on loopback TCP and QUIC with [`RELAY_LIMIT`];
/// prints its two addresses, answers `count` on stdin with the reservations and circuits
/// it holds, exits when stdin closes.
async fn serve_relay(imp: &str) -> anyhow::Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let listen: [Multiaddr; 2] = [Kind::Noise.listen().parse()?, Kind::Quic.listen().parse()?];
    match imp {
        "pylon" => {
            use pylon_roles::relay::Relay;
            use pylon_roles::Role as _;
            let mut config = node::Config {
                listen: listen.to_vec(),
                ..Default::default()
            };
            config.host.max_connections = 30_000;
            config.host.max_pending_incoming = 1024;
            // Every client comes from 127.0.0.1: no per-source handshake budgets.
            config.host.max_pending_incoming_per_ip = 0;
            config.host.max_pending_incoming_per_subnet = 0;
            let relay_config = pylon_relay_config();
            Relay::check(&relay_config)?;
            let node = Node::start_volatile(config, Metrics::unregistered()).await?;
            let mut registry = prometheus_client::registry::Registry::default();
            let relay = Relay::start(
                &node,
                relay_config,
                &mut pylon_roles::Metrics::of::<Relay>(&mut registry),
            )?;
            for addr in node.listen_multiaddrs() {
                println!("{addr}");
            }
            while let Some(line) = stdin.next_line().await? {
                if line == "count" {
                    println!("{} {}", relay.reservation_count(), relay.circuit_count());
                }
            }
            node.shutdown(Duration::from_secs(2)).await;
        }
        "rust" => {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )?
                .with_quic()
                .with_behaviour(|key| RelayServer {
                    relay: relay::Behaviour::new(key.public().to_peer_id(), rust_relay_config()),
                    identify: identify::Behaviour::new(
                        identify::Config::new_with_signed_peer_record("ipfs/0.1.0".into(), key),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new()),
                })?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
                .build();
            for addr in listen {
                swarm.listen_on(addr)?;
            }
            let me = *swarm.local_peer_id();
            let mut printed = 0;
            while printed < 2 {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    // rust-libp2p's relay serves only with a confirmed external address.
                    swarm.add_external_address(address.clone());
                    println!("{}", address.with(Protocol::P2p(me)));
                    printed += 1;
                }
            }
            // Held by peer, not by event: libp2p-relay 0.22 reports `ReservationClosed` for
            // every closed connection, reserved on or not, and a circuit's close twice when
            // the target's connection closes first (the behaviour, then the caller's
            // connection handler whose copy ended).
            let mut reservations = std::collections::HashSet::new();
            let mut circuits: HashMap<(PeerId, PeerId), usize> = HashMap::new();
            loop {
                tokio::select! {
                    line = stdin.next_line() => match line? {
                        Some(l) if l == "count" => println!(
                            "{} {}",
                            reservations.len(),
                            circuits.values().sum::<usize>()
                        ),
                        Some(_) => {}
                        None => break,
                    },
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(RelayServerEvent::Relay(e)) = event {
                            match e {
                                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                                    reservations.insert(src_peer_id);
                                }
                                relay::Event::ReservationClosed { src_peer_id }
                                | relay::Event::ReservationTimedOut { src_peer_id } => {
                                    reservations.remove(&src_peer_id);
                                }
                                relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                                    *circuits.entry((src_peer_id, dst_peer_id)).or_default() += 1;
                                }
                                relay::Event::CircuitClosed { src_peer_id, dst_peer_id, .. } => {
                                    if let Some(n) = circuits.get_mut(&(src_peer_id, dst_peer_id)) {
                                        *n = n.saturating_sub(1);
                                        if *n == 0 {
                                            circuits.remove(&(src_peer_id, dst_peer_id));
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        other => anyhow::bail!("unknown relay {other}"),
    }
    Ok(())
}

/// `<relay>/p2p-circuit/p2p/<target>`.
fn via(relay: &Multiaddr, target: PeerId) -> Multiaddr {
    relay
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(target))
}

/// Connects a client to the relay at `addr` and, with `reserve`, reserves a slot there.
/// By `Host::dial`: `Host::connect` (what reserving and circuit dials use, reusing the
/// connection) ranks loopback addresses out for a node not itself on loopback, and
/// these clients listen nowhere.
async fn to_relay(node: &Node, addr: &Multiaddr, reserve: bool) -> anyhow::Result<()> {
    node.host.dial(addr).await?;
    if reserve {
        node.relay.reserve(addr).await?;
    }
    Ok(())
}

/// One perf transfer between two Pylon clients over a circuit through `relay`, both legs
/// on `leg`'s transport: MiB/s and the relay process's CPU seconds per GiB relayed, and
/// the clients' (this process's) CPU seconds per GiB.
async fn relay_transfer(
    relay: &Served,
    leg: Kind,
    shape: Shape,
    bytes: u64,
) -> anyhow::Result<(Rate, f64)> {
    let addr = relay.addr(leg)?;
    let target = pylon_node(leg, false, true, true).await?;
    to_relay(&target, addr, true).await?;
    let caller = pylon_node(leg, false, false, true).await?;
    to_relay(&caller, addr, false).await?;
    let conn = caller.host.dial(&via(addr, target.peer_id())).await?;
    // Let identify finish over the circuit (outside the timing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rate = timed_through(bytes, relay.pid, async {
        match shape {
            Shape::Upload => perf::run_on(&conn, bytes, 0).await?,
            _ => perf::run_on(&conn, 0, bytes).await?,
        };
        Ok(())
    })
    .await?;
    caller.shutdown(Duration::from_secs(2)).await;
    target.shutdown(Duration::from_secs(2)).await;
    Ok(rate)
}

/// From a Pylon caller to a Pylon target, directly (`relay` None) or through `relay`
/// (over the caller's one connection to it): `n` dials one after the other, each until
/// its first ping is answered (after `n / 10` unmeasured), then the round trips of `n`
/// pings on one open connection.
async fn relay_latency(
    relay: Option<&Served>,
    leg: Kind,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let target = pylon_node(leg, relay.is_none(), false, true).await?;
    let addr = match relay {
        Some(r) => {
            let addr = r.addr(leg)?;
            to_relay(&target, addr, true).await?;
            via(addr, target.peer_id())
        }
        None => pylon_addr(&target)?,
    };
    let caller = pylon_node(leg, false, false, true).await?;
    if let Some(r) = relay {
        to_relay(&caller, r.addr(leg)?, false).await?;
    }
    let warm = n / 10 + 1;
    let mut setup = Vec::with_capacity(n);
    for i in 0..warm + n {
        let started = Instant::now();
        let conn = caller.host.dial(&addr).await?;
        let mut stream = conn.open_stream_lazy(pylon_ping::PROTOCOL).await?;
        pylon_ping::ping_on(&mut stream).await?;
        if i >= warm {
            setup.push(started.elapsed());
        }
        drop(stream);
        conn.close();
        conn.closed().await;
    }
    let conn = caller.host.dial(&addr).await?;
    let mut stream = conn.open_stream_lazy(pylon_ping::PROTOCOL).await?;
    let mut rtt = Vec::with_capacity(n);
    for i in 0..warm + n {
        let d = pylon_ping::ping_on(&mut stream).await?;
        if i >= warm {
            rtt.push(d);
        }
    }
    drop(stream);
    caller.shutdown(Duration::from_secs(2)).await;
    target.shutdown(Duration::from_secs(2)).await;
    Ok((setup, rtt))
}

/// Shuts many nodes down at once.
async fn shutdown_all(nodes: Vec<Node>) {
    futures::stream::iter(nodes)
        .for_each_concurrent(
            256,
            |n| async move { n.shutdown(Duration::from_secs(1)).await },
        )
        .await;
}

/// What a relay holds per client: the RSS growth of a fresh relay process (`serve relay
/// IMP`) with one Pylon client node per reservation (the relay keeps one per peer), each
/// connected over TCP and, with `reserve`, holding a reservation; 32 clients start at a
/// time. KiB per client at each of `counts` (stopping at the first batch that fails),
/// the relay's own count of reservations at the last, and clients/s of the first batch.
async fn relay_clients(
    imp: Imp,
    counts: &[usize],
    reserve: bool,
    failures: &mut Vec<String>,
) -> anyhow::Result<(Vec<f64>, usize, f64)> {
    let mut relay = Served::spawn(&["serve", "relay", imp.arg()], 2).await?;
    let addr = relay.addr(Kind::Noise)?.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(relay.pid)?;
    let (mut per_client, mut rate, mut held) = (Vec::new(), 0.0, 0);
    let mut clients = Vec::new();
    for (i, &target) in counts.iter().enumerate() {
        let todo = target.saturating_sub(clients.len());
        let started = Instant::now();
        let addr = &addr;
        let results: Vec<anyhow::Result<Node>> = futures::stream::iter(0..todo)
            .map(|_| async move {
                let client = pylon_node(Kind::Noise, false, false, true).await?;
                to_relay(&client, addr, reserve).await?;
                Ok(client)
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(c) => clients.push(c),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            let what = format!(
                "{imp:?} relay, {} clients{}: {e:#}",
                target,
                if reserve { " reserving" } else { "" }
            );
            eprintln!("{what}");
            failures.push(what);
            break;
        }
        if i == 0 {
            rate = todo as f64 / started.elapsed().as_secs_f64();
        }
        // Let identify and the muxers settle before reading the relay's RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(relay.pid)?;
        per_client.push(rss.saturating_sub(base) as f64 / target as f64);
        held = relay.counts().await?.0;
    }
    shutdown_all(clients).await;
    relay.stop().await;
    Ok((per_client, held, rate))
}

/// Memory per open idle circuit: the RSS growth of a fresh relay process while `m`
/// circuits open between Pylon clients already connected to it ([`CIRCUITS_PER_PAIR`]
/// per caller–target pair, 8 opening at a time: rust-libp2p's relay drops a hop stream
/// past 10 in progress on one connection), divided by `m`; and the relay's own count of
/// circuits then.
async fn relay_circuits(imp: Imp, m: usize) -> anyhow::Result<(f64, usize)> {
    let mut relay = Served::spawn(&["serve", "relay", imp.arg()], 2).await?;
    let addr = relay.addr(Kind::Noise)?.clone();
    let pairs = m.div_ceil(CIRCUITS_PER_PAIR);
    let (mut targets, mut callers) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        let t = pylon_node(Kind::Noise, false, false, true).await?;
        to_relay(&t, &addr, true).await?;
        targets.push(t);
        let c = pylon_node(Kind::Noise, false, false, true).await?;
        to_relay(&c, &addr, false).await?;
        callers.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(relay.pid)?;
    let dials: Vec<_> = futures::stream::iter(0..m)
        .map(|i| {
            let (caller, target) = (&callers[i % pairs], &targets[i % pairs]);
            let to = via(&addr, target.peer_id());
            async move { caller.host.dial(&to).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let conns = dials.into_iter().collect::<Result<Vec<_>, _>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per = rss_kib(relay.pid)?.saturating_sub(base) as f64 / m as f64;
    let open = relay.counts().await?.1;
    drop(conns);
    shutdown_all(callers).await;
    shutdown_all(targets).await;
    relay.stop().await;
    Ok((per, open))
}

/// One perf transfer between two rust-libp2p relay clients over a circuit through
/// `relay`, both legs on `leg`'s transport: a target that reserves a slot by listening on
/// `<relay>/p2p-circuit` and serves perf, a caller that dials
/// `<relay>/p2p-circuit/p2p/<target>` (its relay client connects to the relay first) and
/// runs perf once identify is done both ways over the circuit. MiB/s and the relay
/// process's CPU seconds per GiB relayed, and the clients' (this process's) CPU s/GiB.
async fn relay_transfer_rust(
    relay: &Served,
    leg: Kind,
    shape: Shape,
    bytes: u64,
) -> anyhow::Result<(Rate, f64)> {
    let addr = relay.addr(leg)?;
    let target = RustNode::relay_client(leg, true).await?;
    tokio::time::timeout(
        SETUP_TIMEOUT,
        target.listen(addr.clone().with(Protocol::P2pCircuit)),
    )
    .await
    .context("target's reservation timed out")?
    .context("target's reservation")?;
    let caller = RustNode::relay_client(leg, false).await?;
    let to = via(addr, target.peer_id);
    let dial = caller.dial(&to, target.peer_id, Until::Identified);
    tokio::time::timeout(SETUP_TIMEOUT, dial)
        .await
        .context("circuit and identify over it timed out")?
        .context("circuit")?;
    let rate = rust_perf_timed(&caller, target.peer_id, shape, bytes, relay.pid)
        .await
        .context("perf over the circuit")?;
    drop((caller, target));
    Ok(rate)
}

/// What a relay holds per reserving rust-libp2p client.
struct RustReserved {
    /// KiB of the relay's RSS growth per client.
    per_client: f64,
    /// Reservations held, by the relay's own count and by the clients'.
    held: (usize, usize),
    /// Clients per second reserved.
    rate: f64,
}

/// The RSS growth of a fresh relay process (`serve relay IMP`) with `n` rust-libp2p
/// relay clients in this process, one swarm per reservation (a relay keeps one per
/// peer), each reserving over TCP+Noise+yamux by listening on `<relay>/p2p-circuit`, 32
/// starting at a time; the relay's own count of reservations and the clients'.
async fn relay_rust_clients(imp: Imp, n: usize) -> anyhow::Result<RustReserved> {
    let mut relay = Served::spawn(&["serve", "relay", imp.arg()], 2).await?;
    let circuit = relay.addr(Kind::Noise)?.clone().with(Protocol::P2pCircuit);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(relay.pid)?;
    let started = Instant::now();
    let circuit = &circuit;
    let results: Vec<anyhow::Result<RustNode>> = futures::stream::iter(0..n)
        .map(|_| async move {
            let client = RustNode::relay_client(Kind::Noise, false).await?;
            tokio::time::timeout(SETUP_TIMEOUT, client.listen(circuit.clone()))
                .await
                .context("reservation timed out")??;
            Ok(client)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let mut clients = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if let Some(e) = failed.first() {
        anyhow::bail!(
            "{} of {n} rust-libp2p clients failed to reserve (first: {e})",
            failed.len()
        );
    }
    // Let identify, ping and the muxers settle before reading the relay's RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_client = rss_kib(relay.pid)?.saturating_sub(base) as f64 / n as f64;
    let held = (
        relay.counts().await?.0,
        clients.iter().map(RustNode::reservations).sum(),
    );
    drop(clients);
    relay.stop().await;
    Ok(RustReserved {
        per_client,
        held,
        rate,
    })
}

/// Who serves in a paired measure: index 0, then index 1.
const IMP_NAMES: [&str; 2] = ["Pylon", "rust-libp2p"];

/// One table row of a paired transfer: `transfer(0)` (Pylon serving) and `transfer(1)`
/// (rust-libp2p serving) alternately, `repeat` times each, so drift on this noisy
/// machine hits both alike; then `row` and the figures: MiB/s each and their ratio, the
/// serving process's CPU s/GiB each and their ratio, the clients' CPU s/GiB each.
/// rust-libp2p's failures are reported in `failures`, not fatal; Pylon's are.
async fn paired_transfer_row<F, Fut>(
    repeat: usize,
    row: &str,
    failures: &mut Vec<String>,
    mut transfer: F,
) -> anyhow::Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Rate, f64)>>,
{
    let (mut p, mut r, mut pc, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        let (rate, clients) = transfer(0).await?;
        p.push(rate);
        pc.push(clients);
        match transfer(1).await {
            Ok((rate, clients)) => {
                r.push(rate);
                rc.push(clients);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let mibs = |v: &[Rate]| v.iter().map(|x| x.mibs).collect::<Vec<_>>();
    let cpu = |v: &[Rate]| v.iter().map(|x| x.cpu_per_gib).collect::<Vec<_>>();
    println!(
        "| {row} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} |",
        fmt(&mibs(&p), 0),
        fmt(&mibs(&r), 0),
        ratio(&mibs(&p), &mibs(&r)),
        fmt(&cpu(&p), 2),
        fmt(&cpu(&r), 2),
        ratio(&cpu(&p), &cpu(&r)),
        summary(&pc).0,
        summary(&rc).0,
    );
    Ok(())
}

async fn relay_section(o: &Options) -> anyhow::Result<()> {
    let bytes = o.size_mib << 20;
    let legs = [Kind::Noise, Kind::Quic];
    let mut relays = Vec::new();
    for imp in [Imp::Pylon, Imp::Rust] {
        relays.push(
            Served::spawn(&["serve", "relay", imp.arg()], 2)
                .await
                .with_context(|| format!("{imp:?} relay"))?,
        );
    }
    // The same relays with Pylon clients (only the relay differs), then with rust-libp2p
    // clients (most peers a relay serves run another implementation). A failure through
    // the Pylon relay is fatal either way.
    let mut failures = Vec::new();
    let retries = RUST_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
    for rust_clients in [false, true] {
        let (clients, prefix) = if rust_clients {
            ("rust-libp2p", "rust-libp2p clients, ")
        } else {
            ("Pylon", "")
        };
        let heading = if rust_clients {
            "relay: circuit throughput, rust-libp2p clients (caller and target rust-libp2p relay clients, perf over the circuit)"
        } else {
            "relay: circuit throughput (Pylon clients, perf over the circuit)"
        };
        println!("| {heading} | legs | via Pylon MiB/s | via rust-libp2p MiB/s | Pylon / rust | Pylon relay CPU s/GiB | rust relay CPU s/GiB | relay CPU Pylon / rust | clients CPU s/GiB via Pylon / via rust |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for shape in [Shape::Upload, Shape::Download] {
            for leg in legs {
                let row = format!(
                    "{prefix}1 stream through the relay, {} | {}",
                    if shape == Shape::Upload {
                        "upload"
                    } else {
                        "download"
                    },
                    leg.name()
                );
                paired_transfer_row(o.repeat, &row, &mut failures, |i| {
                    let relay = &relays[i];
                    async move {
                        let done = if rust_clients {
                            relay_transfer_rust(relay, leg, shape, bytes).await
                        } else {
                            relay_transfer(relay, leg, shape, bytes).await
                        };
                        done.with_context(|| {
                            format!(
                                "{} relay, {clients} clients, {leg:?} {shape:?}",
                                IMP_NAMES[i]
                            )
                        })
                    }
                })
                .await?;
            }
        }
        println!();
    }
    let retries = RUST_RETRIES.load(std::sync::atomic::Ordering::Relaxed) - retries;
    if retries > 0 {
        println!("rust-libp2p clients: {retries} perf streams dropped by the target before answering were opened again; the retries are inside the timing.\n");
    }

    let n = if o.quick { 20 } else { 200 };
    println!("| relay: added latency ({n} per run × {}; Pylon clients) | legs | direct p50 ms | via Pylon p50 ms | via rust-libp2p p50 ms | added by Pylon ms | added by rust ms | added Pylon / rust |", o.repeat);
    println!("|---|---|---|---|---|---|---|---|");
    for leg in legs {
        let mut setup: [Vec<Duration>; 3] = Default::default();
        let mut rtt: [Vec<Duration>; 3] = Default::default();
        for _ in 0..o.repeat {
            for (i, relay) in [None, Some(&relays[0]), Some(&relays[1])]
                .into_iter()
                .enumerate()
            {
                let (s, r) = relay_latency(relay, leg, n)
                    .await
                    .with_context(|| format!("latency {leg:?} via {i}"))?;
                setup[i].extend(s);
                rtt[i].extend(r);
            }
        }
        for (what, v) in [
            ("dial → first ping answered", &mut setup),
            ("ping round trip, open connection", &mut rtt),
        ] {
            let p50: Vec<f64> = v
                .iter_mut()
                .map(|d| {
                    d.sort();
                    pct(d, 0.5)
                })
                .collect();
            let (added_p, added_r) = (p50[1] - p50[0], p50[2] - p50[0]);
            println!(
                "| {what} | {} | {:.3} | {:.3} | {:.3} | {added_p:.3} | {added_r:.3} | {:.2} |",
                leg.name(),
                p50[0],
                p50[1],
                p50[2],
                added_p / added_r
            );
        }
    }
    println!();
    for relay in relays {
        relay.stop().await;
    }

    let counts: &[usize] = if o.quick { &[50, 100] } else { &[1000, 10_000] };
    let m = if o.quick { 50 } else { 1000 };
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let at = |v: &[f64], i: usize| v.get(i).map_or("failed".to_string(), |x| format!("{x:.1}"));
    let ratio_at = |p: &[f64], r: &[f64], i: usize| match (p.get(i), r.get(i)) {
        (Some(p), Some(r)) => format!("{:.2}", p / r),
        _ => "–".to_string(),
    };
    let mut measured = Vec::new();
    for imp in [Imp::Pylon, Imp::Rust] {
        let reserved = relay_clients(imp, counts, true, &mut failures)
            .await
            .with_context(|| format!("{imp:?} relay reservations"))?;
        let connected = relay_clients(imp, &counts[..1], false, &mut failures)
            .await
            .with_context(|| format!("{imp:?} relay connections"))?;
        let circuits = relay_circuits(imp, m)
            .await
            .with_context(|| format!("{imp:?} relay circuits"))?;
        measured.push((reserved, connected, circuits));
    }
    let [(pr, pc, pk), (rr, rc, rk)] = &measured[..] else {
        anyhow::bail!("two relays measured");
    };
    for (i, &c) in counts.iter().enumerate() {
        rows.push((
            format!("per reserving client (connection + reservation), {c} held"),
            at(&pr.0, i),
            at(&rr.0, i),
            ratio_at(&pr.0, &rr.0, i),
        ));
    }
    rows.push((
        format!("per connected client, no reservation, {} held", counts[0]),
        at(&pc.0, 0),
        at(&rc.0, 0),
        ratio_at(&pc.0, &rc.0, 0),
    ));
    rows.push((
        format!("per open idle circuit, {m} open"),
        format!("{:.1}", pk.0),
        format!("{:.1}", rk.0),
        format!("{:.2}", pk.0 / rk.0),
    ));
    println!("| relay memory (RSS growth of the relay process; Pylon clients over TCP) | Pylon relay KiB | rust-libp2p relay KiB | Pylon / rust |");
    println!("|---|---|---|---|");
    for (what, p, r, q) in rows {
        println!("| {what} | {p} | {r} | {q} |");
    }
    println!();
    println!("| relay: held (the relay's own count) | Pylon | rust-libp2p |\n|---|---|---|");
    println!(
        "| reservations, {} clients reserving | {} | {} |",
        counts[counts.len() - 1],
        pr.1,
        rr.1
    );
    println!("| circuits, {m} opened | {} | {} |", pk.1, rk.1);
    println!(
        "| reservations/s accepted, first {} (32 clients at a time) | {:.0} | {:.0} |\n",
        counts[0], pr.2, rr.2
    );

    // Reservations from rust-libp2p clients, one swarm each.
    let n = if o.quick { 50 } else { 1000 };
    let mut reserved = Vec::new();
    for imp in [Imp::Pylon, Imp::Rust] {
        match relay_rust_clients(imp, n).await {
            Ok(r) => reserved.push(Some(r)),
            // rust-libp2p's own failures are reported, not fatal.
            Err(e) if imp == Imp::Rust => {
                failures.push(format!("rust-libp2p relay, {n} rust-libp2p clients: {e:#}"));
                reserved.push(None);
            }
            Err(e) => {
                return Err(e.context(format!("Pylon relay, {n} rust-libp2p clients reserving")))
            }
        }
    }
    let [Some(p), r] = &reserved[..] else {
        anyhow::bail!("two relays measured");
    };
    let (theirs, q, held, rate) = match r {
        Some(r) => (
            format!("{:.1}", r.per_client),
            format!("{:.2}", p.per_client / r.per_client),
            format!("{} / {}", r.held.0, r.held.1),
            format!("{:.0}", r.rate),
        ),
        None => ("failed".into(), "–".into(), "–".into(), "–".into()),
    };
    println!("| relay memory, rust-libp2p clients (RSS growth of the relay process; one rust-libp2p swarm per reservation, TCP+Noise+yamux) | Pylon relay KiB | rust-libp2p relay KiB | Pylon / rust | reservations held, Pylon relay / its clients | reservations held, rust relay / its clients |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| per reserving rust-libp2p client (connection + reservation), {n} held | {:.1} | {theirs} | {q} | {} / {} | {held} |",
        p.per_client, p.held.0, p.held.1
    );
    println!(
        "\nrust-libp2p clients reserved {:.0}/s on the Pylon relay and {rate}/s on the rust-libp2p relay ({n}, 32 starting at a time).\n",
        p.rate
    );
    for f in &failures {
        println!("relay run failed: {f}  ");
    }
    Ok(())
}

// ---- server cost with rust-libp2p clients -----------------------------------------------

/// A bound on a rust-libp2p client's connection setup (dial, and identify where waited
/// for) to a served server: far above what it takes, so only a hang trips it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound on one perf transfer: 2 MiB/s is below the slowest debug build seen, so only
/// a hang trips it.
fn transfer_deadline(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_secs_f64(bytes as f64 / (2.0 * MIB))
}

/// One perf transfer from a fresh rust-libp2p client (in this process) to `server` (its
/// own process): MiB/s with the server process's CPU seconds per GiB, and the client's.
async fn server_transfer(
    server: &Served,
    kind: Kind,
    shape: Shape,
    bytes: u64,
) -> anyhow::Result<(Rate, f64)> {
    let (addr, peer) = (server.first()?.clone(), server.peer()?);
    let client = RustNode::start(kind, false, false).await?;
    // Identify done both ways before the clock starts: the server's CPU is the transfer's.
    tokio::time::timeout(SETUP_TIMEOUT, client.dial(&addr, peer, Until::Identified))
        .await
        .context("connect and identify timed out")??;
    let rate = rust_perf_timed(&client, peer, shape, bytes, server.pid).await?;
    drop(client);
    Ok(rate)
}

/// One perf transfer of `bytes` (`shape` upload or download) from the rust-libp2p
/// `client` to `peer`, timed: MiB/s with process `pid`'s CPU seconds per GiB (the server
/// or relay the bytes go through), and this process's (the clients').
async fn rust_perf_timed(
    client: &RustNode,
    peer: PeerId,
    shape: Shape,
    bytes: u64,
    pid: u32,
) -> anyhow::Result<(Rate, f64)> {
    let (up, down) = match shape {
        Shape::Upload => (bytes, 0),
        _ => (0, bytes),
    };
    let mut control = client.control.clone();
    timed_through(bytes, pid, async {
        tokio::time::timeout(
            transfer_deadline(bytes),
            rust_perf_run(&mut control, peer, up, down),
        )
        .await
        .context("perf transfer timed out")?
    })
    .await
}

/// What a server process holds for idle TCP+Noise+yamux connections from rust-libp2p
/// clients, at each of a run's connection counts.
struct Held {
    /// KiB of the server's RSS growth per connection.
    per_conn: Vec<f64>,
    /// Connections open by the server's own count and by the clients'.
    open: Vec<(usize, usize)>,
    /// Connections per second opened in the first batch.
    rate: f64,
}

/// RSS growth of a fresh server process (`serve IMP noise`) per idle connection, at each
/// of `counts` connections opened from `swarms` rust-libp2p swarms in this process (round
/// robin, 32 dials in flight; several swarms because a single one opening thousands at
/// once timed out handshakes in the `memory` section). Stops at the first batch that
/// fails, keeping the figures before it; fails if the first does.
async fn server_memory(
    imp: Imp,
    counts: &[usize],
    swarms: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Held> {
    let mut server = Served::spawn(&["serve", imp.arg(), Kind::Noise.arg()], 1).await?;
    let (addr, peer) = (server.first()?.clone(), server.peer()?);
    let mut clients = Vec::with_capacity(swarms);
    for _ in 0..swarms {
        clients.push(RustNode::start(Kind::Noise, false, false).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(server.pid)?;
    let mut held = Held {
        per_conn: Vec::new(),
        open: Vec::new(),
        rate: 0.0,
    };
    let mut opened = 0;
    for (i, &target) in counts.iter().enumerate() {
        let started = Instant::now();
        let (clients, addr) = (&clients, &addr);
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(opened..target)
            .map(|j| async move {
                let dial = clients[j % swarms].dial(addr, peer, Until::Established);
                tokio::time::timeout(SETUP_TIMEOUT, dial)
                    .await
                    .context("dial timed out")?
            })
            .buffer_unordered(32)
            .collect()
            .await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            if held.per_conn.is_empty() {
                return Err(e);
            }
            let what = format!("{imp:?} server, {target} connections from rust-libp2p: {e:#}");
            eprintln!("{what}");
            failures.push(what);
            break;
        }
        if i == 0 {
            held.rate = (target - opened) as f64 / started.elapsed().as_secs_f64();
        }
        opened = target;
        // Let identify and the muxers settle before reading the server's RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_kib(server.pid)?;
        held.per_conn
            .push(rss.saturating_sub(base) as f64 / target as f64);
        let theirs = clients.iter().map(RustNode::open_connections).sum();
        held.open.push((server.connections().await?, theirs));
    }
    drop(clients);
    server.stop().await;
    Ok(held)
}

/// Server-side cost with rust-libp2p clients, a Pylon server beside a rust-libp2p server:
/// perf throughput with the server process's CPU per GiB, and its RSS per idle connection.
async fn server_section(o: &Options) -> anyhow::Result<()> {
    let bytes = o.size_mib << 20;
    let kinds = [Kind::Noise, Kind::Quic];
    let imps = [Imp::Pylon, Imp::Rust];
    let mut servers = Vec::new();
    for kind in kinds {
        let mut pair = Vec::new();
        for imp in imps {
            pair.push(
                Served::spawn(&["serve", imp.arg(), kind.arg(), "perf"], 1)
                    .await
                    .with_context(|| format!("{imp:?} {kind:?} perf server"))?,
            );
        }
        servers.push(pair);
    }
    let retries = RUST_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
    println!("| server: throughput, rust-libp2p client (perf; server in its own process) | transport | to Pylon MiB/s | to rust-libp2p MiB/s | Pylon / rust | Pylon server CPU s/GiB | rust server CPU s/GiB | server CPU Pylon / rust | client CPU s/GiB to Pylon / to rust |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for shape in [Shape::Upload, Shape::Download] {
        for (pair, kind) in servers.iter().zip(kinds) {
            let row = format!("rust-libp2p client, {} | {}", shape.name(), kind.name());
            paired_transfer_row(o.repeat, &row, &mut failures, |i| {
                let server = &pair[i];
                async move {
                    server_transfer(server, kind, shape, bytes)
                        .await
                        .with_context(|| format!("{} server {kind:?} {shape:?}", IMP_NAMES[i]))
                }
            })
            .await?;
        }
    }
    println!();
    for server in servers.into_iter().flatten() {
        server.stop().await;
    }
    let retries = RUST_RETRIES.load(std::sync::atomic::Ordering::Relaxed) - retries;
    if retries > 0 {
        println!("rust-libp2p client: {retries} perf streams dropped by the server before answering were opened again; the retries are inside the timing.\n");
    }

    let (counts, swarms): (&[usize], usize) = if o.quick {
        (&[50], 5)
    } else {
        (&[1000, 10_000], 20)
    };
    let mut measured = Vec::new();
    for imp in imps {
        match server_memory(imp, counts, swarms, &mut failures).await {
            Ok(held) => measured.push(held),
            // rust-libp2p's own failures are reported, not fatal.
            Err(e) if imp == Imp::Rust => {
                failures.push(format!("rust-libp2p server memory: {e:#}"));
                measured.push(Held {
                    per_conn: Vec::new(),
                    open: Vec::new(),
                    rate: f64::NAN,
                });
            }
            Err(e) => return Err(e.context("Pylon server memory")),
        }
    }
    let [pylon, rust] = &measured[..] else {
        anyhow::bail!("two servers measured");
    };
    println!("| server: memory per idle connection, rust-libp2p clients (TCP+Noise+yamux; RSS growth of the server process) | Pylon server KiB | rust-libp2p server KiB | Pylon / rust | open, Pylon server / its clients | open, rust server / its clients |");
    println!("|---|---|---|---|---|---|");
    let at = |v: &[f64], i: usize| v.get(i).map_or("failed".to_string(), |x| format!("{x:.1}"));
    let open = |v: &[(usize, usize)], i: usize| {
        v.get(i)
            .map_or("–".to_string(), |(s, c)| format!("{s} / {c}"))
    };
    for (i, n) in counts.iter().enumerate() {
        let q = match (pylon.per_conn.get(i), rust.per_conn.get(i)) {
            (Some(p), Some(r)) => format!("{:.2}", p / r),
            _ => "–".to_string(),
        };
        println!(
            "| {n} idle connections from {swarms} rust-libp2p swarms | {} | {} | {q} | {} | {} |",
            at(&pylon.per_conn, i),
            at(&rust.per_conn, i),
            open(&pylon.open, i),
            open(&rust.open, i),
        );
    }
    println!(
        "\nrust-libp2p clients opened {:.0} connections/s to the Pylon server and {:.0} to the rust-libp2p server (the first {}, 32 dials in flight).\n",
        pylon.rate, rust.rate, counts[0]
    );
    for f in &failures {
        println!("server run failed: {f}  ");
    }
    Ok(())
}

// ---- Kademlia ---------------------------------------------------------------------------

/// Load generator: connections × streams per connection, each a request loop.
const KAD_CONNS: usize = 4;
const KAD_STREAMS: usize = 8;
/// Peers the server's table is filled with, and providers of the benchmark key.
const KAD_TABLE_PEERS: usize = 200;
const KAD_PROVIDERS: usize = 10;

fn synthetic_peers(n: usize) -> Vec<(PeerId, Multiaddr)> {
    (0..n)
        .map(|i| {
            let peer = libp2p_identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id();
            let addr: Multiaddr = format!("/ip4/10.{}.{}.1/tcp/4001", i / 250, i % 250)
                .parse()
                .unwrap_or_else(|_| Multiaddr::empty());
            (peer, addr)
        })
        .collect()
}

fn provider_key() -> Vec<u8> {
    let mut k = vec![0x12, 0x20];
    k.extend_from_slice(&[0x5a; 32]);
    k
}

#[derive(NetworkBehaviour)]
struct KadServer {
    identify: identify::Behaviour,
    kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
}

/// A rust-libp2p DHT server on loopback TCP with the same table and providers as Pylon's;
/// returns its address and the task driving it.
async fn rust_kad_server(
    peers: &[(PeerId, Multiaddr)],
) -> anyhow::Result<(Multiaddr, tokio::task::JoinHandle<()>)> {
    use libp2p::kad::{self, store::RecordStore};
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let mut config = kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0"));
            config.set_periodic_bootstrap_interval(None);
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), config);
            kad.set_mode(Some(kad::Mode::Server));
            KadServer {
                identify: identify::Behaviour::new(identify::Config::new(
                    "ipfs/0.1.0".into(),
                    key.public(),
                )),
                kad,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let listen = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let kad = &mut swarm.behaviour_mut().kad;
    for (p, a) in peers {
        kad.add_address(p, a.clone());
    }
    for (p, a) in peers.iter().take(KAD_PROVIDERS) {
        kad.store_mut().add_provider(kad::ProviderRecord {
            key: kad::RecordKey::new(&provider_key()),
            provider: *p,
            expires: None,
            addresses: vec![a.clone()],
        })?;
    }
    let addr = listen.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok((addr, task))
}

/// A Pylon DHT server with the same table and providers, limits out of the way.
async fn pylon_kad_server(peers: &[(PeerId, Multiaddr)]) -> anyhow::Result<Node> {
    use pylon_node::protocols::kad;
    let config = node::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        kad: Some(kad::Config {
            server: true,
            refresh_interval: None,
            peer_rate: (u32::MAX / 2, u32::MAX / 2),
            group_rate: (u32::MAX / 2, u32::MAX / 2),
            max_inbound_streams_per_peer: 64,
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = Node::start_volatile(config, Metrics::unregistered()).await?;
    let k = node.kad.as_ref().context("kad on")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    for (p, a) in peers {
        k.add_peer(*p, vec![a.clone()]);
    }
    for (p, a) in peers.iter().take(KAD_PROVIDERS) {
        k.store()
            .add_provider(&provider_key(), *p, std::slice::from_ref(a), now)
            .await?;
    }
    Ok(node)
}

/// Requests per second a server answers, and client+server CPU µs per request.
async fn kad_rate(
    server: &Multiaddr,
    kind: pylon_node::protocols::kad::MessageType,
    secs: f64,
) -> anyhow::Result<(f64, f64)> {
    use pylon_node::protocols::kad::{proto, MessageType};
    use pylon_node::varint;
    use tokio::io::AsyncWriteExt;
    let target = match server.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => anyhow::bail!("no /p2p/ in {server}"),
    };
    let mut clients = Vec::new();
    for _ in 0..KAD_CONNS {
        let config = node::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            ..Default::default()
        };
        let c = Node::start_volatile(config, Metrics::unregistered()).await?;
        c.host.connect(target, std::slice::from_ref(server)).await?;
        clients.push(c);
    }
    let requests: Vec<Vec<u8>> = (0..256)
        .map(|_| {
            let key = match kind {
                MessageType::GetProviders => provider_key(),
                _ => libp2p_identity::Keypair::generate_ed25519()
                    .public()
                    .to_peer_id()
                    .to_bytes(),
            };
            varint::length_prefixed(&proto::Message::new(kind, key).to_bytes())
        })
        .collect();
    let requests = &requests;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let mut loops = Vec::new();
    for c in &clients {
        let conn = c.host.connection(&target).context("connected")?;
        for s in 0..KAD_STREAMS {
            let conn = conn.clone();
            loops.push(async move {
                let mut stream = conn.open_stream(&["/ipfs/kad/1.0.0"]).await?;
                let mut n = 0u64;
                let mut i = s * 31;
                while Instant::now() < deadline {
                    stream.write_all(&requests[i % requests.len()]).await?;
                    stream.flush().await?;
                    let reply = varint::read_frame(&mut stream, 1 << 20).await?;
                    anyhow::ensure!(!reply.is_empty(), "empty reply");
                    n += 1;
                    i += 1;
                }
                Ok::<u64, anyhow::Error>(n)
            });
        }
    }
    let total: u64 = futures::future::try_join_all(loops)
        .await?
        .into_iter()
        .sum();
    let (cpu, t) = (cpu_time() - cpu0, t0.elapsed());
    for c in clients {
        c.shutdown(Duration::from_secs(1)).await;
    }
    Ok((
        total as f64 / t.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / total.max(1) as f64,
    ))
}

/// Pylon's memory per routing-table peer (k = 1024 so thousands fit) and per stored
/// record and provider record on sled, as the RSS growth of a fresh process
/// (`bench kadmem N`), in bytes per entry.
/// Bytes of RSS one more DHT identity adds to this process: `n` booster heads on a Pylon
/// node whose table holds 200 peers (`pylon`), or `n` more rust-libp2p DHT servers
/// (`rust`), each listening on its own loopback port.
async fn booster_memory_here(imp: &str, n: usize) -> anyhow::Result<f64> {
    use pylon_node::protocols::kad;
    use pylon_roles::booster::{self, Booster};
    use pylon_roles::Role;
    match imp {
        "pylon" => {
            let role = booster::Config {
                heads: n as u32,
                max_heads: n as u32,
                listen: vec!["/ip4/127.0.0.1/tcp/{port}".into()],
                port_base: 0,
                autoscale: false,
                crawl_delay: Duration::from_secs(3600),
                ..Default::default()
            };
            let mut config = node::Config {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                kad: Some(kad::Config {
                    refresh_interval: None,
                    ..Default::default()
                }),
                ..Default::default()
            };
            Booster::require(&role, &mut config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let node = Node::start_volatile(config, Metrics::unregistered()).await?;
            let k = node.kad.as_ref().context("kad on")?;
            for (p, a) in synthetic_peers(200) {
                k.add_peer(p, vec![a]);
            }
            let before = rss_kib(std::process::id())?;
            let mut registry = prometheus_client::registry::Registry::default();
            let b = Booster::start(
                &node,
                role,
                &mut pylon_roles::Metrics::of::<Booster>(&mut registry),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while b.heads().len() < n {
                anyhow::ensure!(Instant::now() < deadline, "heads did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let grown = rss_kib(std::process::id())?.saturating_sub(before);
            Ok(grown as f64 * 1024.0 / n as f64)
        }
        "rust" => {
            let before = rss_kib(std::process::id())?;
            let mut swarms = Vec::new();
            for _ in 0..n {
                let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                    .with_tokio()
                    .with_tcp(
                        tcp::Config::default().nodelay(true),
                        noise::Config::new,
                        yamux::Config::default,
                    )?
                    .with_behaviour(|key| {
                        let id = key.public().to_peer_id();
                        let mut kad = libp2p::kad::Behaviour::new(
                            id,
                            libp2p::kad::store::MemoryStore::new(id),
                        );
                        kad.set_mode(Some(libp2p::kad::Mode::Server));
                        for (p, a) in synthetic_peers(200) {
                            kad.add_address(&p, a);
                        }
                        kad
                    })?
                    .build();
                swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
                swarms.push(swarm);
            }
            // Each polled until it listens.
            for swarm in &mut swarms {
                loop {
                    if let SwarmEvent::NewListenAddr { .. } = swarm.select_next_some().await {
                        break;
                    }
                }
            }
            let grown = rss_kib(std::process::id())?.saturating_sub(before);
            drop(swarms);
            Ok(grown as f64 * 1024.0 / n as f64)
        }
        other => anyhow::bail!("boostermem: unknown implementation {other}"),
    }
}

async fn booster_section(o: &Options) -> anyhow::Result<()> {
    let n = if o.quick { 8 } else { 64 };
    println!("| memory per DHT identity ({n} in one fresh process, 200 peers in each table) | Pylon booster head | rust-libp2p DHT server | Pylon / rust |");
    println!("|---|---|---|---|");
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..o.repeat {
        for (i, imp) in ["pylon", "rust"].iter().enumerate() {
            let out = tokio::process::Command::new(std::env::current_exe()?)
                .args(["boostermem", imp, &n.to_string()])
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "boostermem {imp} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs[i].push(String::from_utf8(out.stdout)?.trim().parse()?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (p, r) = (median(&mut runs[0]), median(&mut runs[1]));
    println!(
        "| KiB | {:.0} | {:.0} | {:.2} |",
        p / 1024.0,
        r / 1024.0,
        p / r
    );
    Ok(())
}

async fn kad_memory(n: usize) -> anyhow::Result<(f64, usize, f64, f64)> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["kadmem", &n.to_string()])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "kadmem failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let v: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(v.len() == 4, "kadmem printed {text:?}");
    Ok((v[0], v[1] as usize, v[2], v[3]))
}

/// `kadmem` mode: measures in this (fresh) process and prints the four figures.
async fn kad_memory_here(n: usize) -> anyhow::Result<(f64, usize, f64, f64)> {
    use pylon_node::protocols::kad;
    use std::sync::Arc;
    let config = node::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        kad: Some(kad::Config {
            server: true,
            refresh_interval: None,
            persist_table: false,
            table: kad::table::Config {
                k: 1024,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = Node::start_volatile(config, Metrics::unregistered()).await?;
    let k = node.kad.as_ref().context("kad on")?;
    let peers = synthetic_peers(n);
    let before = rss_kib(std::process::id())?;
    for (p, a) in &peers {
        k.add_peer(
            *p,
            vec![
                a.clone(),
                a.clone().with(libp2p::multiaddr::Protocol::P2p(*p)),
            ],
        );
    }
    let table = k.table_len();
    let per_peer =
        (rss_kib(std::process::id())?.saturating_sub(before)) as f64 * 1024.0 / table.max(1) as f64;
    drop(peers);
    node.shutdown(Duration::from_secs(1)).await;

    let dir = tempfile::tempdir()?;
    let storage = pylon_node::storage::Storage::open(
        dir.path(),
        pylon_node::storage::Config::default(),
        pylon_node::storage::Metrics::unregistered(),
    )?;
    let tree = |name: &str| -> anyhow::Result<Arc<dyn pylon_node::peerstore::Store>> {
        Ok(storage.tree(name)?)
    };
    let store = kad::KadStore::open(
        tree("r")?,
        tree("p")?,
        tree("t")?,
        kad::store::Config::default(),
        0,
    )?;
    let records = n * 4;
    let before = rss_kib(std::process::id())?;
    for _ in 0..records {
        let key = libp2p_identity::Keypair::generate_ed25519().public();
        let mut k = b"/pk/".to_vec();
        k.extend_from_slice(&key.to_peer_id().to_bytes());
        store.put(&k, &key.encode_protobuf(), 1).await?;
    }
    let per_record =
        (rss_kib(std::process::id())?.saturating_sub(before)) as f64 * 1024.0 / records as f64;
    let before = rss_kib(std::process::id())?;
    let addr: Multiaddr = "/ip4/192.0.2.1/tcp/4001".parse()?;
    for i in 0..records {
        let mut key = vec![0x12, 0x20];
        key.extend_from_slice(&[(i % 251) as u8; 32]);
        key[2..10].copy_from_slice(&(i as u64).to_be_bytes());
        let provider = libp2p_identity::PeerId::random();
        store
            .add_provider(&key, provider, std::slice::from_ref(&addr), 1)
            .await?;
    }
    let per_provider =
        (rss_kib(std::process::id())?.saturating_sub(before)) as f64 * 1024.0 / records as f64;
    Ok((per_peer, table, per_record, per_provider))
}

async fn kad_section(o: &Options) -> anyhow::Result<()> {
    use pylon_node::protocols::kad::MessageType;
    let secs = if o.quick { 0.5 } else { 3.0 };
    let peers = synthetic_peers(KAD_TABLE_PEERS);
    println!(
        "| Kademlia server, requests/s ({KAD_CONNS} connections × {KAD_STREAMS} streams, {secs} s per run) | Pylon | rust-libp2p | Pylon / rust | Pylon CPU µs/request | rust CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|");
    let pylon = pylon_kad_server(&peers).await?;
    let pylon_addr = pylon_addr(&pylon)?;
    let (rust_addr, rust_task) = rust_kad_server(&peers).await?;
    for (kind, name) in [
        (MessageType::FindNode, "FIND_NODE (random key)"),
        (MessageType::GetProviders, "GET_PROVIDERS (10 providers)"),
    ] {
        let (mut p, mut r, mut pc, mut rc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.repeat {
            let (rate, cpu) = kad_rate(&pylon_addr, kind, secs).await?;
            p.push(rate);
            pc.push(cpu);
            let (rate, cpu) = kad_rate(&rust_addr, kind, secs).await?;
            r.push(rate);
            rc.push(cpu);
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            fmt(&p, 0),
            fmt(&r, 0),
            ratio(&p, &r),
            fmt(&pc, 1),
            fmt(&rc, 1)
        );
    }
    println!();
    rust_task.abort();
    pylon.shutdown(Duration::from_secs(1)).await;
    let n = if o.quick { 500 } else { 5000 };
    let (per_peer, table, per_record, per_provider) = kad_memory(n).await?;
    println!("| Pylon DHT memory (RSS growth of this process) | bytes per entry |\n|---|---|");
    println!(
        "| routing-table peer (k = 1024, {table} peers held, 2 addresses each) | {per_peer:.0} |"
    );
    println!(
        "| value record on sled (/pk/ Ed25519, {} records) | {per_record:.0} |",
        n * 4
    );
    println!(
        "| provider record on sled (1 address, {} records) | {per_provider:.0} |\n",
        n * 4
    );
    Ok(())
}

/// Plain tokio TCP over loopback, one stream, 64 KiB writes: MiB/s.
async fn tcp_copy(bytes: u64) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(got);
            }
            got += n as u64;
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let zeros = vec![0u8; CHUNK];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&zeros[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let got = reader.await??;
    anyhow::ensure!(got == bytes);
    Ok(bytes as f64 / MIB / started.elapsed().as_secs_f64())
}

/// One core's AEAD seal rate on 65519-byte records (a full Noise frame's payload): MiB/s.
fn aead_rate(alg: &'static ring::aead::Algorithm, bytes: u64) -> anyhow::Result<f64> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &vec![7u8; alg.key_len()]).map_err(|_| anyhow::anyhow!("key"))?,
    );
    let mut buf = vec![0u8; 65519];
    let started = Instant::now();
    let mut done = 0u64;
    let mut n = 0u64;
    while done < bytes {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("seal"))?;
        let _ = std::hint::black_box(tag);
        done += buf.len() as u64;
        n += 1;
    }
    Ok(done as f64 / MIB / started.elapsed().as_secs_f64())
}

// ---- reporting --------------------------------------------------------------------------

/// Median, min and max.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn fmt(values: &[f64], digits: usize) -> String {
    let (m, lo, hi) = summary(values);
    if values.is_empty() {
        "failed".to_string()
    } else if values.len() < 2 {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    }
}

fn ratio(pylon: &[f64], rust: &[f64]) -> String {
    if pylon.is_empty() || rust.is_empty() {
        return "–".to_string();
    }
    format!("{:.2}", summary(pylon).0 / summary(rust).0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// What `--only` selects from.
const SECTIONS: [&str; 9] = [
    "limits",
    "throughput",
    "concurrency",
    "connect",
    "memory",
    "kad",
    "relay",
    "booster",
    "server",
];

struct Options {
    quick: bool,
    repeat: usize,
    size_mib: u64,
    only: Vec<String>,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let mut o = Options {
            quick: false,
            repeat: 3,
            size_mib: 512,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.repeat = 1;
                    o.size_mib = 8;
                }
                "--repeat" => o.repeat = args.next().unwrap_or_default().parse()?,
                "--size" => o.size_mib = args.next().unwrap_or_default().parse()?,
                "--only" => {
                    o.only = args
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::to_string)
                        .collect();
                    // A misspelt section would otherwise run nothing and print no table.
                    if let Some(s) = o.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                        anyhow::bail!("unknown section {s}; sections: {}", SECTIONS.join(","));
                    }
                }
                other => anyhow::bail!("unknown argument {other}"),
            }
        }
        Ok(o)
    }
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("serve") {
        let (imp, kind) = (
            args.next().unwrap_or_default(),
            args.next().unwrap_or_default(),
        );
        let perf_server = args.next().as_deref() == Some("perf");
        return tokio::runtime::Runtime::new()?.block_on(serve(&imp, &kind, perf_server));
    }
    if std::env::args().nth(1).as_deref() == Some("boostermem") {
        let imp = std::env::args().nth(2).unwrap_or_default();
        let n: usize = std::env::args().nth(3).unwrap_or_default().parse()?;
        let per = tokio::runtime::Runtime::new()?.block_on(booster_memory_here(&imp, n))?;
        println!("{per}");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("kadmem") {
        let n: usize = std::env::args().nth(2).unwrap_or_default().parse()?;
        let (a, b, c, d) = tokio::runtime::Runtime::new()?.block_on(kad_memory_here(n))?;
        println!("{a} {b} {c} {d}");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("one") {
        // `bench one pylon|rust noise|tls|quic upload|download|streams16|conns16|connect N`:
        // a single transfer, for profilers (perf record, valgrind --tool=callgrind); and
        // `relay-upload|relay-download` through a relay (see below).
        let a: Vec<String> = std::env::args().skip(2).collect();
        let get = |i: usize| a.get(i).map(String::as_str).unwrap_or_default();
        let imp = match get(0) {
            "rust" => Imp::Rust,
            _ => Imp::Pylon,
        };
        let kind = match get(1) {
            "tls" => Kind::Tls,
            "quic" => Kind::Quic,
            _ => Kind::Noise,
        };
        let shape = match get(2) {
            "upload" => Shape::Upload,
            "streams16" => Shape::Streams16,
            "conns16" => Shape::Connections16,
            _ => Shape::Download,
        };
        let mib: u64 = get(3).parse().unwrap_or(256);
        if let Some(dir) = get(2).strip_prefix("relay-") {
            // `bench one IMP noise|quic relay-upload|relay-download MiB`: one transfer
            // through a relay of IMP (its own process, `serve relay IMP`).
            let shape = if dir == "upload" {
                Shape::Upload
            } else {
                Shape::Download
            };
            let rt = tokio::runtime::Runtime::new()?;
            let ((rate, clients), (user, system)) = rt.block_on(async {
                let relay = Served::spawn(&["serve", "relay", imp.arg()], 2).await?;
                let before = proc_cpu_split(relay.pid)?;
                let r = relay_transfer(&relay, kind, shape, mib << 20).await;
                let after = proc_cpu_split(relay.pid)?;
                relay.stop().await;
                anyhow::Ok((r?, (after.0 - before.0, after.1 - before.1)))
            })?;
            let gib = mib as f64 / 1024.0;
            println!(
                "via {imp:?} relay, {kind:?} legs, {shape:?}: {:.0} MiB/s, relay {:.2} CPU s/GiB (user {:.2}, system {:.2}), clients {clients:.2}",
                rate.mibs,
                rate.cpu_per_gib,
                user.as_secs_f64() / gib,
                system.as_secs_f64() / gib
            );
            return Ok(());
        }
        if get(2) == "connect" {
            // `bench one IMP KIND connect N`: N dials, inlined muxer for Pylon.
            let rt = tokio::runtime::Runtime::new()?;
            let mut d = rt.block_on(connect_latency(imp, kind, true, mib as usize))?;
            d.sort();
            println!("{imp:?} {kind:?} connect: p50 {:.3} ms", pct(&d, 0.5));
            return Ok(());
        }
        let rate =
            tokio::runtime::Runtime::new()?.block_on(transfer(imp, kind, shape, mib << 20))?;
        println!(
            "{imp:?} {kind:?} {shape:?}: {:.0} MiB/s, {:.2} CPU s/GiB",
            rate.mibs, rate.cpu_per_gib
        );
        return Ok(());
    }
    let opts = Options::parse()?;
    tokio::runtime::Runtime::new()?.block_on(bench(opts))
}

async fn bench(o: Options) -> anyhow::Result<()> {
    let bytes = o.size_mib << 20;
    let kinds = [Kind::Noise, Kind::Tls, Kind::Quic];
    println!(
        "Pylon {} vs rust-libp2p 0.57 on loopback; median of {} (min–max); {} MiB per transfer.\n",
        env!("CARGO_PKG_VERSION"),
        o.repeat,
        o.size_mib
    );
    let mut limit_tcp = Vec::new();
    let mut limit_chacha = Vec::new();
    if o.wants("limits") {
        let mut aes = Vec::new();
        for _ in 0..o.repeat {
            limit_tcp.push(tcp_copy(bytes * 2).await?);
            limit_chacha.push(aead_rate(&ring::aead::CHACHA20_POLY1305, bytes)?);
            aes.push(aead_rate(&ring::aead::AES_256_GCM, bytes)?);
        }
        println!("| physical limit on this machine | MiB/s |\n|---|---|");
        println!(
            "| tokio TCP copy over loopback, 1 stream, no crypto | {} |",
            fmt(&limit_tcp, 0)
        );
        println!(
            "| ChaCha20-Poly1305 seal, 1 core (ring) | {} |",
            fmt(&limit_chacha, 0)
        );
        println!("| AES-256-GCM seal, 1 core (ring) | {} |\n", fmt(&aes, 0));
    }
    let mut shapes = Vec::new();
    if o.wants("throughput") {
        shapes.extend([Shape::Upload, Shape::Download]);
    }
    if o.wants("concurrency") {
        shapes.extend([Shape::Streams16, Shape::Connections16]);
    }
    let mut failures = Vec::new();
    if !shapes.is_empty() {
        println!("| throughput | transport | Pylon MiB/s | rust-libp2p MiB/s | Pylon / rust | Pylon / TCP copy | Pylon CPU s/GiB | rust CPU s/GiB |");
        println!("|---|---|---|---|---|---|---|---|");
        for shape in shapes {
            for kind in kinds {
                let (mut p, mut r) = (Vec::new(), Vec::new());
                for _ in 0..o.repeat {
                    // Alternate so drift on this noisy machine hits both alike.
                    let run = |imp| async move {
                        transfer(imp, kind, shape, bytes)
                            .await
                            .with_context(|| format!("{imp:?} {kind:?} {shape:?}"))
                    };
                    p.push(run(Imp::Pylon).await?);
                    // rust-libp2p's own failures are reported, not fatal.
                    match run(Imp::Rust).await {
                        Ok(rate) => r.push(rate),
                        Err(e) => failures.push(format!("{e:#}")),
                    }
                }
                let mibs = |v: &[Rate]| v.iter().map(|x| x.mibs).collect::<Vec<_>>();
                let cpu = |v: &[Rate]| v.iter().map(|x| x.cpu_per_gib).collect::<Vec<_>>();
                let share = if limit_tcp.is_empty() {
                    "–".to_string()
                } else {
                    format!(
                        "{:.0} %",
                        100.0 * summary(&mibs(&p)).0 / summary(&limit_tcp).0
                    )
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    shape.name(),
                    kind.name(),
                    fmt(&mibs(&p), 0),
                    fmt(&mibs(&r), 0),
                    ratio(&mibs(&p), &mibs(&r)),
                    share,
                    fmt(&cpu(&p), 2),
                    fmt(&cpu(&r), 2),
                );
            }
        }
        println!();
        for f in &failures {
            println!("rust-libp2p run failed: {f}  ");
        }
        let retries = RUST_RETRIES.load(std::sync::atomic::Ordering::Relaxed);
        if retries > 0 {
            println!(
                "rust-libp2p: {retries} perf streams dropped by libp2p-stream's accept queue (full channel) were opened again; the retries are inside the timing.\n"
            );
        }
        if !failures.is_empty() {
            println!();
        }
    }
    if o.wants("connect") {
        let n = if o.quick { 20 } else { 500 };
        println!("| dial → first ping answered ({n} per run × {}) | Pylon p50 / p90 / p99 ms | rust-libp2p p50 / p90 / p99 ms | p50 Pylon / rust |", o.repeat);
        println!("|---|---|---|---|");
        // QUIC has no muxer negotiation; TCP rows with it inlined and by multistream-select.
        let rows = [
            (Kind::Noise, true, "TCP+Noise+yamux, muxer inlined"),
            (Kind::Noise, false, "TCP+Noise+yamux, muxer by multistream"),
            (Kind::Tls, true, "TCP+TLS+yamux, muxer inlined"),
            (Kind::Tls, false, "TCP+TLS+yamux, muxer by multistream"),
            (Kind::Quic, false, "QUIC"),
        ];
        let mut rust: HashMap<&str, Vec<Duration>> = HashMap::new();
        for (kind, inline, name) in rows {
            let mut p = Vec::new();
            // Warm-up, then alternating runs.
            connect_latency(Imp::Pylon, kind, inline, n / 10).await?;
            connect_latency(Imp::Rust, kind, false, n / 10).await?;
            for _ in 0..o.repeat {
                p.extend(connect_latency(Imp::Pylon, kind, inline, n).await?);
                let r = connect_latency(Imp::Rust, kind, false, n).await?;
                rust.entry(kind.name()).or_default().extend(r);
            }
            p.sort();
            let r = rust.entry(kind.name()).or_default();
            r.sort();
            println!(
                "| {name} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.2} |",
                pct(&p, 0.5),
                pct(&p, 0.9),
                pct(&p, 0.99),
                pct(r, 0.5),
                pct(r, 0.9),
                pct(r, 0.99),
                pct(&p, 0.5) / pct(r, 0.5)
            );
        }
        println!();
    }
    if o.wants("memory") {
        let counts: &[usize] = if o.quick { &[50, 100] } else { &[1000, 10_000] };
        println!(
                        "| server memory per idle connection (Pylon client for both) | Pylon KiB at {} / {} | rust-libp2p KiB at {} / {} | Pylon / rust at {} | accepted conn/s Pylon | rust |",
            counts[0], counts[1], counts[0], counts[1], counts[1]
        );
        println!("|---|---|---|---|---|---|");
        let mut failures = Vec::new();
        for kind in [Kind::Noise, Kind::Quic] {
            let (pm, pa) = memory(Imp::Pylon, kind, counts)
                .await
                .with_context(|| format!("Pylon {kind:?} memory"))?;
            let at =
                |v: &[f64], i: usize| v.get(i).map_or("failed".to_string(), |x| format!("{x:.1}"));
            let (rust, ratio) = match memory(Imp::Rust, kind, counts).await {
                Ok((rm, ra)) => (
                    format!("{} / {} | ", at(&rm, 0), at(&rm, 1)),
                    match (pm.get(1), rm.get(1)) {
                        (Some(p), Some(r)) => format!("{:.2} | {pa:.0} | {ra:.0}", p / r),
                        _ => format!(
                            "{:.2} (at {}) | {pa:.0} | {ra:.0}",
                            pm[0] / rm[0],
                            counts[0]
                        ),
                    },
                ),
                Err(e) => {
                    failures.push(format!("rust-libp2p {kind:?}: {e:#}"));
                    ("failed | ".to_string(), format!("– | {pa:.0} | failed"))
                }
            };
            println!(
                "| {} | {} / {} | {rust}{ratio} |",
                kind.name(),
                at(&pm, 0),
                at(&pm, 1),
            );
        }
        println!();
        failures.extend(MEMORY_FAILURES.with(|f| f.borrow().clone()));
        for f in failures {
            println!("memory run failed: {f}  ");
        }
    }
    if o.wants("kad") {
        kad_section(&o).await?;
    }
    if o.wants("relay") {
        relay_section(&o).await?;
    }
    if o.wants("booster") {
        booster_section(&o).await?;
    }
    if o.wants("server") {
        server_section(&o).await?;
    }
    Ok(())
}
