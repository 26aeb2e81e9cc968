//! The container image, built and run for real: the Dockerfile's `prebuilt` target around
//! this test's own `pylon`, built and run by podman offline (the base image is made
//! locally by ops/container/setup.sh) the way an operator runs it — a read-only root file
//! system, a named volume for the data, ports published on loopback. Through the
//! published ports a real rust-libp2p peer identifies and pings the node over TCP and
//! over QUIC, `/healthz` and the admin API answer, and the image's HEALTHCHECK passes;
//! a new container on the same volume is the same node (PeerId) and remembers the peer.
//! The machine's `docker` client, pointed at `podman system service`, runs it once more.
//! Then the Helm chart's pod, rendered with its default values, runs on the same kind of
//! image under `podman kube play` and answers its probes.
//!
//! Needs root and podman: `bash ops/container/setup.sh` (ops/test.sh runs it), and for the
//! chart the Python environment of ops/test.sh's Helm step. Every wait is bounded, and
//! what the tests made in podman (pods, containers, volumes, images) is removed however
//! they end.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId};
use pylon_testkit::wait;
use serde_json::Value;
use tokio::process::Command;

mod common;
use common::{bin, T};

/// What the Dockerfile's runtime stages start from; ops/container/setup.sh makes it.
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
const SETUP: &str = "run `bash ops/container/setup.sh` as root first (ops/test.sh does): it \
                     installs podman and makes the base image offline";
/// A podman command, an image build excepted.
const PODMAN_T: Duration = Duration::from_secs(60);
/// Building the image (the base image is local; the binary is copied in).
const BUILD_T: Duration = Duration::from_secs(300);
/// The container's data directory (the image's VOLUME).
const DATA: &str = "/var/lib/pylon";
const RUST_AGENT: &str = "rust-libp2p-container-test";

/// `program args…` within `within`: stdout, or the exit status and stderr.
async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    within: Duration,
) -> Result<String, String> {
    let what = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(within, out).await {
        Err(_) => return Err(format!("{what}: no end within {within:?}")),
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

async fn podman(args: &[&str]) -> String {
    run("podman", args, &[], PODMAN_T)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The container's log (pylon logs on stderr, which `podman logs` keeps apart).
async fn logs(name: &str) -> String {
    let out = Command::new("podman")
        .args(["logs", name])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(PODMAN_T, out).await {
        Ok(Ok(out)) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(Err(e)) => format!("(podman logs {name}: {e})"),
        Err(_) => format!("(podman logs {name}: no end within {PODMAN_T:?})"),
    }
}

/// What the test made in podman's storage, removed when dropped (the test passed or not):
/// pods and containers, then volumes, then images, each command bounded.
#[derive(Default)]
struct Made {
    pods: Vec<String>,
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Made {
    fn drop(&mut self) {
        let remove = |args: &[&str]| {
            let _ = std::process::Command::new("timeout")
                .arg("60")
                .arg("podman")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for p in &self.pods {
            remove(&["pod", "rm", "--force", "--time", "0", p]);
        }
        for c in &self.containers {
            remove(&["rm", "--force", "--time", "0", c]);
        }
        for v in &self.volumes {
            remove(&["volume", "rm", "--force", v]);
        }
        for i in &self.images {
            remove(&["rmi", "--force", i]);
        }
    }
}

/// Fails, saying how to set the machine up, unless podman runs and the base image is here.
async fn require_podman() {
    if let Err(e) = run("podman", &["--version"], &[], PODMAN_T).await {
        panic!("podman is not usable ({e}): {SETUP}");
    }
    if run("podman", &["image", "exists", BASE_IMAGE], &[], PODMAN_T)
        .await
        .is_err()
    {
        panic!("no {BASE_IMAGE} in podman's storage (no registry is reachable): {SETUP}");
    }
}

/// Builds the Dockerfile's `prebuilt` target around the binary under test; returns the
/// image's name (in `made`).
async fn build_image(made: &mut Made, name: &str) -> String {
    let context = tempfile::tempdir().unwrap();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile");
    std::fs::copy(&dockerfile, context.path().join("Dockerfile")).unwrap();
    // A hard link where the file systems allow it: the debug binary is large.
    let binary = context.path().join("pylon");
    if std::fs::hard_link(bin(), &binary).is_err() {
        std::fs::copy(bin(), &binary).unwrap();
    }
    let image = format!("localhost/pylon-test:{name}");
    made.images.push(image.clone());
    let args = [
        "build",
        "--pull=never",
        "--format",
        "docker",
        "--target",
        "prebuilt",
        "--build-arg",
        "PYLON_BINARY=pylon",
        "--tag",
        &image,
        context.path().to_str().unwrap(),
    ];
    run("podman", &args, &[], BUILD_T)
        .await
        .unwrap_or_else(|e| panic!("building the image: {e}"));
    image
}

/// The image's configuration: what the Dockerfile promises an operator.
async fn check_image(image: &str) {
    let inspect: Value = serde_json::from_str(&podman(&["image", "inspect", image]).await).unwrap();
    let i = &inspect[0];
    let c = &i["Config"];
    assert_eq!(c["User"], "10001:10001", "a fixed numeric non-root user");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/pylon", "run"])
    );
    for port in ["4001/tcp", "4001/udp", "9464/tcp", "5001/tcp"] {
        assert!(
            c["ExposedPorts"].get(port).is_some(),
            "{port} not exposed: {c}"
        );
    }
    assert!(c["Volumes"].get(DATA).is_some(), "{c}");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for var in [
        "PYLON_CONFIG=/etc/pylon/pylon.toml",
        "PYLON_DATA_DIR=/var/lib/pylon",
        "PYLON_METRICS__LISTEN=0.0.0.0:9464",
    ] {
        assert!(env.contains(&var), "{var} not in {env:?}");
    }
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.title"], "pylon");
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        "MIT OR Apache-2.0"
    );
    // --format docker kept the HEALTHCHECK.
    let check = i["Healthcheck"]["Test"].to_string();
    assert!(
        check.contains("/usr/local/bin/pylon") && check.contains("health"),
        "{i}"
    );
}

/// Host ports published on loopback: p2p TCP and UDP, metrics, admin.
struct Ports {
    tcp: u16,
    udp: u16,
    metrics: u16,
    admin: u16,
}

/// `podman run` (or `docker run`: the same flags) of the image on `volume`, read-only,
/// every port published on a loopback port the kernel picks. The container is in `made`.
async fn start(engine: &Engine, made: &mut Made, image: &str, name: &str, volume: &str) -> Ports {
    made.containers.push(name.to_string());
    let mount = format!("{volume}:{DATA}");
    engine
        .run(&[
            "run",
            "--detach",
            "--name",
            name,
            "--read-only",
            "--volume",
            &mount,
            "--publish",
            "127.0.0.1::4001/tcp",
            "--publish",
            "127.0.0.1::4001/udp",
            "--publish",
            "127.0.0.1::9464/tcp",
            "--publish",
            "127.0.0.1::5001/tcp",
            image,
        ])
        .await;
    let port = async |spec: &str| -> u16 {
        let out = engine.run(&["port", name, spec]).await;
        let line = out.lines().next().unwrap_or_default();
        let Some((host, port)) = line.rsplit_once(':') else {
            // No port: the container is not running (any more).
            let state = podman(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                name,
            ])
            .await;
            panic!(
                "{name} has no port {spec} ({out:?}); state {state}; logs:\n{}",
                logs(name).await
            );
        };
        assert_eq!(host, "127.0.0.1", "{spec} published on {out}");
        port.parse().unwrap()
    };
    let ports = Ports {
        tcp: port("4001/tcp").await,
        udp: port("4001/udp").await,
        metrics: port("9464/tcp").await,
        admin: port("5001/tcp").await,
    };
    // The container reports nothing to this process: /healthz is polled.
    let health = format!("127.0.0.1:{}", ports.metrics);
    let answered = wait::within(T, async || {
        get(&health, "/healthz", None)
            .await
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
    if !answered {
        let logs = logs(name).await;
        panic!("{name}: /healthz on {health} did not answer 200 within {T:?}; logs:\n{logs}");
    }
    ports
}

/// `podman` itself, or the `docker` client talking to `podman system service`.
enum Engine {
    Podman,
    Docker { host: String },
}

impl Engine {
    async fn run(&self, args: &[&str]) -> String {
        match self {
            Engine::Podman => podman(args).await,
            Engine::Docker { host } => run("docker", args, &[("DOCKER_HOST", host)], PODMAN_T)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

/// `GET path` on `hostport` (with a bearer token): the whole answer, or None if the
/// connection failed or the answer did not end within a few seconds.
async fn get(hostport: &str, path: &str, token: Option<&str>) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Connection: close\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(hostport).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .ok()
    .flatten()
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A rust-libp2p 0.57 peer: TCP + Noise + yamux and QUIC v1, identify and ping,
/// listening on loopback (so it has an address to tell).
async fn rust_peer() -> Swarm<Behaviour> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_quic()
        .with_behaviour(|key| Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new("ipfs/0.1.0".into(), key.public())
                    .with_agent_version(RUST_AGENT.into()),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(500)),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let listen = tokio::time::timeout(T, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .expect("the rust peer listens");
    swarm.add_external_address(listen);
    swarm
}

/// Dials `addr` (ending in /p2p/`node`) and drives the swarm until that connection is
/// up, identify has told the node's info and one ping over it has been answered.
async fn meet(swarm: &mut Swarm<Behaviour>, addr: Multiaddr, node: PeerId) -> identify::Info {
    // Always: the second transport dials while the first connection is up.
    let opts = DialOpts::peer_id(node)
        .condition(PeerCondition::Always)
        .addresses(vec![addr.clone()])
        .build();
    let id: ConnectionId = opts.connection_id();
    swarm.dial(opts).unwrap();
    let (mut info, mut pinged) = (None, false);
    tokio::time::timeout(T, async {
        while info.is_none() || !pinged {
            match swarm.select_next_some().await {
                SwarmEvent::OutgoingConnectionError {
                    connection_id,
                    error,
                    ..
                } if connection_id == id => {
                    panic!("dialing {addr}: {error}")
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                    connection_id,
                    info: i,
                    ..
                })) if connection_id == id => info = Some(i),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Error {
                    connection_id,
                    error,
                    ..
                })) if connection_id == id => panic!("identify over {addr}: {error}"),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                    connection,
                    result,
                    ..
                })) if connection == id => {
                    result.unwrap_or_else(|e| panic!("ping over {addr}: {e}"));
                    pinged = true;
                }
                SwarmEvent::ConnectionClosed {
                    connection_id,
                    cause,
                    ..
                } if connection_id == id => {
                    panic!("the connection over {addr} closed: {cause:?}")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "over {addr}: identify {} and ping {pinged} within {T:?}",
            info.is_some()
        )
    });
    info.unwrap()
}

/// What the node told about itself, as an operator's peer sees it.
fn check_identify(info: &identify::Info, node: PeerId) {
    assert_eq!(info.public_key.to_peer_id(), node);
    assert_eq!(
        info.agent_version,
        concat!("pylon/", env!("CARGO_PKG_VERSION"))
    );
    let protocols: Vec<String> = info.protocols.iter().map(|p| p.to_string()).collect();
    for p in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"] {
        assert!(
            protocols.iter().any(|x| x == p),
            "{p} missing from {protocols:?}"
        );
    }
}

/// Stops the container as `docker stop` does (SIGTERM): the node flushes its storage and
/// exits 0.
async fn stop(engine: &Engine, name: &str) {
    engine.run(&["stop", "-t", "30", name]).await;
    let code = engine
        .run(&["inspect", "--format", "{{.State.ExitCode}}", name])
        .await;
    let logs = logs(name).await;
    assert_eq!(code, "0", "{name} exited {code}; logs:\n{logs}");
    assert!(logs.contains("storage flushed"), "{logs}");
    engine.run(&["rm", name]).await;
}

/// The peers the node in `name` remembers, by `pylon peers` inside the container.
async fn peers(engine: &Engine, name: &str, q: &PeerId) -> Value {
    let q = q.to_string();
    let out = engine
        .run(&["exec", name, "pylon", "peers", "--json", "--q", &q])
        .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pylon peers --json: {e}: {out}"))
}

/// `podman system service` on a socket of its own, for the `docker` client; stopped when
/// dropped.
struct Service {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    host: String,
}

impl Service {
    async fn start() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}", dir.path().join("podman.sock").display());
        let child = Command::new("podman")
            .args(["system", "service", "--time=0", &host])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // The service says nothing when it is ready: asked until it answers.
        let env = [("DOCKER_HOST", host.as_str())];
        let up = wait::within(T, async || {
            run(
                "docker",
                &["version", "--format", "{{.Server.Version}}"],
                &env,
                T,
            )
            .await
            .is_ok()
        })
        .await;
        assert!(
            up,
            "podman system service on {host} did not answer the docker client within {T:?}"
        );
        Service {
            child,
            _dir: dir,
            host,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_read_only_as_non_root_and_keeps_its_identity() {
    require_podman().await;
    let name = format!("pylon-test-{}", std::process::id());
    let mut made = Made::default();
    let image = build_image(&mut made, &name).await;
    check_image(&image).await;
    let volume = format!("{name}-data");
    made.volumes.push(volume.clone());
    podman(&["volume", "create", &volume]).await;

    let first = format!("{name}-1");
    let ports = start(&Engine::Podman, &mut made, &image, &first, &volume).await;

    // Not root, on a read-only root file system; the volume is the node's to write.
    let inspect: Value = serde_json::from_str(&podman(&["inspect", &first]).await).unwrap();
    assert_eq!(inspect[0]["HostConfig"]["ReadonlyRootfs"], true);
    let status = podman(&["exec", &first, "cat", "/proc/1/status"]).await;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10001"; 4],
        "pylon's uids"
    );
    assert_eq!(podman(&["exec", &first, "id", "-u"]).await, "10001");
    let write = run(
        "podman",
        &["exec", &first, "touch", "/written"],
        &[],
        PODMAN_T,
    )
    .await;
    assert!(
        write
            .as_ref()
            .is_err_and(|e| e.contains("Read-only file system")),
        "{write:?}"
    );
    let owner = podman(&["exec", &first, "stat", "-c", "%u %a", DATA]).await;
    assert_eq!(owner, "10001 700");

    // The image's HEALTHCHECK passes, and /healthz answers through the published port.
    podman(&["healthcheck", "run", &first]).await;
    let health = podman(&["inspect", "--format", "{{.State.Health.Status}}", &first]).await;
    assert_eq!(health, "healthy");
    let metrics = format!("127.0.0.1:{}", ports.metrics);
    let answer = get(&metrics, "/healthz", None).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );

    // The node's identity, as `pylon id` in the container reads it from the volume.
    let node: PeerId = podman(&["exec", &first, "pylon", "id"])
        .await
        .parse()
        .unwrap();

    // A rust-libp2p peer identifies and pings the node through the published ports: TCP
    // (Noise, yamux), then QUIC over the published UDP port.
    let mut rust = rust_peer().await;
    let rust_id = *rust.local_peer_id();
    let tcp: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{node}", ports.tcp)
        .parse()
        .unwrap();
    check_identify(&meet(&mut rust, tcp, node).await, node);
    let quic: Multiaddr = format!("/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{node}", ports.udp)
        .parse()
        .unwrap();
    check_identify(&meet(&mut rust, quic, node).await, node);
    let body = get(&metrics, "/metrics", None).await.unwrap();
    for transport in ["tcp", "quic-v1"] {
        let opened = format!(
            "libp2p_swarm_connections_opened_total{{dir=\"inbound\",transport=\"{transport}\""
        );
        assert!(
            body.contains(&opened),
            "{opened} not in the metrics:\n{body}"
        );
    }

    // The admin API answers through its published port, and only with the token (which
    // only the container's user can read, from the volume).
    let admin = format!("127.0.0.1:{}", ports.admin);
    let refused = get(&admin, "/api/v1/identity", None).await.unwrap();
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let token = podman(&["exec", &first, "cat", &format!("{DATA}/admin.token")]).await;
    let identity = get(&admin, "/api/v1/identity", Some(&token)).await.unwrap();
    assert!(
        identity.starts_with("HTTP/1.1 200") && identity.contains(&node.to_string()),
        "{identity}"
    );

    // The node remembers the peer it met (written to the volume on the next flush).
    let seen = peers(&Engine::Podman, &first, &rust_id).await;
    assert_eq!(seen["total"], 1, "{seen}");
    assert_eq!(seen["peers"][0]["agent_version"], RUST_AGENT, "{seen}");
    drop(rust);

    // A new container on the same volume is the same node, and still knows the peer.
    stop(&Engine::Podman, &first).await;
    let second = format!("{name}-2");
    start(&Engine::Podman, &mut made, &image, &second, &volume).await;
    let again: PeerId = podman(&["exec", &second, "pylon", "id"])
        .await
        .parse()
        .unwrap();
    assert_eq!(again, node);
    let logs = logs(&second).await;
    let seen = peers(&Engine::Podman, &second, &rust_id).await;
    assert_eq!(seen["total"], 1, "{seen}\n{logs}");
    let remembered = &seen["peers"][0];
    assert_eq!(remembered["peer_id"], rust_id.to_string());
    assert_eq!(remembered["agent_version"], RUST_AGENT, "{seen}");
    assert_eq!(remembered["connected"], false, "{seen}");
    stop(&Engine::Podman, &second).await;

    // The machine's docker client, against podman's Docker API, runs the same image on the
    // same volume, and `docker exec … pylon status` shows the same node. (Docker's client
    // is not Debian's; a machine without it skips this step and says so.)
    if run("docker", &["--version"], &[], PODMAN_T).await.is_err() {
        eprintln!("NOTE: no docker client on this machine: the docker step is skipped");
        return;
    }
    let service = Service::start().await;
    let docker = Engine::Docker {
        host: service.host.clone(),
    };
    let third = format!("{name}-3");
    start(&docker, &mut made, &image, &third, &volume).await;
    let status = docker.run(&["exec", &third, "pylon", "status"]).await;
    assert!(status.contains(&node.to_string()), "{status}");
    stop(&docker, &third).await;
}

/// The workspace's top directory.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The Helm chart rendered with its default values by helm/tests/chart.py (Helm's own
/// code, in the Python environment ops/test.sh makes): its objects, as JSON.
async fn render_chart(scratch: &Path) -> Vec<Value> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| workspace().join(d))
        .unwrap_or_else(|| workspace().join("target"));
    let python = target.join("helm-venv/bin/python");
    assert!(
        python.exists(),
        "no Python environment for the Helm chart at {}: run `bash ops/test.sh` (its Helm \
         step makes it from helm/tests/requirements.txt)",
        python.display()
    );
    let python = python.to_str().unwrap();
    let chart = workspace().join("helm/tests/chart.py");
    let manifests = run(python, &[chart.to_str().unwrap(), "render"], &[], PODMAN_T)
        .await
        .unwrap_or_else(|e| panic!("rendering the chart: {e}"));
    let file = scratch.join("rendered.yaml");
    std::fs::write(&file, manifests).unwrap();
    // PyYAML, which the chart's checks read the manifests with, turns them into JSON.
    let to_json = "import json, sys, yaml\n\
                   json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)";
    let json = run(
        python,
        &["-c", to_json, file.to_str().unwrap()],
        &[],
        PODMAN_T,
    )
    .await
    .unwrap_or_else(|e| panic!("reading the rendered manifests: {e}"));
    serde_json::from_str(&json).unwrap()
}

/// One probe of the rendered pod: which, and the `GET` it makes on the pod's address.
#[derive(Debug)]
struct Probe {
    kind: &'static str,
    path: String,
    port: u16,
}

/// The container's startup, liveness and readiness probes, their named ports resolved
/// with its `ports` (as a kubelet does).
fn probes(container: &Value) -> Vec<Probe> {
    let ports = container["ports"].as_array().cloned().unwrap_or_default();
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .into_iter()
        .map(|kind| {
            let get = &container[kind]["httpGet"];
            assert!(
                get.is_object(),
                "the chart's pod has no {kind} httpGet: {container}"
            );
            let port = match &get["port"] {
                Value::Number(n) => n.as_u64().unwrap(),
                Value::String(name) => ports
                    .iter()
                    .find(|p| p["name"] == *name)
                    .and_then(|p| p["containerPort"].as_u64())
                    .unwrap_or_else(|| panic!("{kind}: no container port named {name}")),
                other => panic!("{kind}: port {other}"),
            };
            Probe {
                kind,
                path: get["path"].as_str().unwrap().to_string(),
                port: u16::try_from(port).unwrap(),
            }
        })
        .collect()
}

/// The chart, rendered with its default values, run by `podman kube play`: its
/// StatefulSet's pod template as a Pod (Debian's podman 4.3 plays no StatefulSet) with the
/// ConfigMap, on the image under test. Every probe's endpoint answers on the pod's
/// address, as a kubelet would ask it, and the securityContext holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_charts_pod_runs_and_answers_its_probes() {
    require_podman().await;
    let name = format!("pylon-test-{}-kube", std::process::id());
    let scratch = tempfile::tempdir().unwrap();
    let objects = render_chart(scratch.path()).await;
    let mut made = Made::default();
    let image = build_image(&mut made, &name).await;

    let of_kind =
        |kind: &str| -> Vec<&Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet in the default rendering");
    let template = &sets[0]["spec"]["template"];
    let mut spec = template["spec"].clone();
    let containers = spec["containers"].as_array_mut().unwrap();
    let pylon = containers
        .iter_mut()
        .find(|c| c["name"] == "pylon")
        .expect("a container named pylon");
    let probes = probes(pylon);
    pylon["image"] = Value::String(image.clone());
    pylon["imagePullPolicy"] = Value::String("Never".into());
    // Debian's podman 4.3 publishes every containerPort on all of the host's addresses (a
    // kubelet publishes none): the probes below go to the pod's address instead.
    pylon.as_object_mut().unwrap().remove("ports");

    // Each volume claim template is a claim of this pod: a podman volume. The ConfigMap
    // is renamed (podman makes a volume of that name too).
    let volumes = spec["volumes"].as_array_mut().unwrap();
    for claim in sets[0]["spec"]["volumeClaimTemplates"].as_array().unwrap() {
        let volume = format!("{name}-{}", claim["metadata"]["name"].as_str().unwrap());
        made.volumes.push(volume.clone());
        volumes.push(serde_json::json!({
            "name": claim["metadata"]["name"],
            "persistentVolumeClaim": { "claimName": volume },
        }));
    }
    let config = volumes
        .iter_mut()
        .find_map(|v| v.get_mut("configMap"))
        .expect("the pod mounts a ConfigMap");
    let map_name = config["name"].as_str().unwrap().to_string();
    let renamed = format!("{name}-config");
    config["name"] = Value::String(renamed.clone());
    made.volumes.push(renamed.clone());
    let mut map = of_kind("ConfigMap")
        .into_iter()
        .find(|m| m["metadata"]["name"] == map_name.as_str())
        .unwrap_or_else(|| panic!("no ConfigMap {map_name} rendered"))
        .clone();
    map["metadata"]["name"] = Value::String(renamed);

    made.pods.push(name.clone());
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": template["metadata"]["labels"] },
        "spec": spec,
    });
    // JSON is YAML: two documents.
    let file = scratch.path().join("pod.yaml");
    std::fs::write(&file, format!("{map}\n---\n{pod}\n")).unwrap();
    podman(&["kube", "play", file.to_str().unwrap()]).await;

    // The pod's address, where a kubelet's probes go.
    let container = format!("{name}-pylon");
    let ip = podman(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ])
    .await;
    assert!(!ip.is_empty(), "{container} has no address");
    for probe in &probes {
        let at = format!("{ip}:{}", probe.port);
        let mut answer = None;
        let answered = wait::within(T, async || {
            answer = get(&at, &probe.path, None).await;
            answer.is_some()
        })
        .await;
        let answer = answer.unwrap_or_default();
        assert!(
            answered,
            "{probe:?}: no answer on {at} within {T:?}; logs:\n{}",
            logs(&container).await
        );
        if probe.path == "/healthz" {
            assert!(answer.starts_with("HTTP/1.1 200"), "{probe:?}: {answer}");
        } else {
            // Readiness: 200, or 503 with the reason (alone, the default profile's relay
            // has no AutoNAT verdict, so it says so rather than serve).
            assert!(
                answer.starts_with("HTTP/1.1 200")
                    || answer.starts_with("HTTP/1.1 503") && answer.contains("not ready: "),
                "{probe:?}: {answer}"
            );
        }
    }
    let kinds: Vec<&str> = probes.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, ["startupProbe", "livenessProbe", "readinessProbe"]);

    // The chart's securityContext, in force: uid 10001, no capabilities, read-only root.
    let status = podman(&["exec", &container, "cat", "/proc/1/status"]).await;
    let field = |name: &str| -> Vec<String> {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().skip(1).map(String::from).collect()
    };
    assert_eq!(field("Uid:"), ["10001"; 4]);
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    let inspect = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}}",
        &container,
    ])
    .await;
    assert_eq!(inspect, "true");
    // The ConfigMap's file is the config the node reads (PYLON_CONFIG names it).
    let mounted = podman(&["exec", &container, "cat", "/etc/pylon/pylon.toml"]).await;
    let rendered = map["data"]["pylon.toml"].as_str().unwrap();
    assert_eq!(mounted, rendered.trim());
}
