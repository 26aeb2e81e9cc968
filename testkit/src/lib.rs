//! Pylon's test kit: a deterministic simulator for the pure (sans-IO) cores of
//! `pylon-node`, and networks built with it.
//!
//! - [`sim`]: virtual clock, event queue, seeded random numbers;
//! - [`links`]: in-memory links with latency, jitter and loss;
//! - [`kad`]: a Kademlia network of simulated nodes made of the real routing table,
//!   lookup core, answer function and record store, under churn.
//!
//! What it is not: a place for I/O. Nothing here opens a socket, spawns a task, sleeps or
//! reads the wall clock; a run is a function of its config and seed.

pub mod kad;
pub mod links;
pub mod sim;
