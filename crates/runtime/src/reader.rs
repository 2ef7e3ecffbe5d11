//! The fleet reader: batched reads for the passes at rest.
//!
//! One walk of `GetParametersByPath` over the whole prefix, ten parameters a page, and
//! `DescribeServices` ten services a call, grouped by cluster. A runner at rest observes from
//! its part of that read ([`RunnerSnapshot`]); under the lock a driver always reads for itself,
//! fresh. Stacks are not in the fleet read: the driver reads them only when they can have
//! changed (see `stack_refresh_secs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;

use runner_updater_config::RunnerConfig;
use runner_updater_core::domain::channel::{CHANNELS_FOLDER, RELEASE_NAME};
use runner_updater_core::domain::desired::is_desired_name;
use runner_updater_core::domain::observed::{ServiceDeployment, ServiceState};
use runner_updater_core::domain::retry::is_retry_name;
use runner_updater_core::domain::{fnv1a, Millis, FNV_OFFSET};
use runner_updater_ports::{
    Clock, Ecs, ErrorKind, ParameterStore, PortError, DESCRIBE_SERVICES_MAX,
    DESCRIBE_SERVICE_DEPLOYMENTS_MAX, PARAMETERS_PAGE_MAX,
};

use crate::retry::RetryPolicy;
use runner_updater_ports::AwsOp;

/// The most pages one fleet read walks (a bound on a runaway prefix: a million parameters).
pub const FLEET_PAGES_MAX: usize = 100_000;

/// ECS batches read at the same time in a fleet read (the rate limiter sets the pace).
pub const ECS_BATCHES_IN_FLIGHT: usize = 4;

/// One runner's part of a fleet read.
#[derive(Debug, Clone)]
pub struct RunnerSnapshot {
    /// When the fleet read started (a pass that ended later does not use it).
    pub taken_at: Millis,
    /// The runner's desired state under the prefix, by name relative to its folder
    /// (`desired/version`, …, `release`).
    pub desired: Result<BTreeMap<String, String>, PortError>,
    /// The service, without its tasks.
    pub service: Result<ServiceState, PortError>,
}

/// What a fleet read saw, handed out runner by runner.
#[derive(Debug)]
pub struct FleetSnapshot {
    taken_at: Millis,
    desired: Result<HashMap<String, BTreeMap<String, String>>, PortError>,
    services: HashMap<String, Result<ServiceState, PortError>>,
    /// AWS calls the read made, by family: SSM pages, `DescribeServices` calls.
    pub calls: (usize, usize),
}

/// What a gate read saw of one runner.
#[derive(Debug, Clone)]
pub enum GateRead {
    /// The service, without its tasks (`DescribeServices`).
    Service(ServiceState),
    /// Its rollout's service deployment (`DescribeServiceDeployments`).
    Deployment(ServiceDeployment),
}

/// What a gate read saw: the services of the runners in the health gate, or their rollouts'
/// service deployments.
#[derive(Debug)]
pub struct GateSnapshot {
    /// When the read started.
    pub taken_at: Millis,
    reads: HashMap<String, Result<GateRead, PortError>>,
    /// Calls the read made: `DescribeServices`, `DescribeServiceDeployments`.
    pub calls: usize,
}

impl GateSnapshot {
    /// Takes `runner`'s read (once): `None` when the read did not cover it or could not read
    /// it (the runner's pass then reads its own, with its retries and its errors).
    pub fn take(&mut self, runner: &str) -> Option<GateRead> {
        self.reads.remove(runner)?.ok()
    }
}

impl FleetSnapshot {
    /// Takes `runner`'s part (once); `None` when the read did not cover it.
    pub fn take(&mut self, runner: &str) -> Option<RunnerSnapshot> {
        let service = self.services.remove(runner)?;
        let desired = match &mut self.desired {
            Ok(folders) => Ok(folders.remove(runner).unwrap_or_default()),
            Err(error) => Err(error.clone()),
        };
        Some(RunnerSnapshot {
            taken_at: self.taken_at,
            desired,
            service,
        })
    }

    /// The channels' documents the read found (names relative to `_channels/`:
    /// `<channel>/release`, `<channel>/resume`); `None` when the parameters could not be read.
    #[must_use]
    pub fn channel_documents(&self) -> Option<BTreeMap<String, String>> {
        match &self.desired {
            Ok(folders) => Some(folders.get(CHANNELS_FOLDER).cloned().unwrap_or_default()),
            Err(_) => None,
        }
    }

    /// When the read started.
    #[must_use]
    pub fn taken_at(&self) -> Millis {
        self.taken_at
    }

    /// A read of no runner (a sweep with nobody at rest makes none).
    #[must_use]
    pub fn empty(taken_at: Millis) -> Self {
        FleetSnapshot {
            taken_at,
            desired: Ok(HashMap::new()),
            services: HashMap::new(),
            calls: (0, 0),
        }
    }
}

/// Reads the parts of the world that every runner at rest needs, in as few calls as AWS allows.
#[derive(Clone)]
pub struct FleetReader {
    ssm: Arc<dyn ParameterStore>,
    ecs: Arc<dyn Ecs>,
    clock: Arc<dyn Clock>,
    prefix: String,
    retry: RetryPolicy,
    /// Seeds the retries' jitter (deterministic in the simulation), one sequence per read.
    jitter_seed: u64,
    reads: Arc<AtomicU64>,
}

impl FleetReader {
    /// A reader of `prefix` on these ports.
    #[must_use]
    pub fn new(
        ssm: Arc<dyn ParameterStore>,
        ecs: Arc<dyn Ecs>,
        clock: Arc<dyn Clock>,
        prefix: &str,
    ) -> Self {
        FleetReader {
            ssm,
            ecs,
            clock,
            prefix: prefix.trim_end_matches('/').to_owned(),
            retry: RetryPolicy::default(),
            jitter_seed: fnv1a(FNV_OFFSET, prefix.as_bytes()),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Seeds the retries' jitter (the simulation gives each controller its own).
    #[must_use]
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = seed;
        self
    }

    /// Reads the desired folders and the services of `runners`. Never fails as a whole: an
    /// unreadable part is an error in each runner's share of it, which the runner's pass
    /// reports as AWS being unreadable (as its own read would).
    pub async fn read(&self, runners: &[&RunnerConfig]) -> FleetSnapshot {
        let taken_at = self.clock.now();
        let read = self.reads.fetch_add(1, Ordering::Relaxed);
        let ((desired, pages), (services, batches)) = futures_util::join!(
            self.read_folders(runners, read),
            self.read_services(runners, read)
        );
        tracing::debug!(runners = runners.len(), pages, batches, "fleet read");
        FleetSnapshot {
            taken_at,
            desired,
            services,
            calls: (pages, batches),
        }
    }

    /// What the passes of the runners in the health gate judge: the rollouts' service
    /// deployments where the gate reads one (the service deployment's ARN beside the runner),
    /// twenty a call whatever their clusters; the other runners' services, ten a call by
    /// cluster (the gate keeps the desired state it last read, and reads tasks only when
    /// something calls for them). One read for all the runners due at once, instead of one
    /// call each.
    pub async fn read_gate(&self, runners: &[(&RunnerConfig, Option<String>)]) -> GateSnapshot {
        let taken_at = self.clock.now();
        let read = self.reads.fetch_add(1, Ordering::Relaxed);
        let (by_deployment, by_service): (Vec<_>, Vec<_>) =
            runners.iter().partition(|(_, arn)| arn.is_some());
        let services: Vec<&RunnerConfig> = by_service.iter().map(|(r, _)| *r).collect();
        let ((from_services, batches), (from_deployments, deployment_batches)) = futures_util::join!(
            self.read_services(&services, read),
            self.read_service_deployments(&by_deployment, read)
        );
        let reads: HashMap<String, Result<GateRead, PortError>> = from_services
            .into_iter()
            .map(|(name, read)| (name, read.map(GateRead::Service)))
            .chain(from_deployments)
            .collect();
        tracing::debug!(
            runners = runners.len(),
            batches,
            deployment_batches,
            "gate read"
        );
        GateSnapshot {
            taken_at,
            reads,
            calls: batches + deployment_batches,
        }
    }

    /// Service deployments, twenty a call.
    async fn read_service_deployments(
        &self,
        runners: &[&(&RunnerConfig, Option<String>)],
        read: u64,
    ) -> (Vec<(String, Result<GateRead, PortError>)>, usize) {
        let wanted: Vec<(&str, &str)> = runners
            .iter()
            .filter_map(|(runner, arn)| Some((runner.name.as_str(), arn.as_deref()?)))
            .collect();
        let chunks: Vec<&[(&str, &str)]> =
            wanted.chunks(DESCRIBE_SERVICE_DEPLOYMENTS_MAX).collect();
        let count = chunks.len();
        let results: Vec<Vec<(String, Result<GateRead, PortError>)>> =
            futures_util::stream::iter(chunks)
                .enumerate()
                .map(|(batch, chunk)| async move {
                    let arns: Vec<String> =
                        chunk.iter().map(|(_, arn)| (*arn).to_owned()).collect();
                    let answer = self
                        .retrying(read ^ (1 << 41) ^ (batch as u64) << 20, || {
                            self.ecs.describe_service_deployments(&arns)
                        })
                        .await;
                    match answer {
                        Ok(found) if found.len() == chunk.len() => chunk
                            .iter()
                            .zip(found)
                            .map(|((name, _), read)| {
                                ((*name).to_owned(), read.map(GateRead::Deployment))
                            })
                            .collect(),
                        Ok(_) | Err(_) => {
                            // The runners read their own (with their own retries and errors).
                            Vec::new()
                        }
                    }
                })
                .buffer_unordered(ECS_BATCHES_IN_FLIGHT)
                .collect()
                .await;
        (results.into_iter().flatten().collect(), count)
    }

    /// Every parameter under the prefix, page by page, grouped by runner (only `desired/…`
    /// names and the `release` document are kept: status records and leases are read by their
    /// own paths).
    async fn read_folders(
        &self,
        runners: &[&RunnerConfig],
        read: u64,
    ) -> (
        Result<HashMap<String, BTreeMap<String, String>>, PortError>,
        usize,
    ) {
        let wanted: HashSet<&str> = runners.iter().map(|r| r.name.as_str()).collect();
        let root = format!("{}/", self.prefix);
        let mut folders: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            if pages >= FLEET_PAGES_MAX {
                let error = PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::GetParametersByPath,
                    format!("more than {FLEET_PAGES_MAX} pages under {}", self.prefix),
                );
                return (Err(error), pages);
            }
            pages += 1;
            let page = match self
                .retrying(read ^ (pages as u64) << 20, || {
                    self.ssm.get_page(&self.prefix, token.as_deref())
                })
                .await
            {
                Ok(page) => page,
                Err(error) => return (Err(error), pages),
            };
            debug_assert!(page.parameters.len() <= PARAMETERS_PAGE_MAX);
            for (name, value) in page.parameters {
                let Some((runner, relative)) = name
                    .strip_prefix(&root)
                    .and_then(|rest| rest.split_once('/'))
                else {
                    continue;
                };
                let channel_document = runner == CHANNELS_FOLDER
                    && relative.split_once('/').is_some_and(|(_, name)| {
                        name == RELEASE_NAME
                            || name == crate::channels::RESUME_NAME
                            || is_retry_name(name)
                    });
                let read = is_desired_name(relative) || is_retry_name(relative);
                if channel_document || (read && wanted.contains(runner)) {
                    folders
                        .entry(runner.to_owned())
                        .or_default()
                        .insert(relative.to_owned(), value);
                }
            }
            match page.next {
                Some(next) => token = Some(next),
                None => return (Ok(folders), pages),
            }
        }
    }

    /// The services, ten a call, grouped by cluster.
    async fn read_services(
        &self,
        runners: &[&RunnerConfig],
        read: u64,
    ) -> (HashMap<String, Result<ServiceState, PortError>>, usize) {
        let mut by_cluster: BTreeMap<&str, Vec<&RunnerConfig>> = BTreeMap::new();
        for runner in runners {
            by_cluster.entry(&runner.cluster).or_default().push(runner);
        }
        let batches: Vec<(&str, Vec<&RunnerConfig>)> = by_cluster
            .into_iter()
            .flat_map(|(cluster, runners)| {
                runners
                    .chunks(DESCRIBE_SERVICES_MAX)
                    .map(|chunk| (cluster, chunk.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let count = batches.len();
        let results: Vec<Vec<(String, Result<ServiceState, PortError>)>> =
            futures_util::stream::iter(batches)
                .enumerate()
                .map(|(batch, (cluster, chunk))| async move {
                    let names: Vec<String> = chunk.iter().map(|r| r.service.clone()).collect();
                    let read = self
                        .retrying(read ^ (1 << 40) ^ (batch as u64) << 20, || {
                            self.ecs.describe_services_without_tasks(cluster, &names)
                        })
                        .await;
                    match read {
                        // What a pass judges, no more: the service deployment's ARN is read
                        // by the calls that use it (the rollback, a resumed update), fresh.
                        Ok(states) if states.len() == chunk.len() => chunk
                            .iter()
                            .zip(states)
                            .map(|(runner, state)| {
                                let state = state.map(|mut state| {
                                    state.current_service_deployment = None;
                                    state
                                });
                                (runner.name.clone(), state)
                            })
                            .collect(),
                        Ok(states) => {
                            let error = PortError::new(
                                ErrorKind::Permanent,
                                AwsOp::DescribeServices,
                                format!(
                                    "{} services asked, {} answered",
                                    chunk.len(),
                                    states.len()
                                ),
                            );
                            chunk
                                .iter()
                                .map(|runner| (runner.name.clone(), Err(error.clone())))
                                .collect()
                        }
                        Err(error) => chunk
                            .iter()
                            .map(|runner| (runner.name.clone(), Err(error.clone())))
                            .collect(),
                    }
                })
                .buffer_unordered(ECS_BATCHES_IN_FLIGHT)
                .collect()
                .await;
        (results.into_iter().flatten().collect(), count)
    }

    /// Bounded retries with jittered backoff, transient errors only (the driver's policy),
    /// the jitter seeded per read and call.
    async fn retrying<T, F, Fut>(&self, salt: u64, operation: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let seed = self.jitter_seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let on_retry = |error: &PortError, delay: Duration| {
            tracing::info!(%error, ?delay, "fleet read: retrying");
        };
        self.retry
            .run(seed, self.clock.as_ref(), on_retry, operation)
            .await
    }
}
