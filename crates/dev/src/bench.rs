//! The fleet benchmark (`runner-updater-dev bench`, `cargo dev bench`): the controller's own code on the simulated AWS
//! with 10, 1,000 and 10,000 runners, their state in the DynamoDB state table (the production
//! path), every AWS call counted by operation.
//!
//! It prints, per fleet size: AWS calls per runner per steady-state pass (by API family), the
//! pass time under an injected per-call latency next to the lower bound the rate limits impose,
//! the CPU time of a pass, the peak memory of the process, and the time an update wave across
//! the fleet takes to converge (simulated time). Then the restart-to-first-action time after a
//! crash. `runner-updater run`'s idle memory is measured by the command itself (a child process).
//!
//! The pass time is computed, not slept: the sum of a pass's call latencies shared by the
//! runners passed over at a time (`max_concurrent_runners`), held to the lower bound the rate
//! limits impose by the client-side limiter (`ratelimit`). The figures are printed next to the
//! targets of issue 8.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_adapters::dynamo::{DynamoLease, DynamoStore};
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::ratelimit::{
    limit_cfn, limit_ecs, limit_ssm, limit_table, ECS_OPERATION_LIMITS,
};
use runner_updater_adapters::sim::SimAws;
use runner_updater_adapters::sim::SIM_EPOCH;
use runner_updater_adapters::store::MemoryStore;
use runner_updater_config::{Config, ConfigError};
use runner_updater_core::domain::capacity::{
    REGISTER_TASK_DEFINITION_BURST, REGISTER_TASK_DEFINITION_PER_SEC,
};
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::scenario::create_fleet;
use runner_updater_interface::scenario::fleet_config;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    ApiFamily, Call, Clock, CloudFormation, Decorated, Ecs, Hooks, ParameterStore, PortCall,
    PortError, StateTable,
};
use runner_updater_runtime::driver::TickReport;
use runner_updater_runtime::driver::{CrashPlan, DriverError, Ports, RunnerDriver};
use runner_updater_runtime::reader::{FleetReader, ECS_BATCHES_IN_FLIGHT};
use runner_updater_runtime::scheduler::{Control, Scheduler, Wake};
use std::future::Future;
use std::pin::Pin;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The generated configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulated world could not be built, or a pass failed.
    #[error("{0}")]
    Run(String),
}

/// What the benchmark assumes of AWS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assumptions {
    /// Latency of one AWS call.
    pub latency: Duration,
    /// Calls per second allowed, per API family: SSM, ECS, CloudFormation, DynamoDB (the
    /// defaults are safely under AWS's published throttling limits: SSM `GetParametersByPath`
    /// 40/s shared with `GetParameter`, ECS `DescribeServices` 20/s sustained, CloudFormation
    /// `DescribeStacks` about 10/s; DynamoDB on demand has no such limit, 50/s is the
    /// controller's default; SQS is not limited: the events' consumer makes one long poll at a
    /// time, and no bench fleet reads it).
    pub rates: [f64; FAMILIES],
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            latency: Duration::from_millis(20),
            rates: [30.0, 15.0, 8.0, 50.0, 300.0],
        }
    }
}

/// Counts every call by operation and, when timed, makes each take the assumed latency (on
/// tokio's clock, paused in the timed run: time passes only when every task waits).
#[derive(Debug, Clone, Default)]
struct Counter {
    counts: Arc<Mutex<BTreeMap<AwsOp, u64>>>,
    latency: Option<Duration>,
}

impl Counter {
    /// Counts the SDK calls `call` makes against AWS (the one table, `PortCall::sdk_calls`),
    /// each taking the assumed latency in turn.
    async fn count(&self, call: PortCall) {
        for (operation, times) in call.sdk_calls() {
            for _ in 0..times {
                if let Ok(mut counts) = self.counts.lock() {
                    *counts.entry(operation).or_default() += 1;
                }
                if let Some(latency) = self.latency {
                    tokio::time::sleep(latency).await;
                }
            }
        }
    }

    fn take(&self) -> BTreeMap<AwsOp, u64> {
        self.counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

/// Time on tokio's clock (paused in the timed run), as a [`Clock`] for the rate limiters.
struct TokioClock {
    origin: tokio::time::Instant,
}

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Millis {
        SIM_EPOCH.after(self.origin.elapsed())
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The API families (the figures' columns).
pub const FAMILIES: usize = ApiFamily::ALL.len();

/// The position of an operation's family in `ApiFamily::ALL` (the figures' columns).
fn family_index(operation: AwsOp) -> usize {
    ApiFamily::ALL
        .iter()
        .position(|family| *family == operation.family())
        .unwrap_or(0)
}

/// The counter around every call of the simulated ports: the SDK calls each makes against
/// AWS, counted and (timed) slept through before the call.
#[async_trait]
impl Hooks for Counter {
    async fn before(&self, call: &Call<'_>) {
        self.count(call.port).await;
    }

    async fn after(&self, _call: &Call<'_>, _failed: Option<&PortError>) {}
}

/// A fleet of `runners` (one in ten with two stacks) on a fresh simulated AWS, its state in
/// the DynamoDB state table (the production path), run by the controller's scheduler.
struct Fleet {
    aws: SimAws,
    config: Config,
    scheduler: Scheduler,
    counter: Counter,
    /// Fleet reads made, and their calls (SSM pages, `DescribeServices` calls).
    reads: Vec<(usize, usize)>,
    /// Resident memory once the simulated world was built, before the controller (KiB).
    world_kib: Option<u64>,
    /// Bytes the simulated SSM and state table held then.
    stored_bytes: u64,
    /// SSM parameters the fleet needs: on the state table (ops' desired state), and what it
    /// would need on the SSM store (records and leases too).
    ssm_parameters: (usize, usize),
}

impl Fleet {
    /// A fleet; `timed`: every call takes the assumed latency on tokio's clock and goes through
    /// the client-side rate limiters at the assumed rates, as in `run`.
    fn new(runners: usize, timed: Option<Assumptions>) -> Result<Fleet, BenchError> {
        let config = Config::from_toml(&fleet_config(runners, 4, 10))?;
        let aws = SimAws::new(1);
        create_fleet(&aws, &config, "2.13.0").map_err(|e| BenchError::Run(e.to_string()))?;
        // The simulated AWS shares the process: what it holds is measured here, and the peak
        // from here on is the controller's (plus the world's answers to it).
        let world_kib = resident_kib("self");
        let stored_bytes = aws.ssm.stored_bytes() + aws.table.stored_bytes();
        let ssm_parameters = {
            use runner_updater_core::domain::capacity::{ParameterNeed, STANDARD_PARAMETERS_MAX};
            let names = aws.ssm.names();
            let runners: Vec<&str> = config.runners.iter().map(|r| r.name.as_str()).collect();
            let need = |in_ssm| {
                ParameterNeed::count(
                    names.iter().map(String::as_str),
                    &config.prefix,
                    &runners,
                    in_ssm,
                    STANDARD_PARAMETERS_MAX,
                )
                .total()
            };
            (need(false), need(true))
        };
        reset_peak();
        let counter = Counter {
            latency: timed.map(|t| t.latency),
            ..Counter::default()
        };
        let ssm: Arc<dyn ParameterStore> = Arc::new(aws.ssm.clone());
        let ecs: Arc<dyn Ecs> = Arc::new(aws.ecs.clone());
        let cfn: Arc<dyn CloudFormation> = Arc::new(aws.cfn.clone());
        let mut ssm: Arc<dyn ParameterStore> = Arc::new(Decorated::new(ssm, counter.clone()));
        let mut ecs: Arc<dyn Ecs> = Arc::new(Decorated::new(ecs, counter.clone()));
        let mut cfn: Arc<dyn CloudFormation> = Arc::new(Decorated::new(cfn, counter.clone()));
        let table: Arc<dyn StateTable> = Arc::new(aws.table.clone());
        let mut table: Arc<dyn StateTable> = Arc::new(Decorated::new(table, counter.clone()));
        if let Some(timed) = timed {
            let clock: Arc<dyn Clock> = Arc::new(TokioClock {
                origin: tokio::time::Instant::now(),
            });
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole rates
            let [ssm_rate, ecs_rate, cfn_rate, table_rate, _sqs] =
                timed.rates.map(|rate| rate.round() as u32);
            ssm = Arc::new(limit_ssm(ssm, ssm_rate, clock.clone()));
            ecs = Arc::new(limit_ecs(ecs, ecs_rate, clock.clone()));
            cfn = Arc::new(limit_cfn(cfn, cfn_rate, clock.clone()));
            table = Arc::new(limit_table(table, table_rate, clock.clone()));
        }
        let clock: Arc<dyn Clock> = Arc::new(aws.clock.clone());
        let ports = Ports {
            ssm,
            ecs,
            cfn,
            lock: Arc::new(DynamoLease::new(table.clone())),
            store: Arc::new(DynamoStore::new(table, "bench", clock.clone())),
            clock,
        };
        let drivers = config
            .runners
            .iter()
            .map(|runner| RunnerDriver::new(&config, runner, "bench", ports.clone()))
            .collect();
        let reader = FleetReader::new(
            ports.ssm.clone(),
            ports.ecs.clone(),
            ports.clock.clone(),
            &config.prefix,
        );
        // Wired as `run` wires it (the fleet's runners follow channel stable, which has no
        // release here: what serving channels costs a fleet that does not use them).
        let channels = runner_updater_runtime::channels::Channels::new(
            &config,
            "bench",
            ports.store.clone(),
            ports.lock.clone(),
            ports.clock.clone(),
            ports.ssm.clone(),
        );
        let scheduler =
            Scheduler::new(&config, drivers, reader, ports.clock.clone()).with_channels(channels);
        Ok(Fleet {
            aws,
            config,
            scheduler,
            counter,
            reads: Vec::new(),
            world_kib,
            stored_bytes,
            ssm_parameters,
        })
    }

    /// One round of the scheduler (a sweep of the runners at rest when `sweep`, and every
    /// runner in an attempt that is due), then `interval` of time. Returns the runners at rest.
    async fn pass(&mut self, sweep: bool, interval: Duration) -> Result<usize, BenchError> {
        let mut failures = Failures::default();
        let (resting, snapshot) = self.scheduler.step(sweep, &mut failures).await;
        if let Some(snapshot) = snapshot {
            self.reads.push(snapshot.calls);
        }
        if let Some(failure) = failures.first {
            return Err(BenchError::Run(failure));
        }
        self.aws.clock.advance(interval);
        Ok(resting)
    }
}

/// Remembers the first failed pass.
#[derive(Default)]
struct Failures {
    first: Option<String>,
}

impl Control for Failures {
    fn wait(&mut self, _timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async { Wake::Stop })
    }
    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        if let Err(error) = result {
            self.first
                .get_or_insert_with(|| format!("{}: {error}", driver.runner()));
        }
    }
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
#[must_use]
pub fn peak_memory_kib(pid: &str) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident memory of a process now (`VmRSS`), in KiB.
#[must_use]
pub fn resident_kib(pid: &str) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Anonymous memory of a process (heap, stacks: what is its own, not the binary's pages), in
/// KiB, from `/proc/<pid>/smaps_rollup`.
#[must_use]
pub fn anonymous_kib(pid: &str) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets this process's peak resident memory to what it holds now (Linux `clear_refs` 5), so
/// that the next `VmHWM` is the peak of what follows. Best effort.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The figures of one fleet size.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetFigures {
    /// Runners.
    pub runners: usize,
    /// Calls per runner in a steady-state pass, by operation.
    pub calls_per_runner: BTreeMap<&'static str, f64>,
    /// Calls in a steady-state pass, per API family (averaged, rounded).
    pub calls_by_family: [u64; FAMILIES],
    /// Steady-state passes averaged.
    pub passes: u32,
    /// A steady-state sweep's time, measured (on tokio's paused clock) with every call taking
    /// the assumed latency and the client-side limiters at the assumed rates.
    pub pass_time: Duration,
    /// Runners passed over at a time (`max_concurrent_runners`).
    pub concurrent: u32,
    /// The pass's calls' latency alone, `concurrent` at a time.
    pub latency_time: Duration,
    /// The lower bound the rate limits put on the calls of the timed sweeps.
    pub rate_bound: Duration,
    /// CPU time of a steady-state pass.
    pub cpu_per_pass: Option<Duration>,
    /// Peak memory of the benchmark process since its world was built, after the update wave
    /// (KiB; the simulated AWS included).
    pub peak_memory_kib: Option<u64>,
    /// Resident memory of the simulated world alone (KiB).
    pub world_memory_kib: Option<u64>,
    /// The controller's peak over the world during the steady-state passes (KiB).
    pub controller_peak_kib: Option<u64>,
    /// Scheduler rounds (one per active interval) until an update wave converged.
    pub wave_passes: usize,
    /// Simulated time an update wave took to converge.
    pub wave_time: Duration,
    /// Calls per runner during the wave.
    pub wave_calls_per_runner: f64,
    /// Calls per runner during the wave, by operation.
    pub wave_per_operation: BTreeMap<&'static str, f64>,
    /// The lower bound the rate limits put on the wave's calls.
    pub wave_rate_bound: Duration,
    /// The wave measured on tokio's paused clock with rollouts, soak, the assumed latency and
    /// the client-side limiters (`RegisterTaskDefinition`'s pace included), by the
    /// controller's own loop (`Scheduler::run`): its time, and the same measure of one
    /// runner's update (a rollout and its soak).
    pub wave_measured: Option<(Duration, Duration)>,
    /// SSM parameters the fleet needs on the state table, and on the SSM store.
    pub ssm_parameters: (usize, usize),
}

/// Measures one fleet size.
///
/// # Errors
/// When the fleet cannot be built or a pass fails.
pub async fn measure(runners: usize, assumptions: Assumptions) -> Result<FleetFigures, BenchError> {
    let mut fleet = Fleet::new(runners, None)?;
    let steady = steady_state(&mut fleet, runners, assumptions).await?;
    let (wave_passes, wave_time) = update_wave(&mut fleet, runners).await?;
    let process_peak_kib = peak_memory_kib("self");
    let world_memory_kib = fleet.world_kib;
    let ssm_parameters = fleet.ssm_parameters;
    let wave_counts = fleet.counter.take();
    drop(fleet);
    // The sweep as `run` makes it, timed with the latency and the limiters, and the bound the
    // rates put on the calls it made (on a fleet of its own, this one dropped first).
    let (pass_time, rate_bound) = timed_sweep(runners, assumptions).await?;
    let wave = WaveCalls::of(&wave_counts, runners, assumptions);
    let wave_measured = if runners >= WAVE_TIMED_FROM {
        Some((
            timed_wave(runners, assumptions).await?,
            timed_wave(1, assumptions).await?,
        ))
    } else {
        None
    };
    Ok(FleetFigures {
        runners,
        calls_per_runner: steady.calls_per_runner,
        calls_by_family: steady.calls_by_family,
        passes: steady.passes,
        pass_time,
        latency_time: steady.latency_time,
        concurrent: steady.concurrent,
        rate_bound,
        cpu_per_pass: steady.cpu_per_pass,
        peak_memory_kib: process_peak_kib,
        world_memory_kib,
        controller_peak_kib: steady.controller_peak_kib,
        wave_passes,
        wave_time,
        wave_calls_per_runner: wave.per_runner,
        wave_per_operation: wave.per_operation,
        wave_rate_bound: wave.rate_bound,
        wave_measured,
        ssm_parameters,
    })
}

/// What the steady state measured.
struct Steady {
    calls_per_runner: BTreeMap<&'static str, f64>,
    calls_by_family: [u64; FAMILIES],
    passes: u32,
    latency_time: Duration,
    concurrent: u32,
    cpu_per_pass: Option<Duration>,
    controller_peak_kib: Option<u64>,
}

/// The first pass, then the steady state's passes, counted and timed.
async fn steady_state(
    fleet: &mut Fleet,
    runners: usize,
    assumptions: Assumptions,
) -> Result<Steady, BenchError> {
    let rest = Duration::from_secs(fleet.config.poll_interval_secs);
    // First pass: records loaded (none yet), stacks read, every runner at rest.
    fleet.pass(true, rest).await?;
    let _ = fleet.counter.take();
    // Steady state: the average of the passes over one stack refresh period and a half (so the
    // stacks re-read now and then are in the figure).
    let passes = u32::try_from(
        (fleet.config.stack_refresh_secs * 3 / 2).div_ceil(fleet.config.poll_interval_secs.max(1)),
    )
    .unwrap_or(15)
    .max(1);
    let reads_before = fleet.reads.len();
    let cpu_before = cpu_time();
    for _ in 0..passes {
        fleet.pass(true, rest).await?;
    }
    let cpu_after = cpu_time();
    // What the controller wrote to the table (its records) is AWS's memory, not the
    // controller's: the world's growth is counted at the bytes stored (a lower bound).
    let stored = fleet.aws.ssm.stored_bytes() + fleet.aws.table.stored_bytes();
    let ssm_growth_kib = stored.saturating_sub(fleet.stored_bytes) / 1024;
    let controller_peak_kib = peak_memory_kib("self")
        .zip(fleet.world_kib)
        .map(|(peak, world)| peak.saturating_sub(world).saturating_sub(ssm_growth_kib));
    let counts = fleet.counter.take();
    #[allow(clippy::cast_precision_loss)] // averages for a report
    let per_pass = |count: u64| count as f64 / f64::from(passes);
    let mut calls_by_family = [0.0_f64; FAMILIES];
    for (operation, count) in &counts {
        calls_by_family[family_index(*operation)] += per_pass(*count);
    }
    #[allow(clippy::cast_precision_loss)] // ratios for a report
    let per_runner = |count: f64| count / runners as f64;
    let calls_per_runner = counts
        .iter()
        .map(|(operation, count)| (operation.name(), per_runner(per_pass(*count))))
        .collect();
    // The pass's latency: the fleet read's SSM pages are a chain (each page's token comes
    // from the one before), its DescribeServices batches run a few at a time, and the
    // runners' own calls (stacks now and then) `max_concurrent_runners` at a time.
    let concurrent = u32::try_from(fleet.config.max_concurrent_runners.max(1)).unwrap_or(1);
    let reads = &fleet.reads[reads_before..];
    #[allow(clippy::cast_precision_loss)] // averages for a report
    let (pages, batches) = (
        reads.iter().map(|r| r.0).sum::<usize>() as f64 / f64::from(passes),
        reads.iter().map(|r| r.1).sum::<usize>() as f64 / f64::from(passes),
    );
    let total: f64 = calls_by_family.iter().sum();
    let own = (total - pages - batches).max(0.0);
    let latency = assumptions.latency.as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // seconds for a report
    let read_latency = (pages * latency).max(batches * latency / ECS_BATCHES_IN_FLIGHT as f64);
    let latency_time =
        Duration::from_secs_f64(read_latency + own * latency / f64::from(concurrent));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // whole calls
    let calls_by_family = calls_by_family.map(|c| c.round() as u64);

    let cpu_per_pass = cpu_before
        .zip(cpu_after)
        .map(|(a, b)| b.saturating_sub(a) / passes);
    Ok(Steady {
        calls_per_runner,
        calls_by_family,
        passes,
        latency_time,
        concurrent,
        cpu_per_pass,
        controller_peak_kib,
    })
}

/// An update wave to Done; returns its rounds and its simulated time.
async fn update_wave(fleet: &mut Fleet, runners: usize) -> Result<(usize, Duration), BenchError> {
    let rest = Duration::from_secs(fleet.config.poll_interval_secs);
    // An update wave: every runner asked for 2.14.0 at once. The scheduler's time: runners in
    // an attempt every active interval, a sweep of those at rest every poll interval.
    for runner in &fleet.config.runners {
        fleet.aws.ssm.set(
            &format!("{}/{}/desired/version", fleet.config.prefix, runner.name),
            "2.14.0",
        );
    }
    let active = Duration::from_secs(fleet.config.active_poll_interval_secs);
    let started = fleet.aws.clock.now();
    let mut last_sweep: Option<runner_updater_core::domain::Millis> = None;
    let mut wave_passes = 0;
    loop {
        wave_passes += 1;
        let now = fleet.aws.clock.now();
        let sweep = last_sweep.is_none_or(|at| now.since(at) >= rest);
        if sweep {
            last_sweep = Some(now);
        }
        let resting = fleet.pass(sweep, active).await?;
        let done = fleet
            .scheduler
            .drivers()
            .filter(|d| d.record().is_some_and(|r| r.phase == Phase::Done.name()))
            .count();
        if resting == runners && done == runners {
            break;
        }
        if wave_passes > 500 {
            return Err(BenchError::Run(format!(
                "the wave did not converge in 500 rounds ({done} of {runners} done)"
            )));
        }
    }
    Ok((wave_passes, fleet.aws.clock.now().since(started)))
}

/// The wave's calls: per runner, per operation, and the bound the rates put on them.
struct WaveCalls {
    per_runner: f64,
    per_operation: BTreeMap<&'static str, f64>,
    rate_bound: Duration,
}

impl WaveCalls {
    fn of(counts: &BTreeMap<AwsOp, u64>, runners: usize, assumptions: Assumptions) -> WaveCalls {
        let calls: u64 = counts.values().sum();
        let mut by_family = [0_u64; FAMILIES];
        for (operation, count) in counts {
            by_family[family_index(*operation)] += count;
        }
        #[allow(clippy::cast_precision_loss)] // seconds for a report
        let family_bound = by_family
            .iter()
            .zip(assumptions.rates)
            .map(|(calls, rate)| Duration::from_secs_f64(*calls as f64 / rate))
            .max()
            .unwrap_or_default();
        // The operations AWS limits more tightly than their family (the limiter holds them to
        // it too): `RegisterTaskDefinition` at 1/s is the bound of any large wave.
        #[allow(clippy::cast_precision_loss)] // seconds for a report
        let operation_bound = ECS_OPERATION_LIMITS
            .iter()
            .map(|(operation, rate, burst)| {
                let calls = counts.get(operation).copied().unwrap_or(0) as f64;
                Duration::from_secs_f64((calls - burst).max(0.0) / rate)
            })
            .max()
            .unwrap_or_default();
        let rate_bound = family_bound.max(operation_bound);
        #[allow(clippy::cast_precision_loss)] // ratios for a report
        let per_operation = counts
            .iter()
            .map(|(operation, count)| (operation.name(), *count as f64 / runners as f64))
            .collect();
        #[allow(clippy::cast_precision_loss)] // a ratio for a report
        let per_runner = calls as f64 / runners as f64;
        WaveCalls {
            per_runner,
            per_operation,
            rate_bound,
        }
    }
}

/// Steady-state sweeps timed: every call takes the assumed latency and goes through the
/// client-side limiters at the assumed rates, as in `run`. Measured on tokio's paused clock
/// (time passes only when every task waits), in a thread of its own. Returns the mean sweep
/// time and the lower bound the rates put on the calls the sweeps made.
///
/// # Errors
/// When the fleet cannot be built, a pass fails, or the thread dies.
pub async fn timed_sweep(
    runners: usize,
    assumptions: Assumptions,
) -> Result<(Duration, Duration), BenchError> {
    in_a_thread("the timed sweep", move || {
        timed_sweep_on_paused_clock(runners, assumptions)
    })
    .await
}

/// Runs `job` in a thread of its own (a runtime on tokio's paused clock cannot share this
/// one's), waiting for its answer.
async fn in_a_thread<T: Send + 'static>(
    what: &'static str,
    job: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
) -> Result<T, BenchError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(job());
    });
    receiver
        .await
        .map_err(|_| BenchError::Run(format!("{what}'s thread died")))?
}

/// A runtime on tokio's paused clock: time passes only when every task waits.
fn paused_runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| BenchError::Run(e.to_string()))
}

fn timed_sweep_on_paused_clock(
    runners: usize,
    assumptions: Assumptions,
) -> Result<(Duration, Duration), BenchError> {
    const SWEEPS: u32 = 3;
    let runtime = paused_runtime()?;
    runtime.block_on(async move {
        let mut fleet = Fleet::new(runners, Some(assumptions))?;
        let rest = Duration::from_secs(fleet.config.poll_interval_secs);
        // The first sweep loads the records and reads the stacks: not steady state.
        fleet.pass(true, rest).await?;
        tokio::time::sleep(rest).await;
        let _ = fleet.counter.take();
        let mut measured = Duration::ZERO;
        for _ in 0..SWEEPS {
            let started = tokio::time::Instant::now();
            fleet.pass(true, rest).await?;
            measured += started.elapsed();
            // The next sweep starts a poll interval later: the buckets are full again.
            tokio::time::sleep(rest).await;
        }
        let mut by_family = [0_u64; FAMILIES];
        for (operation, count) in fleet.counter.take() {
            by_family[family_index(operation)] += count;
        }
        // A bucket holds one second of calls (it is full when a sweep starts): the rest of a
        // family's calls cannot go faster than its rate.
        #[allow(clippy::cast_precision_loss)] // seconds for a report
        let bound = by_family
            .iter()
            .zip(assumptions.rates)
            .map(|(calls, rate)| {
                let per_sweep = *calls as f64 / f64::from(SWEEPS);
                Duration::from_secs_f64((per_sweep - rate).max(0.0) / rate)
            })
            .max()
            .unwrap_or_default();
        Ok((measured / SWEEPS, bound))
    })
}

/// The fleet sizes whose update wave is also measured on the paused clock (smaller ones are
/// all burst).
const WAVE_TIMED_FROM: usize = 1_000;

/// An update wave measured: every runner asked for a new version at once, the controller's own
/// loop (`Scheduler::run`, its gate reads and pacing included) on tokio's paused clock, every
/// call taking the assumed latency and going through the client-side limiters at the assumed
/// rates. The simulated world's clock follows tokio's (within 100 ms), so rollouts and soaks
/// run while the calls wait. Returns the time until every runner is Done.
///
/// # Errors
/// When the fleet cannot be built, a pass fails, the wave does not converge in a day of
/// simulated time, or the thread dies.
pub async fn timed_wave(runners: usize, assumptions: Assumptions) -> Result<Duration, BenchError> {
    in_a_thread("the timed wave", move || {
        timed_wave_on_paused_clock(runners, assumptions)
    })
    .await
}

fn timed_wave_on_paused_clock(
    runners: usize,
    assumptions: Assumptions,
) -> Result<Duration, BenchError> {
    let runtime = paused_runtime()?;
    runtime.block_on(async move {
        let mut fleet = Fleet::new(runners, Some(assumptions))?;
        // The world's clock follows tokio's.
        let world = fleet.aws.clock.clone();
        let origin = tokio::time::Instant::now();
        let follower = tokio::spawn(async move {
            let mut followed = Duration::ZERO;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let elapsed = origin.elapsed();
                world.advance(elapsed.saturating_sub(followed));
                followed = elapsed;
            }
        });
        let rest = Duration::from_secs(fleet.config.poll_interval_secs);
        // At rest first: records loaded, stacks read.
        fleet.pass(true, Duration::ZERO).await?;
        tokio::time::sleep(rest).await;
        for runner in &fleet.config.runners {
            fleet.aws.ssm.set(
                &format!("{}/{}/desired/version", fleet.config.prefix, runner.name),
                "2.14.0",
            );
        }
        let started = tokio::time::Instant::now();
        let mut control = WaveControl {
            runners,
            done: std::collections::HashSet::new(),
            failure: None,
            deadline: started + Duration::from_hours(24),
        };
        fleet.scheduler.run(&mut control, None).await;
        follower.abort();
        if let Some(failure) = control.failure {
            return Err(BenchError::Run(failure));
        }
        if control.done.len() < runners {
            return Err(BenchError::Run(format!(
                "the timed wave did not converge in a day ({} of {runners} done)",
                control.done.len()
            )));
        }
        Ok(started.elapsed())
    })
}

/// The controller's loop in the timed wave: waits on tokio's clock, stops once every runner is
/// Done (or at the deadline), remembers the first failed pass.
struct WaveControl {
    runners: usize,
    done: std::collections::HashSet<String>,
    failure: Option<String>,
    deadline: tokio::time::Instant,
}

impl Control for WaveControl {
    fn wait(&mut self, timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async move {
            if self.done.len() >= self.runners
                || self.failure.is_some()
                || tokio::time::Instant::now() >= self.deadline
            {
                return Wake::Stop;
            }
            tokio::time::sleep(timeout.max(Duration::from_millis(1))).await;
            Wake::Timeout
        })
    }
    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        if let Err(error) = result {
            self.failure
                .get_or_insert_with(|| format!("{}: {error}", driver.runner()));
        }
        if driver.at_rest()
            && driver
                .record()
                .is_some_and(|r| r.phase == Phase::Done.name())
        {
            self.done.insert(driver.runner().to_owned());
        }
    }
}

/// Time from a restart (the record of an attempt in flight loaded, the dead process's lease
/// taken over) to its first resumed action, on the simulated AWS (no AWS latency): the
/// controller's own share.
///
/// # Errors
/// When the crash cannot be staged.
pub async fn resume_time() -> Result<Duration, BenchError> {
    let fleet = Fleet::new(1, None)?;
    let runner = fleet.config.runners[0].clone();
    fleet.aws.ssm.set(
        &format!("{}/{}/desired/version", fleet.config.prefix, runner.name),
        "2.14.0",
    );
    let plan = CrashPlan {
        after_command_where: Some(|c| {
            matches!(
                c,
                runner_updater_core::machine::Command::RegisterTaskDefinition { .. }
            )
        }),
        ..CrashPlan::default()
    };
    let ports = fleet_ports(&fleet);
    let mut first =
        RunnerDriver::new(&fleet.config, &runner, "bench", ports.clone()).with_crash(plan);
    for _ in 0..10 {
        match first.tick().await {
            Err(DriverError::Crashed(_)) => break,
            Ok(_) => fleet.aws.clock.advance(Duration::from_secs(10)),
            Err(error) => return Err(BenchError::Run(error.to_string())),
        }
    }
    // The restarted process: a new identity, once the dead one's lease expired (what a real
    // restart waits for); its first pass is timed, up to the resumed call.
    fleet.aws.clock.advance(
        Duration::from_secs(fleet.config.lease_secs)
            + runner_updater_adapters::lease::CLOCK_SKEW_TOLERANCE
            + Duration::from_secs(1),
    );
    let mut second = RunnerDriver::new(&fleet.config, &runner, "bench-2", ports);
    let clock = runner_updater_adapters::clock::SystemClock;
    let started = clock.now();
    let report = second
        .tick()
        .await
        .map_err(|e| BenchError::Run(e.to_string()))?;
    let elapsed = clock.now().since(started);
    if report.commands.is_empty() {
        return Err(BenchError::Run("the resumed pass did nothing".to_owned()));
    }
    Ok(elapsed)
}

fn fleet_ports(fleet: &Fleet) -> Ports {
    let ssm: Arc<dyn ParameterStore> = Arc::new(fleet.aws.ssm.clone());
    Ports {
        ssm: ssm.clone(),
        ecs: Arc::new(fleet.aws.ecs.clone()),
        cfn: Arc::new(fleet.aws.cfn.clone()),
        lock: Arc::new(SsmLease::new(ssm, &fleet.config.prefix)),
        store: Arc::new(MemoryStore::new()),
        clock: Arc::new(fleet.aws.clock.clone()),
    }
}

/// The report of several fleet sizes, with the targets beside the figures.
#[must_use]
#[allow(clippy::cast_precision_loss)] // figures for a report
pub fn render(figures: &[FleetFigures], assumptions: &Assumptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "assumed: {} ms per AWS call; rate limits SSM {}/s, ECS {}/s, CloudFormation {}/s, DynamoDB {}/s; state in the DynamoDB table",
        assumptions.latency.as_millis(),
        assumptions.rates[0],
        assumptions.rates[1],
        assumptions.rates[2],
        assumptions.rates[3]
    );
    for f in figures {
        let _ = writeln!(out, "\n{} runners", f.runners);
        let total: f64 = f.calls_per_runner.values().sum();
        let _ = writeln!(
            out,
            "  AWS calls per runner per steady-state pass: {total:.3}   (target at 1,000: <= 0.6; the average of {} passes)",
            f.passes
        );
        for (operation, per) in &f.calls_per_runner {
            let _ = writeln!(out, "    {operation:<24} {per:.3}");
        }
        for (name, calls) in ApiFamily::ALL
            .iter()
            .map(|f| f.name())
            .zip(f.calls_by_family)
        {
            let _ = writeln!(out, "    {name:<24} {calls} calls a pass");
        }
        render_events_at_rest(&mut out, f.runners, total);
        // Below a second of calls per family the limiter does not bind: the ratio is to the
        // latency alone then.
        #[allow(clippy::cast_precision_loss)] // a ratio for a report
        let ratio = f.pass_time.as_secs_f64()
            / f.rate_bound
                .max(f.latency_time)
                .as_secs_f64()
                .max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "  sweep time, measured with {} ms a call and the limiters: {:.2} s (its calls' latency alone, the fleet read's pages in a chain and the runners' own calls {} at a time: {:.2} s); rate-limit bound {:.2} s (the buckets' first second of calls free); ratio to the larger of the two {ratio:.2}   (target: <= 1.25)",
            assumptions.latency.as_millis(),
            f.pass_time.as_secs_f64(),
            f.concurrent,
            f.latency_time.as_secs_f64(),
            f.rate_bound.as_secs_f64(),
        );
        let fits = |n: usize| {
            use runner_updater_core::domain::capacity::{
                Fit, ParameterNeed, STANDARD_PARAMETERS_MAX,
            };
            let need = ParameterNeed {
                existing: n,
                to_create: 0,
                limit: STANDARD_PARAMETERS_MAX,
            };
            match need.verdict() {
                Fit::Fits => "fits the Standard tier's 10,000 per account and region",
                Fit::Near => "near the Standard tier's 10,000 per account and region: run warns",
                Fit::Over => {
                    "over the Standard tier's 10,000 per account and region: the Advanced tier"
                }
            }
        };
        let _ = writeln!(
            out,
            "  SSM parameters the fleet needs: {} on the state table ({}); {} on the SSM store ({})",
            f.ssm_parameters.0,
            fits(f.ssm_parameters.0),
            f.ssm_parameters.1,
            fits(f.ssm_parameters.1)
        );
        let _ = writeln!(
            out,
            "  CPU time of a pass: {}",
            f.cpu_per_pass
                .map_or_else(|| "?".to_owned(), |c| format!("{} ms", c.as_millis()))
        );
        let mib = |kib: Option<u64>| {
            kib.map_or_else(
                || "?".to_owned(),
                |k| format!("{:.1} MiB", k as f64 / 1024.0),
            )
        };
        let _ = writeln!(
            out,
            "  peak memory of the controller at rest: {}   (target at 10,000: < 100 MiB; the process's peak over the simulated world, which holds {} itself)",
            mib(f.controller_peak_kib),
            mib(f.world_memory_kib)
        );
        let _ = writeln!(
            out,
            "  peak memory of the process after the update wave: {} (world included)",
            mib(f.peak_memory_kib)
        );
        render_wave(&mut out, f, assumptions);
    }
    out
}

/// What change events save at rest: the sweeps' calls per runner per hour at the default
/// `poll_interval_secs`, and with events at the default backstop interval plus the queue's
/// long polls (an empty one every `events.wait_secs`, shared by the fleet).
#[allow(clippy::cast_precision_loss)] // figures for a report
fn render_events_at_rest(out: &mut String, runners: usize, per_pass: f64) {
    let Ok(defaults) = runner_updater_config::Config::from_toml("") else {
        return;
    };
    let per_hour = |interval: u64| 3600.0 / interval.max(1) as f64;
    let polling = per_pass * per_hour(defaults.poll_interval_secs);
    let sweeps = per_pass * per_hour(defaults.events.backstop_interval_secs);
    let receives = per_hour(defaults.events.wait_secs) / runners.max(1) as f64;
    let _ = writeln!(
        out,
        "  AWS calls at rest per runner per hour: {polling:.1} with a sweep every {} s; with change events {:.2} (a sweep every {} s: {sweeps:.2}; the queue's long polls, {:.0} an hour for the fleet: {receives:.3}): {:.1}x fewer   (target: reduced by the ratio of the intervals, {:.0}x)",
        defaults.poll_interval_secs,
        sweeps + receives,
        defaults.events.backstop_interval_secs,
        per_hour(defaults.events.wait_secs),
        polling / (sweeps + receives).max(f64::MIN_POSITIVE),
        defaults.events.backstop_interval_secs as f64 / defaults.poll_interval_secs.max(1) as f64,
    );
}

/// The update wave's lines of the report.
#[allow(clippy::cast_precision_loss)] // figures for a report
fn render_wave(out: &mut String, f: &FleetFigures, assumptions: &Assumptions) {
    let wave_latency =
        assumptions.latency.as_secs_f64() * f.wave_calls_per_runner * f.runners as f64
            / f64::from(f.concurrent);
    let _ = writeln!(
            out,
            "  update wave (every runner asked for a new version at once): {} rounds of the scheduler, {:.0} s of simulated time (rollouts and soak); {:.1} calls per runner; time to converge at least {:.0} s (the rate limits' bound on its calls; their latency alone, {} at a time: {:.0} s)",
            f.wave_passes,
            f.wave_time.as_secs_f64(),
            f.wave_calls_per_runner,
            f.wave_time.max(f.wave_rate_bound).as_secs_f64(),
            f.concurrent,
            wave_latency
        );
    if let Some((measured, one)) = f.wave_measured {
        let register = (f.runners as f64 - REGISTER_TASK_DEFINITION_BURST).max(0.0)
            / REGISTER_TASK_DEFINITION_PER_SEC;
        let ideal = register.max(one.as_secs_f64());
        let _ = writeln!(
            out,
            "  update wave measured (the controller's loop on the paused clock: rollouts, soak, {} ms a call, the limiters and RegisterTaskDefinition's pace): {:.0} s; RegisterTaskDefinition's bound {register:.0} s, one runner's update {:.0} s; ratio to the larger {:.2}   (target: <= 1.1)",
            assumptions.latency.as_millis(),
            measured.as_secs_f64(),
            one.as_secs_f64(),
            measured.as_secs_f64() / ideal.max(f64::MIN_POSITIVE)
        );
    }
    let mut heaviest: Vec<(&&str, &f64)> = f.wave_per_operation.iter().collect();
    heaviest.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> = heaviest
        .iter()
        .take(10)
        .map(|(operation, per)| format!("{operation} {per:.1}"))
        .collect();
    let _ = writeln!(out, "    per runner: {}", parts.join(", "));
}

#[cfg(test)]
mod wave_tests {
    use super::*;

    #[test]
    fn a_timed_wave_of_a_few_runners_converges() {
        // Three runners: the registrations' burst, a rollout and a soak (60 s), reads between.
        let took = timed_wave_on_paused_clock(3, Assumptions::default()).unwrap();
        assert!(
            took > Duration::from_mins(1) && took < Duration::from_mins(10),
            "{took:?}"
        );
    }

    /// The benchmark as `runner-updater-dev bench` runs it, on a small fleet: every part of it
    /// still runs (it is not in CI otherwise).
    #[tokio::test]
    async fn the_benchmark_runs_on_a_small_fleet() {
        let figures = measure(10, Assumptions::default()).await.unwrap();
        assert!(figures.wave_calls_per_runner > 0.0);
        assert!(resume_time().await.unwrap() < Duration::from_secs(1));
    }
}
