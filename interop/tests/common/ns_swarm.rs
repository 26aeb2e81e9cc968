//! A rust-libp2p swarm on a thread inside a network namespace of the NAT bed
//! (`pylon_testkit::netns`), driven from the test: it listens where it is told, dials
//! when asked, and sends every event back; the test judges the events it cares about
//! into a history ([`NsSwarm::until`] waits for something in it, bounded).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId};
use pylon_testkit::netns;
use tokio::sync::{mpsc, oneshot};

/// Events a swarm's thread may hold for the test before it waits.
const EVENT_BUFFER: usize = 4096;
/// Lines of recent events a failed wait shows.
const SHOWN_EVENTS: usize = 40;

/// What the test asks of the swarm.
enum Command {
    Dial(Multiaddr),
    Listen(Multiaddr),
}

/// A swarm on its namespace's thread; `S` is what the test keeps of its events.
pub struct NsSwarm<B: NetworkBehaviour, S> {
    pub name: String,
    pub id: PeerId,
    /// The addresses it listens on (one per requested listen address, as reported).
    pub listen: Vec<Multiaddr>,
    /// Everything judged so far (a test runs for seconds: a few hundred entries at most).
    pub history: Vec<S>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<SwarmEvent<B::ToSwarm>>,
    judge: fn(&SwarmEvent<B::ToSwarm>) -> Option<S>,
    /// The latest events of any kind, for a failed wait to show.
    recent: VecDeque<String>,
    timeout: Duration,
    _thread: netns::Task<()>,
}

impl<B, S> NsSwarm<B, S>
where
    B: NetworkBehaviour + Send + 'static,
    B::ToSwarm: Debug + Send + 'static,
{
    /// Builds the swarm with `build` in `host`'s namespace and listens on `listen`, all of
    /// them before any dial (so dials reuse the listening ports). Every wait is bounded by
    /// `timeout`.
    pub async fn start(
        name: &str,
        host: &netns::Host,
        build: impl FnOnce() -> Swarm<B> + Send + 'static,
        listen: Vec<Multiaddr>,
        judge: fn(&SwarmEvent<B::ToSwarm>) -> Option<S>,
        timeout: Duration,
    ) -> Self {
        let (commands, mut command_rx) = mpsc::channel(16);
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (ready_tx, ready_rx) = oneshot::channel();
        let who = name.to_owned();
        let thread = host
            .spawn(async move || {
                let mut swarm = build();
                let wanted = listen.len();
                for addr in listen {
                    swarm
                        .listen_on(addr.clone())
                        .unwrap_or_else(|e| panic!("{who}: listen on {addr}: {e}"));
                }
                let mut listening = Vec::new();
                while listening.len() < wanted {
                    if let SwarmEvent::NewListenAddr { address, .. } =
                        swarm.select_next_some().await
                    {
                        listening.push(address);
                    }
                }
                if ready_tx.send((*swarm.local_peer_id(), listening)).is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        command = command_rx.recv() => match command {
                            Some(Command::Dial(addr)) => swarm
                                .dial(addr.clone())
                                .unwrap_or_else(|e| panic!("{who}: dial {addr}: {e}")),
                            Some(Command::Listen(addr)) => {
                                swarm
                                    .listen_on(addr.clone())
                                    .unwrap_or_else(|e| panic!("{who}: listen on {addr}: {e}"));
                            }
                            None => return,
                        },
                        event = swarm.select_next_some() => {
                            if event_tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .unwrap();
        let (id, listen) = tokio::time::timeout(timeout, ready_rx)
            .await
            .unwrap_or_else(|_| panic!("{name}: not listening within {timeout:?}"))
            .unwrap_or_else(|_| panic!("{name}: the peer's thread ended"));
        NsSwarm {
            name: name.to_owned(),
            id,
            listen,
            history: Vec::new(),
            commands,
            events,
            judge,
            recent: VecDeque::new(),
            timeout,
            _thread: thread,
        }
    }

    pub async fn dial(&self, addr: Multiaddr) {
        self.send(Command::Dial(addr)).await;
    }

    pub async fn listen_on(&self, addr: Multiaddr) {
        self.send(Command::Listen(addr)).await;
    }

    async fn send(&self, command: Command) {
        self.commands
            .send(command)
            .await
            .unwrap_or_else(|_| panic!("{}: the peer's thread ended", self.name));
    }

    fn record(&mut self, event: &SwarmEvent<B::ToSwarm>) {
        if self.recent.len() == SHOWN_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("{event:?}"));
        self.history.extend((self.judge)(event));
    }

    /// Waits until `pick` finds something in the history: checked now, then after each
    /// new event.
    pub async fn until<R>(&mut self, what: &str, mut pick: impl FnMut(&[S]) -> Option<R>) -> R {
        let timeout = self.timeout;
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(r) = pick(&self.history) {
                    return Some(r);
                }
                let event = self.events.recv().await?;
                self.record(&event);
            }
        })
        .await;
        match found {
            Ok(Some(r)) => r,
            Ok(None) => panic!(
                "{}: {what}: the peer's thread ended; recent events:\n{:#?}",
                self.name, self.recent
            ),
            Err(_) => panic!(
                "{}: {what}: not within {timeout:?}; recent events:\n{:#?}",
                self.name, self.recent
            ),
        }
    }

    /// Takes the events delivered so far without waiting.
    pub fn catch_up(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.record(&event);
        }
    }
}
