//! `runner-updater-dev`: the dev tools, never shipped. The deterministic simulation
//! (`simulate`), the fleet benchmark (`bench`), and the controller loop with the crash hook
//! (`run`: the product's `run` on its own ports, with `RUNNER_UPDATER_TEST_CRASH` planted in them
//! by [`runner_updater_dev::crash`]), which the crash tests use.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use runner_updater::cli::run::{control_loop, prepare, RunArgs};
use runner_updater::cli::{exit_code, with_telemetry, GlobalArgs};
use runner_updater_adapters::clock::SystemClock;
use runner_updater_dev::crash::{self, CrashPoint, CRASH_VARIABLE};
use runner_updater_ports::Clock as _;

/// The dev tools of runner-updater (not shipped).
#[derive(Debug, Parser)]
#[command(name = "runner-updater-dev", version, about)]
struct DevCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: DevCommand,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
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
    /// The product's controller loop, with the crash hook: `RUNNER_UPDATER_TEST_CRASH=after_save:N`
    /// (a runner's N-th save) or `after_command:NAME` (`acquire_lock`, `register_task_definition`,
    /// `update_service`, `release_lock`) aborts the process right there.
    Run(RunArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = DevCli::parse();
    let quiet = match cli.command {
        DevCommand::Run(_) => "info",
        // The simulation injects faults by the thousand: their warnings would drown its report.
        DevCommand::Simulate { .. } => "error",
        DevCommand::Bench { .. } => "warn",
    };
    exit_code(
        "runner-updater-dev",
        with_telemetry(cli.global.log_format, quiet, Box::pin(dispatch(cli))).await,
    )
}

async fn dispatch(cli: DevCli) -> anyhow::Result<ExitCode> {
    match cli.command {
        DevCommand::Simulate {
            seed,
            from,
            seeds,
            steps,
            verbose,
            report,
        } => {
            let settings = runner_updater_dev::dst::Settings {
                steps,
                ..runner_updater_dev::dst::Settings::default()
            };
            let (from, seeds) = seed.map_or((from, seeds.max(1)), |seed| (seed, 1));
            simulate(from, seeds, settings, verbose, report).await
        }
        DevCommand::Bench {
            runners,
            latency_ms,
        } => bench(&runners, latency_ms).await,
        DevCommand::Run(args) => {
            let point = crash_point()?;
            let mut setup = prepare(cli.global.config.as_ref(), args).await?;
            if let Some(point) = point {
                tracing::warn!(%point, "a crash is planned ({CRASH_VARIABLE})");
                setup.ports = crash::plant(setup.ports, point);
            }
            control_loop(setup).await
        }
    }
}

/// The crash point `RUNNER_UPDATER_TEST_CRASH` plans, if it is set.
fn crash_point() -> anyhow::Result<Option<CrashPoint>> {
    match std::env::var(CRASH_VARIABLE) {
        Ok(text) => Ok(Some(text.parse()?)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(error) => Err(error).context(CRASH_VARIABLE),
    }
}

/// The fleet benchmark, then the idle memory of `run` with one runner (a child process).
async fn bench(sizes: &[usize], latency_ms: u64) -> anyhow::Result<ExitCode> {
    use runner_updater_dev::bench;
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
    let binary = product_binary()
        .ok_or_else(|| std::io::Error::other("no product binary"))
        .and_then(std::fs::metadata)
        .map(|m| m.len() / 1024)
        .unwrap_or_default();
    match idle_memory_kib().await {
        Some((kib, anonymous)) => println!(
            "idle memory of `runner-updater run --simulated` with one runner: {:.1} MiB resident   (target: < 20 MiB); its own (anonymous: heap, stacks): {}; the rest is the binary's pages ({}: {:.0} MiB)",
            mib(kib),
            anonymous.map_or_else(|| "?".to_owned(), |a| format!("{:.1} MiB", mib(a))),
            product_binary().map_or_else(String::new, |p| p.display().to_string()),
            mib(binary)
        ),
        None => println!("idle memory of `run`: not measured (no /proc here, or no `runner-updater` beside this binary: build the product first, `cargo build [--release] -p runner-updater`)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The product's binary, `runner-updater`, beside this one (cargo builds both into the same
/// directory): the idle memory measured is the product's, not the dev tools'. Build it first
/// (`cargo build -p runner-updater`): the path measured is printed with the figure.
fn product_binary() -> Option<std::path::PathBuf> {
    let path = std::env::current_exe()
        .ok()?
        .with_file_name("runner-updater");
    path.is_file().then_some(path)
}

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
    let mut child = tokio::process::Command::new(product_binary()?)
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
        peak = runner_updater_dev::bench::peak_memory_kib(&pid).or(peak);
        anonymous = runner_updater_dev::bench::anonymous_kib(&pid)
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
    settings: runner_updater_dev::dst::Settings,
    verbose: bool,
    report: bool,
) -> anyhow::Result<ExitCode> {
    use runner_updater_dev::dst;
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
