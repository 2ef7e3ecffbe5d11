//! The dev tools, never shipped: the deterministic simulation (`dst`) and the fleet benchmark
//! (`bench`), run by the `runner-updater-dev` binary (which also runs the controller with a
//! crash hook, `crash`, for the crash tests). Nothing in the product depends on this crate
//! (`tests/architecture.rs` checks it).

pub mod bench;
pub mod crash;
pub mod dst;
pub mod promises;
