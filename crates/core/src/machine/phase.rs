//! The machine's states as plain names, the card's top-level grouping, and **the transition
//! table**: the one list that the machine is checked against at run time and that
//! `runner-updater diagram` draws.

use std::fmt;

/// A leaf state of the machine, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// At rest, polling the desired state.
    Idle,
    /// Eligible: taking the runner's lock.
    Checking,
    /// Lock held: re-checking eligibility on a fresh observation and recording the baseline.
    Locked,
    /// Creating (or finding) a stack's change set and waiting for CloudFormation to compute it.
    CreatingChangeSet,
    /// A change set held by the approval policy, waiting for `runner-updater approve`.
    AwaitingApproval,
    /// Executing a change set and waiting for the stack to be `UPDATE_COMPLETE`.
    ExecutingChangeSet,
    /// Registering the cloned task definition (found again by its attempt tag after a crash).
    RegisteringTaskDefinition,
    /// Pointing the service at the new task definition (with the circuit breaker).
    UpdatingService,
    /// Waiting for the new deployment to complete and its tasks to be healthy.
    AwaitingRollout,
    /// Healthy; holding for the soak period.
    Soaking,
    /// Putting the service back on the previous task definition (unless ECS already did).
    RollingBack,
    /// The attempt succeeded.
    Done,
    /// The attempt failed and the runner is back on the previous revision; version quarantined.
    RolledBack,
}

/// The card's top-level states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TopLevel {
    /// `Idle`
    Idle,
    /// `Checking`
    Checking,
    /// `Locked`
    Locked,
    /// `Deploying`
    Deploying,
    /// `HealthGate`
    HealthGate,
    /// `Done`
    Done,
    /// `RolledBack`
    RolledBack,
}

impl Phase {
    /// Every phase, in flow order.
    pub const ALL: [Phase; 13] = [
        Phase::Idle,
        Phase::Checking,
        Phase::Locked,
        Phase::CreatingChangeSet,
        Phase::AwaitingApproval,
        Phase::ExecutingChangeSet,
        Phase::RegisteringTaskDefinition,
        Phase::UpdatingService,
        Phase::AwaitingRollout,
        Phase::Soaking,
        Phase::RollingBack,
        Phase::Done,
        Phase::RolledBack,
    ];

    /// The stable `snake_case` name used in records, metrics and traces.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Checking => "checking",
            Phase::Locked => "locked",
            Phase::CreatingChangeSet => "creating_change_set",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::ExecutingChangeSet => "executing_change_set",
            Phase::RegisteringTaskDefinition => "registering_task_definition",
            Phase::UpdatingService => "updating_service",
            Phase::AwaitingRollout => "awaiting_rollout",
            Phase::Soaking => "soaking",
            Phase::RollingBack => "rolling_back",
            Phase::Done => "done",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Parses a stable name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The CamelCase name used in diagrams.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Checking => "Checking",
            Phase::Locked => "Locked",
            Phase::CreatingChangeSet => "CreatingChangeSet",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::ExecutingChangeSet => "ExecutingChangeSet",
            Phase::RegisteringTaskDefinition => "RegisteringTaskDefinition",
            Phase::UpdatingService => "UpdatingService",
            Phase::AwaitingRollout => "AwaitingRollout",
            Phase::Soaking => "Soaking",
            Phase::RollingBack => "RollingBack",
            Phase::Done => "Done",
            Phase::RolledBack => "RolledBack",
        }
    }

    /// The top-level state this phase belongs to.
    #[must_use]
    pub fn top_level(self) -> TopLevel {
        match self {
            Phase::Idle => TopLevel::Idle,
            Phase::Checking => TopLevel::Checking,
            Phase::Locked => TopLevel::Locked,
            Phase::CreatingChangeSet
            | Phase::AwaitingApproval
            | Phase::ExecutingChangeSet
            | Phase::RegisteringTaskDefinition
            | Phase::UpdatingService => TopLevel::Deploying,
            Phase::AwaitingRollout | Phase::Soaking | Phase::RollingBack => TopLevel::HealthGate,
            Phase::Done => TopLevel::Done,
            Phase::RolledBack => TopLevel::RolledBack,
        }
    }

    /// At rest: no attempt in flight (a new one may start from here).
    #[must_use]
    pub fn is_resting(self) -> bool {
        matches!(self, Phase::Idle | Phase::Done | Phase::RolledBack)
    }
}

impl TopLevel {
    /// All top-level states, in flow order.
    pub const ALL: [TopLevel; 7] = [
        TopLevel::Idle,
        TopLevel::Checking,
        TopLevel::Locked,
        TopLevel::Deploying,
        TopLevel::HealthGate,
        TopLevel::Done,
        TopLevel::RolledBack,
    ];

    /// CamelCase name.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            TopLevel::Idle => "Idle",
            TopLevel::Checking => "Checking",
            TopLevel::Locked => "Locked",
            TopLevel::Deploying => "Deploying",
            TopLevel::HealthGate => "HealthGate",
            TopLevel::Done => "Done",
            TopLevel::RolledBack => "RolledBack",
        }
    }

    /// Whether the top-level state has sub-states.
    #[must_use]
    pub fn is_composite(self) -> bool {
        matches!(self, TopLevel::Deploying | TopLevel::HealthGate)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One allowed transition and what triggers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Source.
    pub from: Phase,
    /// Target.
    pub to: Phase,
    /// What makes the machine take it.
    pub trigger: &'static str,
}

const fn edge(from: Phase, to: Phase, trigger: &'static str) -> Edge {
    Edge { from, to, trigger }
}

/// Every transition the machine may take. The machine records a violation (a bug) if it ever
/// takes one that is not listed; the diagrams are drawn from this table.
pub const TRANSITIONS: &[Edge] = &[
    edge(Phase::Idle, Phase::Checking, "eligible"),
    edge(Phase::Done, Phase::Checking, "eligible"),
    edge(Phase::RolledBack, Phase::Checking, "eligible"),
    edge(Phase::Checking, Phase::Locked, "lock acquired"),
    edge(Phase::Checking, Phase::Idle, "lock busy"),
    edge(
        Phase::Locked,
        Phase::RegisteringTaskDefinition,
        "still eligible",
    ),
    edge(Phase::Locked, Phase::Idle, "no longer eligible"),
    edge(
        Phase::Locked,
        Phase::CreatingChangeSet,
        "infrastructure due",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::ExecutingChangeSet,
        "computed, policy allows",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::AwaitingApproval,
        "computed, needs approval",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::CreatingChangeSet,
        "no changes: next stack",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::RegisteringTaskDefinition,
        "no changes: infrastructure ready",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::Done,
        "no changes: infrastructure-only attempt done",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::RolledBack,
        "refused / timeout",
    ),
    edge(
        Phase::CreatingChangeSet,
        Phase::Idle,
        "desired changed / foreign writer / lock lost",
    ),
    edge(
        Phase::AwaitingApproval,
        Phase::ExecutingChangeSet,
        "approved",
    ),
    edge(Phase::AwaitingApproval, Phase::RolledBack, "refused"),
    edge(
        Phase::AwaitingApproval,
        Phase::Idle,
        "desired changed / switched off / lock lost",
    ),
    edge(
        Phase::ExecutingChangeSet,
        Phase::CreatingChangeSet,
        "stack updated: next stack",
    ),
    edge(
        Phase::ExecutingChangeSet,
        Phase::RegisteringTaskDefinition,
        "stack updated: infrastructure ready",
    ),
    edge(
        Phase::ExecutingChangeSet,
        Phase::Done,
        "stack updated: infrastructure-only attempt done",
    ),
    edge(
        Phase::ExecutingChangeSet,
        Phase::RolledBack,
        "stack rolled back / rollback failed",
    ),
    edge(
        Phase::ExecutingChangeSet,
        Phase::Idle,
        "foreign writer / lock lost / service not steady",
    ),
    edge(
        Phase::RegisteringTaskDefinition,
        Phase::UpdatingService,
        "registered",
    ),
    edge(
        Phase::RegisteringTaskDefinition,
        Phase::RolledBack,
        "register refused",
    ),
    edge(
        Phase::RegisteringTaskDefinition,
        Phase::Idle,
        "foreign writer / lock lost",
    ),
    edge(
        Phase::UpdatingService,
        Phase::AwaitingRollout,
        "service updated",
    ),
    edge(Phase::UpdatingService, Phase::RolledBack, "update refused"),
    edge(
        Phase::UpdatingService,
        Phase::RollingBack,
        "update not confirmed in time",
    ),
    edge(
        Phase::UpdatingService,
        Phase::Idle,
        "foreign writer / lock lost",
    ),
    edge(Phase::AwaitingRollout, Phase::Soaking, "healthy"),
    edge(
        Phase::AwaitingRollout,
        Phase::RollingBack,
        "failed / unhealthy / timeout",
    ),
    edge(
        Phase::AwaitingRollout,
        Phase::Idle,
        "foreign writer / lock lost",
    ),
    edge(Phase::Soaking, Phase::Done, "soak passed"),
    edge(
        Phase::Soaking,
        Phase::AwaitingRollout,
        "not healthy any more",
    ),
    edge(Phase::Soaking, Phase::RollingBack, "failed / unhealthy"),
    edge(Phase::Soaking, Phase::Idle, "foreign writer / lock lost"),
    edge(
        Phase::RollingBack,
        Phase::RolledBack,
        "previous revision restored",
    ),
    edge(Phase::RollingBack, Phase::Idle, "lock lost"),
];

/// Whether the table allows `from → to`.
#[must_use]
pub fn allowed(from: Phase, to: Phase) -> bool {
    TRANSITIONS.iter().any(|e| e.from == from && e.to == to)
}

/// The top-level edges implied by the table (edges inside one top-level state omitted).
#[must_use]
pub fn top_level_edges() -> Vec<(TopLevel, TopLevel)> {
    let mut edges: Vec<(TopLevel, TopLevel)> = TRANSITIONS
        .iter()
        .map(|e| (e.from.top_level(), e.to.top_level()))
        .filter(|(a, b)| a != b)
        .collect();
    edges.sort();
    edges.dedup();
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_every_phase_is_reachable() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
            if phase != Phase::Idle {
                assert!(
                    TRANSITIONS.iter().any(|e| e.to == phase),
                    "{phase} is unreachable"
                );
            }
            assert!(
                TRANSITIONS.iter().any(|e| e.from == phase),
                "{phase} is a dead end"
            );
        }
    }

    #[test]
    fn the_cards_top_level_flow_is_in_the_table() {
        let edges = top_level_edges();
        for pair in [
            (TopLevel::Idle, TopLevel::Checking),
            (TopLevel::Checking, TopLevel::Locked),
            (TopLevel::Locked, TopLevel::Deploying),
            (TopLevel::Deploying, TopLevel::HealthGate),
            (TopLevel::HealthGate, TopLevel::Done),
            (TopLevel::HealthGate, TopLevel::RolledBack),
        ] {
            assert!(edges.contains(&pair), "{pair:?} missing");
        }
    }
}
