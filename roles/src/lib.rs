//! Pylon's roles: what a node does with the libp2p stack of `pylon-node` — whom it
//! admits, serves and sheds. One module per role; a role is on when its config section
//! is present.

pub mod bootstrap;
