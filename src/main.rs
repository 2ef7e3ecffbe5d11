//! The `runner-updater` command line. `anyhow` is used here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use runner_updater::aws::{AwsClients, SdkSettings};
use runner_updater::clock::SystemClock;
use runner_updater::config::{Config, EMBEDDED_CONFIG};
use runner_updater::diagram::{self, Format, Level};
use runner_updater::driver::{CrashPlan, DriverError, Ports, RunnerDriver, TickReport};
use runner_updater::fleet::{Control, FleetReader, FleetSnapshot, Scheduler, Wake};
use runner_updater::lease;
use runner_updater::lease::SsmLease;
use runner_updater::metrics::Metrics;
use runner_updater::ops;
use runner_updater::ports::StateStore;
use runner_updater::ports::{Clock as _, ParameterStore};
use runner_updater::report::{plan_view, render_plan, render_status};
use runner_updater::server::{self, Endpoints};
use runner_updater::sim::scenario::Scenario;
use runner_updater::sim::SimClock;
use runner_updater::store::{FileStore, SsmStore};
use runner_updater::telemetry;

/// Keeps a fleet of ECS runners on the versions ops write into SSM Parameter Store.
#[derive(Debug, Parser)]
#[command(name = "runner-updater", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, the embedded default configuration is used.
    #[arg(long, global = true, env = "RUNNER_UPDATER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "RUNNER_UPDATER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiagramFormat {
    Mermaid,
    Dot,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DiagramLevel {
    Top,
    Full,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The controller loop.
    Run {
        /// Run against the in-process simulated AWS instead of AWS.
        #[arg(long)]
        simulated: bool,
        /// Stop after this many sweeps over the runners at rest, once the passes they started
        /// have ended (default: run until interrupted).
        #[arg(long)]
        passes: Option<u64>,
        /// Simulated mode only: a desired version to write first, as RUNNER=VERSION (repeatable),
        /// as the runner's release document (complete, so acted on at once).
        #[arg(long, value_parser = parse_pair)]
        desired: Vec<(String, String)>,
        /// Simulated mode only: seed of the simulation.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Address of `/metrics`, `/healthz` and `/readyz` (`off` to serve none). Port 0 takes
        /// a free port, logged as `listen=HOST:PORT` (and written to `--listen-port-file`).
        #[arg(long, env = "RUNNER_UPDATER_LISTEN", default_value = "0.0.0.0:9464")]
        listen: String,
        /// Once serving, write the port bound for `--listen` to this file (the port and a
        /// newline; written to a temporary file and renamed over it): how a supervisor learns
        /// the port of `--listen HOST:0`.
        #[arg(long, env = "RUNNER_UPDATER_LISTEN_PORT_FILE")]
        listen_port_file: Option<PathBuf>,
    },
    /// Persisted state, reasons, next step and last transitions of each runner.
    Status {
        /// One runner (default: all with a record).
        runner: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: each eligibility rule and what the controller would do next.
    Plan {
        /// One runner (default: all configured).
        runner: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Read the in-process simulated AWS instead of AWS.
        #[arg(long)]
        simulated: bool,
        /// Simulated mode only: a desired version to write first, as RUNNER=VERSION (repeatable).
        #[arg(long, value_parser = parse_pair)]
        desired: Vec<(String, String)>,
    },
    /// Approve the change set a runner holds for review (`awaiting_approval` in `status`).
    Approve {
        /// The runner.
        runner: String,
        /// The change set reviewed (as `status` shows it); refused if another one is held.
        change_set: Option<String>,
    },
    /// The state machine, generated from its transition table.
    Diagram {
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
        format: DiagramFormat,
        /// Top-level states only, or every sub-state.
        #[arg(long, value_enum, default_value_t = DiagramLevel::Top)]
        level: DiagramLevel,
        /// Write every file of `state-diagrams/` into this directory instead of printing.
        #[arg(long)]
        write_all: Option<PathBuf>,
    },
    /// Deterministic simulation: seeds of chaos (faults, crashes, ops changes, a second
    /// controller, clock skew) on the simulated AWS, every invariant checked after every step.
    Simulate {
        /// Replay this one seed (with --verbose: every action as it happens).
        #[arg(long, conflicts_with_all = ["from", "seeds"])]
        seed: Option<u64>,
        /// First seed of a run.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// How many seeds to run (a soak: as many as you like).
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// Chaos steps per seed (before the drain).
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// Print every action of the seed.
        #[arg(long)]
        verbose: bool,
        /// Print the figures as the README's Markdown table.
        #[arg(long)]
        report: bool,
    },
    /// The fleet benchmark on the simulated AWS: calls per runner per pass, pass time against
    /// the rate limits, CPU, memory, update-wave convergence, restart-to-first-action.
    Bench {
        /// Fleet sizes (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [10_usize, 1_000, 10_000])]
        runners: Vec<usize>,
        /// Latency assumed per AWS call, in milliseconds.
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
    },
    /// The whole story on the embedded simulated AWS; no account needed.
    Demo {
        /// Seed of the simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the demo's records in this directory (then try `status` on it).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("{text:?} is not RUNNER=VERSION"))
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match Box::pin(dispatch(cli)).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("runner-updater: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let quiet = match cli.command {
        Command::Run { .. } => "info",
        // The simulation injects faults by the thousand: their warnings would drown its report.
        Command::Simulate { .. } => "error",
        _ => "warn",
    };
    let format = match cli.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    let telemetry = telemetry::init(format, quiet)?;
    let result = Box::pin(run_command(cli)).await;
    // Spans still buffered are exported before the process ends.
    telemetry.shutdown();
    result
}

async fn run_command(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { seed, state_dir } => {
            let store: Option<Arc<dyn StateStore>> =
                state_dir.map(|dir| Arc::new(FileStore::new(dir)) as Arc<dyn StateStore>);
            let mut stdout = std::io::stdout().lock();
            runner_updater::demo::run(seed, store, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            seed,
            from,
            seeds,
            steps,
            verbose,
            report,
        } => {
            let settings = runner_updater::sim::dst::Settings {
                steps,
                ..runner_updater::sim::dst::Settings::default()
            };
            let (from, seeds) = seed.map_or((from, seeds.max(1)), |seed| (seed, 1));
            simulate(from, seeds, settings, verbose, report).await
        }
        Command::Bench {
            runners,
            latency_ms,
        } => bench(&runners, latency_ms).await,
        Command::Diagram {
            format,
            level,
            write_all,
        } => {
            if let Some(directory) = write_all {
                std::fs::create_dir_all(&directory)
                    .with_context(|| format!("creating {}", directory.display()))?;
                for (name, format, level) in diagram::FILES {
                    let path = directory.join(name);
                    std::fs::write(&path, diagram::render(format, level))
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let format = match format {
                DiagramFormat::Mermaid => Format::Mermaid,
                DiagramFormat::Dot => Format::Dot,
            };
            let level = match level {
                DiagramLevel::Top => Level::Top,
                DiagramLevel::Full => Level::Full,
            };
            print!("{}", diagram::render(format, level));
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve { runner, change_set } => {
            let config = load_config(cli.config.as_ref())?;
            if config.runner(&runner).is_none() {
                bail!("runner {runner} is not configured");
            }
            let clients = AwsClients::from_env(sdk_settings(&config)).await;
            let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm);
            let store = store_on(&config, ssm.clone());
            let approval = ops::approve(
                store.as_ref(),
                ssm.as_ref(),
                &config.prefix,
                &runner,
                change_set.as_deref(),
            )
            .await?;
            println!(
                "approved change set {} of stack {} (written to {}); the controller executes it on its next pass",
                approval.change_set, approval.stack, approval.parameter
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { runner, json } => {
            let config = load_config(cli.config.as_ref())?;
            let (store, lock) = status_sources(&config).await;
            // Configured runners first (listing a whole SSM prefix does not scale to a fleet).
            let runners = match runner {
                Some(runner) => vec![runner],
                None if !config.runners.is_empty() && config.state_store.backend == "ssm" => {
                    config.runners.iter().map(|r| r.name.clone()).collect()
                }
                None => store.list().await?,
            };
            let views = ops::status_views(
                &config,
                store.as_ref(),
                lock.as_ref().map(|l| l as &dyn runner_updater::ports::Lock),
                &runners,
                SystemClock.now(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", render_status(&views, 8));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            runner,
            json,
            simulated,
            desired,
        } => {
            let config = load_config(cli.config.as_ref())?;
            let ports = if simulated {
                let mut scenario = Scenario::with_config(1, config.clone())?;
                scenario.store = Arc::new(FileStore::new(&config.state_store.path));
                for (name, version) in &desired {
                    scenario.set_desired(name, "version", version);
                }
                scenario.ports()
            } else {
                if !desired.is_empty() {
                    bail!("--desired is for --simulated only: against AWS, ops write desired versions into SSM");
                }
                aws_ports(&config).await
            };
            let names: Vec<String> = match runner {
                Some(runner) => vec![runner],
                None => config.runners.iter().map(|r| r.name.clone()).collect(),
            };
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
                ));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                if simulated {
                    eprintln!("(plan on a fresh simulated AWS: every runner at its start version)");
                }
                for view in &views {
                    print!("{}", render_plan(view));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            simulated,
            passes,
            desired,
            seed,
            listen,
            listen_port_file,
        } => {
            let config = load_config(cli.config.as_ref())?;
            let listen: Option<Listen> = match listen.as_str() {
                "off" => {
                    if listen_port_file.is_some() {
                        bail!("--listen-port-file needs --listen HOST:PORT, not off");
                    }
                    None
                }
                address => Some(Listen {
                    address: address.parse().with_context(|| {
                        format!("--listen {address:?}: use HOST:PORT (0.0.0.0:9464) or off")
                    })?,
                    port_file: listen_port_file,
                }),
            };
            if simulated {
                return run_simulated(config, passes, &desired, seed, listen).await;
            }
            if !desired.is_empty() {
                bail!("--desired is for --simulated only: against AWS, ops write desired versions into SSM");
            }
            let ports = aws_ports(&config).await;
            control_loop(&config, ports, passes, None, listen).await
        }
    }
}

/// A crash planned for tests: `RUNNER_UPDATER_TEST_CRASH=after_save:N` or
/// `after_command:NAME` makes the process abort right there (per runner driver).
fn test_crash_plan() -> anyhow::Result<CrashPlan> {
    let Ok(text) = std::env::var("RUNNER_UPDATER_TEST_CRASH") else {
        return Ok(CrashPlan::default());
    };
    let mut plan = CrashPlan::default();
    match text.split_once(':') {
        Some(("after_save", n)) => {
            plan.after_save = Some(
                n.parse()
                    .context("RUNNER_UPDATER_TEST_CRASH after_save:N")?,
            );
        }
        Some(("after_command", name)) => {
            let known = [
                "observe",
                "acquire_lock",
                "release_lock",
                "register_task_definition",
                "update_service",
                "roll_back_service",
            ];
            let Some(name) = known.into_iter().find(|k| *k == name) else {
                bail!("RUNNER_UPDATER_TEST_CRASH: unknown command {name:?}")
            };
            plan.after_command_named = Some(name);
        }
        _ => bail!("RUNNER_UPDATER_TEST_CRASH={text:?}: use after_save:N or after_command:NAME"),
    }
    tracing::warn!(?plan, "a crash is planned (test hook)");
    Ok(plan)
}

/// This host's name: `HOSTNAME` (the pod's name on Kubernetes), else the kernel's.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "controller".to_owned())
}

/// A random number drawn once per process (std's hasher keys come from the OS's randomness):
/// the part of the lease identity that tells apart two processes with the same host name and
/// pid (pid 1 in every container; a restarted container).
fn process_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The SDK's settings from the configuration.
fn sdk_settings(config: &Config) -> SdkSettings {
    SdkSettings {
        attempt_timeout: Duration::from_secs(config.aws.attempt_timeout_secs),
        operation_timeout: Duration::from_secs(config.aws.operation_timeout_secs),
        ..SdkSettings::default()
    }
}

/// The ports on AWS: SDK clients from the standard configuration, the SSM lease, the store.
/// The AWS ports, each API family behind its shared client-side rate limit.
async fn aws_ports(config: &Config) -> Ports {
    use runner_updater::ratelimit::{LimitedCfn, LimitedEcs, LimitedSsm, Limiter};
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    let clock: Arc<dyn runner_updater::ports::Clock> = Arc::new(SystemClock);
    let limits = config.rate_limits;
    let ssm: Arc<dyn ParameterStore> = Arc::new(LimitedSsm {
        inner: Arc::new(clients.ssm),
        limiter: Arc::new(Limiter::new("SSM", limits.ssm_per_sec, clock.clone())),
    });
    Ports {
        ssm: ssm.clone(),
        ecs: Arc::new(LimitedEcs {
            inner: Arc::new(clients.ecs),
            limiter: Arc::new(Limiter::new("ECS", limits.ecs_per_sec, clock.clone())),
        }),
        cfn: Arc::new(LimitedCfn {
            inner: Arc::new(clients.cfn),
            limiter: Arc::new(Limiter::new(
                "CloudFormation",
                limits.cloudformation_per_sec,
                clock.clone(),
            )),
        }),
        lock: Arc::new(SsmLease::new(ssm.clone(), &config.prefix)),
        store: store_on(config, ssm),
        clock,
    }
}

fn store_on(config: &Config, ssm: Arc<dyn ParameterStore>) -> Arc<dyn StateStore> {
    if config.state_store.backend == "file" {
        Arc::new(FileStore::new(&config.state_store.path))
    } else {
        Arc::new(SsmStore::new(ssm, &config.prefix))
    }
}

/// The fleet benchmark, then the idle memory of `run` with one runner (a child process).
async fn bench(sizes: &[usize], latency_ms: u64) -> anyhow::Result<ExitCode> {
    use runner_updater::bench;
    let assumptions = bench::Assumptions {
        latency: Duration::from_millis(latency_ms),
        ..bench::Assumptions::default()
    };
    let mut figures = Vec::new();
    for &size in sizes {
        eprintln!("  measuring {size} runners…");
        figures.push(bench::measure(size, assumptions).await?);
    }
    print!("{}", bench::render(&figures, &assumptions));
    let resume = bench::resume_time().await?;
    println!(
        "\nrestart to first resumed action (the controller's share, no AWS latency): {} ms   (target: < 1 s plus one AWS round trip)",
        resume.as_millis()
    );
    let mib = |kib: u64| f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0;
    let binary = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| m.len() / 1024)
        .unwrap_or_default();
    match idle_memory_kib().await {
        Some((kib, anonymous)) => println!(
            "idle memory of `runner-updater run --simulated` with one runner: {:.1} MiB resident   (target: < 20 MiB); its own (anonymous: heap, stacks): {}; the rest is the binary's pages (this binary: {:.0} MiB)",
            mib(kib),
            anonymous.map_or_else(|| "?".to_owned(), |a| format!("{:.1} MiB", mib(a))),
            mib(binary)
        ),
        None => println!("idle memory of `run`: not measured (no /proc here)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Peak memory of `runner-updater run --simulated` with one runner after a few passes.
/// Peak resident memory of `run --simulated` with one runner, and the largest anonymous part
/// of it (its own: heap and stacks; the rest is the binary's pages), in KiB.
async fn idle_memory_kib() -> Option<(u64, Option<u64>)> {
    let directory =
        std::env::temp_dir().join(format!("runner-updater-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).ok()?;
    let config = directory.join("one.toml");
    let text = format!(
        "poll_interval_secs = 1\nactive_poll_interval_secs = 1\nlease_secs = 10\n[aws]\nattempt_timeout_secs = 2\noperation_timeout_secs = 2\n[state_store]\nbackend = \"file\"\npath = \"{}\"\n[[runners]]\nname = \"runner-a\"\ncluster = \"runners\"\nservice = \"runner-a\"\nimage_repository = \"registry.example/runner\"\n",
        directory.join("state").display()
    );
    std::fs::write(&config, text).ok()?;
    let mut child = tokio::process::Command::new(std::env::current_exe().ok()?)
        .arg("--config")
        .arg(&config)
        .args(["run", "--simulated", "--listen", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let pid = child.id()?.to_string();
    let mut peak = None;
    let mut anonymous = None;
    // A few passes (one a second), sampled every 100 ms for 3 s.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = runner_updater::bench::peak_memory_kib(&pid).or(peak);
        anonymous = runner_updater::bench::anonymous_kib(&pid)
            .max(anonymous)
            .or(anonymous);
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&directory);
    peak.map(|peak| (peak, anonymous))
}

/// Runs seeds `from..from + seeds`, printing progress, the fault mix and the first violation.
async fn simulate(
    from: u64,
    seeds: u64,
    settings: runner_updater::sim::dst::Settings,
    verbose: bool,
    report: bool,
) -> anyhow::Result<ExitCode> {
    use runner_updater::sim::dst;
    let started = SystemClock.now();
    let mut tally = dst::Tally::default();
    let progress_every = (seeds / 10).max(1);
    for seed in from..from.saturating_add(seeds) {
        match dst::run_seed(seed, settings, verbose).await? {
            Ok(one) => tally.add(&one),
            Err(violation) => {
                eprintln!("{violation}");
                return Ok(ExitCode::FAILURE);
            }
        }
        let done = seed - from + 1;
        if !report && done.is_multiple_of(progress_every) && done < seeds {
            let seconds = SystemClock.now().since(started).as_secs_f64().max(0.001);
            #[allow(clippy::cast_precision_loss)] // a rate for humans
            let rate = done as f64 / seconds;
            eprintln!("  {done}/{seeds} seeds, {rate:.1} seeds/s");
        }
    }
    let seconds = SystemClock.now().since(started).as_secs_f64().max(0.001);
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = tally.seeds as f64 / seconds;
    if report {
        println!("| figure | count |\n|---|---:|");
        for (name, value) in tally.rows() {
            println!("| {name} | {value} |");
        }
        println!("| invariant violations | 0 |");
        println!(
            "\nSeeds {from}..={}, {} chaos steps each; {seconds:.0} s ({rate:.1} seeds/s) on this machine.",
            from + seeds - 1,
            settings.steps
        );
    } else {
        println!(
            "{} seeds ({from}..={}) in {seconds:.1} s: {rate:.1} seeds/s; no invariant violated",
            tally.seeds,
            from + seeds - 1
        );
        println!("fault mix:");
        for (name, value) in tally.rows() {
            println!("  {name:<26} {value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `status` reads: the configured state store and, with the SSM store, the leases (the
/// file store is read without AWS, so it works with no credentials at all).
async fn status_sources(config: &Config) -> (Arc<dyn StateStore>, Option<SsmLease>) {
    if config.state_store.backend == "file" {
        return (Arc::new(FileStore::new(&config.state_store.path)), None);
    }
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm);
    (
        store_on(config, ssm.clone()),
        Some(SsmLease::new(ssm, &config.prefix)),
    )
}

/// The controller loop on the simulated AWS, paced in real time (the simulated clock follows).
async fn run_simulated(
    config: Config,
    passes: Option<u64>,
    desired: &[(String, String)],
    seed: u64,
    listen: Option<Listen>,
) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::with_config(seed, config.clone())?;
    scenario.store = Arc::new(FileStore::new(&config.state_store.path));
    for (name, version) in desired {
        if config.runner(name).is_none() {
            bail!("--desired {name}={version}: runner {name} is not configured");
        }
        // Written whole, as the release document: the controller acts on it at once.
        scenario.set_release(name, &format!("{{\"version\": {version:?}}}"));
    }
    control_loop(
        &config,
        scenario.ports(),
        passes,
        Some(scenario.aws.clock.clone()),
        listen,
    )
    .await
}

/// Where `run` serves its endpoints.
struct Listen {
    /// `--listen` (port 0: any free port).
    address: std::net::SocketAddr,
    /// `--listen-port-file`.
    port_file: Option<PathBuf>,
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

/// Runs the fleet's scheduler until interrupted (SIGINT, SIGTERM) or `passes` sweeps are
/// done. A simulated clock, when given, is advanced by the time slept.
async fn control_loop(
    config: &Config,
    ports: Ports,
    passes: Option<u64>,
    simulated: Option<SimClock>,
    listen: Option<Listen>,
) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::new());
    runner_updater::metrics::install_global(metrics.clone());
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
                // Alive while passes keep ending: three rest intervals, plus a pass's own time.
                liveness: Duration::from_secs(3 * config.poll_interval_secs + 60),
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
    let holder = lease::holder_id(&host_name(), std::process::id(), process_random());
    let crash = test_crash_plan()?;
    let drivers: Vec<RunnerDriver> = config
        .runners
        .iter()
        .map(|runner| {
            RunnerDriver::new(config, runner, &holder, ports.clone())
                .with_crash(crash)
                .with_metrics(metrics.clone())
        })
        .collect();
    tracing::info!(runners = drivers.len(), %holder, simulated = simulated.is_some(), "controller started");
    let reader = FleetReader::new(
        ports.ssm.clone(),
        ports.ecs.clone(),
        ports.clock.clone(),
        &config.prefix,
    );
    let mut scheduler = Scheduler::new(config, drivers, reader, ports.clock.clone());
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
    clock: Arc<dyn runner_updater::ports::Clock>,
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
            if matches!(error, DriverError::Crashed(_)) {
                // The test hook: die at once, without cleanup, like `kill -9`.
                eprintln!("runner-updater: {error}; aborting (RUNNER_UPDATER_TEST_CRASH)");
                std::process::abort();
            }
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
