//! `runner-updater setup`: deploys the repository's CloudFormation template (the state table)
//! with the credentials of whoever runs it (the rights of `iam/setup-policy.json`, which the
//! running controller does not hold), then checks the table as `run` will.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use runner_updater_adapters::clock::SystemClock;
use runner_updater_adapters::dynamo::{check_table, table_refusal, PROBE_KEY};
use runner_updater_aws::AwsClients;
use runner_updater_interface::setup::{
    setup as deploy, SetupAction, SetupRequest, DEFAULT_STACK, EVENTS_PARAMETER,
    EVENTS_QUEUE_OUTPUT, PREFIX_PARAMETER, TABLE_PARAMETER,
};
use runner_updater_ports::{ErrorKind, StateTable};

use crate::wiring::sdk_settings;

/// `setup`'s options.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The CloudFormation stack that holds the controller's resources.
    #[arg(long, default_value = DEFAULT_STACK)]
    pub stack: String,
    /// A tag for the stack and its resources (`KEY=VALUE`; repeatable).
    #[arg(long = "tag", value_parser = super::parse_pair)]
    pub tags: Vec<(String, String)>,
    /// The longest the set-up may take, in seconds (CloudFormation carries on past it).
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// How often CloudFormation is read while waiting, in seconds.
    #[arg(long, default_value_t = 5)]
    pub poll_secs: u64,
    /// Execute a change that removes or replaces a resource (renaming the table makes a new,
    /// empty one; the old one is retained).
    #[arg(long)]
    pub allow_replacement: bool,
    /// Also make the change events' path: the `EventBridge` rules, the SQS queue, its
    /// dead-letter queue and its policy (on whenever the configuration sets
    /// `events.queue_url`). Turning it off later removes them: refused unless
    /// `--allow-replacement`.
    #[arg(long)]
    pub events: bool,
}

/// Creates or updates the stack, reports each step and the outcome, then checks the table.
///
/// # Errors
/// The stack busy, needing a human, refused or rolled back; a wait that ran out; a table that
/// cannot be used afterwards.
pub async fn setup(config: Option<&PathBuf>, args: SetupArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config)?;
    let table = config.state_store.table.clone();
    let events = args.events || config.events.enabled();
    let clients = AwsClients::from_env(sdk_settings(&config)).await;
    let mut tags = BTreeMap::from([("app".to_owned(), "runner-updater".to_owned())]);
    tags.extend(args.tags);
    let table_exists = match clients.table(&table).get(PROBE_KEY).await {
        Ok(_) => true,
        Err(error) if error.kind == ErrorKind::NotFound => false,
        Err(error) => return Err(anyhow::Error::msg(table_refusal(&table, &error))),
    };
    let request = SetupRequest {
        stack: args.stack,
        parameters: BTreeMap::from([
            (TABLE_PARAMETER.to_owned(), table.clone()),
            (
                EVENTS_PARAMETER.to_owned(),
                if events { "on" } else { "off" }.to_owned(),
            ),
            (PREFIX_PARAMETER.to_owned(), config.prefix.clone()),
        ]),
        tags,
        timeout: Duration::from_secs(args.timeout_secs),
        poll: Duration::from_secs(args.poll_secs.max(1)),
        table_exists,
        allow_replacement: args.allow_replacement,
    };
    let mut progress = |line: String| println!("{line}");
    let report = deploy(&clients.cfn, &SystemClock, &request, &mut progress).await?;
    let done = match report.action {
        SetupAction::Created => "created",
        SetupAction::Updated => "updated",
        SetupAction::UpToDate => "up to date",
    };
    println!("stack {}: {done}", request.stack);
    for (key, value) in &report.outputs {
        println!("  {key} = {value}");
    }
    check_table(&clients.table(&table), &table)
        .await
        .map_err(anyhow::Error::msg)?;
    match report.outputs.get(EVENTS_QUEUE_OUTPUT) {
        Some(url) => println!(
            "change events: the controller reads them with events.queue_url = \"{url}\" (its role needs the ReadChangeEvents statement of iam/policy.json)"
        ),
        // The stack's outputs not read back (an emulator that does not refresh them).
        None if events => println!(
            "change events: the queue is {stack}-events; events.queue_url is its URL (aws sqs get-queue-url --queue-name {stack}-events)",
            stack = request.stack
        ),
        None => {}
    }
    println!(
        "state table {table}: ready; the controller uses it with state_store.backend = \"dynamodb\" and state_store.table = \"{table}\""
    );
    Ok(ExitCode::SUCCESS)
}
