//! NAT test beds in Linux network namespaces: a public network and private LANs behind
//! NAT routers, built with the `ip` and `nft` commands and torn down on drop; and threads
//! that run async code inside one namespace ([`spawn_in`]).
//!
//! The topology of a [`Bed`] with two LANs:
//!
//! ```text
//!  public namespace                 router i namespace              host i namespace
//!  br0 11.77.0.1/24  <-- veth -->   wan 11.77.0.(10+i)/24
//!  (the public host)                lan 192.168.(1+i).1/24  <-->    eth0 192.168.(1+i).2/24
//!         ^                         NAT on wan, forwarding on       default via the router
//!         |  veth
//!  public host j namespace
//!  eth0 11.77.0.(2+j)/24
//! ```
//!
//! Besides the public namespace itself, [`Builder::public_hosts`] attaches more hosts to the
//! bridge, each in a namespace of its own with an address of its own on the public network:
//! peers that must sit on distinct public IPs (AutoNAT servers, which clients count by IP;
//! a client on the public network, testing its own reachability).
//!
//! The public namespace holds the bridge and is itself the public host (a relay, an AutoNAT
//! server): it has no route into the LANs, as on the Internet. Each router masquerades what
//! leaves through `wan` ([`Nat`]) and drops whatever arrives there unsolicited: neither a
//! TCP reset nor an ICMP error goes back, which is what TCP hole punching needs: a reset
//! kills the other side's simultaneous open (with `reject with tcp reset` on the routers,
//! rust-libp2p's TCP punch fails here while QUIC's still succeeds). Replies to what went
//! out (conntrack's established and related) pass. The rules are [`nft_ruleset`].
//!
//! Each bed has its own namespaces (`pl<pid>-<n>-pub`, `-p<j>`, `-r<i>`, `-h<i>`), so beds of tests
//! running in parallel never meet and may use the same addresses and interface names.
//! Dropping the [`Bed`] deletes its namespaces, which removes their veths and bridge; a
//! namespace left by a killed run of a process with the same pid is deleted before reuse.
//!
//! Sockets belong to the namespace of the thread that creates them, so code runs in a
//! namespace on a thread of its own: [`spawn_in`] enters the namespace with `setns(2)` and
//! runs an async closure on a current-thread tokio runtime there. Everything that closure
//! creates (listeners, dials, UDP sockets, tasks it spawns on that runtime) lives in that
//! namespace.
//!
//! What it is not: a link emulator. This machine's kernel has no `netem`, so links have no
//! delay or loss ([`crate::links`] simulates those for the pure cores). It needs root (or
//! CAP_NET_ADMIN and CAP_SYS_ADMIN) and the `ip` (iproute2) and `nft` (nftables) commands;
//! `ops/test.sh` installs them.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The public network's first three octets: 11.77.0.0/24. A globally routable range, as on
/// the Internet: peers that take only public addresses seriously (js-libp2p's identify and
/// DCUtR drop private ones, AutoNAT servers refuse to dial them) treat the bed's public
/// addresses as they would real ones. They never leave the bed: no namespace of it has a link
/// to the machine's own network.
pub const PUBLIC_NET: [u8; 3] = [11, 77, 0];
/// LAN `i` is 192.168.(LAN_BASE + i).0/24.
const LAN_BASE: u8 = 1;
/// At most this many LANs in a bed (the address plan leaves room for more; tests need few).
pub const MAX_LANS: usize = 16;
/// Public host `j` ([`Builder::public_hosts`]) is 11.77.0.(PUBLIC_HOST_BASE + j).
const PUBLIC_HOST_BASE: u8 = 2;
/// Router `i` is 11.77.0.(ROUTER_BASE + i).
const ROUTER_BASE: u8 = 10;
/// At most this many public hosts besides the public namespace: 11.77.0.2 to 11.77.0.9,
/// below the routers.
pub const MAX_PUBLIC_HOSTS: usize = (ROUTER_BASE - PUBLIC_HOST_BASE) as usize;

/// The router's interface on the public network.
const WAN: &str = "wan";
/// The router's interface on its LAN.
const LAN: &str = "lan";
/// The bridge in the public namespace.
const BRIDGE: &str = "br0";
/// A LAN host's interface.
const ETH: &str = "eth0";

/// Beds made by this process so far: the `<n>` in the namespace names.
static NEXT_BED: AtomicU32 = AtomicU32::new(0);

/// How a router maps its LAN's flows to its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// nftables `masquerade`: keeps the source port when it is free, so one local port
    /// maps to one public port whatever the destination (endpoint-independent mapping;
    /// filtering still lets in only replies). Hole punching works through it.
    EndpointIndependent,
    /// nftables `masquerade random,fully-random`: a random public port for every flow, so
    /// each destination sees another port (a symmetric NAT). The port a peer observed is
    /// useless to anyone else: hole punching fails.
    Symmetric,
}

impl Nat {
    fn masquerade(self) -> &'static str {
        match self {
            Nat::EndpointIndependent => "masquerade",
            Nat::Symmetric => "masquerade random,fully-random",
        }
    }
}

/// Why a bed could not be built or a thread could not enter a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command could not be started at all.
    #[error("could not run `{command}`: {source} (needs root and the `ip` (iproute2) and `nft` (nftables) commands; ops/test.sh installs them)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// A namespace could not be opened or entered.
    #[error("could not enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Writing a sysctl inside a namespace failed.
    #[error("could not set {key} in network namespace {ns}: {source}")]
    Sysctl {
        ns: String,
        key: String,
        source: std::io::Error,
    },
    /// The thread or its runtime could not be started.
    #[error("could not start a thread in network namespace {ns}: {source}")]
    Thread { ns: String, source: std::io::Error },
}

/// A namespace and its address: the public host, a router (its public address) or a LAN
/// host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    ns: String,
    ip: Ipv4Addr,
}

impl Host {
    /// The namespace's name (as `ip netns` lists it).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The host's address: on the public network for the public host and a router, on its
    /// LAN for a LAN host.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// [`spawn_in`] this host's namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<Task<T>, Error>
    where
        F: AsyncFnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_in(&self.ns, f)
    }
}

/// A private LAN: its router and its one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The router; [`Host::ip`] is its public address, the one peers see the LAN host at.
    pub router: Host,
    /// The host behind the router.
    pub host: Host,
    /// How the router translates.
    pub nat: Nat,
}

/// What to build: the public network, these LANs and these public hosts.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    lans: Vec<Nat>,
    public_hosts: usize,
}

impl Builder {
    /// Attaches `n` more hosts to the public network, each in a namespace of its own, at
    /// 11.77.0.2, 11.77.0.3, ... ([`Bed::public_host`]).
    ///
    /// # Panics
    /// On more than [`MAX_PUBLIC_HOSTS`].
    pub fn public_hosts(mut self, n: usize) -> Builder {
        assert!(
            n <= MAX_PUBLIC_HOSTS,
            "at most {MAX_PUBLIC_HOSTS} public hosts in a bed"
        );
        self.public_hosts = n;
        self
    }

    /// Adds a LAN behind a router with `nat` (LAN `i` is the `i`-th added).
    ///
    /// # Panics
    /// On more than [`MAX_LANS`].
    pub fn lan(mut self, nat: Nat) -> Builder {
        assert!(
            self.lans.len() < MAX_LANS,
            "at most {MAX_LANS} LANs in a bed"
        );
        self.lans.push(nat);
        self
    }

    /// Creates the namespaces, links, addresses, routes and rules. On an error, what was
    /// made so far is deleted again.
    pub fn build(self) -> Result<Bed, Error> {
        let n = NEXT_BED.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("pl{}-{n}", std::process::id());
        let mut bed = Bed {
            public: Host {
                ns: format!("{prefix}-pub"),
                ip: public_ip(1),
            },
            public_hosts: Vec::new(),
            lans: Vec::new(),
            made: Vec::new(),
        };
        let public = bed.public.ns.clone();
        bed.add_ns(&public)?;
        in_ns(&public, &["link", "add", BRIDGE, "type", "bridge"])?;
        in_ns(
            &public,
            &["addr", "add", &cidr(bed.public.ip), "dev", BRIDGE],
        )?;
        in_ns(&public, &["link", "set", BRIDGE, "up"])?;
        for j in 0..self.public_hosts {
            let host = bed.add_public_host(&prefix, j)?;
            bed.public_hosts.push(host);
        }
        for (i, nat) in self.lans.into_iter().enumerate() {
            let lan = bed.add_lan(&prefix, i, nat)?;
            bed.lans.push(lan);
        }
        Ok(bed)
    }
}

/// A built test bed; dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Bed {
    public: Host,
    public_hosts: Vec<Host>,
    lans: Vec<Lan>,
    /// Namespaces created, in order (deleted in reverse).
    made: Vec<String>,
}

impl Bed {
    /// What to build.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The public host: the namespace with the bridge, at 11.77.0.1.
    pub fn public(&self) -> &Host {
        &self.public
    }

    /// Public host `j` (of [`Builder::public_hosts`]), at 11.77.0.(2+j).
    ///
    /// # Panics
    /// If there is no such host.
    pub fn public_host(&self, j: usize) -> &Host {
        self.public_hosts.get(j).unwrap_or_else(|| {
            panic!(
                "the bed has {} public hosts, not {}",
                self.public_hosts.len(),
                j + 1
            )
        })
    }

    /// The public hosts of [`Builder::public_hosts`] (not the public namespace itself).
    pub fn public_hosts(&self) -> &[Host] {
        &self.public_hosts
    }

    /// LAN `i`, in the order [`Builder::lan`] added them.
    ///
    /// # Panics
    /// If there is no such LAN.
    pub fn lan(&self, i: usize) -> &Lan {
        self.lans
            .get(i)
            .unwrap_or_else(|| panic!("the bed has {} LANs, not {}", self.lans.len(), i + 1))
    }

    /// All LANs.
    pub fn lans(&self) -> &[Lan] {
        &self.lans
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), Error> {
        if Path::new(NETNS_DIR).join(ns).exists() {
            // Left by a killed process that had our pid: ours by name, and no one uses it.
            run(Command::new("ip").args(["netns", "del", ns]))?;
        }
        run(Command::new("ip").args(["netns", "add", ns]))?;
        self.made.push(ns.to_owned());
        in_ns(ns, &["link", "set", "lo", "up"])
    }

    fn add_public_host(&mut self, prefix: &str, j: usize) -> Result<Host, Error> {
        let public = self.public.ns.clone();
        let index = u8::try_from(j).expect("j < MAX_PUBLIC_HOSTS");
        let host = Host {
            ns: format!("{prefix}-p{j}"),
            ip: public_ip(PUBLIC_HOST_BASE + index),
        };
        self.add_ns(&host.ns)?;
        // Its leg on the public bridge (the bridge port is named after the host).
        let port = format!("p{j}");
        run(Command::new("ip").args([
            "link", "add", ETH, "netns", &host.ns, "type", "veth", "peer", "name", &port, "netns",
            &public,
        ]))?;
        in_ns(&public, &["link", "set", &port, "master", BRIDGE, "up"])?;
        in_ns(&host.ns, &["addr", "add", &cidr(host.ip), "dev", ETH])?;
        in_ns(&host.ns, &["link", "set", ETH, "up"])?;
        Ok(host)
    }

    fn add_lan(&mut self, prefix: &str, i: usize, nat: Nat) -> Result<Lan, Error> {
        let public = self.public.ns.clone();
        let index = u8::try_from(i).expect("i < MAX_LANS");
        let router = Host {
            ns: format!("{prefix}-r{i}"),
            ip: public_ip(ROUTER_BASE + index),
        };
        let lan_net = [192, 168, LAN_BASE + index];
        let gateway = Ipv4Addr::new(lan_net[0], lan_net[1], lan_net[2], 1);
        let host = Host {
            ns: format!("{prefix}-h{i}"),
            ip: Ipv4Addr::new(lan_net[0], lan_net[1], lan_net[2], 2),
        };
        self.add_ns(&router.ns)?;
        self.add_ns(&host.ns)?;

        // The router's leg on the public bridge (the bridge port is named after the LAN).
        let port = format!("r{i}");
        run(Command::new("ip").args([
            "link", "add", WAN, "netns", &router.ns, "type", "veth", "peer", "name", &port,
            "netns", &public,
        ]))?;
        in_ns(&public, &["link", "set", &port, "master", BRIDGE, "up"])?;
        in_ns(&router.ns, &["addr", "add", &cidr(router.ip), "dev", WAN])?;
        in_ns(&router.ns, &["link", "set", WAN, "up"])?;

        // The LAN: router to host.
        run(Command::new("ip").args([
            "link", "add", LAN, "netns", &router.ns, "type", "veth", "peer", "name", ETH, "netns",
            &host.ns,
        ]))?;
        in_ns(&router.ns, &["addr", "add", &cidr(gateway), "dev", LAN])?;
        in_ns(&router.ns, &["link", "set", LAN, "up"])?;
        in_ns(&host.ns, &["addr", "add", &cidr(host.ip), "dev", ETH])?;
        in_ns(&host.ns, &["link", "set", ETH, "up"])?;
        in_ns(
            &host.ns,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;

        sysctl_in(&router.ns, "net/ipv4/ip_forward", "1")?;
        nft_in(&router.ns, &nft_ruleset(nat))?;
        Ok(Lan { router, host, nat })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            // Deleting a namespace removes its interfaces (and a veth's peer with it). A
            // thread still inside keeps it alive, unnamed, until it ends.
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("netns: leaving {ns} behind: {e}");
            }
        }
    }
}

/// The nftables rules of a router with `nat`: masquerade on `wan`; on `wan`, let in only
/// replies (established, related) and drop the rest silently, to the router and through it.
pub fn nft_ruleset(nat: Nat) -> String {
    let masquerade = nat.masquerade();
    format!(
        r#"table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN}" {masquerade}
    }}
}}
table inet filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{WAN}" ct state established,related accept
        iifname "{WAN}" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{WAN}" ct state established,related accept
        iifname "{WAN}" drop
    }}
}}
"#
    )
}

fn public_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(PUBLIC_NET[0], PUBLIC_NET[1], PUBLIC_NET[2], last)
}

fn cidr(ip: Ipv4Addr) -> String {
    format!("{ip}/24")
}

/// `ip -n NS ARGS..`.
fn in_ns(ns: &str, args: &[&str]) -> Result<(), Error> {
    run(Command::new("ip").args(["-n", ns]).args(args))
}

/// Loads `ruleset` with `nft -f -` inside `ns`.
fn nft_in(ns: &str, ruleset: &str) -> Result<(), Error> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, "nft", "-f", "-"]);
    let shown = show(&command);
    let spawn = |source| Error::Spawn {
        command: shown.clone(),
        source,
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    // Dropped at the end of the statement: nft sees the end of its input.
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(ruleset.as_bytes())
        .map_err(spawn)?;
    let output = child.wait_with_output().map_err(spawn)?;
    checked(shown, output)
}

/// Writes `value` to `/proc/sys/KEY` from a thread inside `ns` (`/proc/sys/net` shows the
/// writer's namespace), so no `sysctl` binary is needed.
fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<(), Error> {
    let (inside, key, value) = (ns.to_owned(), key.to_owned(), value.to_owned());
    let thread = thread::Builder::new()
        .name(format!("sysctl in {ns}"))
        .spawn(move || {
            enter(&inside)?;
            std::fs::write(Path::new("/proc/sys").join(&key), value).map_err(|source| {
                Error::Sysctl {
                    ns: inside,
                    key,
                    source,
                }
            })
        })
        .map_err(|source| Error::Thread {
            ns: ns.to_owned(),
            source,
        })?;
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn run(command: &mut Command) -> Result<(), Error> {
    let shown = show(command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: shown.clone(),
            source,
        })?;
    checked(shown, output)
}

fn checked(command: String, output: std::process::Output) -> Result<(), Error> {
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command,
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn show(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) -> Result<(), Error> {
    let path = Path::new(NETNS_DIR).join(ns);
    let failed = |source| Error::Enter {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(failed)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| failed(errno.into()))
}

/// Runs `f` on a new thread inside network namespace `ns`, on a current-thread tokio runtime
/// of its own (time and I/O enabled). Returns once the thread is inside (or could not get
/// there); [`Task::join`] waits for `f`'s result, and dropping the [`Task`] stops `f`
/// where it waits and ends the thread (its runtime, with the tasks `f` spawned on it, goes
/// too).
///
/// Every socket `f` creates, and every task it spawns on the runtime, is in `ns`; threads
/// started from inside (a runtime's blocking pool) start there too.
pub fn spawn_in<T, F>(ns: &str, f: F) -> Result<Task<T>, Error>
where
    F: AsyncFnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (result_tx, result_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // Capacity 1: the thread reports once and never waits for it to be read.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let name = ns.to_owned();
    let thread = thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || {
            let runtime = enter(&name).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| Error::Thread {
                        ns: name.clone(),
                        source,
                    })
            });
            let runtime = match runtime {
                Ok(runtime) => {
                    let _ = ready_tx.send(Ok(()));
                    runtime
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    out = f() => { let _ = result_tx.send(out); }
                    _ = stop_rx => {}
                }
            });
        })
        .map_err(|source| Error::Thread {
            ns: ns.to_owned(),
            source,
        })?;
    // A short block: the thread reports as soon as it is in the namespace.
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            // It ended without a word: it panicked.
            match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the thread reports before it ends"),
            }
        }
    }
    Ok(Task {
        ns: ns.to_owned(),
        result: result_rx,
        _stop: stop_tx,
        thread: Some(thread),
    })
}

/// Code running inside a namespace ([`spawn_in`]); dropping it stops the code and ends the
/// thread.
pub struct Task<T> {
    ns: String,
    result: oneshot::Receiver<T>,
    /// Dropped with the task: the thread's `select!` sees it closed and stops.
    _stop: oneshot::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<T> Task<T> {
    /// The closure's result, once it returns. If it panicked, the panic goes on here.
    pub async fn join(mut self) -> T {
        match (&mut self.result).await {
            Ok(out) => out,
            Err(_) => {
                // No result and the sender gone: the thread is unwinding; joining it is
                // a short block and returns its panic.
                let thread = self.thread.take().expect("joined once");
                match thread.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => panic!("the thread in {} ended without a result", self.ns),
                }
            }
        }
    }

    /// Whether the closure has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("ns", &self.ns)
            .field("finished", &self.is_finished())
            .finish()
    }
}
