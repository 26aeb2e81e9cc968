//! Pylon's test kit: a deterministic simulator for the pure (sans-IO) cores of
//! `pylon-node`, networks built with it, and the helpers the integration tests share.
//!
//! - [`sim`]: virtual clock, event queue, seeded random numbers;
//! - [`links`]: in-memory links with latency, jitter and loss;
//! - [`kad`]: a Kademlia network of simulated nodes made of the real routing table,
//!   lookup core, answer function and record store, under churn, optionally with the
//!   heads of a DHT booster sharing one store ([`kad::Booster`], [`kad::Sim`]);
//! - [`node`]: real in-process nodes for tests: start one, the address to dial it by,
//!   waiting on its host's events;
//! - [`wait`]: the one polling loop, for conditions nothing reports;
//! - [`netns`]: NAT test beds in Linux network namespaces (a public network, LANs behind
//!   endpoint-independent or symmetric NAT routers) and threads that run code inside one.
//!
//! Where the I/O is: [`node`] and [`netns`] are the modules that do I/O ([`node`] starts
//! real nodes, with sockets and tasks, on the caller's tokio runtime; [`netns`] runs `ip`
//! and `nft`, creates namespaces and starts threads inside them), and [`wait`] the one that
//! sleeps (on tokio's clock). [`sim`], [`links`] and [`kad`] open no socket, spawn no task, never
//! sleep or read the wall clock: a run is a function of its config and seed.

pub mod kad;
pub mod links;
pub mod netns;
pub mod node;
pub mod sim;
pub mod wait;
