//! `runner-updater approve`: approves the change set a runner holds for review.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use runner_updater_aws::AwsClients;
use runner_updater_interface::ops;
use runner_updater_ports::ParameterStore;

use crate::wiring::{check_state_table, lock_and_store, sdk_settings};
use runner_updater_adapters::clock::SystemClock;

/// `approve`'s options.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The runner.
    pub runner: String,
    /// The change set reviewed (as `status` shows it); refused if another one is held.
    pub change_set: Option<String>,
}

/// Writes the approval of the change set held, after checking it is the one reviewed.
///
/// # Errors
/// A runner not configured, nothing held, another change set held, or AWS failing.
pub async fn approve(config: Option<&PathBuf>, args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let runner = args.runner;
    if config.runner(&runner).is_none() {
        bail!("runner {runner} is not configured");
    }
    let clients = AwsClients::from_env(sdk_settings(&config)).await;
    check_state_table(&config, &clients).await?;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm.clone());
    // The record is read from the configured store (the state table too); the approval is
    // written to SSM, beside the desired state. `approve` never writes the record.
    let (_, store) = lock_and_store(
        &config,
        &clients,
        ssm.clone(),
        "approve",
        Arc::new(SystemClock),
    );
    let approval = ops::approve(
        store.as_ref(),
        ssm.as_ref(),
        &config.prefix,
        &runner,
        args.change_set.as_deref(),
    )
    .await?;
    println!(
        "approved change set {} of stack {} (written to {}); the controller executes it on its next pass",
        approval.change_set, approval.stack, approval.parameter
    );
    Ok(ExitCode::SUCCESS)
}
