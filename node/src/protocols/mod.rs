//! Protocols served and spoken by the node. Each one: wire codec, logic, async driver.

pub mod autonat;
pub mod dcutr;
pub mod identify;
pub mod kad;
pub mod perf;
pub mod ping;
pub mod relay;
