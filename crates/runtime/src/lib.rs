//! The runtime: one driver per runner (`driver`), the fleet's batched reader (`reader`) and the
//! scheduler (`scheduler`), bounded retries (`retry`), spans and the subscriber (`telemetry`), and the
//! Prometheus metrics (`metrics`).
//!
//! The runtime reaches AWS, the lock, the store and the clock only through the ports: it
//! depends on no adapter (checked by the crate graph).

pub mod channels;
pub mod driver;
pub mod events;
pub mod metrics;
pub mod reader;
pub mod retry;
pub mod scheduler;
pub mod telemetry;
