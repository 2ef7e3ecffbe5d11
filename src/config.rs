//! Configuration: a TOML file plus environment overrides, validated into typed settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::desired::RunnerPolicy;
use crate::domain::image::ImageRef;
use crate::domain::infra::ApprovalPolicy;
use crate::machine::Settings;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SSM root prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The controller's release channel.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// Channels that exist (a desired channel outside them is a bad value).
    #[serde(default = "default_known_channels")]
    pub known_channels: Vec<String>,
    /// Channels that accept pre-release versions (`2.19.0-rc.1`); none by default, so a
    /// pre-release on any other channel is refused (`pre-release-not-allowed`).
    #[serde(default)]
    pub prerelease_channels: Vec<String>,
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
    /// The runners.
    #[serde(default)]
    pub runners: Vec<RunnerConfig>,
}

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
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            ssm_per_sec: default_ssm_per_sec(),
            ecs_per_sec: default_ecs_per_sec(),
            cloudformation_per_sec: default_cloudformation_per_sec(),
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

/// The state store.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StateStoreConfig {
    /// `ssm` (`<prefix>/<runner>/status`, shared by every replica) or `file` (local).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Directory of the `file` backend.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        StateStoreConfig {
            backend: default_backend(),
            path: default_state_path(),
        }
    }
}

/// Health-gate settings.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Failed or unhealthy tasks of the new revision that trigger a rollback.
    #[serde(default = "default_fail_fast_tasks")]
    pub fail_fast_tasks: u32,
    /// Seconds the rollout may take to become healthy.
    #[serde(default = "default_rollout_timeout_secs")]
    pub rollout_timeout_secs: u64,
    /// Seconds the new revision must stay healthy.
    #[serde(default = "default_soak_secs")]
    pub soak_secs: u64,
    /// Seconds a rollback may take to be confirmed.
    #[serde(default = "default_rollout_timeout_secs")]
    pub rollback_timeout_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            fail_fast_tasks: default_fail_fast_tasks(),
            rollout_timeout_secs: default_rollout_timeout_secs(),
            soak_secs: default_soak_secs(),
            rollback_timeout_secs: default_rollout_timeout_secs(),
        }
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

fn default_auto_execute() -> String {
    "safe".to_owned()
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
    /// Overrides of the health-gate defaults.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Which change sets run without `runner-updater approve`: `never`, `safe` (no
    /// replacement, no IAM change) or `always`.
    #[serde(default = "default_auto_execute")]
    pub auto_execute: String,
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
fn default_channel() -> String {
    "stable".to_owned()
}
fn default_known_channels() -> Vec<String> {
    ["stable", "beta", "edge"].map(str::to_owned).to_vec()
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
    120
}
fn default_backend() -> String {
    "ssm".to_owned()
}
fn default_state_path() -> PathBuf {
    PathBuf::from("runner-updater-state")
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
            self.channel = channel;
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

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//")
        {
            return invalid(format!(
                "prefix {:?} must start with '/' and not end with '/'",
                self.prefix
            ));
        }
        if !self.known_channels.contains(&self.channel) {
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
        if limits.ssm_per_sec == 0 || limits.ecs_per_sec == 0 || limits.cloudformation_per_sec == 0
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
        if !matches!(self.state_store.backend.as_str(), "ssm" | "file") {
            return invalid(format!(
                "state_store.backend {:?}: use \"ssm\" or \"file\"",
                self.state_store.backend
            ));
        }
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
            if ApprovalPolicy::parse(&runner.auto_execute).is_none() {
                return invalid(format!(
                    "runner {:?}: auto_execute {:?}: use \"never\", \"safe\" or \"always\"",
                    runner.name, runner.auto_execute
                ));
            }
            let health = runner.health.unwrap_or(self.health);
            if health.fail_fast_tasks == 0 {
                return invalid(format!(
                    "runner {:?}: fail_fast_tasks must be at least 1",
                    runner.name
                ));
            }
        }
        Ok(())
    }

    /// The runner of that name.
    #[must_use]
    pub fn runner(&self, name: &str) -> Option<&RunnerConfig> {
        self.runners.iter().find(|r| r.name == name)
    }

    /// Decision settings for a runner.
    #[must_use]
    pub fn settings(&self, runner: &RunnerConfig) -> Settings {
        let health = runner.health.unwrap_or(self.health);
        Settings {
            channel: self.channel.clone(),
            fail_fast_tasks: health.fail_fast_tasks,
            rollout_timeout: Duration::from_secs(health.rollout_timeout_secs),
            soak: Duration::from_secs(health.soak_secs),
            rollback_timeout: Duration::from_secs(health.rollback_timeout_secs),
            history_max: Settings::default().history_max,
            approval: ApprovalPolicy::parse(&runner.auto_execute).unwrap_or_default(),
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
        }
    }
}

/// The configuration `demo` and `run --simulated` use when no file is given.
pub const EMBEDDED_CONFIG: &str = r#"
prefix = "/runner-updater"
channel = "stable"
poll_interval_secs = 60
active_poll_interval_secs = 10
lease_secs = 120

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
        assert_eq!(policy.prerelease_channels, ["beta", "edge"]);
    }

    #[test]
    fn environment_overrides_apply_and_are_validated() {
        let config = Config::from_toml(EMBEDDED_CONFIG).unwrap();
        let env = |k: &str| (k == "RUNNER_UPDATER_PREFIX").then(|| "/fleet".to_owned());
        assert_eq!(config.clone().with_env(env).unwrap().prefix, "/fleet");
        let bad = |k: &str| (k == "RUNNER_UPDATER_POLL_INTERVAL_SECS").then(|| "soon".to_owned());
        assert!(config.with_env(bad).is_err());
    }
}
