//! `runner-updater plan`: a dry run, each eligibility rule and what the controller would do next.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use runner_updater_adapters::store::FileStore;
use runner_updater_interface::report::{plan_view, render_plan};
use runner_updater_interface::scenario::Scenario;
use runner_updater_runtime::driver::RunnerDriver;

use crate::wiring::aws_ports;

/// `plan`'s options.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// One runner (default: all configured).
    pub runner: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Read the in-process simulated AWS instead of AWS.
    #[arg(long)]
    pub simulated: bool,
    /// Simulated mode only: a desired version to write first, as RUNNER=VERSION (repeatable).
    #[arg(long, value_parser = super::parse_pair)]
    pub desired: Vec<(String, String)>,
}

/// Observes each runner once and prints what the controller would do, acting on nothing.
///
/// # Errors
/// A configuration refused, a runner not configured, or a read failing.
pub async fn plan(config: Option<&PathBuf>, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let ports = if args.simulated {
        let mut scenario = Scenario::with_config(1, config.clone())?;
        scenario.store = Arc::new(FileStore::new(&config.state_store.path));
        for (name, version) in &args.desired {
            scenario.set_desired(name, "version", version);
        }
        scenario.ports()
    } else {
        if !args.desired.is_empty() {
            bail!("--desired is for --simulated only: against AWS, ops write desired versions into SSM");
        }
        // `plan` never writes: its holder id is never used by a write.
        aws_ports(&config, "plan").await?.0
    };
    let names: Vec<String> = match args.runner {
        Some(runner) => vec![runner],
        None => config.runners.iter().map(|r| r.name.clone()).collect(),
    };
    if names.len() > 1 {
        // The state table: every record in scan pages, not a read per runner.
        ports.store.prefetch(&names).await?;
    }
    let mut views = Vec::new();
    for name in &names {
        let Some(runner_config) = config.runner(name) else {
            bail!("runner {name} is not configured")
        };
        let mut driver = RunnerDriver::new(&config, runner_config, "plan", ports.clone());
        let observation = driver.observe_now().await?;
        let record = ports.store.load(name).await?;
        views.push(plan_view(
            name,
            record.as_ref(),
            &observation,
            &config.channel,
            ports.clock.now(),
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        if args.simulated {
            eprintln!("(plan on a fresh simulated AWS: every runner at its start version)");
        }
        for view in &views {
            print!("{}", render_plan(view));
        }
    }
    Ok(ExitCode::SUCCESS)
}
