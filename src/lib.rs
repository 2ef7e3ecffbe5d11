//! runner-updater, the product: the command line (`cli`, a file per command) over every layer,
//! the wiring of the AWS adapters (`wiring`), the HTTP endpoints (`server`), the diagrams
//! (`diagram`) and the OTLP exporter (`telemetry`).
//!
//! The layers live in `crates/`; `ARCHITECTURE.md` is the map and `tests/architecture.rs`
//! holds the directions. The dev tools (`crates/dev`) are not part of the product.

pub mod cli;
pub mod diagram;
pub mod server;
pub mod telemetry;
pub mod wiring;
