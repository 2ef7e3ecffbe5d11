//! `runner-updater release status|resume`: a channel's release (waves, budget, halt, next
//! step), and the resume of a halted one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, Subcommand};

use runner_updater_adapters::clock::SystemClock;
use runner_updater_aws::AwsClients;
use runner_updater_interface::release::{self, channels_of, render_release};
use runner_updater_ports::{Clock as _, ParameterStore};

use crate::wiring::{check_state_table, lock_and_store, sdk_settings};

/// `release`'s options.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ReleaseCommand,
}

/// `release`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// A channel's release: its wave, per-wave counts, the budget used, the next step.
    Status {
        /// One channel (default: every channel the configuration's runners follow).
        channel: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Resumes a halted release after looking: its failures so far are forgiven once and its
    /// version's quarantine on the channel lifted (acknowledged by the controller at its next
    /// sweep).
    Resume {
        /// The channel.
        channel: String,
    },
    /// Tries a version quarantined on the channel again: its quarantine, the halt of its
    /// release and its runners' marks of it are lifted once (acknowledged by the controller at
    /// its next sweep).
    Retry {
        /// The channel.
        channel: String,
        /// The quarantined version (default: the only one quarantined).
        version: Option<String>,
    },
}

/// Runs `release status` or `release resume`.
///
/// # Errors
/// A configuration refused, an unknown channel, nothing to resume, or AWS failing.
pub async fn release(config: Option<&PathBuf>, args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let clients = AwsClients::from_env(sdk_settings(&config)).await;
    check_state_table(&config, &clients).await?;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm.clone());
    let (lock, store) = lock_and_store(
        &config,
        &clients,
        ssm.clone(),
        "release",
        Arc::new(SystemClock),
    );
    match args.command {
        ReleaseCommand::Status { channel, json } => {
            let channels = match channels_of(&config, channel.as_deref()) {
                Ok(channels) => channels,
                Err(why) => bail!(why),
            };
            let views = release::release_views(
                &config,
                store.as_ref(),
                ssm.as_ref(),
                Some(lock.as_ref()),
                &channels,
                SystemClock.now(),
            )
            .await;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", render_release(&views));
            }
        }
        ReleaseCommand::Resume { channel } => {
            if let Err(why) = channels_of(&config, Some(&channel)) {
                bail!(why);
            }
            let written = release::resume(&config, store.as_ref(), ssm.as_ref(), &channel).await?;
            println!(
                "resume of channel {channel}'s release requested (written to {written}); the controller acknowledges it at its next sweep"
            );
        }
        ReleaseCommand::Retry { channel, version } => {
            if let Err(why) = channels_of(&config, Some(&channel)) {
                bail!(why);
            }
            let written = runner_updater_interface::retry::retry_channel(
                &config,
                store.as_ref(),
                ssm.as_ref(),
                &channel,
                version.as_deref(),
                &super::retry::requester(),
            )
            .await?;
            println!(
                "retry of {} on channel {channel} requested (written to {}); the controller acknowledges it at its next sweep: `runner-updater release status {channel}`",
                written.version, written.parameter
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
