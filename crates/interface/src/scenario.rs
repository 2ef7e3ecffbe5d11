//! A scenario: the simulated AWS, a configuration and a state store, wired together, with the
//! ops-side helpers (write a desired value) and a bounded drive loop on simulated time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use runner_updater_adapters::dynamo::{DynamoLease, DynamoStore};
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::sim::{ImageBehaviour, SimAws, SimClock, SimRunnerSpec};
use runner_updater_adapters::store::MemoryStore;
use runner_updater_config::{Config, ConfigError, EMBEDDED_CONFIG};
use runner_updater_core::domain::rollout::ReleaseRecord;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_ports::{Clock, Lock, PortError, StateStore, StateTable};
use runner_updater_runtime::channels::Channels;
use runner_updater_runtime::driver::{DriverError, Ports, RunnerDriver, TickReport};
use runner_updater_runtime::reader::FleetReader;
use runner_updater_runtime::retry::RetryPolicy;
use runner_updater_runtime::scheduler::{Control, Scheduler, Wake};

/// The version every scenario runner starts on.
pub const START_VERSION: &str = "2.13.0";

/// A generated fleet's configuration: `runners` runners (`runner-00`, … wide enough for all)
/// spread over `clusters` clusters, every `stacks_every`-th with two stacks (IAM first), records
/// in the SSM store. What the benchmark and the fleet tests run.
#[must_use]
pub fn fleet_config(runners: usize, clusters: usize, stacks_every: usize) -> String {
    use std::fmt::Write as _;
    let width = runners.saturating_sub(1).to_string().len().max(2);
    let mut text = String::from(
        "prefix = \"/runner-updater\"\npoll_interval_secs = 60\nactive_poll_interval_secs = 10\n[state_store]\nbackend = \"ssm\"\n[health]\nsoak_secs = 60\n",
    );
    for index in 0..runners {
        let name = format!("runner-{index:0width$}");
        let _ = write!(
            text,
            "[[runners]]\nname = \"{name}\"\ncluster = \"fleet-{}\"\nservice = \"{name}\"\nimage_repository = \"registry.example/runner\"\n",
            index % clusters.max(1)
        );
        if index % stacks_every.max(1) == 0 {
            let _ = writeln!(text, "stacks = [\"{name}-iam\", \"{name}-main\"]");
        }
    }
    text
}

/// The simulated world plus configuration and store.
#[derive(Clone)]
pub struct Scenario {
    /// The simulated AWS.
    pub aws: SimAws,
    /// The configuration.
    pub config: Config,
    /// The state store (in memory unless replaced).
    pub store: Arc<dyn StateStore>,
    /// Leases in the simulated state table rather than in SSM ([`Scenario::use_state_table`]).
    leases_in_table: bool,
}

/// Why a scenario could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulation refused a set-up call.
    #[error(transparent)]
    Port(#[from] runner_updater_ports::PortError),
    /// A tick failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The condition did not hold within the tick budget.
    #[error("{0}")]
    Timeout(String),
}

impl Scenario {
    /// The embedded configuration on a fresh simulated AWS; every runner runs
    /// [`START_VERSION`] (healthy, with a health check, three tasks) and its desired version is
    /// set to the same.
    ///
    /// # Errors
    /// When the embedded configuration or the set-up is refused (a bug).
    pub fn new(seed: u64) -> Result<Self, ScenarioError> {
        Self::with_config(seed, Config::from_toml(EMBEDDED_CONFIG)?)
    }

    /// Like [`new`](Self::new) with another configuration.
    ///
    /// # Errors
    /// When the set-up is refused.
    pub fn with_config(seed: u64, config: Config) -> Result<Self, ScenarioError> {
        let aws = SimAws::new(seed);
        let scenario = Scenario {
            aws,
            config,
            store: Arc::new(MemoryStore::new()),
            leases_in_table: false,
        };
        create_fleet(&scenario.aws, &scenario.config, START_VERSION)?;
        Ok(scenario)
    }

    /// Keeps the records and the leases in the simulated state table (the `dynamodb`
    /// backend). `store` then writes as `holder`; each driver gets a store of its own over the
    /// same table, writing as its own holder (as separate controller processes do).
    pub fn use_state_table(&mut self, holder: &str) {
        let table: Arc<dyn StateTable> = Arc::new(self.aws.table.clone());
        self.store = Arc::new(DynamoStore::new(
            table,
            holder,
            Arc::new(self.aws.clock.clone()),
        ));
        self.leases_in_table = true;
    }

    /// The ports of a controller named `holder`: on the state table, a store of its own.
    #[must_use]
    pub fn ports_as(&self, holder: &str) -> Ports {
        let mut ports = self.ports();
        if self.leases_in_table {
            let table: Arc<dyn StateTable> = Arc::new(self.aws.table.clone());
            ports.store = Arc::new(DynamoStore::new(
                table,
                holder,
                Arc::new(self.aws.clock.clone()),
            ));
        }
        ports
    }

    /// The ports of this world.
    #[must_use]
    pub fn ports(&self) -> Ports {
        let lock: Arc<dyn Lock> = if self.leases_in_table {
            Arc::new(DynamoLease::new(Arc::new(self.aws.table.clone())))
        } else {
            Arc::new(SsmLease::new(
                Arc::new(self.aws.ssm.clone()),
                &self.config.prefix,
            ))
        };
        Ports {
            ssm: Arc::new(self.aws.ssm.clone()),
            ecs: Arc::new(self.aws.ecs.clone()),
            cfn: Arc::new(self.aws.cfn.clone()),
            lock,
            store: self.store.clone(),
            clock: Arc::new(self.aws.clock.clone()),
        }
    }

    /// A driver for a configured runner, as controller `controller-1`; `None` for an unknown
    /// runner.
    #[must_use]
    pub fn driver(&self, runner: &str) -> Option<RunnerDriver> {
        self.driver_as(runner, "controller-1")
    }

    /// A driver as a given lock holder.
    #[must_use]
    pub fn driver_as(&self, runner: &str, holder: &str) -> Option<RunnerDriver> {
        let config = self.config.runner(runner)?;
        let retry = RetryPolicy {
            retries: 3,
            ..RetryPolicy::default()
        };
        Some(
            RunnerDriver::new(&self.config, config, holder, self.ports_as(holder))
                .with_retry(retry),
        )
    }

    /// Ops: `aws ssm put-parameter --name <prefix>/<runner>/desired/<key> --value <value> --overwrite`.
    pub fn set_desired(&self, runner: &str, key: &str, value: &str) {
        self.aws.ssm.set(
            &format!("{}/{runner}/desired/{key}", self.config.prefix),
            value,
        );
    }

    /// Ops: writes the runner's release document (`<prefix>/<runner>/release`).
    pub fn set_release(&self, runner: &str, document: &str) {
        self.aws.ssm.set(
            &format!("{}/{runner}/release", self.config.prefix),
            document,
        );
    }

    /// Ops: writes a channel's release document (`<prefix>/_channels/<channel>/release`).
    pub fn set_channel_release(&self, channel: &str, document: &str) {
        self.aws.ssm.set(
            &format!("{}/_channels/{channel}/release", self.config.prefix),
            document,
        );
    }

    /// Makes every runner of the configuration follow its channel: deletes the
    /// `desired/version` the set-up wrote (it would pin the runner).
    pub fn follow_channels(&self) {
        for runner in &self.config.runners {
            self.clear_desired(&runner.name, "version");
        }
    }

    /// The controller `holder`'s scheduler over every configured runner, serving the
    /// channels' releases (what `run` builds, on this world).
    #[must_use]
    pub fn scheduler_as(&self, holder: &str) -> Scheduler {
        let ports = self.ports_as(holder);
        let retry = RetryPolicy {
            retries: 3,
            ..RetryPolicy::default()
        };
        let drivers = self
            .config
            .runners
            .iter()
            .map(|runner| {
                RunnerDriver::new(&self.config, runner, holder, ports.clone()).with_retry(retry)
            })
            .collect();
        let reader = FleetReader::new(
            ports.ssm.clone(),
            ports.ecs.clone(),
            ports.clock.clone(),
            &self.config.prefix,
        );
        let channels = Channels::new(
            &self.config,
            holder,
            ports.store.clone(),
            ports.lock.clone(),
            ports.clock.clone(),
            ports.ssm.clone(),
        );
        Scheduler::new(&self.config, drivers, reader, ports.clock.clone()).with_channels(channels)
    }

    /// Ops: deletes the runner's release document.
    pub fn clear_release(&self, runner: &str) {
        self.aws
            .ssm
            .remove(&format!("{}/{runner}/release", self.config.prefix));
    }

    /// Ops: `runner-updater approve <runner>` on this world.
    ///
    /// # Errors
    /// When nothing is held.
    pub async fn approve(
        &self,
        runner: &str,
    ) -> Result<crate::ops::Approval, crate::ops::ApproveError> {
        crate::ops::approve(
            self.store.as_ref(),
            &self.aws.ssm,
            &self.config.prefix,
            runner,
            None,
        )
        .await
    }

    /// Ops: clears a desired value.
    pub fn clear_desired(&self, runner: &str, key: &str) {
        self.aws
            .ssm
            .remove(&format!("{}/{runner}/desired/{key}", self.config.prefix));
    }

    /// Sets how an image's tasks behave.
    pub fn image_behaves(&self, image: &str, behaviour: ImageBehaviour) {
        self.aws.ecs.set_behaviour(image, behaviour);
    }

    /// The image a runner would get for a version.
    #[must_use]
    pub fn image_for(&self, runner: &str, version: &str) -> String {
        let repository = self
            .config
            .runner(runner)
            .map_or("", |r| r.image_repository.as_str());
        format!("{repository}:{version}")
    }

    /// Ticks `driver` (sleeping on the simulated clock between ticks) until `done` holds after
    /// a tick, at most `ticks_max` ticks. Returns every tick's report.
    ///
    /// # Errors
    /// The first failing tick, or [`ScenarioError::Timeout`].
    pub async fn drive_until(
        &self,
        driver: &mut RunnerDriver,
        ticks_max: usize,
        mut done: impl FnMut(&RunnerDriver) -> bool,
    ) -> Result<Vec<TickReport>, ScenarioError> {
        let mut reports = Vec::new();
        for _ in 0..ticks_max {
            reports.push(driver.tick().await?);
            if done(driver) {
                return Ok(reports);
            }
            self.aws.clock.sleep(driver.requeue_after()).await;
        }
        Err(ScenarioError::Timeout(format!(
            "{} still in {} after {ticks_max} ticks",
            driver.runner(),
            driver.phase()
        )))
    }

    /// Ticks until the runner makes a transition into `phase`.
    ///
    /// # Errors
    /// As [`drive_until`](Self::drive_until).
    pub async fn drive_to(
        &self,
        driver: &mut RunnerDriver,
        phase: Phase,
        ticks_max: usize,
    ) -> Result<Vec<TickReport>, ScenarioError> {
        let mut reports = Vec::new();
        for _ in 0..ticks_max {
            let report = driver.tick().await?;
            let arrived = report.transitions.iter().any(|t| t.to == phase);
            reports.push(report);
            if arrived {
                return Ok(reports);
            }
            self.aws.clock.sleep(driver.requeue_after()).await;
        }
        Err(ScenarioError::Timeout(format!(
            "{} did not reach {phase} in {ticks_max} ticks (in {})",
            driver.runner(),
            driver.phase()
        )))
    }
}

/// Creates every runner of `config` in the simulated world `aws`, running `version` (healthy, with a health check, three
/// tasks; its stacks at infrastructure version 1), with `desired/version` = `version`.
///
/// # Errors
/// When a task definition is refused (a bug in the configuration's runners).
pub fn create_fleet(aws: &SimAws, config: &Config, version: &str) -> Result<(), PortError> {
    for runner in &config.runners {
        aws.create_runner(&SimRunnerSpec {
            cluster: runner.cluster.clone(),
            service: runner.service.clone(),
            container: runner.container.clone(),
            family: runner.name.clone(),
            image: format!("{}:{version}", runner.image_repository),
            version: version.to_owned(),
            desired_count: 3,
            health_check: true,
            stacks: runner
                .stacks
                .iter()
                .map(|s| (s.clone(), "1".to_owned()))
                .collect(),
        })?;
        aws.ssm.set(
            &format!("{}/{}/desired/version", config.prefix, runner.name),
            version,
        );
    }
    Ok(())
}

/// Simulated time for a [`Scheduler`] on a scenario: each wait advances the simulated clock (by
/// the scheduler's timeout, at most `step`), every ended pass is kept, and the run stops once a
/// channel's release record satisfies `done` or `until` has passed.
pub struct SimulatedLoop {
    clock: SimClock,
    store: Arc<dyn StateStore>,
    channel: String,
    done: Box<dyn Fn(&ReleaseRecord) -> bool + Send>,
    until: Millis,
    step: Duration,
    /// Every pass that ended: the runner and what it did (or its error).
    pub passes: Vec<(String, Result<TickReport, String>)>,
    /// The channel's record each time it changed (waves, halts), when it changed.
    pub records: Vec<ReleaseRecord>,
    /// Whether `done` held (else the time ran out).
    pub finished: bool,
}

impl SimulatedLoop {
    /// A loop on `scenario`'s clock until `channel`'s record satisfies `done`, for at most
    /// `for_how_long` of simulated time.
    #[must_use]
    pub fn new(
        scenario: &Scenario,
        channel: &str,
        for_how_long: Duration,
        done: impl Fn(&ReleaseRecord) -> bool + Send + 'static,
    ) -> Self {
        SimulatedLoop {
            clock: scenario.aws.clock.clone(),
            store: scenario.store.clone(),
            channel: channel.to_owned(),
            done: Box::new(done),
            until: scenario.aws.clock.now().after(for_how_long),
            step: Duration::from_secs(10),
            passes: Vec::new(),
            records: Vec::new(),
            finished: false,
        }
    }
}

impl Control for SimulatedLoop {
    fn wait(&mut self, timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async move {
            // The passes in flight run before time moves.
            tokio::task::yield_now().await;
            if let Ok(Some(record)) = self.store.load_release(&self.channel).await {
                let changed = self.records.last().is_none_or(|last| {
                    (
                        last.release_id.as_str(),
                        last.wave,
                        &last.halted,
                        last.finished_at,
                    ) != (
                        record.release_id.as_str(),
                        record.wave,
                        &record.halted,
                        record.finished_at,
                    )
                });
                let done = (self.done)(&record);
                if changed {
                    self.records.push(record);
                }
                if done {
                    self.finished = true;
                    return Wake::Stop;
                }
            }
            if self.clock.now() >= self.until {
                return Wake::Stop;
            }
            self.clock
                .advance(timeout.min(self.step).max(Duration::from_millis(1)));
            Wake::Timeout
        })
    }

    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        self.passes.push((
            driver.runner().to_owned(),
            match result {
                Ok(report) => Ok(report.clone()),
                Err(error) => Err(error.to_string()),
            },
        ));
    }
}
