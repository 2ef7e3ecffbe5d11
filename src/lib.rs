//! runner-updater: keeps a fleet of ECS runners on the versions ops ask for.
//!
//! See `ARCHITECTURE.md` for the code map and its invariants.

pub mod aws;
pub mod bench;
pub mod clock;
pub mod config;
pub mod demo;
pub mod diagram;
pub mod domain;
pub mod driver;
pub mod fleet;
pub mod lease;
#[allow(missing_docs)] // statig generates the State and Superstate enums without docs.
pub mod machine;
pub mod metrics;
pub mod ops;
pub mod ports;
pub mod ratelimit;
pub mod record;
pub mod report;
pub mod server;
pub mod sim;
pub mod store;
pub mod telemetry;
