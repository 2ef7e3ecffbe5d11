//! `runner-updater run`: the controller loop, on AWS or on the simulated AWS.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use runner_updater_adapters::lease;
use runner_updater_adapters::sim::{SimClock, SimQueue};
use runner_updater_adapters::store::FileStore;
use runner_updater_config::Config;
use runner_updater_interface::ops;
use runner_updater_interface::scenario::Scenario;
use runner_updater_ports::{Clock, EventQueue, ParameterStore};
use runner_updater_runtime::channels::Channels;
use runner_updater_runtime::driver::{DriverError, Ports, RunnerDriver, TickReport};
use runner_updater_runtime::events::{EventConsumer, Nudge};
use runner_updater_runtime::metrics::Metrics;
use runner_updater_runtime::reader::{FleetReader, FleetSnapshot};
use runner_updater_runtime::scheduler::{Control, Scheduler, Wake};

use crate::server::{self, Endpoints};
use crate::wiring::{aws_ports, host_name, process_random};

/// `run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run against the in-process simulated AWS instead of AWS.
    #[arg(long)]
    pub simulated: bool,
    /// Stop after this many sweeps over the runners at rest, once the passes they started
    /// have ended (default: run until interrupted).
    #[arg(long)]
    pub passes: Option<u64>,
    /// Simulated mode only: a desired version to write first, as RUNNER=VERSION (repeatable),
    /// as the runner's release document (complete, so acted on at once).
    #[arg(long, value_parser = super::parse_pair)]
    pub desired: Vec<(String, String)>,
    /// Simulated mode only: a channel's release document to publish first, as
    /// CHANNEL=DOCUMENT (repeatable; `stable={"version": "2.14.0"}`), followed by the runners
    /// of that channel ("Fleet releases per channel").
    #[arg(long, value_parser = super::parse_pair)]
    pub channel_release: Vec<(String, String)>,
    /// Simulated mode only: seed of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz` (`off` to serve none). Port 0 takes
    /// a free port, logged as `listen=HOST:PORT` (and written to `--listen-port-file`).
    #[arg(long, env = "RUNNER_UPDATER_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: String,
    /// Once serving, write the port bound for `--listen` to this file (the port and a
    /// newline; written to a temporary file and renamed over it): how a supervisor learns
    /// the port of `--listen HOST:0`.
    #[arg(long, env = "RUNNER_UPDATER_LISTEN_PORT_FILE")]
    pub listen_port_file: Option<PathBuf>,
}

/// The controller loop until interrupted (or `--passes` sweeps).
///
/// # Errors
/// A configuration refused, bad options, an address that cannot be bound.
pub async fn run(config: Option<&PathBuf>, args: RunArgs) -> anyhow::Result<ExitCode> {
    control_loop(prepare(config, args).await?).await
}

/// The change events' queue.
type Events = Arc<dyn EventQueue>;

/// What the controller loop runs on: the configuration, the ports (AWS, or the simulated AWS),
/// how many sweeps, the simulated clock to advance (if simulated), where to serve.
pub struct RunSetup {
    /// The configuration loaded.
    pub config: Config,
    /// The ports the drivers and the fleet reader use.
    pub ports: Ports,
    /// `--passes`.
    pub passes: Option<u64>,
    /// The simulated clock, advanced by the time slept (`--simulated`).
    pub simulated: Option<SimClock>,
    /// `--listen` and `--listen-port-file`.
    pub listen: Option<Listen>,
    /// This process's lease holder id (what the state table's conditional writes name).
    pub holder: String,
    /// The change events' queue, when `events.queue_url` is set.
    pub events: Option<Events>,
}

/// Loads the configuration, checks the options and builds the ports `run` runs on.
///
/// # Errors
/// A configuration refused, bad options (`--listen`, `--desired` against AWS, a runner not
/// configured).
pub async fn prepare(config: Option<&PathBuf>, args: RunArgs) -> anyhow::Result<RunSetup> {
    let config = super::load_config(config)?;
    let listen: Option<Listen> = match args.listen.as_str() {
        "off" => {
            if args.listen_port_file.is_some() {
                bail!("--listen-port-file needs --listen HOST:PORT, not off");
            }
            None
        }
        address => Some(Listen {
            address: address.parse().with_context(|| {
                format!("--listen {address:?}: use HOST:PORT (0.0.0.0:9464) or off")
            })?,
            port_file: args.listen_port_file.clone(),
        }),
    };
    let holder = lease::holder_id(&host_name(), std::process::id(), process_random());
    if args.simulated {
        let (ports, clock, events) = simulated_ports(&config, &args, &holder)?;
        check_parameter_capacity(&config, ports.ssm.as_ref()).await?;
        return Ok(RunSetup {
            config,
            ports,
            passes: args.passes,
            simulated: Some(clock),
            listen,
            holder,
            events,
        });
    }
    if !args.desired.is_empty() || !args.channel_release.is_empty() {
        bail!(
            "--desired and --channel-release are for --simulated only: against AWS, ops write desired versions into SSM"
        );
    }
    let (ports, events) = aws_ports(&config, &holder).await?;
    check_parameter_capacity(&config, ports.ssm.as_ref()).await?;
    Ok(RunSetup {
        config,
        ports,
        passes: args.passes,
        simulated: None,
        listen,
        holder,
        events,
    })
}

/// Counts what the fleet needs of Parameter Store: refuses to start above the account's limit
/// (AWS would answer `ParameterLimitExceeded` part-way through, to whichever write came
/// last), warns from 80 % of it.
///
/// # Errors
/// The fleet does not fit, or the prefix cannot be read.
async fn check_parameter_capacity(config: &Config, ssm: &dyn ParameterStore) -> anyhow::Result<()> {
    use runner_updater_core::domain::capacity::Fit;
    let need = ops::parameter_need(config, ssm)
        .await
        .context("counting the SSM parameters under the prefix")?;
    match need.verdict() {
        Fit::Fits => {
            tracing::info!(parameters = need.total(), limit = need.limit, "SSM parameters: the fleet fits");
            Ok(())
        }
        Fit::Near => {
            tracing::warn!("{need}: near the limit; the DynamoDB state store keeps records and leases out of SSM (README, \"State\")");
            Ok(())
        }
        Fit::Over => bail!(
            "{need}: more than the limit, so AWS would refuse writes part-way through (ParameterLimitExceeded). Use the DynamoDB state store (state_store.backend = \"dynamodb\", README \"State\"), the Advanced tier (aws.ssm_parameters_max = 100000), or fewer parameters per runner"
        ),
    }
}

/// The simulated AWS for `run --simulated` (paced in real time: the loop advances its clock by
/// the time slept), with the `--desired` release documents written, and its clock. Records go
/// to the file store (they outlive the run), or with the `dynamodb` backend to the simulated
/// state table (in memory, for the run).
fn simulated_ports(
    config: &Config,
    args: &RunArgs,
    holder: &str,
) -> anyhow::Result<(Ports, SimClock, Option<Events>)> {
    let mut scenario = Scenario::with_config(args.seed, config.clone())?;
    // The simulated AWS announces its SSM changes on a simulated queue, as the set-up's
    // EventBridge rule does on AWS.
    let events = config.events.enabled().then(|| {
        let queue = SimQueue::new(Arc::new(scenario.aws.clock.clone()));
        scenario.aws.ssm.publish_to(&queue);
        Arc::new(queue) as Events
    });
    if config.state_store.backend == runner_updater_config::StateBackend::DynamoDb {
        scenario.use_state_table(holder);
    } else {
        scenario.store = Arc::new(FileStore::new(&config.state_store.path));
    }
    for (name, version) in &args.desired {
        if config.runner(name).is_none() {
            bail!("--desired {name}={version}: runner {name} is not configured");
        }
        // Written whole, as the release document: the controller acts on it at once.
        scenario.set_release(name, &format!("{{\"version\": {version:?}}}"));
    }
    for (channel, document) in &args.channel_release {
        let Some((_, runners)) = config.channels().into_iter().find(|(c, _)| c == channel) else {
            bail!("--channel-release {channel}=…: no configured runner follows channel {channel}");
        };
        // Its runners follow it: the set-up's pinned desired versions go.
        for runner in &runners {
            scenario.clear_desired(runner, "version");
        }
        scenario.set_channel_release(channel, document);
    }
    Ok((scenario.ports(), scenario.aws.clock.clone(), events))
}

/// Where `run` serves its endpoints.
#[derive(Debug)]
pub struct Listen {
    /// `--listen` (port 0: any free port).
    pub address: std::net::SocketAddr,
    /// `--listen-port-file`.
    pub port_file: Option<PathBuf>,
}

/// Writes `port` and a newline to `path` through a temporary file renamed over it, so a
/// reader sees no file or the whole port, never a part.
fn write_port_file(path: &std::path::Path, port: u16) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, format!("{port}\n"))
        .with_context(|| format!("writing the port to {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// The scheduler `run` drives: the fleet read and the channels' coordinator over `ports`.
fn scheduler_of(
    config: &Config,
    drivers: Vec<RunnerDriver>,
    ports: &Ports,
    holder: &str,
    metrics: Arc<Metrics>,
) -> Scheduler {
    let reader = FleetReader::new(
        ports.ssm.clone(),
        ports.ecs.clone(),
        ports.clock.clone(),
        &config.prefix,
    );
    let channels = Channels::new(
        config,
        holder,
        ports.store.clone(),
        ports.lock.clone(),
        ports.clock.clone(),
        ports.ssm.clone(),
    )
    .with_metrics(metrics);
    Scheduler::new(config, drivers, reader, ports.clock.clone()).with_channels(channels)
}

/// Starts the change events' consumer (after a check of the queue that names what is wrong,
/// not fatal: the sweeps carry on and the consumer keeps trying) and hands the scheduler its
/// nudges.
async fn read_events(
    config: &Config,
    scheduler: Scheduler,
    queue: Events,
    metrics: &Arc<Metrics>,
) -> Scheduler {
    let consumer = EventConsumer::new(
        queue,
        &config.prefix,
        Duration::from_secs(config.events.wait_secs),
    )
    .with_metrics(metrics.clone());
    let up = match consumer.check().await {
        Ok(waiting) => {
            tracing::info!(
                waiting,
                backstop_secs = config.events.backstop_interval_secs,
                "reading change events; sweeps are the backstop"
            );
            true
        }
        // Not fatal: polling carries on, and the consumer keeps trying.
        Err(error) => {
            tracing::warn!(
                %error,
                "the events' queue cannot be read ({}): sweeps every poll_interval_secs until it can",
                runner_updater_runtime::events::failure_reason(&error)
            );
            false
        }
    };
    let (nudges, received) = tokio::sync::mpsc::channel(1);
    tokio::spawn(consumer.run(nudges));
    let mut scheduler = scheduler.with_events(config, received, Some(metrics.clone()));
    // Read at start: the backstop's interval from the first sweep on.
    metrics.events_enabled(true);
    metrics.event_queue_up(up);
    scheduler.nudge(Nudge::Queue { up });
    scheduler
}

/// Runs the fleet's scheduler until interrupted (SIGINT, SIGTERM) or `passes` sweeps are
/// done. A simulated clock, when given, is advanced by the time slept.
///
/// # Errors
/// An address that cannot be bound, a port file that cannot be written, signals that cannot
/// be listened to.
pub async fn control_loop(setup: RunSetup) -> anyhow::Result<ExitCode> {
    let RunSetup {
        config,
        ports,
        passes,
        simulated,
        listen,
        holder,
        events,
    } = setup;
    let config = &config;
    let metrics = Arc::new(Metrics::new());
    {
        let metrics = metrics.clone();
        runner_updater_aws::observe_calls(Box::new(move |operation, outcome| {
            metrics.aws_call(operation, outcome);
        }));
    }
    // `POST /trigger` and SIGHUP start the next pass at once.
    let trigger = Arc::new(tokio::sync::Notify::new());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = match listen {
        Some(Listen { address, port_file }) => {
            if let Some(path) = &port_file {
                // A port file left by an earlier run must not be read as this run's.
                match std::fs::remove_file(path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(error)
                            .with_context(|| format!("removing the old {}", path.display()));
                    }
                    _ => {}
                }
            }
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            let bound = listener
                .local_addr()
                .with_context(|| format!("the address bound for {address}"))?;
            let endpoints = Arc::new(Endpoints {
                metrics: metrics.clone(),
                clock: ports.clock.clone(),
                // Alive while passes keep ending: three sweep intervals (the backstop's, the
                // longer, with change events on), plus a pass's own time.
                liveness: Duration::from_secs(3 * config.longest_sweep_interval_secs() + 60),
                trigger: trigger.clone(),
            });
            let server = tokio::spawn(server::serve(listener, endpoints, async {
                let _ = server_stopped.await;
            }));
            // The socket listens since the bind: connections from here on are served.
            tracing::info!(listen = %bound, "serving /metrics, /healthz, /readyz");
            if let Some(path) = port_file {
                write_port_file(&path, bound.port())?;
            }
            Some(server)
        }
        None => None,
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let drivers: Vec<RunnerDriver> = config
        .runners
        .iter()
        .map(|runner| {
            RunnerDriver::new(config, runner, &holder, ports.clone()).with_metrics(metrics.clone())
        })
        .collect();
    tracing::info!(runners = drivers.len(), %holder, simulated = simulated.is_some(), "controller started");
    let mut scheduler = scheduler_of(config, drivers, &ports, &holder, metrics.clone());
    if let Some(queue) = events {
        scheduler = read_events(config, scheduler, queue, &metrics).await;
    }
    let mut control = LoopControl {
        metrics: metrics.clone(),
        clock: ports.clock.clone(),
        simulated,
        trigger,
        terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        interrupt: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
    };
    scheduler.run(&mut control, passes).await;
    let _ = stop_server.send(());
    if let Some(server) = server {
        match server.await {
            Ok(Err(error)) => tracing::warn!(%error, "the metrics server failed"),
            Err(error) => tracing::warn!(%error, "the metrics server task failed"),
            Ok(Ok(())) => {}
        }
    }
    tracing::info!("controller stopped");
    Ok(ExitCode::SUCCESS)
}

/// The controller loop's side of the scheduler: real time (the simulated clock follows it),
/// signals and the trigger, metrics.
struct LoopControl {
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    simulated: Option<SimClock>,
    trigger: Arc<tokio::sync::Notify>,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    /// Held for the whole loop, so that a Ctrl-C between two waits is not lost.
    interrupt: tokio::signal::unix::Signal,
}

impl Control for LoopControl {
    fn wait(
        &mut self,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Wake> + Send + '_>> {
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {
                    if let Some(clock) = &self.simulated {
                        clock.advance(timeout);
                    }
                    Wake::Timeout
                }
                () = self.trigger.notified() => {
                    tracing::info!("POST /trigger: a pass now");
                    Wake::Trigger
                }
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: a pass now");
                    Wake::Trigger
                }
                _ = self.interrupt.recv() => Wake::Stop,
                _ = self.terminate.recv() => Wake::Stop,
            }
        })
    }

    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        self.metrics.heartbeat(self.clock.now());
        if let Err(error) = result {
            tracing::warn!(runner = driver.runner(), %error, "pass failed; the next pass starts again from the store");
        }
    }

    fn swept(&mut self, _snapshot: &FleetSnapshot) {
        self.metrics.heartbeat(self.clock.now());
    }

    fn all_loaded(&mut self) {
        self.metrics.set_loaded();
    }
}
