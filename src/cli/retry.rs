//! `runner-updater retry RUNNER [VERSION]`: try a quarantined version again, through an intent
//! the controller acknowledges (see `runner_updater_interface::retry`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use runner_updater_adapters::clock::SystemClock;
use runner_updater_aws::AwsClients;
use runner_updater_interface::retry::{self, Requester};
use runner_updater_ports::{Clock as _, ParameterStore};

use crate::wiring::{check_state_table, lock_and_store, sdk_settings};

/// `retry`'s options.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The runner.
    pub runner: String,
    /// The quarantined version to retry (default: the only one quarantined).
    pub version: Option<String>,
}

/// Who asks, for the record and the trace: `$USER@$HOSTNAME` when the environment says.
#[must_use]
pub fn requester() -> Requester {
    let now = SystemClock.now();
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty());
    let by = match (user, host) {
        (Some(user), Some(host)) => Some(format!("{user}@{host}")),
        (Some(user), None) => Some(user),
        _ => None,
    };
    Requester {
        now,
        salt: u64::from(std::process::id()) << 32 ^ (now.0 & 0xffff_ffff),
        by,
    }
}

/// Writes the retry intent.
///
/// # Errors
/// A runner not configured, nothing (or not that version) quarantined, a retry pending, or AWS
/// failing — nothing written.
pub async fn retry(config: Option<&PathBuf>, args: RetryArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let runner = args.runner;
    if config.runner(&runner).is_none() {
        bail!("runner {runner} is not configured");
    }
    let clients = AwsClients::from_env(sdk_settings(&config)).await;
    check_state_table(&config, &clients).await?;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm.clone());
    let (_, store) = lock_and_store(
        &config,
        &clients,
        ssm.clone(),
        "retry",
        Arc::new(SystemClock),
    );
    let written = retry::retry_runner(
        &config,
        store.as_ref(),
        ssm.as_ref(),
        &runner,
        args.version.as_deref(),
        &requester(),
    )
    .await?;
    println!(
        "retry of {} on runner {runner} requested (written to {}); the controller acknowledges it at its next pass: `runner-updater status {runner}` shows it (note `retried`)",
        written.version, written.parameter
    );
    Ok(ExitCode::SUCCESS)
}
