//! Deterministic simulation testing: one seed drives a whole fleet through chaos, and the
//! promises to on-call are checked after every step.
//!
//! # What one seed does
//! Three runners (one with two CloudFormation stacks) and two controllers (each a set of
//! [`RunnerDriver`]s, one per runner, sharing a lease identity) on the simulated AWS. A
//! [`Rng`] seeded by the seed picks every step:
//! - a controller's pass over a runner (most steps), with a little simulated time after it;
//! - ops changing desired values at random moments, mid-update included (one parameter at a
//!   time, so the controllers meet half-written states and their settle), or writing the whole
//!   release document at once: new versions whose images are healthy, crash, never pass their
//!   health check or turn unhealthy later; bad values and bad release documents; downgrades; a
//!   return to a failed version; the auto-update switch; new
//!   infrastructure versions whose templates succeed, fail (CloudFormation rolls back) or
//!   replace a resource (held for approval); approvals;
//! - AWS faults queued on any operation (transient: throttling, 5xx, timeouts; or permanent),
//!   slow calls (simulated time passes inside the call: a lease may expire meanwhile), and stale
//!   `DescribeServices` reads just after an update (eventual consistency);
//! - a foreign writer (Terraform, the console) pointing a service at another task definition;
//! - process crashes: at a planned save or command of a pass (the crash points of
//!   [`CrashPlan`]), or between passes, with a restart from the persisted state under a new
//!   lease identity (a new process);
//! - time passing, clock jumps, and clock skew between the controllers within the lease's
//!   tolerance.
//!
//! Then a drain: faults stop, every controller is up, ops ask for one last valid, deployable
//! version (and infrastructure), and the fleet must converge on it.
//!
//! # Invariants (checked after every step)
//! See [`Invariant`]. A violation names the seed, the step and the last actions; the seed
//! replays exactly (`runner-updater-dev simulate --seed N --verbose`).
//!
//! # Caveats
//! Passes are interleaved whole: two controllers never run inside one pass at the same time,
//! so the window between a fencing check and its mutation (documented in the README) is not
//! explored. Stale reads are modelled for `DescribeServices` only (within 5 s of an update).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_adapters::dynamo::{DynamoLease, DynamoStore};
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::sim::{
    initial_template, Faults, ImageBehaviour, Rng, SimAws, SimClock, SimResource, SimSsm, SimTable,
    SimTemplate,
};
use runner_updater_adapters::store::SsmStore;
use runner_updater_config::{Config, ConfigError};
use runner_updater_core::domain::channel::{parse_channel_release, release_id, waves};
use runner_updater_core::domain::observed::{ServiceState, StackState, ATTEMPT_TAG};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::Millis;
use runner_updater_core::domain::{fnv1a, FNV_OFFSET};
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::record::Record;
use runner_updater_interface::retry::{retry_channel, retry_runner, Requester};
use runner_updater_interface::scenario::create_fleet;
use runner_updater_ports::{
    ApiFamily, AwsOp, Call, Clock, CloudFormation, Decorated, Ecs, ErrorKind, Hooks, Lock,
    ParameterStore, PortError, StateStore, StateTable, Target,
};
use runner_updater_runtime::channels::{Channels, RESUME_NAME};
use runner_updater_runtime::driver::{CrashPlan, DriverError, Ports, RunnerDriver};
use runner_updater_runtime::reader::{FleetReader, FleetSnapshot};
use runner_updater_runtime::retry::RetryPolicy;

use crate::promises::{Broken, Promises};

/// The fleet of a simulation: runner-a with two stacks, runner-b and runner-c without. Each
/// runner has its own image repository, so that an image's behaviour (chosen when ops ask for
/// its version) is the same wherever it runs.
pub const CONFIG: &str = r#"
prefix = "/runner-updater"
channel = "stable"
poll_interval_secs = 30
active_poll_interval_secs = 10
lease_secs = 80

[state_store]
backend = "ssm"

[health]
fail_fast_tasks = 2
rollout_timeout_secs = 300
soak_secs = 30
rollback_timeout_secs = 300

[infrastructure]
change_set_timeout_secs = 120
stack_update_timeout_secs = 600

[[runners]]
name = "runner-a"
cluster = "runners"
service = "runner-a"
image_repository = "registry.example/runner-a"
stacks = ["runner-a-iam", "runner-a-main"]

[[runners]]
name = "runner-b"
cluster = "runners"
service = "runner-b"
image_repository = "registry.example/runner-b"

[[runners]]
name = "runner-c"
cluster = "runners"
service = "runner-c"
image_repository = "registry.example/runner-c"
"#;

const START_VERSION: &str = "2.13.0";
const CONTROLLERS: [&str; 2] = ["c1", "c2"];
/// A controller down longer than this is restarted (an orchestrator restarts crashed pods).
const DOWN_MAX: Duration = Duration::from_mins(5);
/// Skew of a controller's clock, at most, either way (the lease trusts expiry only
/// `lease::CLOCK_SKEW_TOLERANCE` = 5 s late, so two clocks may differ by that much).
const SKEW_MAX_MS: u64 = 2_000;
/// Actions kept for the report of a violation.
const LOG_TAIL: usize = 60;

/// Operations faults can be queued on.
const FAULTABLE: [AwsOp; 16] = [
    AwsOp::GetParametersByPath,
    AwsOp::GetParameter,
    AwsOp::PutParameter,
    AwsOp::DeleteParameter,
    AwsOp::DescribeServices,
    AwsOp::DescribeTaskDefinition,
    AwsOp::ListTaskDefinitions,
    AwsOp::RegisterTaskDefinition,
    AwsOp::UpdateService,
    AwsOp::DescribeStacks,
    AwsOp::GetTemplateSummary,
    AwsOp::CreateChangeSet,
    AwsOp::DescribeChangeSet,
    AwsOp::ExecuteChangeSet,
    AwsOp::DeleteChangeSet,
    AwsOp::DescribeStackEvents,
];

/// With the DynamoDB state store, the table's operations can fail too (the SSM ones still
/// serve the desired state).
const FAULTABLE_TABLE: [AwsOp; 3] = [AwsOp::GetItem, AwsOp::UpdateItem, AwsOp::Scan];

/// The seeds whose controllers keep their state in the DynamoDB table (one in four), the others
/// in SSM: both backends in every run of the simulation.
#[must_use]
pub fn on_dynamodb(seed: u64) -> bool {
    seed.is_multiple_of(4)
}

/// The mutating operations: a fault may let them take effect and lose their answer. SSM's
/// `PutParameter` and `DeleteParameter` are the lease's create, renewal, release and clean-up
/// and the record's writes.
const MUTATING: [AwsOp; 7] = [
    AwsOp::PutParameter,
    AwsOp::DeleteParameter,
    AwsOp::RegisterTaskDefinition,
    AwsOp::UpdateService,
    AwsOp::CreateChangeSet,
    AwsOp::ExecuteChangeSet,
    AwsOp::DeleteChangeSet,
];

/// Bad desired values ops may write (each must be refused by name, never acted on).
const BAD_VALUES: [(&str, &str); 8] = [
    ("version", "v2.99.0"),
    ("version", "latest"),
    ("version", ""),
    ("version", "2.99"),
    ("image", "evil.example/runner:2.99.0"),
    ("image", "registry.example/runner-a:2.99.0;curl x|sh"),
    ("channel", "nightly"),
    ("auto-update", "maybe"),
];

/// Bad release documents ops may write (each must be refused by name, never acted on).
const BAD_RELEASES: [&str; 3] = [
    r#"{"version": "2.99.0", "imgae": "registry.example/runner-a:2.99.0"}"#,
    r#"{"version": 2.99}"#,
    "version: 2.99.0",
];

/// Bad channel release documents ops may write (each refused by name; no runner moves).
const BAD_CHANNEL_RELEASES: [&str; 4] = [
    r#"{"version": "2.99.0", "plan": {"waves": [50]}}"#,
    r#"{"version": "2.99.0", "budget": 9}"#,
    r#"{"version": "2.99.0", "plan": {"canary": ["runner-z"]}}"#,
    "{not json",
];

/// Update windows ops may write (`desired/update-window`): around the nights Europe's clocks
/// change (the seeds that start there), always open, mostly closed, `any`, and bad ones.
const WINDOWS: [&str; 12] = [
    "Sun 02:00-03:00 Europe/Berlin",
    "Sun 01:30-02:30 Europe/Berlin",
    "daily 02:30-04:00 Europe/Berlin",
    "Sat,Sun 00:00-01:30 Europe/London; Sat 10:00-11:00 UTC",
    "daily 03:00-23:00 Europe/Berlin",
    "daily 00:00-24:00 UTC",
    "Mon-Fri 09:00-17:00 America/New_York",
    "any",
    "",
    "Sun 02:00-02:00 UTC",
    "Sun 02:00-03:00 Europe/Atlantis",
    "sometimes",
];

/// Where a seed's simulated time starts, after the usual epoch (a Saturday morning): one seed
/// in three 40 minutes before Europe's clocks go forward (2025-03-30 01:00Z), one in three
/// before they go back (2025-10-26 01:00Z).
fn time_shift(seed: u64) -> Duration {
    match seed % 3 {
        1 => Duration::from_mins(41_180),
        2 => Duration::from_mins(343_580),
        _ => Duration::ZERO,
    }
}

/// The promises checked after every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// One attempt in flight per runner: a record holding an attempt in flight is only ever
    /// replaced by that attempt's own continuation (never by another attempt, nor by a stale
    /// controller's state at rest), so no attempt is lost with its deployment unwatched.
    OneAttemptInFlight,
    /// At most one task definition registered per attempt.
    OneRegistrationPerAttempt,
    /// At most one forward service update per attempt, and never the same update twice in a
    /// row.
    OneServiceUpdatePerAttempt,
    /// At most one execution per change set (one per stack per attempt).
    OneExecutionPerChangeSet,
    /// No mutating call by a controller whose fencing token is stale.
    NoStaleMutation,
    /// The persisted record always parses.
    RecordParses,
    /// Every attempt ends (Done, `RolledBack`) or waits for a human within its deadlines.
    AttemptsEndInTime,
    /// A failed version is never retried while its quarantine mark stands.
    FailedNotRetried,
    /// A halted channel release starts no runner: no attempt on it begins after its halt.
    HaltedReleaseStartsNone,
    /// A channel release's failed runners stay within its budget plus the concurrency of the
    /// wave in flight (once more per resume).
    ReleaseFailuresWithinBudget,
    /// A channel release's waves go in order: no runner of a wave after the current one
    /// attempts it.
    ReleaseWavesInOrder,
    /// A channel release never has more runners in an attempt on it (past their lock) than
    /// the largest concurrency of its plan.
    ReleaseWithinConcurrency,
    /// No attempt starts while the runner's update window is closed (every window ops had
    /// written for it around that moment, daylight-saving nights included).
    OutsideWindowNeverUpdated,
    /// A retried version goes forward at most once per retry: a quarantine mark is lifted only
    /// by a retry acknowledged then (or pushed out by newer marks), a retry is acknowledged
    /// once per runner, and each lift allows one attempt on its target.
    RetriedAtMostOnce,
    /// After the drain, every runner runs the last valid, deployable desired state: its pin,
    /// or its channel's release.
    Converges,
}

impl Invariant {
    /// Stable name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Invariant::OneAttemptInFlight => "one-attempt-in-flight",
            Invariant::OneRegistrationPerAttempt => "one-registration-per-attempt",
            Invariant::OneServiceUpdatePerAttempt => "one-service-update-per-attempt",
            Invariant::OneExecutionPerChangeSet => "one-execution-per-change-set",
            Invariant::NoStaleMutation => "no-stale-mutation",
            Invariant::RecordParses => "record-parses",
            Invariant::AttemptsEndInTime => "attempts-end-in-time",
            Invariant::FailedNotRetried => "failed-not-retried",
            Invariant::HaltedReleaseStartsNone => "halted-release-starts-none",
            Invariant::ReleaseFailuresWithinBudget => "release-failures-within-budget",
            Invariant::ReleaseWavesInOrder => "release-waves-in-order",
            Invariant::ReleaseWithinConcurrency => "release-within-concurrency",
            Invariant::OutsideWindowNeverUpdated => "outside-window-never-updated",
            Invariant::RetriedAtMostOnce => "retried-at-most-once",
            Invariant::Converges => "converges",
        }
    }
}

/// A broken promise, with what is needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The step (chaos steps first, then drain rounds).
    pub step: usize,
    /// Which promise.
    pub invariant: Invariant,
    /// What was seen.
    pub detail: String,
    /// The last actions before it.
    pub log: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} step {}: invariant {} violated: {}",
            self.seed,
            self.step,
            self.invariant.name(),
            self.detail
        )?;
        writeln!(f, "last actions:")?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: runner-updater-dev simulate --seed {} --verbose",
            self.seed
        )
    }
}

/// Why a simulation could not run at all (a bug in its set-up, not a violation).
#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    /// The embedded configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The simulated world could not be built.
    #[error("set-up: {0}")]
    SetUp(String),
}

/// How much chaos a seed gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Chaos steps.
    pub steps: usize,
    /// Drain rounds at most (each: every controller passes over every runner, 10 s pass).
    pub drain_rounds: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            steps: 300,
            drain_rounds: 240,
        }
    }
}

/// What a seed (or many) exercised: the fault mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Seeds run.
    pub seeds: u64,
    /// Of which with the DynamoDB state store (the others: SSM).
    pub dynamodb_seeds: u64,
    /// Chaos steps.
    pub steps: u64,
    /// Controller passes (chaos and drain).
    pub passes: u64,
    /// Transient faults queued (throttling, 5xx, timeouts).
    pub transient_faults: u64,
    /// Permanent faults queued (validation, access denied).
    pub permanent_faults: u64,
    /// Slow calls (simulated time passing inside a call).
    pub slow_calls: u64,
    /// Stale `DescribeServices` reads queued (eventual consistency after an update).
    pub stale_reads: u64,
    /// Crashes at a planned save or command inside a pass.
    pub crashes_in_pass: u64,
    /// Crashes between passes.
    pub crashes_between_passes: u64,
    /// Controller restarts.
    pub restarts: u64,
    /// Clock jumps (long silences).
    pub clock_jumps: u64,
    /// Clock skew changes.
    pub skews: u64,
    /// Ops changes of desired values (valid ones).
    pub ops_changes: u64,
    /// Bad desired values written.
    pub bad_values: u64,
    /// Release documents written (the one-document desired state), valid or bad.
    pub releases: u64,
    /// New infrastructure versions asked for.
    pub infra_changes: u64,
    /// Approvals given.
    pub approvals: u64,
    /// Foreign writes to a service.
    pub foreign_writes: u64,
    /// Mutating calls that took effect and then lost their answer.
    pub answers_lost: u64,
    /// Revisions registered in a runner's family by another tool (a busy family).
    pub foreign_registrations: u64,
    /// Fleet reads taken (each used by the controller's later passes at rest, stale or not).
    pub fleet_reads: u64,
    /// Passes at rest that observed from a fleet read.
    pub fleet_read_passes: u64,
    /// Channel releases ops published (valid ones).
    pub channel_releases: u64,
    /// Of which halted by their budget (counted once each).
    pub channel_halts: u64,
    /// Resumes of a halted release ops wrote.
    pub channel_resumes: u64,
    /// Attempts on a channel's release that ended (Done or `RolledBack`).
    pub channel_attempts: u64,
    /// Update windows ops wrote (valid, bad, `any`) or deleted.
    pub windows_written: u64,
    /// Retries ops asked for (`retry`, `release retry`), written or refused.
    pub retries_asked: u64,
    /// Of which refused (nothing quarantined, not that version, one pending).
    pub retries_refused: u64,
    /// Attempts that ended Done.
    pub done: u64,
    /// Attempts that ended `RolledBack`.
    pub rolled_back: u64,
    /// A hash of every action taken and every ECS update and CloudFormation execution made:
    /// two runs of one seed must agree on it (summed over seeds).
    pub fingerprint: u64,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, other: &Tally) {
        let Tally {
            seeds,
            dynamodb_seeds,
            steps,
            passes,
            transient_faults,
            permanent_faults,
            slow_calls,
            stale_reads,
            crashes_in_pass,
            crashes_between_passes,
            restarts,
            clock_jumps,
            skews,
            ops_changes,
            bad_values,
            releases,
            infra_changes,
            approvals,
            foreign_writes,
            answers_lost,
            foreign_registrations,
            fleet_reads,
            fleet_read_passes,
            channel_releases,
            channel_halts,
            channel_resumes,
            channel_attempts,
            windows_written,
            retries_asked,
            retries_refused,
            done,
            rolled_back,
            fingerprint,
        } = other;
        self.seeds += seeds;
        self.dynamodb_seeds += dynamodb_seeds;
        self.steps += steps;
        self.passes += passes;
        self.transient_faults += transient_faults;
        self.permanent_faults += permanent_faults;
        self.slow_calls += slow_calls;
        self.stale_reads += stale_reads;
        self.crashes_in_pass += crashes_in_pass;
        self.crashes_between_passes += crashes_between_passes;
        self.restarts += restarts;
        self.clock_jumps += clock_jumps;
        self.skews += skews;
        self.ops_changes += ops_changes;
        self.bad_values += bad_values;
        self.releases += releases;
        self.infra_changes += infra_changes;
        self.approvals += approvals;
        self.foreign_writes += foreign_writes;
        self.answers_lost += answers_lost;
        self.foreign_registrations += foreign_registrations;
        self.fleet_reads += fleet_reads;
        self.fleet_read_passes += fleet_read_passes;
        self.channel_releases += channel_releases;
        self.channel_halts += channel_halts;
        self.channel_resumes += channel_resumes;
        self.channel_attempts += channel_attempts;
        self.windows_written += windows_written;
        self.retries_asked += retries_asked;
        self.retries_refused += retries_refused;
        self.done += done;
        self.rolled_back += rolled_back;
        self.fingerprint = self.fingerprint.wrapping_add(*fingerprint);
    }

    /// The figures as `(name, value)` rows, in a stable order (for reports).
    #[must_use]
    pub fn rows(&self) -> [(&'static str, u64); 32] {
        [
            ("seeds", self.seeds),
            ("of which on the DynamoDB state store", self.dynamodb_seeds),
            ("chaos steps", self.steps),
            ("controller passes", self.passes),
            ("transient AWS faults", self.transient_faults),
            ("permanent AWS faults", self.permanent_faults),
            ("slow AWS calls", self.slow_calls),
            ("stale reads queued", self.stale_reads),
            ("crashes inside a pass", self.crashes_in_pass),
            ("crashes between passes", self.crashes_between_passes),
            ("controller restarts", self.restarts),
            ("clock jumps", self.clock_jumps),
            ("clock skew changes", self.skews),
            ("ops changes (valid)", self.ops_changes),
            ("bad desired values", self.bad_values),
            ("release documents", self.releases),
            ("infrastructure versions", self.infra_changes),
            ("approvals", self.approvals),
            ("foreign writes", self.foreign_writes),
            ("answers lost after the effect", self.answers_lost),
            ("foreign registrations", self.foreign_registrations),
            ("fleet reads", self.fleet_reads),
            ("passes from a fleet read", self.fleet_read_passes),
            ("channel releases", self.channel_releases),
            ("channel releases halted", self.channel_halts),
            ("channel releases resumed", self.channel_resumes),
            ("attempts on a channel release ended", self.channel_attempts),
            ("update windows written", self.windows_written),
            ("retries asked", self.retries_asked),
            ("retries refused", self.retries_refused),
            ("attempts Done", self.done),
            ("attempts RolledBack", self.rolled_back),
        ]
    }
}

/// Runs one seed. `Ok` carries what it exercised; `Err` the first violation.
///
/// # Errors
/// A [`Violation`], or a [`SimulationError`] when the world cannot be set up.
pub async fn run_seed(
    seed: u64,
    settings: Settings,
    verbose: bool,
) -> Result<Result<Tally, Box<Violation>>, SimulationError> {
    let mut world = World::new(seed, verbose)?;
    for step in 0..settings.steps {
        world.step().await;
        world.tally.steps += 1;
        if let Err(violation) = world.check(step).await {
            return Ok(Err(violation));
        }
    }
    if let Err(violation) = world.drain(settings).await {
        return Ok(Err(violation));
    }
    world.tally.answers_lost = MUTATING
        .iter()
        .map(|operation| {
            world.aws.ssm.faults.answers_lost(*operation)
                + world.aws.ecs.faults.answers_lost(*operation)
                + world.aws.cfn.faults.answers_lost(*operation)
        })
        .sum::<u64>()
        + world.aws.table.faults.answers_lost(AwsOp::UpdateItem);
    for update in world.aws.ecs.updates() {
        let line = format!("{update:?}");
        world.tally.fingerprint = fnv(world.tally.fingerprint, line.as_bytes());
    }
    for execution in world.aws.cfn.executions() {
        let line = format!("{execution:?}");
        world.tally.fingerprint = fnv(world.tally.fingerprint, line.as_bytes());
    }
    Ok(Ok(world.tally))
}

/// A controller process: its drivers while it is up.
struct Controller {
    name: &'static str,
    incarnation: u32,
    drivers: Option<Vec<RunnerDriver>>,
    /// The batched reader on this controller's ports, and its last read, handed out runner by
    /// runner to later passes (which refuse it once older than their own last pass).
    reader: Option<FleetReader>,
    snapshot: Option<FleetSnapshot>,
    /// The channels' coordinator, stepped after each of this controller's fleet reads.
    channels: Option<Arc<Channels>>,
    down_since: Millis,
    skew: Arc<Mutex<i64>>,
}

impl Controller {
    fn holder(&self) -> String {
        format!("{}-{}", self.name, self.incarnation)
    }
}

/// The simulated world of one seed.
struct World {
    seed: u64,
    rng: Rng,
    verbose: bool,
    aws: SimAws,
    /// The same SSM without faults, for ops and for the checker.
    ssm: SimSsm,
    /// With the DynamoDB backend (`on_dynamodb`), the state table without faults, for the
    /// checker.
    table: Option<SimTable>,
    config: Config,
    controllers: Vec<Controller>,
    audit: Audit,
    /// Next minor version per runner (2.14.0, 2.15.0, …).
    next_minor: HashMap<String, u32>,
    /// Versions ops asked for, per runner.
    versions: HashMap<String, Vec<String>>,
    /// Next infrastructure version of runner-a.
    next_infra: u32,
    /// Last phase seen per runner (to count outcomes).
    phases: HashMap<String, String>,
    /// Attempts whose controller crashed right after its rollback call, before recording it.
    ambiguous_rollbacks: std::collections::BTreeSet<String>,
    /// Attempts in a runner's record when a foreign writer moved its service.
    foreign_written: std::collections::BTreeSet<String>,
    /// The channel's releases ops published, by version: (budget, largest wave concurrency).
    channel_plans: HashMap<String, (u32, u32)>,
    /// The channel's release documents, by release id.
    channel_documents: HashMap<String, String>,
    /// Halts seen (release id and time), each counted once.
    halts_seen: std::collections::BTreeSet<(String, u64)>,
    log: VecDeque<String>,
    tally: Tally,
}

impl World {
    fn new(seed: u64, verbose: bool) -> Result<World, SimulationError> {
        let config = Config::from_toml(CONFIG)?;
        let aws = SimAws::new(seed);
        aws.clock.advance(time_shift(seed));
        let ssm = aws.ssm.without_faults();
        let table = on_dynamodb(seed).then(|| aws.table.without_faults());
        create_fleet(&aws, &config, START_VERSION)
            .map_err(|e| SimulationError::SetUp(e.to_string()))?;
        let audit = Audit::new(&config, ssm.clone(), table.clone(), aws.clock.clone());
        let mut world = World {
            seed,
            rng: Rng::new(seed ^ 0x005e_ed0f_c4a0),
            verbose,
            aws,
            ssm,
            table,
            config,
            controllers: Vec::new(),
            audit,
            next_minor: HashMap::new(),
            versions: HashMap::new(),
            next_infra: 2,
            phases: HashMap::new(),
            ambiguous_rollbacks: std::collections::BTreeSet::new(),
            foreign_written: std::collections::BTreeSet::new(),
            channel_plans: HashMap::new(),
            channel_documents: HashMap::new(),
            halts_seen: std::collections::BTreeSet::new(),
            log: VecDeque::new(),
            tally: Tally {
                seeds: 1,
                dynamodb_seeds: u64::from(on_dynamodb(seed)),
                ..Tally::default()
            },
        };
        for name in CONTROLLERS {
            let controller = Controller {
                name,
                incarnation: 0,
                drivers: None,
                reader: None,
                snapshot: None,
                channels: None,
                down_since: Millis(0),
                skew: Arc::new(Mutex::new(0)),
            };
            world.controllers.push(controller);
        }
        if seed.is_multiple_of(2) {
            // runner-b and runner-c follow the channel from the start (their own versions come
            // back when ops write them: a pin).
            world.unpin("runner-b");
            world.unpin("runner-c");
        }
        for index in 0..world.controllers.len() {
            world.start(index, true);
        }
        Ok(world)
    }

    fn note(&mut self, line: String) {
        self.tally.fingerprint = fnv(self.tally.fingerprint, line.as_bytes());
        if self.verbose {
            println!("{:>10}  {line}", self.aws.clock.now().0 / 1000);
        }
        self.log.push_back(line);
        while self.log.len() > LOG_TAIL {
            self.log.pop_front();
        }
    }

    fn runner_names(&self) -> Vec<String> {
        self.config.runners.iter().map(|r| r.name.clone()).collect()
    }

    /// Planned crash points for a controller's drivers (none without `crashes`).
    fn crash_plans(&mut self, crashes: bool) -> Vec<CrashPlan> {
        (0..self.config.runners.len())
            .map(|_| {
                if !crashes || self.rng.below(4) != 0 {
                    return CrashPlan::default();
                }
                if self.rng.below(2) == 0 {
                    CrashPlan {
                        after_save: Some(1 + u32::try_from(self.rng.below(6)).unwrap_or(0)),
                        ..CrashPlan::default()
                    }
                } else {
                    CrashPlan {
                        after_command: Some(1 + u32::try_from(self.rng.below(10)).unwrap_or(0)),
                        ..CrashPlan::default()
                    }
                }
            })
            .collect()
    }

    /// Starts (or restarts) a controller: a new process, so a new lease identity; with
    /// `crashes`, some of its drivers carry a planned crash point.
    fn start(&mut self, index: usize, crashes: bool) {
        let plans = self.crash_plans(crashes);
        let Some(controller) = self.controllers.get_mut(index) else {
            return;
        };
        controller.incarnation += 1;
        let holder = controller.holder();
        let ssm: Arc<dyn ParameterStore> = Arc::new(Decorated::new(
            Arc::new(self.aws.ssm.clone()) as Arc<dyn ParameterStore>,
            Slow {
                audit: self.audit.clone(),
            },
        ));
        let audited = Arc::new(Audited {
            audit: self.audit.clone(),
            holder: holder.clone(),
            ecs_faults: self.aws.ecs.faults.clone(),
            lost_before: Mutex::new(BTreeMap::new()),
        });
        let clock: Arc<dyn Clock> = Arc::new(SkewedClock {
            base: self.aws.clock.clone(),
            skew_ms: controller.skew.clone(),
        });
        let table = self.table.is_some().then_some(&self.aws.table);
        let (lock, store) = lock_and_store(
            table,
            &self.audit,
            &self.config.prefix,
            &holder,
            ssm.clone(),
            clock.clone(),
        );
        let ports = Ports {
            ssm: ssm.clone(),
            ecs: Arc::new(Decorated::new(
                Arc::new(self.aws.ecs.clone()) as Arc<dyn Ecs>,
                audited.clone(),
            )),
            cfn: Arc::new(Decorated::new(
                Arc::new(self.aws.cfn.clone()) as Arc<dyn CloudFormation>,
                audited,
            )),
            lock,
            store: Arc::new(AuditedStore {
                inner: store,
                audit: self.audit.clone(),
                holder: holder.clone(),
            }),
            clock,
        };
        let retry = RetryPolicy {
            retries: 2,
            ..RetryPolicy::default()
        };
        controller.reader = Some(
            FleetReader::new(
                ports.ssm.clone(),
                ports.ecs.clone(),
                ports.clock.clone(),
                &self.config.prefix,
            )
            .with_jitter_seed(self.seed ^ u64::from(controller.incarnation) << 32),
        );
        controller.snapshot = None;
        let channels = Channels::new(
            &self.config,
            &holder,
            ports.store.clone(),
            ports.lock.clone(),
            ports.clock.clone(),
            ports.ssm.clone(),
        );
        let board = channels.board();
        controller.channels = Some(Arc::new(channels));
        controller.drivers = Some(
            self.config
                .runners
                .iter()
                .zip(plans)
                .map(|(runner, plan)| {
                    let mut driver =
                        RunnerDriver::new(&self.config, runner, &holder, ports.clone())
                            .with_retry(retry)
                            .with_crash(plan);
                    driver.follow_channels(board.clone());
                    driver
                })
                .collect(),
        );
        let line = format!("start {holder}");
        self.note(line);
    }

    fn crash(&mut self, index: usize, why: &str) {
        let now = self.aws.clock.now();
        if let Some(controller) = self.controllers.get_mut(index) {
            controller.drivers = None;
            controller.reader = None;
            controller.snapshot = None;
            controller.channels = None;
            controller.down_since = now;
            let line = format!("crash {} ({why})", controller.holder());
            self.note(line);
        }
    }

    async fn step(&mut self) {
        // Crashed controllers come back, at the latest after DOWN_MAX.
        let now = self.aws.clock.now();
        for index in 0..self.controllers.len() {
            let controller = &self.controllers[index];
            if controller.drivers.is_none() && now.since(controller.down_since) >= DOWN_MAX {
                self.tally.restarts += 1;
                self.start(index, true);
            }
        }
        match self.rng.below(100) {
            0..=54 => self.pass().await,
            55..=59 => self.fleet_read().await,
            60..=69 => {
                let seconds = 5 + self.rng.below(40);
                self.aws.clock.advance(Duration::from_secs(seconds));
            }
            70..=71 => {
                self.tally.clock_jumps += 1;
                let seconds = 60 + self.rng.below(200);
                self.note(format!("clock jumps {seconds}s"));
                self.aws.clock.advance(Duration::from_secs(seconds));
            }
            72..=75 => self.ops(),
            76..=78 => self.channel_ops().await,
            79 => self.retry_op().await,
            80..=86 => self.fault(),
            87..=88 => {
                let index = self.pick_controller();
                if self.controllers[index].drivers.is_some() {
                    self.tally.crashes_between_passes += 1;
                    self.crash(index, "killed between passes");
                }
            }
            89..=91 => {
                let index = self.pick_controller();
                if self.controllers[index].drivers.is_none() {
                    self.tally.restarts += 1;
                    self.start(index, true);
                }
            }
            92..=93 => {
                let index = self.pick_controller();
                let skew = i64::try_from(self.rng.below(2 * SKEW_MAX_MS + 1)).unwrap_or(0)
                    - i64::try_from(SKEW_MAX_MS).unwrap_or(0);
                if let Ok(mut current) = self.controllers[index].skew.lock() {
                    *current = skew;
                }
                self.tally.skews += 1;
                self.note(format!("skew {} {skew} ms", self.controllers[index].name));
            }
            94..=96 => self.approve_held().await,
            _ => self.foreign_write().await,
        }
    }

    fn pick_controller(&mut self) -> usize {
        usize::try_from(self.rng.below(self.controllers.len() as u64)).unwrap_or(0)
    }

    fn pick_runner(&mut self) -> String {
        let names = self.runner_names();
        let index = usize::try_from(self.rng.below(names.len() as u64)).unwrap_or(0);
        names[index].clone()
    }

    /// A controller reads the fleet in batches (as `run` does at each sweep); its later passes
    /// at rest observe from it.
    async fn fleet_read(&mut self) {
        let index = self.pick_controller();
        self.fleet_read_of(index).await;
    }

    /// Controller `index` reads the fleet, then steps its channels' releases from that read
    /// (as a sweep of `run` does).
    async fn fleet_read_of(&mut self, index: usize) {
        let Some(reader) = self.controllers[index].reader.clone() else {
            return;
        };
        let runners: Vec<&runner_updater_config::RunnerConfig> =
            self.config.runners.iter().collect();
        let snapshot = reader.read(&runners).await;
        self.tally.fleet_reads += 1;
        let line = format!("fleet read by {}", self.controllers[index].holder());
        self.note(line);
        if let (Some(channels), Some(documents)) = (
            self.controllers[index].channels.clone(),
            snapshot.channel_documents(),
        ) {
            channels.sweep(&documents).await;
        }
        self.controllers[index].snapshot = Some(snapshot);
    }

    /// One controller's pass over one runner, then a little time.
    async fn pass(&mut self) {
        let index = self.pick_controller();
        let runner = usize::try_from(self.rng.below(self.config.runners.len() as u64)).unwrap_or(0);
        self.pass_of(index, runner).await;
        let millis = self.rng.below(3_000);
        self.aws.clock.advance(Duration::from_millis(millis));
    }

    async fn pass_of(&mut self, index: usize, runner: usize) {
        let holder = self.controllers[index].holder();
        let name = self.config.runners.get(runner).map(|r| r.name.clone());
        let view = self.controllers[index]
            .snapshot
            .as_mut()
            .zip(name)
            .and_then(|(s, name)| s.take(&name));
        let Some(driver) = self.controllers[index]
            .drivers
            .as_mut()
            .and_then(|drivers| drivers.get_mut(runner))
        else {
            return;
        };
        self.tally.passes += 1;
        if view.is_some() {
            self.tally.fleet_read_passes += 1;
        }
        let result = driver.tick_with(view).await;
        let name = driver.runner().to_owned();
        match result {
            Ok(report) => {
                for t in &report.transitions {
                    let line = format!("{holder} {name}: {} -> {}", t.from, t.to);
                    self.note(line);
                }
            }
            Err(DriverError::Crashed(at)) => {
                self.tally.crashes_in_pass += 1;
                if at.contains("(roll_back_service)") {
                    // The one ambiguity the README owns up to: a rollback made but not recorded;
                    // if a foreign writer then puts the service back on this attempt's own
                    // revision and ours drains away, the next controller rolls back again.
                    if let Ok(Some(record)) = self.record(&name).await {
                        if let Some(attempt) = record.attempt {
                            self.ambiguous_rollbacks.insert(attempt.id);
                        }
                    }
                }
                self.crash(index, &format!("{name} {at}"));
            }
            Err(error) => {
                let line = format!("{holder} {name}: pass failed: {error}");
                self.note(line);
            }
        }
    }

    fn desired(&self, runner: &str, key: &str) -> String {
        format!("{}/{runner}/desired/{key}", self.config.prefix)
    }

    fn set(&mut self, runner: &str, key: &str, value: &str) {
        let name = self.desired(runner, key);
        self.ssm.set(&name, value);
        let shown: String = value.chars().take(60).collect();
        self.note(format!("ops {runner} {key} = {shown:?}"));
    }

    /// Ops write (`Some`) or delete the runner's release document.
    fn release(&mut self, runner: &str, document: Option<&str>) {
        let name = format!("{}/{runner}/release", self.config.prefix);
        match document {
            Some(document) => {
                self.tally.releases += 1;
                self.ssm.set(&name, document);
                let shown: String = document.chars().take(60).collect();
                self.note(format!("ops {runner} release = {shown:?}"));
            }
            None => self.ssm.remove(&name),
        }
    }

    fn new_version(&mut self, runner: &str) -> String {
        let minor = self.next_minor.entry(runner.to_owned()).or_insert(14);
        let version = format!("2.{minor}.0");
        *minor += 1;
        self.versions
            .entry(runner.to_owned())
            .or_default()
            .push(version.clone());
        version
    }

    /// The next version of the channel's release: above every runner's own versions so far,
    /// and every runner's next own version above it (a pin never reuses a channel's version).
    fn channel_version(&mut self) -> String {
        let minor = self
            .next_minor
            .values()
            .copied()
            .max()
            .unwrap_or(14)
            .max(14);
        for runner in self.runner_names() {
            self.next_minor.insert(runner, minor + 1);
        }
        format!("2.{minor}.0")
    }

    /// Ops publish the channel's release (`None`: delete it).
    fn publish_channel(&mut self, document: Option<&str>) {
        let name = format!("{}/_channels/stable/release", self.config.prefix);
        if let Some(document) = document {
            self.ssm.set(&name, document);
            self.channel_documents
                .insert(release_id(document), document.to_owned());
            self.note(format!("ops channel stable release = {document}"));
        } else {
            self.ssm.remove(&name);
            self.note("ops channel stable release deleted".to_owned());
        }
    }

    /// Ops make a runner follow the channel: its own desired version, image, channel,
    /// infrastructure and release document deleted (the switches stay).
    fn unpin(&mut self, runner: &str) {
        for key in [
            "version",
            "image",
            "channel",
            "infra-version",
            "stacks/runner-a-iam/template-url",
            "stacks/runner-a-main/template-url",
        ] {
            let name = self.desired(runner, key);
            self.ssm.remove(&name);
        }
        self.release(runner, None);
        self.note(format!("ops {runner}: follows the channel (pins deleted)"));
    }

    /// Ops on the channel: a release (good, crashing, never healthy; a bad document now and
    /// then), a runner following it, a resume of a halted one, its deletion.
    async fn channel_ops(&mut self) {
        match self.rng.below(100) {
            0..=24 => {
                if self.rng.below(8) == 0 {
                    self.tally.bad_values += 1;
                    let index = usize::try_from(self.rng.below(BAD_CHANNEL_RELEASES.len() as u64))
                        .unwrap_or(0);
                    self.publish_channel(Some(BAD_CHANNEL_RELEASES[index]));
                    return;
                }
                self.tally.channel_releases += 1;
                let version = self.channel_version();
                let behaviour = match self.rng.below(100) {
                    0..=49 => ImageBehaviour::Healthy,
                    50..=84 => ImageBehaviour::Crashing {
                        after: Duration::from_secs(5 + self.rng.below(30)),
                    },
                    85..=94 => ImageBehaviour::NeverHealthy,
                    _ => ImageBehaviour::UnhealthyAfter {
                        after: Duration::from_secs(5 + self.rng.below(60)),
                    },
                };
                for runner in self.runner_names() {
                    let image = self.image_of(&runner, &version);
                    self.aws.ecs.set_behaviour(&image, behaviour);
                }
                let canary = if self.rng.below(3) == 0 {
                    ""
                } else {
                    "\"canary\": 1, "
                };
                let waves = if self.rng.below(2) == 0 {
                    "[50, 100]"
                } else {
                    "[100]"
                };
                let concurrency = 1 + u32::try_from(self.rng.below(2)).unwrap_or(0);
                let bake = 30 * self.rng.below(3);
                let window_wait = [0, 60, 600][usize::try_from(self.rng.below(3)).unwrap_or(0)];
                let budget = u32::try_from(self.rng.below(2)).unwrap_or(0);
                self.channel_plans
                    .insert(version.clone(), (budget, concurrency));
                let document = format!(
                    "{{\"version\": \"{version}\", \"plan\": {{{canary}\"waves\": {waves}, \"concurrency\": {concurrency}, \"bake-secs\": {bake}, \"window-wait-secs\": {window_wait}}}, \"budget\": {budget}}}"
                );
                self.note(format!(
                    "ops channel stable: {version} behaves {behaviour:?}"
                ));
                self.publish_channel(Some(&document));
            }
            25..=64 => {
                let runner = self.pick_runner();
                self.unpin(&runner);
            }
            65..=94 => {
                let store = self.audit.records();
                if let Ok(Some(record)) = store.load_release("stable").await {
                    if let Some(token) = record.resume_token() {
                        self.tally.channel_resumes += 1;
                        let name = format!("{}/_channels/stable/{RESUME_NAME}", self.config.prefix);
                        self.ssm.set(&name, &token);
                        self.note(format!("ops channel stable: release resume ({token})"));
                    }
                }
            }
            _ => self.publish_channel(None),
        }
    }

    fn image_of(&self, runner: &str, version: &str) -> String {
        let repository = self
            .config
            .runner(runner)
            .map_or("", |r| r.image_repository.as_str());
        format!("{repository}:{version}")
    }

    fn ops(&mut self) {
        let runner = self.pick_runner();
        match self.rng.below(100) {
            0..=44 => {
                self.tally.ops_changes += 1;
                let version = self.new_version(&runner);
                let behaviour = match self.rng.below(100) {
                    0..=64 => ImageBehaviour::Healthy,
                    65..=84 => ImageBehaviour::Crashing {
                        after: Duration::from_secs(5 + self.rng.below(30)),
                    },
                    85..=94 => ImageBehaviour::NeverHealthy,
                    _ => ImageBehaviour::UnhealthyAfter {
                        after: Duration::from_secs(5 + self.rng.below(60)),
                    },
                };
                let image = self.image_of(&runner, &version);
                self.aws.ecs.set_behaviour(&image, behaviour);
                self.note(format!("ops {runner}: {version} behaves {behaviour:?}"));
                if self.rng.below(4) == 0 {
                    // The whole desired state in one write: acted on at once.
                    let document = format!("{{\"version\": \"{version}\"}}");
                    self.release(&runner, Some(&document));
                } else {
                    self.set(&runner, "version", &version);
                }
            }
            45..=59 => {
                self.tally.bad_values += 1;
                if self.rng.below(6) == 0 {
                    let index =
                        usize::try_from(self.rng.below(BAD_RELEASES.len() as u64)).unwrap_or(0);
                    self.release(&runner, Some(BAD_RELEASES[index]));
                } else {
                    let index =
                        usize::try_from(self.rng.below(BAD_VALUES.len() as u64)).unwrap_or(0);
                    let (key, value) = BAD_VALUES[index];
                    self.set(&runner, key, value);
                }
            }
            60..=69 => {
                // Ops mend the bad values (as they would after reading status), and go back to
                // the desired/* parameters.
                self.tally.ops_changes += 1;
                for key in ["image", "channel"] {
                    let name = self.desired(&runner, key);
                    self.ssm.remove(&name);
                }
                self.release(&runner, None);
                self.set(&runner, "auto-update", "true");
            }
            70..=77 => {
                self.tally.ops_changes += 1;
                let value = if self.rng.below(2) == 0 {
                    "false"
                } else {
                    "true"
                };
                self.set(&runner, "auto-update", value);
            }
            78..=85 => {
                // A downgrade, or a return to an earlier (maybe failed) version.
                self.tally.ops_changes += 1;
                let earlier = self.versions.get(&runner).cloned().unwrap_or_default();
                let version = if earlier.is_empty() || self.rng.below(3) == 0 {
                    "2.12.0".to_owned()
                } else {
                    let index = usize::try_from(self.rng.below(earlier.len() as u64)).unwrap_or(0);
                    earlier[index].clone()
                };
                self.set(&runner, "version", &version);
            }
            86..=93 => self.window_op(&runner),
            _ => self.new_infrastructure(None),
        }
    }

    /// Ops write (or delete) a runner's update window.
    fn window_op(&mut self, runner: &str) {
        self.tally.windows_written += 1;
        let index = usize::try_from(self.rng.below(WINDOWS.len() as u64 + 2)).unwrap_or(0);
        let now = self.aws.clock.now();
        if let Some(window) = WINDOWS.get(index) {
            self.set(runner, "update-window", window);
            self.window_written(runner, now, Some(window));
        } else {
            let name = self.desired(runner, "update-window");
            self.ssm.remove(&name);
            self.note(format!("ops {runner}: update window deleted"));
            self.window_written(runner, now, None);
        }
    }

    fn window_written(&self, runner: &str, at: Millis, value: Option<&str>) {
        if let Ok(mut promises) = self.audit.promises.lock() {
            promises.window_written(runner, at, value);
        }
    }

    /// Ops retry a version on a runner or on the channel, as `retry` and `release retry` do:
    /// a quarantined one mostly, one that is not now and then (refused, nothing written).
    async fn retry_op(&mut self) {
        self.tally.retries_asked += 1;
        let store = self.audit.records();
        let runner = self.pick_runner();
        let on_channel = self.rng.below(3) == 0;
        let quarantined: Vec<String> = if on_channel {
            match store.load_release("stable").await {
                Ok(Some(record)) => record.quarantined.into_iter().map(|(v, _)| v).collect(),
                _ => Vec::new(),
            }
        } else {
            match store.load(&runner).await {
                Ok(Some(record)) => record.failed.into_iter().map(|f| f.version).collect(),
                _ => Vec::new(),
            }
        };
        let version = if quarantined.is_empty() || self.rng.below(5) == 0 {
            None
        } else {
            let index = usize::try_from(self.rng.below(quarantined.len() as u64)).unwrap_or(0);
            Some(quarantined[index].clone())
        };
        let requester = Requester {
            now: self.aws.clock.now(),
            salt: self.rng.below(u64::MAX),
            by: Some("ops".to_owned()),
        };
        let written = if on_channel {
            retry_channel(
                &self.config,
                store.as_ref(),
                &self.ssm,
                "stable",
                version.as_deref(),
                &requester,
            )
            .await
        } else {
            retry_runner(
                &self.config,
                store.as_ref(),
                &self.ssm,
                &runner,
                version.as_deref(),
                &requester,
            )
            .await
        };
        let whom = if on_channel {
            "channel stable"
        } else {
            runner.as_str()
        };
        match written {
            Ok(written) => {
                let id = written.parameter.rsplit('/').next().unwrap_or_default();
                let id = if on_channel {
                    format!("channel-stable-{id}")
                } else {
                    id.to_owned()
                };
                self.note(format!("ops retry {} on {whom} ({id})", written.version));
                if let Ok(mut promises) = self.audit.promises.lock() {
                    promises.intent_written(id, written.version);
                }
            }
            Err(error) => {
                self.tally.retries_refused += 1;
                self.note(format!("ops retry on {whom} refused: {error}"));
            }
        }
    }

    /// Ops publish the next infrastructure version of runner-a (and a runner version needing
    /// it): templates that succeed, fail, or replace a resource. `Some(true)` forces good ones.
    fn new_infrastructure(&mut self, good: Option<bool>) {
        self.tally.infra_changes += 1;
        let runner = "runner-a";
        let infra = self.next_infra;
        self.next_infra += 1;
        let kind = match good {
            Some(true) => 0,
            _ => self.rng.below(10),
        };
        let (iam, main, what) = match kind {
            0..=6 => (
                template_changed(infra),
                template_changed(infra).resource(SimResource::new(
                    "Topic",
                    "AWS::SNS::Topic",
                    &format!("v{infra}"),
                )),
                "succeeds",
            ),
            7..=8 => (
                template_changed(infra),
                template_changed(infra).resource(
                    SimResource::new("Broken", "AWS::SQS::Queue", &format!("v{infra}"))
                        .failing("Resource handler returned message: quota exceeded"),
                ),
                "fails and rolls back",
            ),
            _ => {
                let mut main = template_changed(infra);
                if let Some(queue) = main.resources.get_mut(1) {
                    *queue = SimResource::new("Queue", "AWS::SQS::Queue", &format!("v{infra}"))
                        .using(&["Size"])
                        .replaced();
                }
                (template_changed(infra), main, "replaces a resource (held)")
            }
        };
        let iam_url = format!("https://templates.s3.amazonaws.com/iam-{infra}.json");
        let main_url = format!("https://templates.s3.amazonaws.com/main-{infra}.json");
        self.aws.cfn.put_template(&iam_url, iam);
        self.aws.cfn.put_template(&main_url, main);
        self.note(format!("ops {runner}: infrastructure {infra} {what}"));
        let version = self.new_version(runner);
        if good.is_none() && self.rng.below(4) == 0 {
            // The whole release, infrastructure included, in one document.
            let document = format!(
                "{{\"version\": \"{version}\", \"infra-version\": \"{infra}\", \"stacks\": {{\"runner-a-iam\": {{\"template-url\": \"{iam_url}\"}}, \"runner-a-main\": {{\"template-url\": \"{main_url}\"}}}}}}"
            );
            self.release(runner, Some(&document));
            return;
        }
        // Published parameter by parameter (a release document would hide them: gone).
        self.release(runner, None);
        self.set(runner, "infra-version", &infra.to_string());
        self.set(runner, "stacks/runner-a-iam/template-url", &iam_url);
        self.set(runner, "stacks/runner-a-main/template-url", &main_url);
        self.set(runner, "version", &version);
    }

    fn fault(&mut self) {
        let faultable: Vec<AwsOp> = if self.table.is_some() {
            FAULTABLE.iter().chain(&FAULTABLE_TABLE).copied().collect()
        } else {
            FAULTABLE.to_vec()
        };
        let index = usize::try_from(self.rng.below(faultable.len() as u64)).unwrap_or(0);
        let operation = faultable[index];
        if self.rng.below(8) == 0 {
            // Eventual consistency: the next reads of a service updated a moment ago show it
            // as it was before the update.
            let count = 1 + u32::try_from(self.rng.below(3)).unwrap_or(0);
            self.tally.stale_reads += u64::from(count);
            self.aws.ecs.stale_reads(count);
            self.note(format!(
                "stale reads: the next {count} recent DescribeServices"
            ));
            return;
        }
        if self.rng.below(5) == 0 {
            // A slow call (a slow network, a long GC pause), within the SDK's operation timeout
            // (30 s): a slower one would have failed on the client's side.
            let seconds = 1 + self.rng.below(29);
            self.tally.slow_calls += 1;
            self.audit
                .slow_down(operation, Duration::from_secs(seconds));
            self.note(format!("slow call: the next {operation} takes {seconds}s"));
            return;
        }
        if (MUTATING.contains(&operation) || operation == AwsOp::UpdateItem)
            && self.rng.below(3) == 0
        {
            // The call takes effect at AWS, then its answer is lost (a timeout, a reset
            // connection): whatever the caller does next must not do it twice.
            match operation.family() {
                ApiFamily::Ssm => self.aws.ssm.faults.lose_answer(operation),
                ApiFamily::Ecs => self.aws.ecs.faults.lose_answer(operation),
                ApiFamily::CloudFormation => self.aws.cfn.faults.lose_answer(operation),
                ApiFamily::DynamoDb => self.aws.table.faults.lose_answer(operation),
                // The events' queue is not among the faultable operations.
                ApiFamily::Sqs => {}
            }
            self.note(format!(
                "answer lost: the next {operation} takes effect, its answer is lost"
            ));
            return;
        }
        let count = 1 + self.rng.below(3);
        let kind = if self.rng.below(100) < 15 {
            self.tally.permanent_faults += count;
            ErrorKind::Permanent
        } else {
            self.tally.transient_faults += count;
            ErrorKind::Transient
        };
        for _ in 0..count {
            match operation.family() {
                ApiFamily::Ssm => self.aws.ssm.faults.push(operation, kind),
                ApiFamily::Ecs => self.aws.ecs.faults.push(operation, kind),
                ApiFamily::CloudFormation => self.aws.cfn.faults.push(operation, kind),
                ApiFamily::DynamoDb => self.aws.table.faults.push(operation, kind),
                ApiFamily::Sqs => {}
            }
        }
        self.note(format!("fault {count} x {kind:?} on {operation}"));
    }

    async fn approve_held(&mut self) {
        let store = self.audit.records();
        for runner in self.runner_names() {
            if let Ok(approval) = runner_updater_interface::ops::approve(
                store.as_ref(),
                &self.ssm,
                &self.config.prefix,
                &runner,
                None,
            )
            .await
            {
                self.tally.approvals += 1;
                self.note(format!(
                    "ops {runner}: approve {} on {}",
                    approval.change_set, approval.stack
                ));
            }
        }
    }

    /// Terraform or the console points a service at another revision of its family.
    async fn foreign_write(&mut self) {
        if self.rng.below(3) == 0 {
            self.busy_family().await;
            return;
        }
        let runner = self.pick_runner();
        let Some(config) = self.config.runner(&runner).cloned() else {
            return;
        };
        let Ok(service) = self.service(&config.cluster, &config.service).await else {
            return;
        };
        let revisions = self.aws.ecs.registrations();
        let mine: Vec<&String> = revisions
            .iter()
            .filter(|arn| arn.contains(&format!("task-definition/{runner}:")))
            .filter(|arn| **arn != service.task_definition_arn)
            .collect();
        let Some(target) = mine.last().map(|s| (*s).clone()) else {
            return;
        };
        if self
            .aws
            .ecs
            .update_service_as(&config.cluster, &config.service, &target, "terraform")
            .is_ok()
        {
            if let Ok(Some(Record {
                attempt: Some(attempt),
                ..
            })) = self.record(&runner).await
            {
                // The ambiguity owned up to needs the attempt's own revision put back.
                let own = self
                    .aws
                    .ecs
                    .task_definition(&target)
                    .is_some_and(|td| td.tags.get(ATTEMPT_TAG) == Some(&attempt.id));
                if own {
                    self.foreign_written.insert(attempt.id);
                }
            }
            self.tally.foreign_writes += 1;
            self.note(format!("foreign writer points {runner} at {target}"));
        }
    }

    /// Another tool (a CI job, Terraform) registers revisions in a runner's family, sometimes
    /// more than a page of `ListTaskDefinitions`: none of them may hide an attempt's own.
    async fn busy_family(&mut self) {
        let runner = self.pick_runner();
        let Some(container) = self.config.runner(&runner).map(|c| c.container.clone()) else {
            return;
        };
        let count = if self.rng.below(8) == 0 {
            101 + self.rng.below(10)
        } else {
            1 + self.rng.below(6)
        };
        let base = format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/{runner}:1");
        let ecs = self.aws.ecs.without_faults();
        let image = format!("registry.example/{runner}:ci");
        for _ in 0..count {
            if ecs
                .register_clone(&base, &container, &image, BTreeMap::new())
                .await
                .is_err()
            {
                return;
            }
            self.tally.foreign_registrations += 1;
        }
        self.note(format!(
            "a busy family: {count} revisions of {runner} registered by another tool"
        ));
    }

    async fn service(&self, cluster: &str, service: &str) -> Result<ServiceState, PortError> {
        self.aws
            .ecs
            .without_faults()
            .describe_service(cluster, service)
            .await
    }

    async fn record(&self, runner: &str) -> Result<Option<Record>, String> {
        let store = self.audit.records();
        store.load(runner).await.map_err(|e| e.to_string())
    }

    // Boxed: a violation carries its log, and it travels in every `Result` of the checks.
    #[allow(clippy::unnecessary_box_returns)]
    fn violation(&self, step: usize, invariant: Invariant, detail: String) -> Box<Violation> {
        Box::new(Violation {
            seed: self.seed,
            step,
            invariant,
            detail,
            log: self.log.iter().cloned().collect(),
        })
    }

    /// Every invariant that can be checked at any moment.
    async fn check(&mut self, step: usize) -> Result<(), Box<Violation>> {
        if let Some((invariant, detail)) = self.audit.take_violation() {
            return Err(self.violation(step, invariant, detail));
        }
        self.check_effects(step)?;
        self.check_channel(step).await?;
        let now = self.aws.clock.now();
        for runner in self.runner_names() {
            let record = match self.record(&runner).await {
                Ok(record) => record,
                Err(error) => {
                    return Err(self.violation(
                        step,
                        Invariant::RecordParses,
                        format!("{runner}: {error}"),
                    ))
                }
            };
            let Some(record) = record else { continue };
            self.count_outcome(&record);
            let phase = record.phase().ok();
            if let (Some(phase), Some(attempt)) = (phase, &record.attempt) {
                let forward = !phase.is_resting() && phase != Phase::RollingBack;
                if forward {
                    if let Some(mark) = record.failed.iter().find(|m| {
                        m.version == attempt.target_version
                            && m.image == attempt.target_image
                            && m.infra == attempt.infra
                    }) {
                        return Err(self.violation(
                            step,
                            Invariant::FailedNotRetried,
                            format!(
                                "{runner}: attempt {} in {} targets {} ({}), quarantined: {}",
                                attempt.id,
                                phase.name(),
                                attempt.target_version,
                                attempt.target_image,
                                mark.reason
                            ),
                        ));
                    }
                }
                let human = phase == Phase::AwaitingApproval;
                let age = now.since(Millis(attempt.started_at));
                let bound = self.deadline_bound();
                if !phase.is_resting() && !human && age > bound {
                    return Err(self.violation(
                        step,
                        Invariant::AttemptsEndInTime,
                        format!(
                            "{runner}: attempt {} still in {} after {}s (bound {}s)",
                            attempt.id,
                            phase.name(),
                            age.as_secs(),
                            bound.as_secs()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The channel's release against the runners' records: a halted release starts nobody,
    /// its failures stay within its budget, its waves go in order.
    async fn check_channel(&mut self, step: usize) -> Result<(), Box<Violation>> {
        let store = self.audit.records();
        let record = match store.load_release("stable").await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(self.violation(
                    step,
                    Invariant::RecordParses,
                    format!("channel stable: {error}"),
                ))
            }
        };
        let mut records = Vec::new();
        for runner in self.runner_names() {
            if let Ok(Some(runner_record)) = self.record(&runner).await {
                records.push(runner_record);
            }
        }
        if let Some(halt) = &record.halted {
            if self.halts_seen.insert((record.release_id.clone(), halt.at)) {
                self.tally.channel_halts += 1;
            }
            // Clocks differ by the skew at most (both ways), and a pass takes a moment.
            let tolerance = 2 * SKEW_MAX_MS + 1_000;
            if let Some((runner, attempt)) = records.iter().find_map(|r| {
                on(r, &record.version)
                    .filter(|a| a.started_at > halt.at + tolerance)
                    .map(|a| (&r.runner, a))
            }) {
                return Err(self.violation(
                    step,
                    Invariant::HaltedReleaseStartsNone,
                    format!(
                        "{runner}: attempt {} on {} began at {}, after the release halted at {}",
                        attempt.id,
                        record.version,
                        Millis(attempt.started_at),
                        Millis(halt.at)
                    ),
                ));
            }
        }
        self.check_release_load(step, &record, &records)?;
        if record.finished_at.is_none() {
            let plan = self
                .channel_documents
                .get(&record.release_id)
                .and_then(|text| parse_channel_release(text, "release").ok());
            if let Some(release) = plan {
                let laid = waves(&release.plan, &self.runner_names());
                for wave in laid.iter().skip(record.wave + 1) {
                    if let Some(early) = records.iter().find(|r| {
                        wave.runners.contains(&r.runner) && on(r, &record.version).is_some()
                    }) {
                        return Err(self.violation(
                            step,
                            Invariant::ReleaseWavesInOrder,
                            format!(
                                "{} attempts release {} in a wave after the current one (wave {} of {})",
                                early.runner,
                                record.version,
                                record.wave + 1,
                                laid.len()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A channel release's failures within its budget, its attempts within its concurrency.
    fn check_release_load(
        &self,
        step: usize,
        record: &runner_updater_core::domain::rollout::ReleaseRecord,
        records: &[Record],
    ) -> Result<(), Box<Violation>> {
        if let Some(&(budget, concurrency)) = self.channel_plans.get(&record.version) {
            let failed = records
                .iter()
                .filter(|r| {
                    r.failed.iter().any(|f| f.version == record.version)
                        || (r.phase == "rolled_back" && on(r, &record.version).is_some())
                })
                .count();
            let in_flight: Vec<&str> = records
                .iter()
                .filter(|r| {
                    on(r, &record.version).is_some()
                        && r.phase().is_ok_and(|p| {
                            !p.is_resting() && !matches!(p, Phase::Checking | Phase::Locked)
                        })
                })
                .map(|r| r.runner.as_str())
                .collect();
            if in_flight.len() > usize::try_from(concurrency).unwrap_or(usize::MAX) {
                return Err(self.violation(
                    step,
                    Invariant::ReleaseWithinConcurrency,
                    format!(
                        "{in_flight:?} in an attempt on release {} at once (concurrency {concurrency})",
                        record.version
                    ),
                ));
            }
            let resumes = record.resumes.len() + 1;
            let bound = usize::try_from(budget + concurrency).unwrap_or(usize::MAX) * resumes;
            if failed > bound {
                return Err(self.violation(
                    step,
                    Invariant::ReleaseFailuresWithinBudget,
                    format!(
                        "{failed} runners failed release {} (budget {budget}, concurrency {concurrency}, {} resume(s))",
                        record.version,
                        resumes - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The longest an attempt may take, every deadline and every wait for a crashed
    /// controller's lease included.
    fn deadline_bound(&self) -> Duration {
        let c = &self.config;
        let stacks = 2;
        Duration::from_secs(
            c.health.rollout_timeout_secs
                + c.health.soak_secs
                + c.health.rollback_timeout_secs
                + stacks
                    * (c.infrastructure.change_set_timeout_secs
                        + c.infrastructure.stack_update_timeout_secs)
                + 4 * (c.lease_secs + 5)
                + 2 * DOWN_MAX.as_secs()
                + 600,
        )
    }

    fn count_outcome(&mut self, record: &Record) {
        let key = format!(
            "{}:{}",
            record.attempt.as_ref().map_or("", |a| a.id.as_str()),
            record.phase
        );
        if self.phases.get(&record.runner) == Some(&key) {
            return;
        }
        match record.phase.as_str() {
            "done" => self.tally.done += 1,
            "rolled_back" => self.tally.rolled_back += 1,
            _ => {}
        }
        let on_channel = record
            .attempt
            .as_ref()
            .is_some_and(|a| self.channel_plans.contains_key(&a.target_version));
        if on_channel && matches!(record.phase.as_str(), "done" | "rolled_back") {
            self.tally.channel_attempts += 1;
        }
        self.phases.insert(record.runner.clone(), key);
    }

    /// Side effects per attempt, from what the simulated AWS recorded.
    fn check_effects(&self, step: usize) -> Result<(), Box<Violation>> {
        let mut per_attempt: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut attempt_of: HashMap<String, String> = HashMap::new();
        for arn in self.aws.ecs.registrations() {
            let attempt = self
                .aws
                .ecs
                .task_definition(&arn)
                .and_then(|td: TaskDefinition| td.tags.get(ATTEMPT_TAG).cloned())
                .unwrap_or_default();
            attempt_of.insert(arn.clone(), attempt.clone());
            per_attempt.entry(attempt).or_default().push(arn);
        }
        if let Some((attempt, arns)) = per_attempt
            .iter()
            .find(|(attempt, arns)| !attempt.is_empty() && arns.len() > 1)
        {
            return Err(self.violation(
                step,
                Invariant::OneRegistrationPerAttempt,
                format!("attempt {attempt} registered {arns:?}"),
            ));
        }
        // Per attempt (the one in the record when the call was made: records are written
        // before the calls they ask for), one update to its own revision and one rollback.
        let updates = self.aws.ecs.updates();
        let mut per_attempt: HashMap<(String, bool), usize> = HashMap::new();
        for (attempt, arn) in self.audit.updates() {
            let forward = attempt_of.get(&arn) == Some(&attempt);
            let count = per_attempt.entry((attempt.clone(), forward)).or_default();
            *count += 1;
            // The one ambiguity the README owns up to ("Crash safety"): a rollback made but not
            // recorded — its controller crashed, or its answer was lost — then a foreign writer
            // putting the attempt's own revision back.
            let excused = !forward
                && *count == 2
                && self.foreign_written.contains(&attempt)
                && (self.ambiguous_rollbacks.contains(&attempt)
                    || self
                        .audit
                        .lost_rollback(&attempt, |arn| attempt_of.get(arn) == Some(&attempt)));
            if *count > 1 && !excused {
                return Err(self.violation(
                    step,
                    Invariant::OneServiceUpdatePerAttempt,
                    format!(
                        "attempt {attempt} made a second {} update (to {arn})",
                        if forward { "forward" } else { "rollback" }
                    ),
                ));
            }
        }
        let mut last: HashMap<(String, String), (String, String)> = HashMap::new();
        for update in &updates {
            let key = (update.cluster.clone(), update.service.clone());
            if update.actor == "controller"
                && last.get(&key).is_some_and(|(arn, actor)| {
                    *arn == update.task_definition_arn && actor == "controller"
                })
            {
                return Err(self.violation(
                    step,
                    Invariant::OneServiceUpdatePerAttempt,
                    format!(
                        "{}/{} updated to {} twice in a row",
                        update.cluster, update.service, update.task_definition_arn
                    ),
                ));
            }
            last.insert(
                key,
                (update.task_definition_arn.clone(), update.actor.clone()),
            );
        }
        let executions = self.aws.cfn.executions();
        for (index, execution) in executions.iter().enumerate() {
            if executions[..index].contains(execution) {
                return Err(self.violation(
                    step,
                    Invariant::OneExecutionPerChangeSet,
                    format!(
                        "change set {} of {} executed twice",
                        execution.1, execution.0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Faults stop, every controller is up, ops ask for one last valid, deployable version
    /// (and good infrastructure); the fleet must converge on it.
    async fn drain(&mut self, settings: Settings) -> Result<(), Box<Violation>> {
        let step0 = settings.steps;
        self.aws.ssm.faults.clear();
        self.aws.ecs.faults.clear();
        self.aws.cfn.faults.clear();
        self.aws.table.faults.clear();
        self.aws.ecs.stale_reads(0);
        if let Ok(mut slow) = self.audit.slow.lock() {
            slow.clear();
        }
        for index in 0..self.controllers.len() {
            if let Ok(mut skew) = self.controllers[index].skew.lock() {
                *skew = 0;
            }
            // Every controller (re)started without planned crashes: the drain is calm.
            self.tally.restarts += 1;
            self.start(index, false);
        }
        self.note("drain: faults off, every controller restarted".to_owned());
        let mut targets = BTreeMap::new();
        // One last good channel release, followed by runner-b and runner-c each one time in
        // two; the others pinned to a version of their own (runner-a always: its
        // infrastructure is its own).
        let channel = self.channel_version();
        for runner in self.runner_names() {
            let image = self.image_of(&runner, &channel);
            self.aws.ecs.set_behaviour(&image, ImageBehaviour::Healthy);
        }
        self.channel_plans.insert(channel.clone(), (3, 3));
        let document = format!(
            "{{\"version\": \"{channel}\", \"plan\": {{\"waves\": [100], \"concurrency\": 3}}, \"budget\": 3}}"
        );
        self.publish_channel(Some(&document));
        let now = self.aws.clock.now();
        for runner in self.runner_names() {
            self.set(&runner, "auto-update", "true");
            // Windows go: the fleet must converge now.
            let window = self.desired(&runner, "update-window");
            self.ssm.remove(&window);
            self.window_written(&runner, now, None);
            if runner != "runner-a" && self.rng.below(2) == 0 {
                self.unpin(&runner);
                let image = self.image_of(&runner, &channel);
                targets.insert(runner, image);
                continue;
            }
            for key in ["image", "channel"] {
                let name = self.desired(&runner, key);
                self.ssm.remove(&name);
            }
            self.release(&runner, None);
            let version = self.new_version(&runner);
            let image = self.image_of(&runner, &version);
            self.aws.ecs.set_behaviour(&image, ImageBehaviour::Healthy);
            self.set(&runner, "version", &version);
            targets.insert(runner, image);
        }
        self.new_infrastructure(Some(true));
        if let Some(image) = self
            .versions
            .get("runner-a")
            .and_then(|v| v.last())
            .map(|v| self.image_of("runner-a", v))
        {
            self.aws.ecs.set_behaviour(&image, ImageBehaviour::Healthy);
            targets.insert("runner-a".to_owned(), image);
        }
        for round in 0..settings.drain_rounds {
            for index in 0..self.controllers.len() {
                // A sweep: the fleet read, then the channel's step.
                self.fleet_read_of(index).await;
                for runner in 0..self.config.runners.len() {
                    self.pass_of(index, runner).await;
                    if self.controllers[index].drivers.is_none() {
                        // A planned crash can no longer happen (drain drivers carry none).
                        self.start(index, false);
                    }
                }
            }
            self.approve_held().await;
            self.aws.clock.advance(Duration::from_secs(10));
            self.check(step0 + round).await?;
            if self.converged(&targets).await.is_ok() {
                self.note(format!("converged after {round} drain rounds"));
                return Ok(());
            }
        }
        match self.converged(&targets).await {
            Ok(()) => Ok(()),
            Err(detail) => {
                Err(self.violation(step0 + settings.drain_rounds, Invariant::Converges, detail))
            }
        }
    }

    /// Whether every runner runs its target image, at rest, unless one of its stacks needs a
    /// human (a failed rollback).
    async fn converged(&self, targets: &BTreeMap<String, String>) -> Result<(), String> {
        for (runner, image) in targets {
            let Some(config) = self.config.runner(runner) else {
                continue;
            };
            if config.stacks.iter().any(|stack| {
                self.aws
                    .cfn
                    .stack(stack)
                    .is_some_and(|s: StackState| s.status.needs_human())
            }) {
                continue;
            }
            let service = self
                .service(&config.cluster, &config.service)
                .await
                .map_err(|e| e.to_string())?;
            if service.primary().is_some_and(|p| {
                p.rollout_state == runner_updater_core::domain::observed::RolloutState::Failed
                    && !p.rollout_cause().rolling_back
            }) {
                // ECS failed a deployment and had nothing to roll back to: a human decides
                // (the controller waits with `service-not-steady`).
                continue;
            }
            let running = self
                .aws
                .ecs
                .task_definition(&service.task_definition_arn)
                .and_then(|td| {
                    td.container(&config.container)
                        .and_then(|c| c.image.clone())
                })
                .unwrap_or_default();
            let record = self.record(runner).await?;
            let phase = record.as_ref().map_or("none", |r| r.phase.as_str());
            if running != *image || phase != "done" {
                let deployments: Vec<String> = service
                    .deployments
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {:?} {} {:?} {}/{}",
                            d.id,
                            d.status,
                            d.task_definition_arn,
                            d.rollout_state,
                            d.running_count,
                            d.desired_count
                        )
                    })
                    .collect();
                return Err(format!(
                    "{runner} runs {running} in phase {phase}, desired {image} (note: {}; deployments: {deployments:?})",
                    record
                        .as_ref()
                        .and_then(|r| r.note.as_ref())
                        .map_or("-", |n| n.message.as_str())
                ));
            }
        }
        Ok(())
    }
}

/// The attempt of `record`, if it targets `version`.
fn on<'r>(
    record: &'r Record,
    version: &str,
) -> Option<&'r runner_updater_core::record::AttemptRecord> {
    record
        .attempt
        .as_ref()
        .filter(|a| a.target_version == version)
}

/// The domain's FNV-1a over `bytes`, continuing from `hash` (a tally's zero: from the start).
fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    let start = if hash == 0 { FNV_OFFSET } else { hash };
    fnv1a(start, bytes)
}

/// A stack template at infrastructure version `infra`: the initial one with a changed
/// property.
fn template_changed(infra: u32) -> SimTemplate {
    let mut template = initial_template();
    if let Some(config) = template.resources.get_mut(0) {
        config.properties = format!("v{infra}");
    }
    template
}

/// A controller's clock: the simulated clock, off by its skew.
struct SkewedClock {
    base: SimClock,
    skew_ms: Arc<Mutex<i64>>,
}

#[async_trait]
impl Clock for SkewedClock {
    fn now(&self) -> Millis {
        let skew = self.skew_ms.lock().map_or(0, |s| *s);
        Millis(self.base.now().0.saturating_add_signed(skew))
    }

    fn monotonic(&self) -> Duration {
        // Skew is a wall clock's error; elapsed time is the same for everyone.
        self.base.monotonic()
    }

    async fn sleep(&self, duration: Duration) {
        self.base.advance(duration);
    }
}

/// Checks every mutating call against the truth of the lease: the caller must hold the
/// runner's highest epoch, not released.
#[derive(Clone)]
struct Audit {
    ssm: SimSsm,
    /// The state table without faults, with the DynamoDB backend.
    table: Option<SimTable>,
    prefix: String,
    /// Runner of each stack and of each `cluster/service`.
    owners: Arc<HashMap<String, String>>,
    violation: Arc<Mutex<Option<(Invariant, String)>>>,
    /// Every `UpdateService` by a controller: (the attempt in the runner's record, the task
    /// definition).
    updates: Arc<Mutex<Vec<(String, String)>>>,
    /// Attempts with an `UpdateService` whose answer was lost after it took effect.
    lost_updates: Arc<Mutex<std::collections::BTreeSet<(String, String)>>>,
    /// Slow calls queued per operation: the next call of it takes this long (simulated time).
    slow: Arc<Mutex<BTreeMap<AwsOp, VecDeque<Duration>>>>,
    clock: SimClock,
    /// Update windows and retries (`outside-window-never-updated`, `retried-at-most-once`).
    promises: Arc<Mutex<Promises>>,
}

impl Audit {
    fn new(config: &Config, ssm: SimSsm, table: Option<SimTable>, clock: SimClock) -> Audit {
        let mut owners = HashMap::new();
        for runner in &config.runners {
            owners.insert(
                format!("{}/{}", runner.cluster, runner.service),
                runner.name.clone(),
            );
            owners.insert(format!("family/{}", runner.name), runner.name.clone());
            for stack in &runner.stacks {
                owners.insert(stack.clone(), runner.name.clone());
            }
        }
        Audit {
            ssm,
            table,
            prefix: config.prefix.clone(),
            owners: Arc::new(owners),
            violation: Arc::new(Mutex::new(None)),
            updates: Arc::new(Mutex::new(Vec::new())),
            lost_updates: Arc::new(Mutex::new(std::collections::BTreeSet::new())),
            slow: Arc::new(Mutex::new(BTreeMap::new())),
            clock,
            promises: Arc::new(Mutex::new(Promises::default())),
        }
    }

    /// The records as stored (read without faults, never written through).
    fn records(&self) -> Arc<dyn StateStore> {
        match &self.table {
            Some(table) => Arc::new(DynamoStore::new(
                Arc::new(table.clone()),
                "checker",
                Arc::new(self.clock.clone()),
            )),
            None => Arc::new(SsmStore::new(Arc::new(self.ssm.clone()), &self.prefix)),
        }
    }

    /// The holder and epoch of the runner's highest lease, unless released.
    async fn current(&self, runner: &str) -> Option<(String, u64)> {
        if let Some(table) = &self.table {
            let lease = table.item(runner)?.lease?;
            return (lease.expires_at != Millis(0)).then_some((lease.holder, lease.epoch));
        }
        let folder = format!("{}/{runner}/lock/", self.prefix);
        let leases = self.ssm.get_by_path(&folder).await.ok()?;
        let (name, value) = leases.iter().next_back()?;
        let epoch = name.strip_prefix(&folder)?.parse().ok()?;
        let value: serde_json::Value = serde_json::from_str(value).ok()?;
        let expires_at = value.get("expires_at")?.as_u64()?;
        let holder = value.get("holder")?.as_str()?;
        (expires_at != 0).then(|| (holder.to_owned(), epoch))
    }

    async fn mutation(&self, holder: &str, owner_key: &str, operation: AwsOp) {
        let Some(runner) = self.owners.get(owner_key) else {
            return;
        };
        let current = self.current(runner).await;
        if current.as_ref().is_none_or(|(h, _)| h != holder) {
            self.report(
                Invariant::NoStaleMutation,
                format!("{holder} called {operation} on {runner} while the lease is {current:?}"),
            );
        }
    }

    fn report(&self, invariant: Invariant, detail: String) {
        if let Ok(mut violation) = self.violation.lock() {
            violation.get_or_insert((invariant, detail));
        }
    }

    /// A controller saved `record` over `before` (when the write took effect: a write the state
    /// table refused wrote nothing): if the stored one held an attempt in flight, the new one
    /// must continue it (same attempt, or a transition out of the stored phase after it was
    /// entered: the attempt ending or stopping).
    fn save(&self, holder: &str, record: &Record, before: Option<Record>) {
        let broken = self
            .promises
            .lock()
            .ok()
            .and_then(|mut promises| promises.saved(record, before.as_ref()).err());
        if let Some((broken, detail)) = broken {
            let invariant = match broken {
                Broken::Window => Invariant::OutsideWindowNeverUpdated,
                Broken::Retry => Invariant::RetriedAtMostOnce,
            };
            self.report(invariant, format!("{holder} wrote it: {detail}"));
        }
        let Some(stored) = before else {
            return;
        };
        let Some(attempt) = stored.attempt.as_ref() else {
            return;
        };
        let in_flight = stored.phase().is_ok_and(|p| !p.is_resting());
        let same = record.attempt.as_ref().is_some_and(|a| a.id == attempt.id);
        let continues = record
            .transitions
            .iter()
            // Each controller stamps with its own (skewed) clock.
            .any(|t| t.from == stored.phase && t.at + 2 * SKEW_MAX_MS >= stored.since);
        if in_flight && !same && !continues {
            self.report(
                Invariant::OneAttemptInFlight,
                format!(
                    "{holder} wrote {} ({}) over attempt {} in flight ({})",
                    record.phase,
                    record
                        .attempt
                        .as_ref()
                        .map_or("no attempt", |a| a.id.as_str()),
                    attempt.id,
                    stored.phase
                ),
            );
        }
    }

    /// Makes the next call of `operation` slow.
    fn slow_down(&self, operation: AwsOp, duration: Duration) {
        if let Ok(mut slow) = self.slow.lock() {
            slow.entry(operation).or_default().push_back(duration);
        }
    }

    /// A call of `operation` starts: simulated time passes if it was made slow.
    fn delay(&self, operation: AwsOp) {
        let queued = self
            .slow
            .lock()
            .ok()
            .and_then(|mut slow| slow.get_mut(&operation).and_then(VecDeque::pop_front));
        if let Some(duration) = queued {
            self.clock.advance(duration);
        }
    }

    /// Notes a service update and the attempt the runner's record names; `lost` when its
    /// answer was lost after it took effect.
    async fn update(&self, owner_key: &str, arn: &str, lost: bool) {
        let Some(runner) = self.owners.get(owner_key) else {
            return;
        };
        let store = self.records();
        let attempt = store
            .load(runner)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.attempt.map(|a| a.id))
            .unwrap_or_default();
        if lost {
            if let Ok(mut lost_updates) = self.lost_updates.lock() {
                lost_updates.insert((attempt.clone(), arn.to_owned()));
            }
        }
        if let Ok(mut updates) = self.updates.lock() {
            updates.push((attempt, arn.to_owned()));
        }
    }

    /// Whether a rollback of this attempt (an update to a revision not its own, as `own`
    /// tells) took effect and lost its answer.
    fn lost_rollback(&self, attempt: &str, own: impl Fn(&str) -> bool) -> bool {
        self.lost_updates.lock().is_ok_and(|lost| {
            lost.iter()
                .any(|(lost_attempt, arn)| lost_attempt == attempt && !own(arn))
        })
    }

    fn updates(&self) -> Vec<(String, String)> {
        self.updates.lock().map(|u| u.clone()).unwrap_or_default()
    }

    fn take_violation(&self) -> Option<(Invariant, String)> {
        self.violation.lock().ok().and_then(|mut v| v.take())
    }
}

/// A controller's state store, audited on every save.
struct AuditedStore {
    inner: Arc<dyn StateStore>,
    audit: Audit,
    holder: String,
}

#[async_trait]
impl StateStore for AuditedStore {
    async fn load(&self, runner: &str) -> Result<Option<Record>, runner_updater_ports::StoreError> {
        self.inner.load(runner).await
    }

    async fn load_release(
        &self,
        channel: &str,
    ) -> Result<
        Option<runner_updater_core::domain::rollout::ReleaseRecord>,
        runner_updater_ports::StoreError,
    > {
        self.inner.load_release(channel).await
    }

    async fn save_release(
        &self,
        record: &runner_updater_core::domain::rollout::ReleaseRecord,
        epoch: u64,
    ) -> Result<(), runner_updater_ports::StoreError> {
        let result = self.inner.save_release(record, epoch).await;
        // The channel's acknowledgements, as written (a refused write acknowledged nothing).
        if !matches!(result, Err(runner_updater_ports::StoreError::Refused(_))) {
            if let Ok(mut promises) = self.audit.promises.lock() {
                for ack in &record.retries {
                    promises.channel_acknowledged(
                        format!("channel-{}-{}", record.channel, ack.id),
                        ack.at,
                    );
                }
            }
        }
        result
    }

    async fn save(&self, record: &Record) -> Result<(), runner_updater_ports::StoreError> {
        self.save_folding(record, runner_updater_ports::LeaseFold::Keep)
            .await
            .map(|_| ())
    }

    async fn save_folding(
        &self,
        record: &Record,
        fold: runner_updater_ports::LeaseFold,
    ) -> Result<runner_updater_ports::LeaseWritten, runner_updater_ports::StoreError> {
        let truth = self.audit.records();
        let before = truth.load(&record.runner).await.ok().flatten();
        let result = self.inner.save_folding(record, fold).await;
        // Checked when the write took effect (a lost answer too; a refused write not): what
        // identifies the state, as the store may shorten what it keeps — with the marks and
        // the retries, which change at rest.
        let key = |r: &Record| {
            (
                r.phase.clone(),
                r.since,
                r.attempt.as_ref().map(|a| a.id.clone()),
                r.lock_epoch,
                r.failed
                    .iter()
                    .map(|m| (m.version.clone(), m.image.clone(), m.at))
                    .collect::<Vec<_>>(),
                r.retries.clone(),
            )
        };
        let after = truth.load(&record.runner).await.ok().flatten();
        if after.as_ref().map(key) == Some(key(record)) {
            self.audit.save(&self.holder, record, before);
        }
        result
    }

    async fn list(&self) -> Result<Vec<String>, runner_updater_ports::StoreError> {
        self.inner.list().await
    }

    async fn prefetch(&self, runners: &[String]) -> Result<(), runner_updater_ports::StoreError> {
        self.inner.prefetch(runners).await
    }

    fn fences_writes(&self) -> bool {
        self.inner.fences_writes()
    }
}

/// A controller's lease and store: on the state table (`table`: with its faults) with the
/// DynamoDB backend, slowed as the audit says, else on SSM.
fn lock_and_store(
    table: Option<&SimTable>,
    audit: &Audit,
    prefix: &str,
    holder: &str,
    ssm: Arc<dyn ParameterStore>,
    clock: Arc<dyn Clock>,
) -> (Arc<dyn Lock>, Arc<dyn StateStore>) {
    if let Some(table) = table {
        let table: Arc<dyn StateTable> = Arc::new(Decorated::new(
            Arc::new(table.clone()) as Arc<dyn StateTable>,
            Slow {
                audit: audit.clone(),
            },
        ));
        (
            Arc::new(DynamoLease::new(table.clone())),
            Arc::new(DynamoStore::new(table, holder, clock)),
        )
    } else {
        (
            Arc::new(SsmLease::new(ssm.clone(), prefix)),
            Arc::new(SsmStore::new(ssm, prefix)),
        )
    }
}

/// Around the controllers' SSM: slow calls.
struct Slow {
    audit: Audit,
}

#[async_trait]
impl Hooks for Slow {
    async fn before(&self, call: &Call<'_>) {
        self.audit.delay(call.port.op());
    }

    async fn after(&self, _call: &Call<'_>, _failed: Option<&PortError>) {}
}

fn family_of(arn: &str) -> &str {
    arn.rsplit_once('/')
        .map_or(arn, |(_, tail)| tail)
        .split(':')
        .next()
        .unwrap_or("")
}

/// Around a controller's ECS and `CloudFormation`: slow calls, and every mutating call checked
/// against the lease as stored in SSM (`no-stale-mutation`) and recorded for the invariants.
struct Audited {
    audit: Audit,
    holder: String,
    /// The simulated ECS's faults: whether an update's answer was lost (it was made all the
    /// same).
    ecs_faults: Faults,
    /// Answers of `UpdateService` lost before each call under way, by service.
    lost_before: Mutex<BTreeMap<String, u64>>,
}

impl Audited {
    /// What a mutating call is owned by: the family registered, the service updated, the
    /// stack changed.
    fn owner_key(call: &Call<'_>) -> Option<String> {
        match (call.port.op().mutates(), call.target) {
            (true, Target::TaskDefinition(base_arn)) => {
                Some(format!("family/{}", family_of(base_arn)))
            }
            (
                true,
                Target::ServiceUpdate {
                    cluster, service, ..
                }
                | Target::ServiceDeploymentStop {
                    cluster, service, ..
                },
            ) => Some(format!("{cluster}/{service}")),
            (true, Target::Stack(stack)) => Some(stack.to_owned()),
            _ => None,
        }
    }

    /// The service a call changes, and what it points it at: the task definition of an
    /// update; a stop's rollback, to the revision before (named by [`STOP_ROLLBACK`]: never an
    /// attempt's own).
    fn service_change<'a>(call: &Call<'a>) -> Option<(String, &'a str)> {
        match call.target {
            Target::ServiceUpdate {
                cluster,
                service,
                task_definition_arn,
            } => Some((format!("{cluster}/{service}"), task_definition_arn)),
            Target::ServiceDeploymentStop {
                cluster, service, ..
            } => Some((format!("{cluster}/{service}"), STOP_ROLLBACK)),
            _ => None,
        }
    }
}

/// What the audit records a `StopServiceDeployment(ROLLBACK)` as: a rollback update.
const STOP_ROLLBACK: &str = "stop-service-deployment(rollback)";

#[async_trait]
impl Hooks for Audited {
    async fn before(&self, call: &Call<'_>) {
        self.audit.delay(call.port.op());
        if let Some(key) = Self::owner_key(call) {
            self.audit
                .mutation(&self.holder, &key, call.port.op())
                .await;
        }
        if let Some((key, _)) = Self::service_change(call) {
            if let Ok(mut lost) = self.lost_before.lock() {
                lost.insert(key, self.ecs_faults.answers_lost(call.port.op()));
            }
        }
    }

    async fn after(&self, call: &Call<'_>, failed: Option<&PortError>) {
        let Some((key, task_definition_arn)) = Self::service_change(call) else {
            return;
        };
        let before = self
            .lost_before
            .lock()
            .map_or(0, |mut lost| lost.remove(&key).unwrap_or_default());
        // A change whose answer was lost was made all the same.
        let lost = self.ecs_faults.answers_lost(call.port.op()) > before;
        if failed.is_none() || lost {
            self.audit.update(&key, task_definition_arn, lost).await;
        }
    }
}
