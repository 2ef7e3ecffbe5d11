//! `runner-updater migrate-state --from ssm --to dynamodb [--dry-run]`: copies every runner's
//! record from the SSM store into the state table (see `runner_updater_interface::migrate`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::{Args, ValueEnum};

use runner_updater_adapters::clock::SystemClock;
use runner_updater_adapters::dynamo::check_table;
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::store::SsmStore;
use runner_updater_aws::AwsClients;
use runner_updater_interface::migrate::{migrate, Copy};
use runner_updater_ports::{Clock, ParameterStore};

use crate::wiring::sdk_settings;

/// A state store `migrate-state` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// `<prefix>/<runner>/status` in SSM.
    Ssm,
    /// The state table (`state_store.table`).
    Dynamodb,
}

/// `migrate-state`'s options.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store the records are in.
    #[arg(long, value_enum)]
    pub from: Backend,
    /// The store to copy them to.
    #[arg(long, value_enum)]
    pub to: Backend,
    /// Tell what would be copied; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long the runners stay held in SSM after the copy (minutes): switch the controllers
    /// to the table meanwhile.
    #[arg(long, default_value_t = 15)]
    pub hold_mins: u64,
}

/// Copies the records, tells what it did per runner, and what to do next.
///
/// # Errors
/// Another pair of stores than ssm → dynamodb, attempts in flight, a table that cannot be
/// used, AWS failing; exit code 1 when a runner was left behind.
pub async fn migrate_state(
    config: Option<&PathBuf>,
    args: MigrateArgs,
) -> anyhow::Result<ExitCode> {
    if (args.from, args.to) != (Backend::Ssm, Backend::Dynamodb) {
        bail!(
            "migrate-state copies from ssm to dynamodb only (asked: {:?} to {:?})",
            args.from,
            args.to
        );
    }
    let config = super::load_config(config)?;
    let table_name = config.state_store.table.clone();
    let clients = AwsClients::from_env(sdk_settings(&config)).await;
    check_table(&clients.table(&table_name), &table_name)
        .await
        .map_err(anyhow::Error::msg)?;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm.clone());
    let store = SsmStore::new(ssm.clone(), &config.prefix);
    let lock = SsmLease::new(ssm, &config.prefix);
    let table = clients.table(&table_name);
    let hold = std::time::Duration::from_secs(args.hold_mins.max(1) * 60);
    let channels: Vec<String> = config.channels().into_iter().map(|(c, _)| c).collect();
    let migration = migrate(
        &store,
        &lock,
        &table,
        &channels,
        SystemClock.now(),
        hold,
        args.dry_run,
    )
    .await?;
    let verb = if args.dry_run { "would copy" } else { "copied" };
    for (runner, copy) in &migration.runners {
        let configured = if config.runner(runner).is_some() || runner.starts_with("_channels/") {
            ""
        } else {
            " (not in this configuration)"
        };
        match copy {
            Copy::Copied { phase } => println!("{runner}: {verb} (phase {phase}){configured}"),
            Copy::Unchanged => println!("{runner}: already in the table, the same record"),
            Copy::Conflict => println!(
                "{runner}: the table holds another record for it: left alone (compare with runner-updater status on each backend)"
            ),
            Copy::Unreadable(why) => println!("{runner}: not copied, its SSM record is unreadable: {why}"),
        }
    }
    let left = migration.left_behind();
    println!(
        "{} record(s) in {}; {} left behind",
        migration.runners.len(),
        config.prefix,
        left
    );
    if !args.dry_run && left == 0 {
        println!(
            "the runners are held in SSM (lease holder migrate-state) for {} min: within that time set state_store.backend = \"dynamodb\" and state_store.table = \"{table_name}\" (chart: config.state_store.backend) and restart the controllers; then delete the SSM records (<prefix>/<runner>/status, lock/*). A run after the switch may report conflicts: the controllers moved records on.",
            args.hold_mins.max(1)
        );
    }
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
