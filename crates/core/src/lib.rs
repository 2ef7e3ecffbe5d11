//! The pure core of runner-updater: the domain (`domain`), the update state machine
//! (`machine`) and the persisted record (`record`).
//!
//! **No IO, no clock, no tokio, no AWS SDK.** This crate's manifest names none of them, so the
//! compiler holds the rule; `tests/architecture.rs` checks the manifests. Time comes in as a
//! value (`domain::Millis`), observations as plain data, and the machine answers with commands
//! written into a caller-owned outbox. See `ARCHITECTURE.md`.

pub mod domain;
#[allow(missing_docs)] // statig generates the State and Superstate enums without docs.
pub mod machine;
pub mod record;
