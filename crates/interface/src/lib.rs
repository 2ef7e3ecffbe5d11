//! The parts of the interface that need no AWS SDK: the status and plan views (`report`), the
//! operations behind `status` and `approve` (`ops`), the simulated world wired for the demo and
//! `--simulated` (`scenario`), and the demo (`demo`, also the light `runner-updater-demo`
//! binary: the newcomer's first command builds no AWS SDK).

pub mod demo;
pub mod migrate;
pub mod ops;
pub mod release;
pub mod report;
pub mod retry;
pub mod scenario;
pub mod setup;
