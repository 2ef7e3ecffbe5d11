//! The adapters that need no AWS SDK, behind the ports of `runner-updater-ports`: the simulated
//! AWS (`sim`), the state stores (`store`), the lease (`lease`), the real clock (`clock`) and
//! the client-side rate limits (`ratelimit`).
//!
//! Adapters know the ports and the core, never the runtime or the interface (checked by the
//! crate graph: this crate depends on neither).

pub mod clock;
pub mod dynamo;
pub mod lease;
pub mod ratelimit;
pub mod sim;
pub mod store;
