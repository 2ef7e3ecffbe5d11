//! Ports: the traits the driver performs effects through. Each has an in-process simulated
//! implementation (`runner_updater_adapters::sim`) and an AWS SDK adapter (`runner_updater_aws`); shared contract tests
//! hold them to the same behaviour.
//!
//! Errors are classified ([`ErrorKind`]) so the driver's error policy can pick: retry with
//! backoff (transient), stop the attempt with a named reason (permanent), or treat as a lost
//! lock (fenced).

mod aws_op;
mod decorate;
mod table;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_core::domain::infra::{ChangeSet, StackEvent};
use runner_updater_core::domain::observed::{ServiceDeployment, ServiceState, StackState, Task};
use runner_updater_core::domain::rollout::{ReleaseRecord, ReleaseRecordError};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::Millis;
use runner_updater_core::record::{Record, RecordError};

pub use aws_op::{ApiFamily, AwsOp, PortCall};
pub use decorate::{Call, Decorated, Hooks, Target};
pub use table::{
    Fence, LeaseCondition, LeaseFields, RecordCondition, StateItem, StatePage, StateTable,
    StoredRecord,
};

/// How a port call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 5xx, timeouts, an unreadable answer: retry with backoff.
    Transient,
    /// AWS refused the call for its rate (a throttling code, HTTP 429): transient, and the
    /// client-side rate limit slows down.
    Throttled,
    /// Validation, access denied: do not retry.
    Permanent,
    /// The thing does not exist.
    NotFound,
    /// A conditional write lost (e.g. `ParameterAlreadyExists`).
    Conflict,
}

/// A failed port call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct PortError {
    /// Classification.
    pub kind: ErrorKind,
    /// The API operation that failed.
    pub operation: AwsOp,
    /// What the service said (with its request id where there is one).
    pub message: String,
}

impl PortError {
    /// Builds an error.
    #[must_use]
    pub fn new(kind: ErrorKind, operation: AwsOp, message: impl Into<String>) -> Self {
        PortError {
            kind,
            operation,
            message: message.into(),
        }
    }

    /// Whether a retry may help.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Throttled)
    }
}

/// A parameter value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// Value.
    pub value: String,
    /// SSM version (increases on every overwrite).
    pub version: u64,
}

/// One page of `GetParametersByPath`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParameterPage {
    /// Full names and values, at most [`PARAMETERS_PAGE_MAX`].
    pub parameters: Vec<(String, String)>,
    /// The next page's token; `None` on the last page.
    pub next: Option<String>,
}

/// The most parameters one `GetParametersByPath` call returns (an AWS limit).
pub const PARAMETERS_PAGE_MAX: usize = 10;

/// The most pages one walk of a folder reads (a bound on a runaway folder).
pub const FOLDER_PAGES_MAX: usize = 100;

/// Every parameter under `path` (recursively), page by page through `store.get_page`: what an
/// adapter whose `get_by_path` is a walk of pages calls, so that each page is one call to
/// whatever wraps the store (a rate limit weighs each page).
///
/// # Errors
/// A page's error, or more than [`FOLDER_PAGES_MAX`] pages.
pub async fn walk_pages(
    store: &dyn ParameterStore,
    path: &str,
) -> Result<BTreeMap<String, String>, PortError> {
    let mut found = BTreeMap::new();
    let mut token: Option<String> = None;
    for _ in 0..FOLDER_PAGES_MAX {
        let page = store.get_page(path, token.as_deref()).await?;
        found.extend(page.parameters);
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(found),
        }
    }
    Err(PortError::new(
        ErrorKind::Permanent,
        AwsOp::GetParametersByPath,
        format!("more than {FOLDER_PAGES_MAX} pages under {path}"),
    ))
}

/// SSM Parameter Store.
#[async_trait]
pub trait ParameterStore: Send + Sync {
    /// Every parameter under `path` (recursive), by full name.
    async fn get_by_path(&self, path: &str) -> Result<BTreeMap<String, String>, PortError>;
    /// One page of the parameters under `path` (recursive), from `token` (the first page
    /// without): what the fleet read walks, a page per call, so that each page goes through
    /// the rate limiter and is retried on its own.
    async fn get_page(&self, path: &str, token: Option<&str>) -> Result<ParameterPage, PortError>;
    /// One parameter.
    async fn get(&self, name: &str) -> Result<Option<Parameter>, PortError>;
    /// Writes a parameter; with `overwrite = false` an existing name fails with
    /// [`ErrorKind::Conflict`] (atomic create). Returns the new version.
    async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError>;
    /// Deletes a parameter (absent is fine).
    async fn delete(&self, name: &str) -> Result<(), PortError>;
}

/// The most messages one `ReceiveMessage` call returns (an AWS limit).
pub const RECEIVE_MESSAGES_MAX: usize = 10;

/// The longest one `ReceiveMessage` call waits for a first message (an AWS limit: a long
/// poll of 20 seconds).
pub const LONG_POLL_MAX: Duration = Duration::from_secs(20);

/// A message of the change events' queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's message id (logs).
    pub id: String,
    /// The receipt handle of this reception (what deletes it).
    pub receipt: String,
    /// The body: an `EventBridge` event, as the rule delivered it.
    pub body: String,
    /// How many times it was received, this time included (SQS's `ApproximateReceiveCount`).
    pub receives: u32,
}

/// The SQS queue an `EventBridge` rule delivers the change events to.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Up to `max` (at most [`RECEIVE_MESSAGES_MAX`]) messages, waiting up to `wait` (at most
    /// [`LONG_POLL_MAX`]) for a first one: empty when none came. A message received is hidden
    /// from other receivers for the queue's visibility timeout, then comes back unless deleted.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, PortError>;
    /// Deletes a message received (handled); a receipt that has expired is an error.
    async fn delete(&self, receipt: &str) -> Result<(), PortError>;
    /// The messages waiting (`ApproximateNumberOfMessages`): the check at start, which names a
    /// queue that does not exist or cannot be read before the first long poll.
    async fn waiting(&self) -> Result<u64, PortError>;
}

/// A lease's expiry is trusted only this much past its time: controllers' clocks may differ.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(5);

/// The most services one `DescribeServices` call takes (an AWS limit).
pub const DESCRIBE_SERVICES_MAX: usize = 10;

/// The most service deployments one `DescribeServiceDeployments` call describes (an AWS limit).
pub const DESCRIBE_SERVICE_DEPLOYMENTS_MAX: usize = 20;

/// What an `UpdateService` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// The id of the new PRIMARY deployment (`ecs-svc/…`).
    pub deployment_id: String,
    /// Its service deployment's ARN (the service's `currentServiceDeployment`), where ECS
    /// reports one.
    pub service_deployment: Option<String>,
}

/// The most task definitions one `ListTaskDefinitions` call returns (an AWS limit).
pub const TASK_DEFINITIONS_PAGE_MAX: usize = 100;

/// One page of `ListTaskDefinitions`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskDefinitionPage {
    /// ARNs, at most [`TASK_DEFINITIONS_PAGE_MAX`].
    pub arns: Vec<String>,
    /// The next page's token; `None` on the last page.
    pub next: Option<String>,
}

/// Amazon ECS. Every method is implemented by every implementation and every decorator (no
/// default bodies: a decorator that forgot to forward one would silently change what it
/// wraps — the simulation once read services with their tasks at rest that way).
#[async_trait]
pub trait Ecs: Send + Sync {
    /// Waits for `op`'s turn at the pace AWS allows it, where AWS limits it more tightly than
    /// ECS's other calls (`RegisterTaskDefinition` 1 a second, `UpdateService` 5: see the rate
    /// limiter), and for the family's tokens of the call that makes it. Asked by the driver
    /// *before* the fencing check of the mutation it is about to make, so that no wait of the
    /// limiter's falls between that check and the call; the call then goes without waiting
    /// (its tokens are prepaid; the adapter's own read before the mutation, if it makes one,
    /// still falls between the check and the mutation). Not a call to AWS: at once without a
    /// limiter.
    async fn pace(&self, op: AwsOp);
    /// The service with its deployments and tasks.
    async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError>;
    /// The service and its deployments without its tasks (`tasks` empty): what a pass outside
    /// the health gate needs. Against AWS it saves the `ListTasks` and `DescribeTasks` calls.
    async fn describe_service_without_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError>;
    /// The service's tasks: running ones and those stopped recently (ECS lists them for about
    /// an hour). Against AWS: `ListTasks` for each desired status (a page of 100 each, usually)
    /// and one `DescribeTasks` per 100 tasks. What the health gate reads only when something
    /// calls for it (`machine::gate_needs_tasks`).
    async fn list_service_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<Task>, PortError>;
    /// Several services of one cluster without their tasks, in the order asked. Against AWS
    /// one `DescribeServices` call per [`DESCRIBE_SERVICES_MAX`] services: what a fleet pass at
    /// rest reads. A missing service is an inner `NotFound`; a failed call fails the whole
    /// batch (the outer error).
    async fn describe_services_without_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<Result<ServiceState, PortError>>, PortError>;
    /// A task definition with its tags.
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinition, PortError>;
    /// One page of `ListTaskDefinitions(familyPrefix = family_prefix, sort = DESC)`: the ARNs
    /// of the active revisions of every family starting with `family_prefix`, families in
    /// reverse order and each newest first, at most [`TASK_DEFINITIONS_PAGE_MAX`], from `token`
    /// (the first page without). [`runner_updater_core::domain::revision_search`] walks it.
    async fn list_task_definitions(
        &self,
        family_prefix: &str,
        token: Option<&str>,
    ) -> Result<TaskDefinitionPage, PortError>;
    /// Registers a new revision of `base_arn` identical in every field except `container`'s
    /// image; the base's tags are kept and `tags` added over them. Returns the new ARN.
    async fn register_clone(
        &self,
        base_arn: &str,
        container: &str,
        image: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError>;
    /// Points the service at a task definition with the circuit breaker (rollback on); returns
    /// the id of the new PRIMARY deployment and its service deployment. With `only_over`, the update is made only while
    /// every deployment of the service is one of those (the attempt's baseline): a deployment
    /// that appeared since (a foreign writer) refuses it with `ErrorKind::Conflict`, nothing
    /// changed. Against AWS the check is on the read of the service the adapter makes anyway
    /// (for its deployment configuration): no call of its own.
    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
        only_over: Option<&[String]>,
    ) -> Result<ServiceUpdate, PortError>;
    /// Service deployments by ARN, in the order asked. Against AWS one
    /// `DescribeServiceDeployments` call per [`DESCRIBE_SERVICE_DEPLOYMENTS_MAX`] (any clusters
    /// and services): what the health gate reads while rollouts are in progress. One ECS does
    /// not know is an inner `NotFound`; a failed call fails the whole batch (the outer error).
    async fn describe_service_deployments(
        &self,
        arns: &[String],
    ) -> Result<Vec<Result<ServiceDeployment, PortError>>, PortError>;
    /// `StopServiceDeployment(stopType = ROLLBACK)` on a deployment of `service`: ECS rolls the
    /// service back to the exact service revision before it. Only a deployment in progress (or
    /// already stopping or rolling back: then a no-op) can be stopped; one that completed is
    /// refused with `ErrorKind::Conflict`, an API or deployment ECS does not offer with
    /// `NotFound` or `Permanent` — the rollback then falls back to `update_service`.
    async fn stop_service_deployment(
        &self,
        cluster: &str,
        service: &str,
        arn: &str,
    ) -> Result<(), PortError>;
}

/// What `GetTemplateSummary` says about a template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateSummary {
    /// Capabilities the template needs (`CAPABILITY_IAM`, `CAPABILITY_NAMED_IAM`, …).
    pub capabilities: Vec<String>,
    /// Parameters it declares.
    pub parameters: Vec<String>,
}

/// Which change set: of a stack that exists, or of one it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSetKind {
    /// `ChangeSetType=UPDATE` (the runners' stacks).
    Update,
    /// `ChangeSetType=CREATE` (`runner-updater setup`, the first time).
    Create,
}

/// A change set to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSetRequest {
    /// Stack.
    pub stack: String,
    /// Change set name (deterministic per attempt and stack).
    pub name: String,
    /// Update, or creation.
    pub kind: ChangeSetKind,
    /// New template; `None` (and no body) for `UsePreviousTemplate`.
    pub template_url: Option<String>,
    /// New template given inline (`runner-updater setup`'s own template); wins over the URL.
    pub template_body: Option<String>,
    /// Parameters given a value.
    pub parameters: BTreeMap<String, String>,
    /// Parameters sent with `UsePreviousValue` (every other one the template declares).
    pub keep_parameters: Vec<String>,
    /// Capabilities acknowledged.
    pub capabilities: Vec<String>,
    /// The stack's full tag set after the change.
    pub tags: BTreeMap<String, String>,
    /// Idempotency token of the creation.
    pub client_token: String,
    /// Description shown in the console.
    pub description: String,
}

/// AWS `CloudFormation`: stacks, change sets and events.
#[async_trait]
pub trait CloudFormation: Send + Sync {
    /// A stack's status, tags, outputs, parameters and last update.
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError>;
    /// The summary of a new template (`template_url`) or of the stack's current one.
    async fn template_summary(
        &self,
        stack: &str,
        template_url: Option<&str>,
    ) -> Result<TemplateSummary, PortError>;
    /// Creates a change set; an existing name fails with [`ErrorKind::Conflict`]. Returns its id.
    async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError>;
    /// A change set by name, `None` when it does not exist (any more).
    async fn describe_change_set(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ChangeSet>, PortError>;
    /// Executes a change set, rolling back every resource on failure, with `token` as the
    /// `ClientRequestToken` (a retry with the same token is the same request).
    async fn execute_change_set(
        &self,
        stack: &str,
        name: &str,
        token: &str,
    ) -> Result<(), PortError>;
    /// Deletes a change set (absent is fine).
    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), PortError>;
    /// The stack's recent events, newest first.
    async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, PortError>;
}

/// The result of trying to take a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// Held by us with this fencing token.
    Acquired {
        /// Fencing token.
        epoch: u64,
    },
    /// Held by someone else.
    Busy {
        /// Who.
        holder: String,
        /// Until when.
        expires_at: Millis,
    },
}

/// The per-runner lease (in-process here; SSM from issue 3 on).
#[async_trait]
pub trait Lock: Send + Sync {
    /// Takes (or renews, if already ours) the runner's lease for `ttl`.
    async fn acquire(
        &self,
        runner: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError>;
    /// Whether `holder` still holds the lease with `epoch` (the fencing check).
    async fn check(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
    ) -> Result<bool, PortError>;
    /// Who holds a live lease on the runner now, if anyone.
    async fn holder(&self, runner: &str, now: Millis) -> Result<Option<String>, PortError>;
    /// Releases the lease if `holder` holds it with `epoch`; otherwise does nothing.
    async fn release(&self, runner: &str, holder: &str, epoch: u64) -> Result<(), PortError>;
    /// Renews the lease `holder` believes it holds with `epoch`: what [`Lock::acquire`]
    /// answers (the same epoch renewed; the next one when it ran out and is still its own;
    /// busy when another took it). A lease with conditional writes renews a live lease in one
    /// write, reading only when that write is refused; by default, [`Lock::acquire`].
    async fn renew(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        let _ = epoch;
        self.acquire(runner, holder, now, ttl).await
    }
    /// Who holds a live lease on each of `runners` (`status`), in as few calls as the lease's
    /// store allows; by default one [`Lock::holder`] read per runner.
    async fn holders(
        &self,
        runners: &[String],
        now: Millis,
    ) -> Vec<(String, Result<Option<String>, PortError>)> {
        let mut holders = Vec::with_capacity(runners.len());
        for runner in runners {
            holders.push((runner.clone(), self.holder(runner, now).await));
        }
        holders
    }
}

/// A failed state-store operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The stored record cannot be used.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A channel's stored release record cannot be used.
    #[error(transparent)]
    Release(#[from] ReleaseRecordError),
    /// IO or service failure.
    #[error("state store: {0}")]
    Io(String),
    /// The store refused the write by its condition (the DynamoDB state table): another
    /// controller wrote the record since it was read, or holds the runner's lease. Nothing
    /// was written; the caller reloads.
    #[error("state store: {0}")]
    Refused(String),
}

/// What a record write is asked to do to the runner's lease as well, where the store holds both
/// in one item (the state table): its renewal folded into a write of an attempt's record, its
/// release into the write that leaves the attempt — asked by the driver only when nothing else
/// fenced follows that write (a change set still to delete keeps the lease until it is done).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseFold {
    /// Nothing.
    Keep,
    /// Renew it for `ttl` from the write, if the record is an attempt's.
    Renew {
        /// How long from the write.
        ttl: Duration,
    },
    /// Release it, if the write leaves an attempt.
    Release,
}

/// What a record write did to the runner's lease, besides the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWritten {
    /// Nothing (the lease is the [`Lock`]'s alone).
    Untouched,
    /// Renewed for `ttl` from the write (this holder, this epoch, live: the renewal's own
    /// condition).
    Renewed {
        /// How long from the write.
        ttl: Duration,
    },
    /// Released: the attempt of `epoch` was left.
    Released {
        /// The epoch released.
        epoch: u64,
    },
}

/// Where records are persisted.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The runner's record, if one was saved.
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError>;
    /// Saves the record (durably, atomically) before the caller acts on it.
    async fn save(&self, record: &Record) -> Result<(), StoreError>;
    /// Runners with a record.
    async fn list(&self) -> Result<Vec<String>, StoreError>;
    /// Whether the store itself refuses a save ([`StoreError::Refused`]) when another
    /// controller wrote the record since this one read it, or holds the runner's lease — a
    /// conditional write (the state table). Then the driver makes no read of its own to check
    /// first: the write is the check.
    fn fences_writes(&self) -> bool {
        false
    }
    /// Saves the record as [`StateStore::save`] does, and does to the lease what `fold` asks
    /// where the store holds it with the record and the write allows it (a renewal with a write
    /// of an attempt's record, a release with the write that leaves one); says what it did. A
    /// store that does not hold the lease (the default) does nothing to it and says
    /// [`LeaseWritten::Untouched`], the safe answer: the caller then renews and releases
    /// through the [`Lock`].
    async fn save_folding(
        &self,
        record: &Record,
        fold: LeaseFold,
    ) -> Result<LeaseWritten, StoreError> {
        let _ = fold;
        self.save(record).await.map(|()| LeaseWritten::Untouched)
    }
    /// A channel's release record (under `_channels/<channel>`), if one was saved.
    async fn load_release(&self, channel: &str) -> Result<Option<ReleaseRecord>, StoreError>;
    /// Saves a channel's release record before anyone acts on it. The caller holds the
    /// channel's lease with `epoch`: a store that holds leases in its writes (the state table)
    /// writes only while that lease is live and the record is as this controller last read it
    /// (else [`StoreError::Refused`]); any other store is fenced by the caller's check of the
    /// lease right before.
    async fn save_release(&self, record: &ReleaseRecord, epoch: u64) -> Result<(), StoreError>;
    /// Reads the records of `runners` ahead, in as few calls as the store allows, so that
    /// each one's next [`StateStore::load`] makes no call of its own (the state table: one
    /// scan, a page per megabyte, instead of a read per runner). A store with nothing better
    /// than a read per runner does nothing. Compare-and-set keeps a record read ahead safe: a
    /// write after a change made since is refused, and the writer reloads.
    async fn prefetch(&self, runners: &[String]) -> Result<(), StoreError> {
        let _ = runners;
        Ok(())
    }
    /// The records of `runners` (each one's own answer: an unusable record does not hide the
    /// others), read ahead first.
    ///
    /// # Errors
    /// The store cannot be read at all.
    async fn load_many(
        &self,
        runners: &[String],
    ) -> Result<Vec<(String, Result<Option<Record>, StoreError>)>, StoreError> {
        self.prefetch(runners).await?;
        let mut records = Vec::with_capacity(runners.len());
        for runner in runners {
            records.push((runner.clone(), self.load(runner).await));
        }
        Ok(records)
    }
}

/// Time. The only place the controller reads the clock or waits.
#[async_trait]
pub trait Clock: Send + Sync {
    /// Now (wall-clock time: what leases and records are stamped with).
    fn now(&self) -> Millis;
    /// Time elapsed on a clock that never goes back and is not stepped (a process's own
    /// monotonic clock; its origin is arbitrary): what this process's own deadlines, such
    /// as the local end of its lease, are measured on.
    fn monotonic(&self) -> Duration;
    /// Waits (a simulated clock advances instead).
    async fn sleep(&self, duration: Duration);
}
