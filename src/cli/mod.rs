//! The `runner-updater` command line: one file per command. `anyhow` is used in this module
//! (and in the dev tools' binary) and nowhere else.

pub mod approve;
pub mod demo;
pub mod diagram;
pub mod migrate;
pub mod plan;
pub mod release;
pub mod retry;
pub mod run;
pub mod setup;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use runner_updater_config::{Config, EMBEDDED_CONFIG};
use runner_updater_runtime::telemetry;

/// Keeps a fleet of ECS runners on the versions ops write into SSM Parameter Store.
#[derive(Debug, Parser)]
#[command(name = "runner-updater", version, about)]
pub struct Cli {
    /// The options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes (the dev tools' binary takes them too).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML). Without it, the embedded default configuration is used.
    #[arg(long, global = true, env = "RUNNER_UPDATER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RUNNER_UPDATER_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormat> for telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => telemetry::LogFormat::Text,
            LogFormat::Json => telemetry::LogFormat::Json,
        }
    }
}

/// The commands of the product.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The controller loop.
    Run(run::RunArgs),
    /// Persisted state, reasons, next step and last transitions of each runner.
    Status(status::StatusArgs),
    /// Dry run: each eligibility rule and what the controller would do next.
    Plan(plan::PlanArgs),
    /// Approve the change set a runner holds for review (`awaiting_approval` in `status`).
    Approve(approve::ApproveArgs),
    /// Try a quarantined version again on a runner (`retry RUNNER [VERSION]`): an intent the
    /// controller acknowledges at its next pass.
    Retry(retry::RetryArgs),
    /// A channel's release: `release status [CHANNEL] [--json]` (waves, counts, budget, next
    /// step), `release resume CHANNEL` (a halted release, after looking), `release retry
    /// CHANNEL [VERSION]` (a version quarantined on the channel).
    Release(release::ReleaseArgs),
    /// Creates or updates the controller's own AWS resources (the state table) from the
    /// repository's CloudFormation template, with the set-up rights (`iam/setup-policy.json`).
    Setup(setup::SetupArgs),
    /// Copies every runner's record from one state store to another (ssm → dynamodb), refusing
    /// while an attempt is in flight.
    MigrateState(migrate::MigrateArgs),
    /// The state machine, generated from its transition table.
    Diagram(diagram::DiagramArgs),
    /// The whole story on the embedded simulated AWS; no account needed.
    Demo(demo::DemoArgs),
}

/// `RUNNER=VERSION`, as `--desired` takes it.
///
/// # Errors
/// Text without `=`.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("{text:?} is not RUNNER=VERSION"))
}

/// The configuration: the file given (else the embedded default), then the environment's
/// overrides.
///
/// # Errors
/// An unreadable file, or a configuration the loader refuses (named by field).
pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Config::from_toml(EMBEDDED_CONFIG)?,
    };
    Ok(config.with_env(|key| std::env::var(key).ok())?)
}

/// The product's `main`: parses the command line, sets up telemetry, runs the command.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    exit_code(
        "runner-updater",
        with_telemetry(cli.global.log_format, quiet, Box::pin(dispatch(cli))).await,
    )
}

/// Runs `command` with telemetry installed, and flushes the spans still buffered before the
/// process ends.
///
/// # Errors
/// Telemetry that cannot be set up, or the command's error.
pub async fn with_telemetry(
    format: LogFormat,
    default_level: &str,
    command: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let telemetry = crate::telemetry::init(format.into(), default_level)?;
    let result = command.await;
    telemetry.shutdown();
    result
}

/// The exit code of a command's result; an error is printed first, after the program's name.
#[must_use]
pub fn exit_code(program: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|error| {
        eprintln!("{program}: {error:#}");
        ExitCode::FAILURE
    })
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.global.config.as_ref();
    match cli.command {
        Command::Run(args) => run::run(config, args).await,
        Command::Status(args) => status::status(config, args).await,
        Command::Plan(args) => plan::plan(config, args).await,
        Command::Release(args) => release::release(config, args).await,
        Command::Approve(args) => approve::approve(config, args).await,
        Command::Retry(args) => retry::retry(config, args).await,
        Command::Setup(args) => setup::setup(config, args).await,
        Command::MigrateState(args) => migrate::migrate_state(config, args).await,
        Command::Diagram(args) => diagram::diagram(&args),
        Command::Demo(args) => demo::demo(args).await,
    }
}
