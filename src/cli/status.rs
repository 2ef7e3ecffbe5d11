//! `runner-updater status`: each runner's persisted state, reasons, next step and last
//! transitions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use runner_updater_adapters::clock::SystemClock;
use runner_updater_config::StateBackend;
use runner_updater_interface::report::render_status;
use runner_updater_interface::{ops, release};
use runner_updater_ports::Clock as _;

use crate::wiring::status_sources;

/// `status`'s options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One runner (default: all with a record).
    pub runner: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Prints the status of one runner or of all.
///
/// # Errors
/// A configuration refused, or a store that cannot be listed.
pub async fn status(config: Option<&PathBuf>, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let (store, lock, ssm) = status_sources(&config).await?;
    // Configured runners first (listing a whole SSM prefix does not scale to a fleet).
    let runners = match args.runner {
        Some(runner) => vec![runner],
        None if !config.runners.is_empty() && config.state_store.backend != StateBackend::File => {
            config.runners.iter().map(|r| r.name.clone()).collect()
        }
        None => store.list().await?,
    };
    let views = ops::status_views(
        &config,
        store.as_ref(),
        lock.as_deref(),
        &runners,
        SystemClock.now(),
    )
    .await?;
    let mut views = views;
    if let Some(ssm) = ssm {
        // Each runner's channel release and wave (the channels' documents and records).
        let channels = config.channels();
        let releases = release::release_views(
            &config,
            store.as_ref(),
            ssm.as_ref(),
            None,
            &channels,
            SystemClock.now(),
        )
        .await;
        release::annotate(&mut views, &releases);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print!("{}", render_status(&views, 8));
    }
    Ok(ExitCode::SUCCESS)
}
