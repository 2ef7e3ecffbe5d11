//! The fleet: batched reads at rest, stacks read only when they can have changed, and the
//! scheduler that never waits for a slow runner. On the simulated AWS, counting its calls.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runner_updater_config::{Config, RunnerConfig};
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::record::Record;
use runner_updater_interface::scenario::{fleet_config, Scenario};
use runner_updater_ports::AwsOp;
use runner_updater_ports::{Clock, Ecs, ErrorKind, ParameterStore, StateStore, StoreError};
use runner_updater_runtime::driver::{DriverError, Ports, RunnerDriver, TickReport};
use runner_updater_runtime::reader::{FleetReader, FleetSnapshot};
use runner_updater_runtime::scheduler::{Control, Scheduler, Wake};

/// `runners` runners over two clusters; one in ten (runner-00 first) has two stacks.
/// Desired values are acted on as soon as they are read (`settle_secs = 0`): these tests are
/// about reads and scheduling, not the settle (which has its own test below).
fn fleet(runners: usize) -> Scenario {
    let mut config = Config::from_toml(&fleet_config(runners, 2, 10)).unwrap();
    config.settle_secs = 0;
    Scenario::with_config(7, config).unwrap()
}

fn reader(s: &Scenario) -> FleetReader {
    let ports = s.ports();
    FleetReader::new(ports.ssm, ports.ecs, ports.clock, &s.config.prefix)
}

fn all(s: &Scenario) -> Vec<&RunnerConfig> {
    s.config.runners.iter().collect()
}

#[tokio::test]
async fn a_fleet_read_batches_its_calls_and_holds_what_each_runner_would_read() {
    let s = fleet(25);
    // Parameters that are not a runner's desired folder are read past, not handed out.
    s.aws.ssm.set("/runner-updater/runner-03/status", "{}");
    s.aws
        .ssm
        .set("/runner-updater/not-configured/desired/version", "9.9.9");
    s.set_desired("runner-04", "channel", "beta");
    // The release document is part of the runner's desired state.
    s.set_release("runner-05", r#"{"version": "2.14.0"}"#);
    let parameters = s
        .aws
        .ssm
        .get_by_path("/runner-updater")
        .await
        .unwrap()
        .len();
    let (pages_before, batches_before) = (
        s.aws.ssm.faults.calls(AwsOp::GetParametersByPath),
        s.aws.ecs.faults.calls(AwsOp::DescribeServices),
    );

    let mut snapshot = reader(&s).read(&all(&s)).await;

    // SSM: one page per ten parameters; ECS: 13 and 12 services in two clusters, ten a call.
    assert_eq!(snapshot.calls.0, parameters.div_ceil(10));
    assert_eq!(
        s.aws.ssm.faults.calls(AwsOp::GetParametersByPath) - pages_before,
        u64::try_from(parameters.div_ceil(10)).unwrap()
    );
    assert_eq!(snapshot.calls.1, 4);
    assert_eq!(
        s.aws.ecs.faults.calls(AwsOp::DescribeServices) - batches_before,
        4
    );
    for runner in &s.config.runners {
        let part = snapshot.take(&runner.name).expect("every runner asked for");
        let folder = format!("/runner-updater/{}/", runner.name);
        let own: BTreeMap<String, String> = s
            .aws
            .ssm
            .get_by_path(&folder)
            .await
            .unwrap()
            .into_iter()
            .map(|(name, value)| (name.strip_prefix(&folder).unwrap().to_owned(), value))
            .filter(|(name, _)| runner_updater_core::domain::desired::is_desired_name(name))
            .collect();
        let part_desired = part.desired.unwrap();
        assert_eq!(
            part_desired.contains_key("release"),
            runner.name == "runner-05"
        );
        assert_eq!(part_desired, own, "{}", runner.name);
        let mut service = s
            .aws
            .ecs
            .describe_service_without_tasks(&runner.cluster, &runner.service)
            .await
            .unwrap();
        // All a pass judges; not the service deployment's ARN (read by the calls that use it).
        assert!(service.current_service_deployment.is_some());
        service.current_service_deployment = None;
        assert_eq!(part.service.unwrap(), service, "{}", runner.name);
        assert!(snapshot.take(&runner.name).is_none(), "handed out once");
    }
    assert!(snapshot.take("not-configured").is_none());
}

#[tokio::test]
async fn a_failed_fleet_read_is_an_unreadable_aws_for_each_runner_and_nothing_is_done() {
    let s = fleet(3);
    s.set_desired("runner-01", "version", "2.14.0");
    s.aws
        .ssm
        .faults
        .push(AwsOp::GetParametersByPath, ErrorKind::Permanent);
    let mut snapshot = reader(&s).read(&all(&s)).await;
    let mut driver = s.driver("runner-01").unwrap();
    let part = snapshot.take("runner-01").unwrap();
    assert!(part.desired.is_err());
    let report = driver.tick_with(Some(part)).await.unwrap();
    assert!(
        report.commands.is_empty(),
        "no lock taken on an unreadable AWS: {:?}",
        report.commands
    );
    assert_eq!(driver.phase(), Phase::Idle);
    // The next fleet read works, and the update goes ahead from it.
    let mut snapshot = reader(&s).read(&all(&s)).await;
    let report = driver.tick_with(snapshot.take("runner-01")).await.unwrap();
    assert!(
        report.commands.contains(&"update_service"),
        "{:?}",
        report.commands
    );
}

#[tokio::test]
async fn a_fleet_read_older_than_the_runners_last_pass_is_not_used() {
    let s = fleet(2);
    let mut old = reader(&s).read(&all(&s)).await;
    let mut driver = s.driver("runner-01").unwrap();
    s.aws.clock.advance(Duration::from_secs(1));
    driver.tick().await.unwrap();
    // Ops ask for 2.14.0; the old read does not show it, the driver's own read does.
    s.set_desired("runner-01", "version", "2.14.0");
    s.aws.clock.advance(Duration::from_mins(1));
    let services_before = s.aws.ecs.faults.calls(AwsOp::DescribeServices);
    let report = driver.tick_with(old.take("runner-01")).await.unwrap();
    assert!(
        report.commands.contains(&"update_service"),
        "the stale read was used: {:?}",
        report.commands
    );
    assert!(s.aws.ecs.faults.calls(AwsOp::DescribeServices) > services_before);
}

#[tokio::test]
async fn at_rest_stacks_are_read_only_when_they_can_have_changed() {
    let s = fleet(2);
    let stacks = || s.aws.cfn.faults.calls(AwsOp::DescribeStacks);
    let mut driver = s.driver("runner-00").unwrap();
    let minute = Duration::from_mins(1);

    driver.tick().await.unwrap();
    assert_eq!(stacks(), 2, "the first pass reads both stacks");
    for _ in 0..5 {
        s.aws.clock.advance(minute);
        driver.tick().await.unwrap();
    }
    assert_eq!(stacks(), 2, "nothing changed: no stack read at rest");

    // A change of the desired infrastructure (held by the pause switch, so no attempt).
    s.set_desired("runner-00", "auto-update", "false");
    s.set_desired(
        "runner-00",
        "stacks/runner-00-main/parameters",
        r#"{"Size":"3"}"#,
    );
    s.aws.clock.advance(minute);
    driver.tick().await.unwrap();
    assert_eq!(
        stacks(),
        4,
        "read again under the new desired infrastructure"
    );
    s.aws.clock.advance(minute);
    driver.tick().await.unwrap();
    assert_eq!(stacks(), 4);

    // The refresh: a hand-made change to a stack is seen within 1.5 × stack_refresh_secs.
    s.aws.clock.advance(Duration::from_mins(15));
    driver.tick().await.unwrap();
    assert_eq!(stacks(), 6, "refreshed");

    // Under the lock every pass reads them until the health gate, which keeps them (they were
    // updated and checked before the service); after the attempt the first pass at rest too.
    s.clear_desired("runner-00", "stacks/runner-00-main/parameters");
    s.set_desired("runner-00", "auto-update", "true");
    s.set_desired("runner-00", "version", "2.14.0");
    let before = stacks();
    let mut active_passes = 0;
    for _ in 0..60 {
        s.aws.clock.advance(Duration::from_secs(10));
        let (resting_before, gate_before) = (driver.phase().is_resting(), driver.in_gate());
        let stacks_before = stacks();
        driver.tick().await.unwrap();
        if gate_before {
            assert_eq!(stacks(), stacks_before, "the gate keeps the stacks");
        } else if !resting_before {
            active_passes += 1;
        }
        if driver.phase() == Phase::Done {
            break;
        }
    }
    assert_eq!(driver.phase(), Phase::Done);
    assert!(
        stacks() - before >= 2 * active_passes,
        "{} stack reads in {active_passes} passes under the lock",
        stacks() - before
    );
    let after_attempt = stacks();
    s.aws.clock.advance(minute);
    driver.tick().await.unwrap();
    assert_eq!(
        stacks(),
        after_attempt + 2,
        "no stack read kept from before"
    );
}

/// A state store where one runner's record never loads: its first pass never ends.
struct Stuck {
    inner: Arc<dyn StateStore>,
    runner: &'static str,
}

#[async_trait]
impl StateStore for Stuck {
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        if runner == self.runner {
            std::future::pending::<()>().await;
        }
        self.inner.load(runner).await
    }
    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        self.inner.save(record).await
    }
    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list().await
    }
    async fn load_release(
        &self,
        channel: &str,
    ) -> Result<Option<runner_updater_core::domain::rollout::ReleaseRecord>, StoreError> {
        self.inner.load_release(channel).await
    }
    async fn save_release(
        &self,
        record: &runner_updater_core::domain::rollout::ReleaseRecord,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.inner.save_release(record, epoch).await
    }
}

/// Simulated time for the scheduler: each wait advances the clock; a stop after `until`.
struct Recorder {
    clock: runner_updater_adapters::sim::SimClock,
    until: runner_updater_core::domain::Millis,
    passes: HashMap<String, u32>,
    sweeps: u32,
    trigger_at: Option<runner_updater_core::domain::Millis>,
}

impl Control for Recorder {
    fn wait(&mut self, timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async move {
            // Let the passes in flight run before time moves.
            tokio::task::yield_now().await;
            if self.clock.now() >= self.until {
                return Wake::Stop;
            }
            if let Some(at) = self.trigger_at {
                if self.clock.now() >= at {
                    self.trigger_at = None;
                    return Wake::Trigger;
                }
            }
            self.clock.advance(timeout.min(Duration::from_secs(5)));
            Wake::Timeout
        })
    }
    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        assert!(result.is_ok(), "{}: {result:?}", driver.runner());
        *self.passes.entry(driver.runner().to_owned()).or_default() += 1;
    }
    fn swept(&mut self, _snapshot: &FleetSnapshot) {
        self.sweeps += 1;
    }
}

impl Recorder {
    /// Stops once `for_how_long` of simulated time has passed; a trigger `trigger_after` in.
    fn new(s: &Scenario, for_how_long: Duration, trigger_after: Option<Duration>) -> Self {
        let now = s.aws.clock.now();
        Recorder {
            clock: s.aws.clock.clone(),
            until: now.after(for_how_long),
            passes: HashMap::new(),
            sweeps: 0,
            trigger_at: trigger_after.map(|after| now.after(after)),
        }
    }
}

/// The scheduler of `s`'s runners, with another state store when given.
fn scheduler(s: &Scenario, store: Option<Arc<dyn StateStore>>) -> Scheduler {
    let defaults = s.ports();
    let ports = Ports {
        store: store.unwrap_or(defaults.store.clone()),
        ..defaults
    };
    let drivers = s
        .config
        .runners
        .iter()
        .map(|r| RunnerDriver::new(&s.config, r, "controller-1", ports.clone()))
        .collect();
    let reader = FleetReader::new(
        ports.ssm.clone(),
        ports.ecs.clone(),
        ports.clock.clone(),
        &s.config.prefix,
    );
    Scheduler::new(&s.config, drivers, reader, ports.clock.clone()).with_grace(Duration::ZERO)
}

#[tokio::test]
async fn a_stuck_runner_delays_no_other_and_a_stop_does_not_wait_for_it() {
    let s = fleet(3);
    s.set_desired("runner-02", "version", "2.14.0");
    let store = Arc::new(Stuck {
        inner: s.store.clone(),
        runner: "runner-01",
    });
    let mut scheduler = scheduler(&s, Some(store));
    let mut control = Recorder::new(&s, Duration::from_mins(10), None);
    tokio::time::timeout(Duration::from_mins(1), scheduler.run(&mut control, None))
        .await
        .expect("the scheduler stops although a pass never ends");

    // Ten minutes: a sweep a minute for the runners at rest, and runner-02's update on its
    // own time, while runner-01's first pass never ends.
    assert!(control.sweeps >= 10, "{} sweeps", control.sweeps);
    assert_eq!(control.passes.get("runner-01"), None);
    assert!(control.passes["runner-00"] >= 10, "{:?}", control.passes);
    assert!(
        control.passes["runner-02"] > control.passes["runner-00"],
        "runner-02 is passed over every active interval during its update: {:?}",
        control.passes
    );
    let done = scheduler
        .drivers()
        .find(|d| d.runner() == "runner-02")
        .unwrap();
    assert_eq!(done.phase(), Phase::Done, "runner-02 updated meanwhile");
}

#[tokio::test]
async fn sweeps_are_counted_and_a_trigger_sweeps_at_once() {
    let s = fleet(4);
    let mut scheduler = scheduler(&s, None);
    let start = s.aws.clock.now();
    let mut control = Recorder::new(&s, Duration::from_hours(1), Some(Duration::from_secs(10)));
    scheduler.run(&mut control, Some(3)).await;
    assert_eq!(control.sweeps, 3);
    assert!(
        control.passes.values().all(|&p| p == 3),
        "{:?}",
        control.passes
    );
    // Sweeps at 0 s, 10 s (the trigger) and 70 s: not 120 s.
    let elapsed = s.aws.clock.now().since(start);
    assert!(
        elapsed < Duration::from_mins(2),
        "the trigger did not start a sweep: {elapsed:?}"
    );
    // At rest, a sweep costs its fleet read and nothing per runner.
    assert_eq!(
        s.aws.ecs.faults.calls(AwsOp::DescribeTaskDefinition),
        4,
        "cached after the first"
    );
}

#[tokio::test]
async fn a_fleet_read_that_fails_after_its_retries_postpones_and_a_refused_one_falls_back() {
    let s = fleet(3);
    let mut scheduler = scheduler(&s, None);
    // Throttled beyond the retries: nobody is passed over, nothing is written.
    for _ in 0..4 {
        s.aws
            .ssm
            .faults
            .push(AwsOp::GetParametersByPath, ErrorKind::Transient);
    }
    let mut control = Recorder::new(&s, Duration::ZERO, None);
    scheduler.step(true, &mut control).await;
    assert!(control.passes.is_empty(), "{:?}", control.passes);
    assert_eq!(s.aws.ssm.faults.pending(AwsOp::GetParametersByPath), 0);
    assert!(
        s.store.load("runner-00").await.unwrap().is_none(),
        "no record written"
    );
    // Refused for good: each runner reads for itself (and here succeeds).
    s.aws
        .ssm
        .faults
        .push(AwsOp::GetParametersByPath, ErrorKind::Permanent);
    let mut control = Recorder::new(&s, Duration::ZERO, None);
    scheduler.step(true, &mut control).await;
    assert_eq!(control.passes.len(), 3, "{:?}", control.passes);
    assert!(scheduler.drivers().all(|d| d.phase() == Phase::Idle));
    assert!(s.store.load("runner-00").await.unwrap().is_some());
}

#[tokio::test]
async fn a_runner_dropped_mid_attempt_keeps_its_own_short_time() {
    let s = fleet(2);
    s.set_desired("runner-01", "version", "2.14.0");
    let mut first = s.driver_as("runner-01", "c1").unwrap();
    s.drive_until(&mut first, 40, |d| d.phase() == Phase::AwaitingRollout)
        .await
        .unwrap();
    // c1 goes silent, c2 takes the attempt over (and is still in it: its soak has begun);
    // c1's next pass finds the lease held by c2.
    s.aws.clock.advance(Duration::from_mins(5));
    let mut second = s.driver_as("runner-01", "c2").unwrap();
    second.tick().await.unwrap();
    assert!(!second.at_rest(), "c2 is in the attempt");
    first.tick().await.unwrap();
    assert!(first
        .record()
        .is_some_and(|r| r.phase == "awaiting_rollout"));
    assert!(!first.at_rest(), "dropped mid-attempt is not at rest");
    assert_eq!(first.requeue_after(), Duration::from_secs(10));
}

#[tokio::test]
async fn a_runner_whose_desired_state_is_settling_is_passed_again_when_it_settles_not_a_sweep_later(
) {
    let mut s = fleet(3);
    s.config.settle_secs = 10;
    let mut scheduler = scheduler(&s, None);
    let start = s.aws.clock.now();
    s.set_desired("runner-01", "version", "2.14.0");
    // 40 s: less than a sweep interval (60 s) after the first sweep.
    let mut control = Recorder::new(&s, Duration::from_secs(40), None);
    scheduler.run(&mut control, None).await;
    assert_eq!(control.sweeps, 1, "one sweep in 40 s");
    let runner = scheduler
        .drivers()
        .find(|d| d.runner() == "runner-01")
        .unwrap();
    assert!(
        !runner.phase().is_resting(),
        "the update did not start when the desired state settled ({})",
        runner.phase()
    );
    let record = s.store.load("runner-01").await.unwrap().unwrap();
    let started = record
        .transitions
        .iter()
        .find(|t| t.from == "idle" && t.to == "checking")
        .unwrap()
        .at;
    let settled = start.after(Duration::from_secs(10)).0;
    assert!(
        (settled..=settled + 5_000).contains(&started),
        "started {} ms after the first sweep, the settle being 10 s",
        started - start.0
    );
    // The others, with nothing to settle, were passed over by the sweep alone.
    assert_eq!(control.passes["runner-00"], 1, "{:?}", control.passes);
}

#[tokio::test]
async fn the_runners_in_the_health_gate_are_read_together_twenty_service_deployments_a_call() {
    let s = fleet(24);
    for runner in &s.config.runners {
        s.set_desired(&runner.name, "version", "2.14.0");
    }
    let mut scheduler = scheduler(&s, None);
    let mut control = Recorder::new(&s, Duration::ZERO, None);
    // Into the gate: every runner updated its service in its first pass.
    scheduler.step(true, &mut control).await;
    let gate: Vec<&RunnerDriver> = scheduler.drivers().filter(|d| d.in_gate()).collect();
    assert_eq!(gate.len(), 24, "every runner in the gate");
    // Their next passes, due together: one gate read of their rollouts' service deployments
    // (24, whatever their clusters, twenty a call: two calls), no read of the service, no
    // desired folder.
    s.aws.clock.advance(Duration::from_secs(10));
    let (services, deployments, folders, tasks) = (
        s.aws.ecs.faults.calls(AwsOp::DescribeServices),
        s.aws.ecs.faults.calls(AwsOp::DescribeServiceDeployments),
        s.aws.ssm.faults.calls(AwsOp::GetParametersByPath),
        s.aws.ecs.faults.calls(AwsOp::ListTasks),
    );
    let mut control = Recorder::new(&s, Duration::ZERO, None);
    scheduler.step(false, &mut control).await;
    assert_eq!(control.passes.len(), 24, "{:?}", control.passes);
    assert_eq!(
        s.aws.ecs.faults.calls(AwsOp::DescribeServiceDeployments) - deployments,
        2
    );
    assert_eq!(
        s.aws.ecs.faults.calls(AwsOp::DescribeServices) - services,
        0
    );
    assert_eq!(
        s.aws.ssm.faults.calls(AwsOp::GetParametersByPath) - folders,
        0
    );
    assert_eq!(
        s.aws.ecs.faults.calls(AwsOp::ListTasks) - tasks,
        0,
        "a rollout in progress calls for no task"
    );
    // And the gate ends as it does on the runners' own reads.
    for _ in 0..40 {
        if scheduler.drivers().all(RunnerDriver::at_rest) {
            break;
        }
        s.aws.clock.advance(Duration::from_secs(10));
        let mut control = Recorder::new(&s, Duration::ZERO, None);
        scheduler.step(false, &mut control).await;
    }
    assert!(
        scheduler.drivers().all(|d| d.phase() == Phase::Done),
        "{:?}",
        scheduler
            .drivers()
            .map(RunnerDriver::phase)
            .collect::<Vec<_>>()
    );
}

/// The controller's own loop (`run`, not a round at a time): runners in the gate together are
/// read together and passed, again and again, until every one is Done (found by the timed
/// benchmark: the runners a gate read handed out were taken by the next gate read, never
/// passed).
#[tokio::test]
async fn in_the_controller_s_loop_the_runners_read_together_in_the_gate_are_passed_to_the_end() {
    let s = fleet(12);
    for runner in &s.config.runners {
        s.set_desired(&runner.name, "version", "2.14.0");
    }
    let mut scheduler = scheduler(&s, None);
    let services = s.aws.ecs.faults.calls(AwsOp::DescribeServices);
    let mut control = Recorder::new(&s, Duration::from_mins(15), None);
    tokio::time::timeout(Duration::from_mins(1), scheduler.run(&mut control, None))
        .await
        .expect("the loop stops at its deadline");
    assert!(
        scheduler.drivers().all(|d| d.phase() == Phase::Done),
        "{:?}",
        scheduler
            .drivers()
            .map(RunnerDriver::phase)
            .collect::<Vec<_>>()
    );
    // Fewer service reads than one a runner a pass: the gate's are shared.
    let passes: u32 = control.passes.values().sum();
    let read = s.aws.ecs.faults.calls(AwsOp::DescribeServices) - services;
    assert!(
        read < u64::from(passes),
        "{read} DescribeServices for {passes} passes"
    );
}
