//! Configuration: a TOML file plus environment overrides, validated into typed settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use runner_updater_core::domain::capacity::REGISTER_TASK_DEFINITION_PER_SEC;
use runner_updater_core::domain::desired::RunnerPolicy;
use runner_updater_core::domain::image::ImageRef;
use runner_updater_core::domain::infra::ApprovalPolicy;
use runner_updater_core::domain::window::{parse_windows, UpdateWindows};
use runner_updater_core::machine::Settings;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SSM root prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The controller's release channel.
    #[serde(default = "default_channel")]
    pub channel: Arc<str>,
    /// When updates may start, for every runner without its own `update_window`
    /// (`"Sat 02:00-05:00 Europe/Berlin; …"`); absent: any time.
    #[serde(default, deserialize_with = "update_window")]
    pub update_window: Option<WindowSetting>,
    /// Channels that exist (a desired channel outside them is a bad value).
    #[serde(default = "default_known_channels")]
    pub known_channels: Arc<[String]>,
    /// Channels that accept pre-release versions (`2.19.0-rc.1`); none by default, so a
    /// pre-release on any other channel is refused (`pre-release-not-allowed`).
    #[serde(default)]
    pub prerelease_channels: Arc<[String]>,
    /// Seconds a runner's separate `desired/*` parameters must stay unchanged before a pass at
    /// rest acts on them (ops write them one by one: a half-written desired state is never
    /// deployed). The one-document `release` is acted on at once.
    #[serde(default = "default_settle_secs")]
    pub settle_secs: u64,
    /// Seconds between passes when a runner is at rest.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// Seconds between passes while an update is in flight.
    #[serde(default = "default_active_poll_interval_secs")]
    pub active_poll_interval_secs: u64,
    /// Lease length of the runner lock, in seconds (renewed every active pass).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Runner passes under way at the same time (a runner still in its pass is skipped, never
    /// waited for).
    #[serde(default = "default_max_concurrent_runners")]
    pub max_concurrent_runners: usize,
    /// Seconds after entering a state that makes a non-idempotent ECS call during which a read
    /// showing no trace of the call is not trusted (the call's own time plus ECS's eventual
    /// consistency): a resumed or retried call is decided only after it.
    #[serde(default = "default_consistency_window_secs")]
    pub consistency_window_secs: u64,
    /// A runner's stacks are read at rest only when its desired infrastructure changed, a stack
    /// was moving, or their last read is older than this (plus up to half of it, spread per
    /// runner): what catches a change made to a stack by hand. Under the lock they are always
    /// read.
    #[serde(default = "default_stack_refresh_secs")]
    pub stack_refresh_secs: u64,
    /// Where records are kept.
    #[serde(default)]
    pub state_store: StateStoreConfig,
    /// Health-gate defaults for every runner.
    #[serde(default)]
    pub health: HealthConfig,
    /// CloudFormation waits.
    #[serde(default)]
    pub infrastructure: InfrastructureConfig,
    /// Tracing.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Client-side rate limits per AWS API family, shared by every runner.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// The AWS SDK's timeouts.
    #[serde(default)]
    pub aws: AwsConfig,
    /// Change events through `EventBridge` and SQS (off unless `events.queue_url` is set).
    #[serde(default)]
    pub events: EventsConfig,
    /// The runners.
    #[serde(default)]
    pub runners: Vec<RunnerConfig>,
}

/// The AWS SDK clients' timeouts (retries: the SDK's standard three attempts, adaptive).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Timeout of one attempt of a call, in seconds.
    #[serde(default = "default_attempt_timeout_secs")]
    pub attempt_timeout_secs: u64,
    /// Timeout of a call, its retries included, in seconds.
    #[serde(default = "default_operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    /// SSM parameters the account may hold in this region: 10,000 on the Standard tier,
    /// 100,000 on the Advanced tier. `run` counts what the fleet needs at start, warns from
    /// 80 % and refuses above it.
    #[serde(default = "default_ssm_parameters_max")]
    pub ssm_parameters_max: usize,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            attempt_timeout_secs: default_attempt_timeout_secs(),
            operation_timeout_secs: default_operation_timeout_secs(),
            ssm_parameters_max: default_ssm_parameters_max(),
        }
    }
}

fn default_ssm_parameters_max() -> usize {
    runner_updater_core::domain::capacity::STANDARD_PARAMETERS_MAX
}

fn default_attempt_timeout_secs() -> u64 {
    10
}
fn default_operation_timeout_secs() -> u64 {
    30
}

/// AWS calls a pass of a runner in an attempt makes at most, as the rate limiter weighs them
/// (the lease's read and renewal, the service with its tasks, a record write), for
/// [`Config::lease_floor_secs`].
pub const CALLS_PER_ACTIVE_PASS: u64 = 8;

/// Calls per second allowed per AWS API family (defaults safely under AWS's published
/// throttling limits); halved when AWS throttles anyway, then grown back.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// SSM calls per second.
    #[serde(default = "default_ssm_per_sec")]
    pub ssm_per_sec: u32,
    /// ECS calls per second.
    #[serde(default = "default_ecs_per_sec")]
    pub ecs_per_sec: u32,
    /// CloudFormation calls per second.
    #[serde(default = "default_cloudformation_per_sec")]
    pub cloudformation_per_sec: u32,
    /// DynamoDB calls per second (the `dynamodb` state store).
    #[serde(default = "default_dynamodb_per_sec")]
    pub dynamodb_per_sec: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            ssm_per_sec: default_ssm_per_sec(),
            ecs_per_sec: default_ecs_per_sec(),
            cloudformation_per_sec: default_cloudformation_per_sec(),
            dynamodb_per_sec: default_dynamodb_per_sec(),
        }
    }
}

fn default_ssm_per_sec() -> u32 {
    30
}

fn default_ecs_per_sec() -> u32 {
    15
}

fn default_cloudformation_per_sec() -> u32 {
    8
}

/// An on-demand table serves thousands of requests a second per partition; the controller's
/// own rate stays modest.
fn default_dynamodb_per_sec() -> u32 {
    50
}

/// Tracing settings (the exporter itself is configured by the standard `OTEL_*` variables).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A pass at rest that leads nowhere gets a `check` span when its outcome changes, and
    /// otherwise once in this many passes (0: only on a change).
    #[serde(default = "default_check_span_every_passes")]
    pub check_span_every_passes: u32,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            check_span_every_passes: default_check_span_every_passes(),
        }
    }
}

fn default_check_span_every_passes() -> u32 {
    60
}

/// Change events: an SQS queue that an `EventBridge` rule delivers SSM's and ECS's change
/// events to (the set-up template makes both). With it, a change is acted on within seconds and
/// the sweeps become the backstop.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The queue's URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`, the set-up
    /// stack's output `EventsQueueUrl`); absent: no events, sweeps every `poll_interval_secs`.
    #[serde(default)]
    pub queue_url: Option<String>,
    /// Seconds between sweeps while the events arrive (the backstop that catches a change whose
    /// event was lost). While the queue cannot be read, or a channel's release is under way,
    /// the sweeps come every `poll_interval_secs` again.
    #[serde(default = "default_backstop_interval_secs")]
    pub backstop_interval_secs: u64,
    /// Seconds a receive waits for a first message (SQS's long poll, 1 to 20).
    #[serde(default = "default_events_wait_secs")]
    pub wait_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            queue_url: None,
            backstop_interval_secs: default_backstop_interval_secs(),
            wait_secs: default_events_wait_secs(),
        }
    }
}

impl EventsConfig {
    /// Whether the controller reads change events.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.queue_url.is_some()
    }
}

fn default_backstop_interval_secs() -> u64 {
    600
}

fn default_events_wait_secs() -> u64 {
    20
}

/// The state store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StateStoreConfig {
    /// `dynamodb` (the state table, shared by every replica, every write conditional), `ssm`
    /// (`<prefix>/<runner>/status`, shared by every replica) or `file` (local).
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory of the `file` backend.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// The table of the `dynamodb` backend (its endpoint: the standard
    /// `AWS_ENDPOINT_URL_DYNAMODB`, or `AWS_ENDPOINT_URL`).
    #[serde(default = "default_state_table")]
    pub table: String,
}

/// Where records are kept.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(try_from = "String")]
pub enum StateBackend {
    /// `<prefix>/<runner>/status` in SSM, shared by every replica.
    #[default]
    Ssm,
    /// One file per runner under `state_store.path` (one controller, local).
    File,
    /// One item per runner in the DynamoDB table `state_store.table`: the record and the
    /// lease, every write conditional.
    DynamoDb,
}

impl TryFrom<String> for StateBackend {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "ssm" => Ok(StateBackend::Ssm),
            "file" => Ok(StateBackend::File),
            "dynamodb" => Ok(StateBackend::DynamoDb),
            _ => Err(format!(
                "state_store.backend {text:?}: use \"dynamodb\", \"ssm\" or \"file\""
            )),
        }
    }
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        StateStoreConfig {
            backend: StateBackend::default(),
            path: default_state_path(),
            table: default_state_table(),
        }
    }
}

/// Declares a settings section that a runner may override, from one list of keys: the global
/// section (every key with its default) and the per-runner override (every key optional, none
/// by default), and the merge of an override over the global section, key by key. A key added
/// to the list is merged by construction; `KEYS` lets a test check every key.
macro_rules! overridable_section {
    (
        $(#[$meta:meta])*
        $name:ident, $override:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty = $default:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )+
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default(), )+ }
            }
        }

        impl $name {
            /// The keys of the section, as written in the configuration.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($field), )+];
        }

        #[doc = concat!("A runner's override of [`", stringify!($name), "`]: each key given replaces the global section's, every other key keeps it.")]
        #[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
        #[serde(deny_unknown_fields)]
        pub struct $override {
            $( $(#[$field_meta])* #[serde(default)] pub $field: Option<$ty>, )+
        }

        impl $override {
            /// This override over `global`, key by key.
            #[must_use]
            pub fn over(&self, global: &$name) -> $name {
                $name { $( $field: self.$field.unwrap_or(global.$field), )+ }
            }
        }
    };
}

overridable_section! {
    /// Health-gate settings.
    HealthConfig, HealthOverride {
        /// Failed or unhealthy tasks of the new revision that trigger a rollback.
        fail_fast_tasks: u32 = default_fail_fast_tasks,
        /// Seconds the rollout may take to become healthy.
        rollout_timeout_secs: u64 = default_rollout_timeout_secs,
        /// Seconds the new revision must stay healthy.
        soak_secs: u64 = default_soak_secs,
        /// Seconds a rollback may take to be confirmed.
        rollback_timeout_secs: u64 = default_rollout_timeout_secs,
    }
}

/// CloudFormation waits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InfrastructureConfig {
    /// Seconds CloudFormation may take to compute a change set.
    #[serde(default = "default_change_set_timeout_secs")]
    pub change_set_timeout_secs: u64,
    /// Seconds after which a stack update still running is reported as slow (it is never
    /// abandoned half way).
    #[serde(default = "default_stack_update_timeout_secs")]
    pub stack_update_timeout_secs: u64,
}

impl Default for InfrastructureConfig {
    fn default() -> Self {
        InfrastructureConfig {
            change_set_timeout_secs: default_change_set_timeout_secs(),
            stack_update_timeout_secs: default_stack_update_timeout_secs(),
        }
    }
}

fn default_max_concurrent_runners() -> usize {
    16
}

fn default_consistency_window_secs() -> u64 {
    60
}

fn default_stack_refresh_secs() -> u64 {
    600
}

fn default_change_set_timeout_secs() -> u64 {
    900
}

fn default_stack_update_timeout_secs() -> u64 {
    3600
}

/// Reads `auto_execute` where it is written (a refusal names the line and column).
fn auto_execute<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<ApprovalPolicy, D::Error> {
    let text = String::deserialize(deserializer)?;
    ApprovalPolicy::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "auto_execute {text:?}: use \"never\", \"safe\" or \"always\""
        ))
    })
}

/// One runner.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Name: the SSM folder `<prefix>/<name>/`.
    pub name: String,
    /// ECS cluster.
    pub cluster: String,
    /// ECS service.
    pub service: String,
    /// The runner container in the task definition.
    #[serde(default = "default_container")]
    pub container: String,
    /// Default image repository (`<image_repository>:<version>`).
    pub image_repository: String,
    /// Further repositories an image may come from.
    #[serde(default)]
    pub allowed_repositories: Vec<String>,
    /// `CloudFormation` stacks, in update order (IAM-role stack first).
    #[serde(default)]
    pub stacks: Vec<String>,
    /// Overrides of the global `health` section, key by key (a key not given keeps the global
    /// value).
    #[serde(default)]
    pub health: HealthOverride,
    /// Which change sets run without `runner-updater approve`: `never`, `safe` (no
    /// replacement, no IAM change) or `always`.
    #[serde(default, deserialize_with = "auto_execute")]
    pub auto_execute: ApprovalPolicy,
    /// The release channel the runner follows (`<prefix>/_channels/<channel>/release`);
    /// absent: the controller's `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Arc<str>>,
    /// When updates of this runner may start (`"Sat 02:00-05:00 Europe/Berlin; …"`, or
    /// `"any"`); absent: the global `update_window`. Its `desired/update-window` overrides it.
    #[serde(default, deserialize_with = "update_window")]
    pub update_window: Option<WindowSetting>,
}

/// A configured update window: windows, or `any` (no window, overriding the global one).
pub type WindowSetting = Option<Arc<UpdateWindows>>;

fn update_window<'de, D>(deserializer: D) -> Result<Option<WindowSetting>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    parse_windows(&text)
        .map(|windows| Some(windows.map(Arc::new)))
        .map_err(|e| serde::de::Error::custom(format!("update_window {text:?}: {e}")))
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or unknown / mistyped keys.
    #[error("configuration: {0}")]
    Parse(String),
    /// A value outside its range.
    #[error("configuration: {0}")]
    Invalid(String),
}

fn default_prefix() -> String {
    "/runner-updater".to_owned()
}
fn default_channel() -> Arc<str> {
    "stable".into()
}
fn default_known_channels() -> Arc<[String]> {
    ["stable", "beta", "edge"].map(str::to_owned).into()
}
fn default_settle_secs() -> u64 {
    10
}
/// The longest settle accepted: beyond it, a desired state would wait for no good reason.
pub const SETTLE_SECS_MAX: u64 = 600;
fn default_poll_interval_secs() -> u64 {
    60
}
fn default_active_poll_interval_secs() -> u64 {
    10
}
fn default_lease_secs() -> u64 {
    180
}
fn default_state_path() -> PathBuf {
    PathBuf::from("runner-updater-state")
}

fn default_state_table() -> String {
    "runner-updater-state".to_owned()
}

/// Whether `name` is a DynamoDB table name: 3 to 255 of `a-z A-Z 0-9 _ - .`.
fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
fn default_fail_fast_tasks() -> u32 {
    2
}
fn default_rollout_timeout_secs() -> u64 {
    1800
}
fn default_soak_secs() -> u64 {
    300
}
fn default_container() -> String {
    "runner".to_owned()
}

/// A runner name: lower-case letters, digits and `-`, starting with a letter, at most 48.
#[must_use]
pub fn is_runner_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Config {
    /// Parses and validates TOML.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `RUNNER_UPDATER_*` environment overrides (`PREFIX`, `CHANNEL`, `STATE_DIR`,
    /// `POLL_INTERVAL_SECS`), then validates again.
    ///
    /// # Errors
    /// When an override is malformed.
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        if let Some(prefix) = get("RUNNER_UPDATER_PREFIX") {
            self.prefix = prefix;
        }
        if let Some(channel) = get("RUNNER_UPDATER_CHANNEL") {
            self.channel = channel.into();
        }
        if let Some(path) = get("RUNNER_UPDATER_STATE_DIR") {
            self.state_store.path = PathBuf::from(path);
        }
        if let Some(secs) = get("RUNNER_UPDATER_POLL_INTERVAL_SECS") {
            self.poll_interval_secs = secs.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "RUNNER_UPDATER_POLL_INTERVAL_SECS={secs:?} is not a number"
                ))
            })?;
        }
        self.validate()?;
        Ok(self)
    }

    /// The shortest lease that a renewal coming as late as it may still renews in time: the
    /// next pass of a runner in an attempt comes an active interval after the last, may wait
    /// out two SDK calls that time out (a read, then the renewal itself), and may queue behind
    /// a full pass of `max_concurrent_runners` runners through the slowest API family's rate
    /// limit. `run` refuses to start below it and warns below twice it.
    #[must_use]
    pub fn lease_floor_secs(&self) -> u64 {
        self.active_poll_interval_secs
            .saturating_add(self.aws.operation_timeout_secs.saturating_mul(2))
            .saturating_add(self.pass_secs())
    }

    /// A pass at `max_concurrent_runners` (no more runners than there are) through the
    /// slowest family's rate limit, in whole seconds.
    fn pass_secs(&self) -> u64 {
        let limits = self.rate_limits;
        let slowest = limits
            .ssm_per_sec
            .min(limits.ecs_per_sec)
            .min(limits.cloudformation_per_sec)
            .max(1);
        let concurrent = self.max_concurrent_runners.min(self.runners.len().max(1));
        let concurrent = u64::try_from(concurrent).unwrap_or(u64::MAX);
        // A registration waits for AWS's own pace (one a second) before its fencing check:
        // every pass of the round may be waiting for one.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )] // whole seconds of a small count
        let registrations = (concurrent as f64 / REGISTER_TASK_DEFINITION_PER_SEC).ceil() as u64;
        concurrent
            .saturating_mul(CALLS_PER_ACTIVE_PASS)
            .div_ceil(u64::from(slowest))
            .max(registrations)
    }

    /// Warnings about a configuration that is valid but risky (logged at start).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let floor = self.lease_floor_secs();
        let mut warnings = Vec::new();
        if self.lease_secs < 2 * floor {
            warnings.push(format!(
                "lease_secs ({}) is under twice its floor ({floor}s): a slow pass may let the lease lapse mid-attempt (README, \"The lock\")",
                self.lease_secs
            ));
        }
        warnings
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//")
        {
            return invalid(format!(
                "prefix {:?} must start with '/' and not end with '/'",
                self.prefix
            ));
        }
        if !is_table_name(&self.state_store.table) {
            return invalid(format!(
                "state_store.table {:?} is not a DynamoDB table name (3 to 255 of a-z, A-Z, 0-9, '_', '-', '.')",
                self.state_store.table
            ));
        }
        if !self.known_channels.iter().any(|c| **c == *self.channel) {
            return invalid(format!(
                "channel {:?} is not in known_channels",
                self.channel
            ));
        }
        if let Some(channel) = self
            .prerelease_channels
            .iter()
            .find(|c| !self.known_channels.contains(c))
        {
            return invalid(format!(
                "prerelease_channels: {channel:?} is not in known_channels"
            ));
        }
        if self.settle_secs > SETTLE_SECS_MAX {
            return invalid(format!(
                "settle_secs ({}) is more than {SETTLE_SECS_MAX}",
                self.settle_secs
            ));
        }
        if self.poll_interval_secs == 0 || self.active_poll_interval_secs == 0 {
            return invalid("poll intervals must be at least 1 second".to_owned());
        }
        let limits = self.rate_limits;
        if limits.ssm_per_sec == 0
            || limits.ecs_per_sec == 0
            || limits.cloudformation_per_sec == 0
            || limits.dynamodb_per_sec == 0
        {
            return invalid(
                "rate_limits: every rate must be at least 1 call per second".to_owned(),
            );
        }
        if self.max_concurrent_runners == 0 {
            return invalid("max_concurrent_runners must be at least 1".to_owned());
        }
        if self.lease_secs < 3 * self.active_poll_interval_secs {
            return invalid(format!(
                "lease_secs ({}) must be at least three active poll intervals ({}s) so the lease is renewed in time",
                self.lease_secs,
                3 * self.active_poll_interval_secs
            ));
        }
        if self.aws.attempt_timeout_secs == 0
            || self.aws.operation_timeout_secs < self.aws.attempt_timeout_secs
        {
            return invalid(format!(
                "aws: attempt_timeout_secs ({}) must be at least 1 and at most operation_timeout_secs ({})",
                self.aws.attempt_timeout_secs, self.aws.operation_timeout_secs
            ));
        }
        if self.aws.ssm_parameters_max == 0 {
            return invalid(
                "aws: ssm_parameters_max must be at least 1 (10000 on the Standard tier, 100000 on the Advanced tier)"
                    .to_owned(),
            );
        }
        self.validate_events()?;
        let floor = self.lease_floor_secs();
        if self.lease_secs < floor {
            return invalid(format!(
                "lease_secs ({}) cannot cover a renewal that comes late: it must be at least {floor}s (active_poll_interval_secs {} + 2 x aws.operation_timeout_secs {} + a pass at max_concurrent_runners {}s; README, \"The lock\")",
                self.lease_secs,
                self.active_poll_interval_secs,
                self.aws.operation_timeout_secs,
                self.pass_secs()
            ));
        }
        self.validate_runners()
    }

    /// The longest a controller goes between two sweeps: `events.backstop_interval_secs` with
    /// change events on (while they arrive), else `poll_interval_secs` (what liveness allows).
    #[must_use]
    pub fn longest_sweep_interval_secs(&self) -> u64 {
        if self.events.enabled() {
            self.events
                .backstop_interval_secs
                .max(self.poll_interval_secs)
        } else {
            self.poll_interval_secs
        }
    }

    /// The events' queue: an SQS URL, a long poll SQS allows, a backstop no shorter than the
    /// sweeps it replaces.
    fn validate_events(&self) -> Result<(), ConfigError> {
        let events = &self.events;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(url) = &events.queue_url {
            let path = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .and_then(|rest| rest.split_once('/'));
            let named = path.is_some_and(|(host, path)| {
                !host.is_empty()
                    && !path.is_empty()
                    && !path.ends_with('/')
                    && !url.chars().any(char::is_whitespace)
            });
            if !named {
                return invalid(format!(
                    "events.queue_url {url:?} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)"
                ));
            }
        }
        if !(1..=20).contains(&events.wait_secs) {
            return invalid(format!(
                "events.wait_secs ({}) must be 1 to 20 (SQS's long poll)",
                events.wait_secs
            ));
        }
        if events.enabled() && events.backstop_interval_secs < self.poll_interval_secs {
            return invalid(format!(
                "events.backstop_interval_secs ({}) must be at least poll_interval_secs ({}): it is the longer interval the sweeps take while events arrive",
                events.backstop_interval_secs, self.poll_interval_secs
            ));
        }
        Ok(())
    }

    /// Each runner: a name that is one, once; image repositories; a fail-fast count.
    fn validate_runners(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::BTreeSet::new();
        for runner in &self.runners {
            if !is_runner_name(&runner.name) {
                return invalid(format!("runner name {:?}: use lower-case letters, digits and '-', starting with a letter", runner.name));
            }
            if !names.insert(runner.name.as_str()) {
                return invalid(format!("runner {:?} is listed twice", runner.name));
            }
            for repository in
                std::iter::once(&runner.image_repository).chain(&runner.allowed_repositories)
            {
                if ImageRef::with_tag(repository, "1.0.0").is_err() {
                    return invalid(format!(
                        "runner {:?}: {repository:?} is not an image repository",
                        runner.name
                    ));
                }
            }
            if let Some(channel) = &runner.channel {
                if !self.known_channels.iter().any(|c| **c == **channel) {
                    return invalid(format!(
                        "runner {:?}: channel {channel:?} is not in known_channels",
                        runner.name
                    ));
                }
            }
            if self.health(runner).fail_fast_tasks == 0 {
                return invalid(format!(
                    "runner {:?}: fail_fast_tasks must be at least 1",
                    runner.name
                ));
            }
        }
        Ok(())
    }

    /// The release channel a runner follows: its own, else the controller's.
    #[must_use]
    pub fn channel_of<'a>(&'a self, runner: &'a RunnerConfig) -> &'a str {
        runner.channel.as_deref().unwrap_or(&self.channel)
    }

    /// The channels this controller serves (those its runners follow), each with its runners
    /// in the configuration's order.
    #[must_use]
    pub fn channels(&self) -> Vec<(String, Vec<String>)> {
        let mut channels: Vec<(String, Vec<String>)> = Vec::new();
        for runner in &self.runners {
            let channel = self.channel_of(runner);
            match channels.iter_mut().find(|(name, _)| name == channel) {
                Some((_, runners)) => runners.push(runner.name.clone()),
                None => channels.push((channel.to_owned(), vec![runner.name.clone()])),
            }
        }
        channels
    }

    /// The runner of that name.
    #[must_use]
    pub fn runner(&self, name: &str) -> Option<&RunnerConfig> {
        self.runners.iter().find(|r| r.name == name)
    }

    /// A runner's health-gate settings: its own keys over the global section's.
    #[must_use]
    pub fn health(&self, runner: &RunnerConfig) -> HealthConfig {
        runner.health.over(&self.health)
    }

    /// Decision settings for a runner.
    #[must_use]
    pub fn settings(&self, runner: &RunnerConfig) -> Settings {
        let health = self.health(runner);
        Settings {
            channel: runner
                .channel
                .clone()
                .unwrap_or_else(|| self.channel.clone()),
            fail_fast_tasks: health.fail_fast_tasks,
            rollout_timeout: Duration::from_secs(health.rollout_timeout_secs),
            soak: Duration::from_secs(health.soak_secs),
            rollback_timeout: Duration::from_secs(health.rollback_timeout_secs),
            history_max: Settings::default().history_max,
            approval: runner.auto_execute,
            change_set_timeout: Duration::from_secs(self.infrastructure.change_set_timeout_secs),
            stack_update_timeout: Duration::from_secs(
                self.infrastructure.stack_update_timeout_secs,
            ),
        }
    }

    /// What may be deployed to a runner.
    #[must_use]
    pub fn policy(&self, runner: &RunnerConfig) -> RunnerPolicy {
        RunnerPolicy {
            image_repository: runner.image_repository.clone(),
            allowed_repositories: runner.allowed_repositories.clone(),
            stacks: runner.stacks.clone(),
            known_channels: self.known_channels.clone(),
            prerelease_channels: self.prerelease_channels.clone(),
            update_windows: runner
                .update_window
                .clone()
                .or_else(|| self.update_window.clone())
                .flatten(),
        }
    }
}

/// The configuration `demo` and `run --simulated` use when no file is given.
pub const EMBEDDED_CONFIG: &str = r#"
prefix = "/runner-updater"
channel = "stable"
poll_interval_secs = 60
active_poll_interval_secs = 10
lease_secs = 180

[state_store]
backend = "file"
path = "runner-updater-state"

[health]
fail_fast_tasks = 2
rollout_timeout_secs = 900
soak_secs = 120
rollback_timeout_secs = 900

[[runners]]
name = "runner-a"
cluster = "runners"
service = "runner-a"
image_repository = "registry.example/runner"
stacks = ["runner-a-iam", "runner-a-main"]

[[runners]]
name = "runner-b"
cluster = "runners"
service = "runner-b"
image_repository = "registry.example/runner"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_store_backend_is_ssm_or_file_and_another_is_named_where_it_is_written() {
        let with =
            |backend: &str| Config::from_toml(&format!("[state_store]\nbackend = {backend:?}\n"));
        assert_eq!(
            with("file").unwrap().state_store.backend,
            StateBackend::File
        );
        assert_eq!(with("ssm").unwrap().state_store.backend, StateBackend::Ssm);
        assert_eq!(
            Config::from_toml("").unwrap().state_store.backend,
            StateBackend::Ssm
        );
        assert_eq!(
            with("dynamodb").unwrap().state_store.backend,
            StateBackend::DynamoDb
        );
        let error = with("dynamo").unwrap_err().to_string();
        assert!(
            error.contains("line 2")
                && error.contains(
                    "state_store.backend \"dynamo\": use \"dynamodb\", \"ssm\" or \"file\""
                ),
            "{error}"
        );
        let table = |name: &str| {
            Config::from_toml(&format!(
                "[state_store]\nbackend = \"dynamodb\"\ntable = {name:?}\n"
            ))
        };
        assert_eq!(
            table("fleet.state-1").unwrap().state_store.table,
            "fleet.state-1"
        );
        for bad in ["", "ab", "a table", "état"] {
            let error = table(bad).unwrap_err().to_string();
            assert!(error.contains("state_store.table"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn auto_execute_is_read_once_where_it_is_written() {
        let with = |value: Option<&str>| {
            let line = value.map_or(String::new(), |v| format!("auto_execute = {v:?}\n"));
            Config::from_toml(&format!(
                "[[runners]]\nname = \"a\"\ncluster = \"c\"\nservice = \"s\"\nimage_repository = \"registry.example/r\"\n{line}"
            ))
        };
        for (value, policy) in [
            (Some("never"), ApprovalPolicy::Never),
            (Some("safe"), ApprovalPolicy::Safe),
            (Some("always"), ApprovalPolicy::Always),
            (None, ApprovalPolicy::Safe),
        ] {
            let config = with(value).unwrap();
            assert_eq!(config.runners[0].auto_execute, policy, "{value:?}");
            assert_eq!(config.settings(&config.runners[0]).approval, policy);
        }
        let error = with(Some("sometimes")).unwrap_err().to_string();
        assert!(
            error.contains("line 6")
                && error
                    .contains("auto_execute \"sometimes\": use \"never\", \"safe\" or \"always\""),
            "{error}"
        );
    }

    #[test]
    fn the_embedded_configuration_is_valid() {
        let config = Config::from_toml(EMBEDDED_CONFIG).unwrap();
        assert_eq!(config.runners.len(), 2);
        assert_eq!(config.runners[0].container, "runner");
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        for (text, needle) in [
            ("prefixx = \"/a\"", "unknown field"),
            ("prefix = \"a\"", "prefix"),
            ("channel = \"nightly\"", "known_channels"),
            ("lease_secs = 5", "lease_secs"),
            ("prerelease_channels = [\"nightly\"]", "prerelease_channels"),
            ("settle_secs = 86400", "settle_secs"),
            ("[[runners]]\nname = \"Runner A\"\ncluster = \"c\"\nservice = \"s\"\nimage_repository = \"r\"", "runner name"),
            ("[[runners]]\nname = \"a\"\ncluster = \"c\"\nservice = \"s\"\nimage_repository = \"bad repo\"", "image repository"),
        ] {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_lease_that_cannot_cover_a_late_renewal_is_refused_and_a_short_one_warned() {
        // floor = active interval + 2 x operation timeout + a pass at max_concurrent_runners
        // (runners x 8 calls / the slowest rate, rounded up; at least one registration each at
        // AWS's pace of one a second).
        let runners = |n: usize| {
            (0..n)
                .map(|i| format!("[[runners]]\nname = \"r{i}\"\ncluster = \"c\"\nservice = \"s{i}\"\nimage_repository = \"registry.example/r\"\n"))
                .collect::<Vec<_>>()
                .concat()
        };
        for (settings, count, floor) in [
            ("", 0, 10 + 60 + 1),
            ("", 1, 10 + 60 + 1),
            ("", 16, 10 + 60 + 16),
            ("", 40, 10 + 60 + 16),
            ("max_concurrent_runners = 4\n", 16, 10 + 60 + 4),
            ("active_poll_interval_secs = 2\n[aws]\noperation_timeout_secs = 2\nattempt_timeout_secs = 1\n", 9, 2 + 4 + 9),
            // Faster limiters: the registrations' pace (16 at 1/s) is the pass's bound.
            ("[rate_limits]\ncloudformation_per_sec = 64\n", 16, 10 + 60 + 16),
        ] {
            let text = format!("lease_secs = 1000\n{settings}{}", runners(count));
            let config = Config::from_toml(&text).unwrap();
            assert_eq!(config.lease_floor_secs(), floor, "{settings} {count} runners");
            let at_floor = text.replace("lease_secs = 1000", &format!("lease_secs = {floor}"));
            let config = Config::from_toml(&at_floor).unwrap();
            assert_eq!(config.warnings().len(), 1, "{settings}: under twice the floor");
            let below = text.replace("lease_secs = 1000", &format!("lease_secs = {}", floor - 1));
            let error = Config::from_toml(&below).unwrap_err().to_string();
            assert!(error.contains("cannot cover a renewal"), "{error}");
        }
        assert!(
            Config::from_toml("").unwrap().warnings().is_empty(),
            "the defaults need no warning"
        );
    }

    #[test]
    fn no_channel_accepts_pre_releases_and_desired_parameters_settle_ten_seconds_by_default() {
        let config = Config::from_toml("").unwrap();
        assert!(config.prerelease_channels.is_empty());
        assert_eq!(config.settle_secs, 10);
        let config = Config::from_toml(
            "prerelease_channels = [\"beta\", \"edge\"]\nsettle_secs = 0\n[[runners]]\nname = \"a\"\ncluster = \"c\"\nservice = \"s\"\nimage_repository = \"r\"",
        )
        .unwrap();
        assert_eq!(config.settle_secs, 0);
        let policy = config.policy(&config.runners[0]);
        assert_eq!(*policy.prerelease_channels, ["beta", "edge"]);
    }

    #[test]
    fn environment_overrides_apply_and_are_validated() {
        let config = Config::from_toml(EMBEDDED_CONFIG).unwrap();
        let env = |k: &str| (k == "RUNNER_UPDATER_PREFIX").then(|| "/fleet".to_owned());
        assert_eq!(config.clone().with_env(env).unwrap().prefix, "/fleet");
        let bad = |k: &str| (k == "RUNNER_UPDATER_POLL_INTERVAL_SECS").then(|| "soon".to_owned());
        assert!(config.with_env(bad).is_err());
    }

    const RUNNER: &str =
        "[[runners]]\nname = \"a\"\ncluster = \"c\"\nservice = \"s\"\nimage_repository = \"r\"\n";

    /// A health section with every key set to a value of its own (3, 4, 5, …), one key (if
    /// any) set to 99 instead.
    fn health_section(header: &str, changed: Option<&str>) -> String {
        use std::fmt::Write as _;
        let mut text = format!("{header}\n");
        for (index, key) in HealthConfig::KEYS.iter().enumerate() {
            let value = if Some(*key) == changed { 99 } else { index + 3 };
            let _ = writeln!(text, "{key} = {value}");
        }
        text
    }

    /// Found by an acceptance run (issue 14): a `[runners.health]` setting only `soak_secs`
    /// gave that runner the built-in `rollout_timeout_secs` (1800 s) instead of the global one.
    /// Every key of the section is checked (`KEYS` lists them all).
    #[test]
    fn a_per_runner_health_key_replaces_only_that_key_of_the_global_section() {
        let global = health_section("[health]", None);
        let expected_global: HealthConfig =
            toml::from_str(&global.replace("[health]", "")).unwrap();
        for key in HealthConfig::KEYS {
            let text = format!("{global}{RUNNER}[runners.health]\n{key} = 99\n");
            let config = Config::from_toml(&text).unwrap();
            let expected: HealthConfig = toml::from_str(&health_section("", Some(key))).unwrap();
            assert_ne!(
                expected, expected_global,
                "{key} is not read by the section"
            );
            assert_eq!(
                config.health, expected_global,
                "the global section as written"
            );
            assert_eq!(
                config.health(&config.runners[0]),
                expected,
                "only {key} overridden"
            );
        }
    }

    #[test]
    fn a_runner_without_a_health_section_gets_the_global_one_and_its_settings_follow() {
        let text = format!("{}{RUNNER}", health_section("[health]", None));
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.health(&config.runners[0]), config.health);
        let with_soak = format!(
            "[health]\nrollout_timeout_secs = 60\n{RUNNER}[runners.health]\nsoak_secs = 30\n"
        );
        let config = Config::from_toml(&with_soak).unwrap();
        let settings = config.settings(&config.runners[0]);
        assert_eq!(settings.rollout_timeout, Duration::from_mins(1));
        assert_eq!(settings.soak, Duration::from_secs(30));
        assert_eq!(
            settings.rollback_timeout,
            Duration::from_mins(30),
            "built-in default"
        );
    }

    #[test]
    fn an_unknown_per_runner_health_key_is_refused() {
        let text = format!("{RUNNER}[runners.health]\nsoak = 30\n");
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.contains("unknown field"), "{error}");
    }

    #[test]
    fn change_events_are_off_by_default_and_a_bad_events_section_is_refused_by_name() {
        let config = Config::from_toml("").unwrap();
        assert!(!config.events.enabled());
        assert_eq!(config.events.backstop_interval_secs, 600);
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/runner-updater-events";
        let on = Config::from_toml(&format!("[events]\nqueue_url = {url:?}\n")).unwrap();
        assert!(on.events.enabled());
        for (section, named) in [
            (
                "queue_url = \"runner-updater-events\"",
                "is not an SQS queue URL",
            ),
            (
                "queue_url = \"https://sqs.eu-west-1.amazonaws.com/\"",
                "is not an SQS queue URL",
            ),
            (
                "queue_url = \"https://sqs.example/1/q\"\nwait_secs = 0",
                "events.wait_secs (0)",
            ),
            (
                "queue_url = \"https://sqs.example/1/q\"\nwait_secs = 21",
                "events.wait_secs (21)",
            ),
            (
                "queue_url = \"https://sqs.example/1/q\"\nbackstop_interval_secs = 30",
                "events.backstop_interval_secs (30) must be at least poll_interval_secs (60)",
            ),
            ("queue = \"x\"", "unknown field"),
        ] {
            let error = Config::from_toml(&format!("[events]\n{section}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{section}: {error}");
        }
        // The backstop matters only with events on.
        assert!(Config::from_toml("poll_interval_secs = 3600\n").is_ok());
    }
}
