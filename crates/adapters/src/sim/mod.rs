//! The in-process **simulated AWS**: SSM parameters, ECS services whose deployments progress
//! over simulated time, `CloudFormation` stacks, the runner lock, and a simulated clock.
//!
//! Deterministic: one seed and the simulated clock decide everything; nothing sleeps. The
//! behaviour of a deployment is chosen per image by the scenario ([`ImageBehaviour`]).
//! What it models, and what it does not, is listed in the README ("The simulated AWS").

mod cfn;
mod ecs;
mod queue;
mod table;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_core::domain::Millis;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    Clock, ErrorKind, Parameter, ParameterPage, ParameterStore, PortError, PARAMETERS_PAGE_MAX,
};

pub use cfn::{SimCfn, SimResource, SimTemplate, CREATE_DELAY, UPDATE_DURATION};
pub use ecs::{ImageBehaviour, ServiceUpdate, SimEcs, SimService};
pub use queue::{SimQueue, VISIBILITY_TIMEOUT};
pub use table::{SimTable, SCAN_PAGE_ITEMS};

/// Locks a mutex, turning poisoning into a port error (a panicked test thread).
fn guard<T>(mutex: &Mutex<T>, operation: AwsOp) -> Result<MutexGuard<'_, T>, PortError> {
    mutex
        .lock()
        .map_err(|_| PortError::new(ErrorKind::Permanent, operation, "simulation state poisoned"))
}

/// `path` as the folder `GetParametersByPath` reads (with its trailing slash).
fn folder(path: &str) -> String {
    if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

/// A fault queued on an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// The call fails before it has any effect, with this message (else a generic one).
    Fail(ErrorKind, Option<String>),
    /// The call takes effect, then its answer is lost (a timeout, a reset connection): the
    /// caller sees a transient error for something that was done.
    LoseAnswer,
}

/// Faults queued per operation: the next calls of that operation fail with these kinds, or
/// (mutating calls) take effect and lose their answer. Every call is counted here too (tests
/// assert how many calls a pass makes).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    queued: Arc<Mutex<HashMap<AwsOp, VecDeque<Fault>>>>,
    calls: Arc<Mutex<HashMap<AwsOp, u64>>>,
    lost: Arc<Mutex<HashMap<AwsOp, u64>>>,
}

impl Faults {
    /// Makes the next call of `operation` fail with `kind`, before any effect.
    pub fn push(&self, operation: AwsOp, kind: ErrorKind) {
        self.queue(operation, Fault::Fail(kind, None));
    }

    /// Makes the next call of `operation` fail with `kind` and `message` (what the AWS
    /// adapter would report for that failure).
    pub fn push_error(&self, operation: AwsOp, kind: ErrorKind, message: &str) {
        self.queue(operation, Fault::Fail(kind, Some(message.to_owned())));
    }

    /// Makes the next call of `operation` fail as an answer the SDK cannot read does
    /// (classified permanent by the adapter, as `aws::classify` does).
    pub fn push_unreadable(&self, operation: AwsOp) {
        self.push_error(
            operation,
            ErrorKind::Permanent,
            "Unknown (HTTP 200): unhandled error (cannot deserialize the response)",
        );
    }

    /// Makes the next call of `operation` take effect and then lose its answer (the caller
    /// sees a transient error). On a read it is just a failed read.
    pub fn lose_answer(&self, operation: AwsOp) {
        self.queue(operation, Fault::LoseAnswer);
    }

    fn queue(&self, operation: AwsOp, fault: Fault) {
        if let Ok(mut queued) = self.queued.lock() {
            queued.entry(operation).or_default().push_back(fault);
        }
    }

    /// Drops every queued fault.
    pub fn clear(&self) {
        if let Ok(mut queued) = self.queued.lock() {
            queued.clear();
        }
    }

    /// Faults still queued for `operation` (tests assert they were consumed).
    #[must_use]
    pub fn pending(&self, operation: AwsOp) -> usize {
        self.queued
            .lock()
            .ok()
            .and_then(|q| q.get(&operation).map(VecDeque::len))
            .unwrap_or(0)
    }

    /// Calls of `operation` so far (one per simulated call, a batch counting once).
    #[must_use]
    pub fn calls(&self, operation: AwsOp) -> u64 {
        self.calls
            .lock()
            .ok()
            .and_then(|c| c.get(&operation).copied())
            .unwrap_or(0)
    }

    /// Calls of `operation` that took effect and lost their answer, so far.
    #[must_use]
    pub fn answers_lost(&self, operation: AwsOp) -> u64 {
        self.lost
            .lock()
            .ok()
            .and_then(|c| c.get(&operation).copied())
            .unwrap_or(0)
    }

    /// Counts the call and takes its fault, if one is queued.
    fn take(&self, operation: AwsOp) -> Option<Fault> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(operation).or_default() += 1;
        }
        self.queued
            .lock()
            .ok()
            .and_then(|mut q| q.get_mut(&operation).and_then(VecDeque::pop_front))
    }

    /// A read (or a call without effect) starts: fails it if a fault is queued for it.
    ///
    /// # Errors
    /// The queued fault (a lost answer is a transient failure of the read).
    pub fn check(&self, operation: AwsOp) -> Result<(), PortError> {
        match self.take(operation) {
            Some(Fault::Fail(kind, message)) => Err(failure(operation, kind, message)),
            Some(Fault::LoseAnswer) => Err(lost_answer(operation)),
            None => Ok(()),
        }
    }

    /// A mutating call: fails it before `effect` if a failure is queued; otherwise runs
    /// `effect`, and if a lost answer is queued and the effect succeeded, returns a transient
    /// error for what was done.
    ///
    /// # Errors
    /// The queued failure, the effect's own error, or the lost answer.
    pub fn mutate<T>(
        &self,
        operation: AwsOp,
        effect: impl FnOnce() -> Result<T, PortError>,
    ) -> Result<T, PortError> {
        let fault = self.take(operation);
        if let Some(Fault::Fail(kind, message)) = fault {
            return Err(failure(operation, kind, message));
        }
        let result = effect();
        match (fault, result) {
            (Some(Fault::LoseAnswer), Ok(_)) => {
                if let Ok(mut lost) = self.lost.lock() {
                    *lost.entry(operation).or_default() += 1;
                }
                Err(lost_answer(operation))
            }
            (_, result) => result,
        }
    }
}

/// A queued failure, as the caller sees it.
fn failure(operation: AwsOp, kind: ErrorKind, message: Option<String>) -> PortError {
    PortError::new(
        kind,
        operation,
        message.unwrap_or_else(|| format!("injected {kind:?} fault")),
    )
}

/// What the caller of a call whose answer was lost sees (the SDK's dispatch failure).
fn lost_answer(operation: AwsOp) -> PortError {
    PortError::new(
        ErrorKind::Transient,
        operation,
        "injected: the answer was lost (timeout, connection reset); the call may have taken effect",
    )
}

/// A simulated clock: `sleep` advances time instantly.
#[derive(Debug, Clone)]
pub struct SimClock {
    now_ms: Arc<AtomicU64>,
}

impl SimClock {
    /// A clock at `start`.
    #[must_use]
    pub fn new(start: Millis) -> Self {
        SimClock {
            now_ms: Arc::new(AtomicU64::new(start.0)),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, duration: Duration) {
        let add = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.now_ms.fetch_add(add, Ordering::SeqCst);
    }
}

#[async_trait]
impl Clock for SimClock {
    fn now(&self) -> Millis {
        Millis(self.now_ms.load(Ordering::SeqCst))
    }

    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.now_ms.load(Ordering::SeqCst))
    }

    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

/// A small deterministic PRNG (SplitMix64): the simulation's only source of variation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// Simulated SSM Parameter Store: versions and atomic create, and AWS's limits on what a
/// `PutParameter` may create: 10,000 parameters in the account and 4 KB a value on the
/// Standard tier (`ParameterLimitExceeded`, `ValidationException`), 100,000 and 8 KB on the
/// Advanced tier. Ops' own writes ([`SimSsm::set`]) are the world's, not checked.
#[derive(Debug, Clone, Default)]
pub struct SimSsm {
    parameters: Arc<Mutex<BTreeMap<String, Parameter>>>,
    /// The Advanced tier's limits instead of the Standard tier's.
    advanced: Arc<std::sync::atomic::AtomicBool>,
    /// Where each change is announced, as `EventBridge` delivers SSM's "Parameter Store Change"
    /// events to a queue (none: AWS without the rule).
    events: Arc<Mutex<Option<SimQueue>>>,
    /// Faults to inject.
    pub faults: Faults,
}

impl SimSsm {
    /// Puts the account on the Advanced tier (100,000 parameters, 8 KB values).
    pub fn use_advanced_tier(&self) {
        self.advanced.store(true, Ordering::SeqCst);
    }

    /// The tier's limits: parameters in the account, bytes of a value.
    fn limits(&self) -> (usize, usize) {
        use runner_updater_core::domain::capacity as c;
        if self.advanced.load(Ordering::SeqCst) {
            (c::ADVANCED_PARAMETERS_MAX, c::ADVANCED_VALUE_BYTES_MAX)
        } else {
            (c::STANDARD_PARAMETERS_MAX, c::STANDARD_VALUE_BYTES_MAX)
        }
    }

    /// Announces every change from now on to `queue` (the `EventBridge` rule and its target).
    pub fn publish_to(&self, queue: &SimQueue) {
        if let Ok(mut events) = self.events.lock() {
            *events = Some(queue.clone());
        }
    }

    fn announce(&self, name: &str, operation: &str) {
        let queue = self.events.lock().ok().and_then(|events| events.clone());
        if let Some(queue) = queue {
            queue.parameter_changed(name, operation);
        }
    }

    /// Parameters held.
    #[must_use]
    pub fn count(&self) -> usize {
        self.parameters.lock().map_or(0, |p| p.len())
    }

    /// The names of the parameters held.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.parameters
            .lock()
            .map_or_else(|_| Vec::new(), |p| p.keys().cloned().collect())
    }

    /// Writes a parameter as ops would (overwrite).
    pub fn set(&self, name: &str, value: &str) {
        let mut created = false;
        if let Ok(mut parameters) = self.parameters.lock() {
            let version = parameters.get(name).map_or(1, |p| p.version + 1);
            created = version == 1;
            parameters.insert(
                name.to_owned(),
                Parameter {
                    value: value.to_owned(),
                    version,
                },
            );
        }
        self.announce(name, if created { "Create" } else { "Update" });
    }

    /// The same parameters without fault injection: what a checker reads, so that it neither
    /// meets nor consumes the faults queued for the controllers.
    #[must_use]
    pub fn without_faults(&self) -> SimSsm {
        SimSsm {
            parameters: self.parameters.clone(),
            advanced: self.advanced.clone(),
            events: self.events.clone(),
            faults: Faults::default(),
        }
    }

    /// Bytes the parameters' names and values take (what AWS would hold; the benchmark
    /// subtracts it from the process's memory to get the controller's).
    #[must_use]
    pub fn stored_bytes(&self) -> u64 {
        self.parameters.lock().map_or(0, |parameters| {
            parameters
                .iter()
                .map(|(name, p)| (name.len() + p.value.len()) as u64)
                .sum()
        })
    }

    /// Deletes a parameter as ops would.
    pub fn remove(&self, name: &str) {
        let removed = self
            .parameters
            .lock()
            .is_ok_and(|mut parameters| parameters.remove(name).is_some());
        if removed {
            self.announce(name, "Delete");
        }
    }
}

#[async_trait]
impl ParameterStore for SimSsm {
    async fn get_by_path(&self, path: &str) -> Result<BTreeMap<String, String>, PortError> {
        self.faults.check(AwsOp::GetParametersByPath)?;
        let prefix = folder(path);
        let parameters = guard(&self.parameters, AwsOp::GetParametersByPath)?;
        Ok(parameters
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(name, p)| (name.clone(), p.value.clone()))
            .collect())
    }

    async fn get_page(&self, path: &str, token: Option<&str>) -> Result<ParameterPage, PortError> {
        self.faults.check(AwsOp::GetParametersByPath)?;
        let prefix = folder(path);
        let parameters = guard(&self.parameters, AwsOp::GetParametersByPath)?;
        // The token is the last name of the previous page: the next page starts after it.
        let start = match token {
            Some(last) => std::ops::Bound::Excluded(last.to_owned()),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut page: Vec<(String, String)> = parameters
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(&prefix))
            .take(PARAMETERS_PAGE_MAX + 1)
            .map(|(name, p)| (name.clone(), p.value.clone()))
            .collect();
        let next = if page.len() > PARAMETERS_PAGE_MAX {
            page.truncate(PARAMETERS_PAGE_MAX);
            page.last().map(|(name, _)| name.clone())
        } else {
            None
        };
        Ok(ParameterPage {
            parameters: page,
            next,
        })
    }

    async fn get(&self, name: &str) -> Result<Option<Parameter>, PortError> {
        self.faults.check(AwsOp::GetParameter)?;
        Ok(guard(&self.parameters, AwsOp::GetParameter)?
            .get(name)
            .cloned())
    }

    async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError> {
        let (parameters_max, value_max) = self.limits();
        let mut made = None;
        let version = self.faults.mutate(AwsOp::PutParameter, || {
            let mut parameters = guard(&self.parameters, AwsOp::PutParameter)?;
            if value.len() > value_max {
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::PutParameter,
                    format!("ValidationException: parameters of this tier support a maximum parameter value of {value_max} characters ({name}: {})", value.len()),
                ));
            }
            if !parameters.contains_key(name) && parameters.len() >= parameters_max {
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::PutParameter,
                    format!("ParameterLimitExceeded: you have exceeded the number of parameters for this AWS account ({parameters_max}); delete unnecessary parameters in order to create new parameters"),
                ));
            }
            let version = match parameters.get(name) {
                Some(_) if !overwrite => {
                    return Err(PortError::new(
                        ErrorKind::Conflict,
                        AwsOp::PutParameter,
                        format!("ParameterAlreadyExists: {name}"),
                    ))
                }
                Some(p) => p.version + 1,
                None => 1,
            };
            parameters.insert(
                name.to_owned(),
                Parameter {
                    value: value.to_owned(),
                    version,
                },
            );
            made = Some(version);
            Ok(version)
        });
        // The event follows the change, lost answer or not (AWS made the change).
        if let Some(made) = made {
            self.announce(name, if made == 1 { "Create" } else { "Update" });
        }
        version
    }

    async fn delete(&self, name: &str) -> Result<(), PortError> {
        let mut removed = false;
        let result = self.faults.mutate(AwsOp::DeleteParameter, || {
            removed = guard(&self.parameters, AwsOp::DeleteParameter)?
                .remove(name)
                .is_some();
            Ok(())
        });
        if removed {
            self.announce(name, "Delete");
        }
        result
    }
}

/// A runner to create in the simulation.
#[derive(Debug, Clone)]
pub struct SimRunnerSpec {
    /// ECS cluster.
    pub cluster: String,
    /// ECS service.
    pub service: String,
    /// Runner container name.
    pub container: String,
    /// Task definition family.
    pub family: String,
    /// Image running now.
    pub image: String,
    /// Version running now (tag on the task definition).
    pub version: String,
    /// Tasks.
    pub desired_count: u32,
    /// Whether the runner container has a health check.
    pub health_check: bool,
    /// Stacks and their infrastructure versions, in order.
    pub stacks: Vec<(String, String)>,
}

/// The whole simulated AWS.
#[derive(Debug, Clone)]
pub struct SimAws {
    /// The clock.
    pub clock: SimClock,
    /// SSM.
    pub ssm: SimSsm,
    /// ECS.
    pub ecs: SimEcs,
    /// `CloudFormation`.
    pub cfn: SimCfn,
    /// The DynamoDB state table.
    pub table: SimTable,
}

/// 2025-03-01T10:00:00Z: where simulated time starts unless told otherwise.
pub const SIM_EPOCH: Millis = Millis(1_740_823_200_000);

impl SimAws {
    /// A fresh world.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let clock = SimClock::new(SIM_EPOCH);
        SimAws {
            ecs: SimEcs::new(clock.clone(), seed),
            cfn: SimCfn::new(clock.clone()),
            clock,
            ssm: SimSsm::default(),
            table: SimTable::default(),
        }
    }

    /// Creates a runner's service, its running task definition (settled) and its stacks.
    ///
    /// # Errors
    /// When the task definition is refused (a bug in the spec).
    pub fn create_runner(&self, spec: &SimRunnerSpec) -> Result<(), PortError> {
        self.ecs.create_service(spec)?;
        for (name, infra_version) in &spec.stacks {
            self.cfn.create_stack(
                name,
                initial_template(),
                &[],
                &[(
                    runner_updater_core::domain::observed::INFRA_VERSION_TAG,
                    infra_version,
                )],
            );
        }
        Ok(())
    }
}

/// The template every simulated stack starts from: two parameters (`Owner` read by no
/// resource) and two resources.
#[must_use]
pub fn initial_template() -> SimTemplate {
    SimTemplate::default()
        .parameter("Size", Some("2"))
        .parameter("Owner", Some("ops"))
        .resource(SimResource::new("Config", "AWS::SSM::Parameter", "v1"))
        .resource(SimResource::new("Queue", "AWS::SQS::Queue", "v1").using(&["Size"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_simulated_ssm_enforces_the_tier_limits_on_what_put_creates() {
        let ssm = SimSsm::default();
        for i in 0..runner_updater_core::domain::capacity::STANDARD_PARAMETERS_MAX {
            ssm.set(&format!("/p/{i}"), "v");
        }
        let over = ssm.put("/p/one-more", "v", false).await.unwrap_err();
        assert!(over.message.contains("ParameterLimitExceeded"), "{over}");
        assert_eq!(over.kind, ErrorKind::Permanent);
        // An existing parameter may still be overwritten.
        ssm.put("/p/1", "w", true).await.unwrap();
        let long = "x".repeat(4097);
        let too_long = ssm.put("/p/2", &long, true).await.unwrap_err();
        assert!(
            too_long.message.contains("ValidationException"),
            "{too_long}"
        );
        ssm.use_advanced_tier();
        ssm.put("/p/one-more", &long, false).await.unwrap();
        assert_eq!(ssm.count(), 10_001);
    }
}
