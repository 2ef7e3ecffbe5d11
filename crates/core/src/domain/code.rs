//! The controller's reason codes: one vocabulary for the codes of an attempt's failure, of a
//! note shown on-call, of a bad value and of an unreadable record. A code is a value matched
//! as a value; its kebab-case text (stable, documented in the README) is written only where it
//! leaves the process (records, `status`, logs, spans, metrics).

use std::fmt;

use super::eligibility::Rule;

/// Defines the codes with their text; `Ineligible` carries a rule (its name is the code), and
/// `Other` keeps a code this version does not know (a record written by a newer controller).
macro_rules! codes {
    ($($(#[$meta:meta])* $variant:ident = $text:literal,)*) => {
        /// A reason code.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Code {
            $(
                $(#[$meta])*
                #[doc = concat!("`", $text, "`")]
                $variant,
            )*
            /// An eligibility rule did not pass: the rule's name.
            Ineligible(Rule),
            /// A code this version does not know, as it was written.
            Other(String),
        }

        impl Code {
            /// Every code without data, in order.
            pub const PLAIN: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $(Code::$variant => $text,)*
                    Code::Ineligible(rule) => rule.name(),
                    Code::Other(text) => text,
                }
            }

            /// Reads the stable text back (a record, a test); never fails.
            #[must_use]
            pub fn parse(text: &str) -> Code {
                match text {
                    $($text => Code::$variant,)*
                    other => Rule::from_name(other)
                        .map_or_else(|| Code::Other(other.to_owned()), Code::Ineligible),
                }
            }
        }
    };
}

codes! {
    // What failed an attempt (RolledBack; through RollingBack once the service was changed).
    /// The ECS deployment circuit breaker failed the rollout.
    CircuitBreaker = "circuit-breaker",
    /// The rollout was not healthy before its deadline.
    HealthGateTimeout = "health-gate-timeout",
    /// Tasks of the new revision failed or were unhealthy, as many as the fail-fast count.
    UnhealthyTasks = "unhealthy-tasks",
    /// The task definition could not be registered before the deadline (the service was not
    /// changed).
    RegisterUnconfirmed = "register-unconfirmed",
    /// The service update was not confirmed before the deadline (the baseline is restored).
    UpdateUnconfirmed = "update-unconfirmed",
    /// `RegisterTaskDefinition` was refused.
    RegisterRefused = "register-refused",
    /// `UpdateService` was refused.
    UpdateRefused = "update-refused",
    /// `CreateChangeSet` was refused.
    ChangeSetRefused = "change-set-refused",
    /// `ExecuteChangeSet` was refused.
    ExecuteRefused = "execute-refused",
    /// CloudFormation failed to create the change set.
    ChangeSetFailed = "change-set-failed",
    /// The change set was not computed before its deadline.
    ChangeSetTimeout = "change-set-timeout",
    /// The stack update failed and CloudFormation rolled it back.
    StackRolledBack = "stack-rolled-back",
    /// The stack update failed and its rollback failed too: a human is needed.
    StackRollbackFailed = "stack-rollback-failed",
    /// The stacks do not reach the infrastructure version the release asks for.
    InfraVersionNotReached = "infra-version-not-reached",
    // What stopped an attempt (back to Idle, the lease released).
    /// Someone else changed the service during the attempt: its target is quarantined (held)
    /// until the desired state changes, so the next pass does not fight the writer.
    ForeignWriter = "foreign-writer",
    /// The desired state changed during the attempt.
    DesiredChanged = "desired-changed",
    /// No longer eligible under the lock, no rule named.
    NotEligible = "not-eligible",
    // Notes at rest or during an attempt.
    /// Another controller holds the lock.
    LockBusy = "lock-busy",
    /// The lock could not be taken.
    LockFailed = "lock-failed",
    /// The lock was lost during the attempt.
    LockLost = "lock-lost",
    /// A call got no answer yet; it is retried.
    Retrying = "retrying",
    /// AWS could not be read.
    AwsUnavailable = "aws-unavailable",
    /// The `desired/*` parameters changed lately; waiting for them to settle.
    Settling = "settling",
    /// Someone else's deployment is in progress.
    ServiceNotSteady = "service-not-steady",
    /// A stack is updating.
    StackBusy = "stack-busy",
    /// A change set waits for `runner-updater approve`.
    ApprovalNeeded = "approval-needed",
    /// A stack update runs longer than `stack_update_timeout_secs`; the controller keeps waiting.
    StackUpdateSlow = "stack-update-slow",
    // What was observed and cannot be used.
    /// The ECS service does not exist.
    ServiceNotFound = "service-not-found",
    /// The task definition has no such container.
    ContainerNotFound = "container-not-found",
    /// The running image cannot be parsed.
    BadRunningImage = "bad-running-image",
    /// A configured stack does not exist.
    StackNotFound = "stack-not-found",
    /// A stack is in a failed state.
    StackFailed = "stack-failed",
    // A desired value that is refused.
    /// No desired version.
    MissingVersion = "missing-version",
    /// A value is longer than allowed.
    ValueTooLong = "value-too-long",
    /// A version does not parse.
    InvalidVersion = "invalid-version",
    /// An image does not parse.
    InvalidImage = "invalid-image",
    /// An image is outside the allowed repositories.
    ImageNotAllowed = "image-not-allowed",
    /// A channel is not one the controller knows.
    UnknownChannel = "unknown-channel",
    /// A pre-release on a channel that does not allow them.
    PreReleaseNotAllowed = "pre-release-not-allowed",
    /// `auto-update` is not `true` or `false`.
    InvalidAutoUpdate = "invalid-auto-update",
    /// The infrastructure version does not parse.
    InvalidInfraVersion = "invalid-infra-version",
    /// A stack that is not configured.
    UnknownStack = "unknown-stack",
    /// A template URL that is not an https URL.
    InvalidTemplateUrl = "invalid-template-url",
    /// Stack parameters that are not a JSON object of scalar values.
    InvalidStackParameters = "invalid-stack-parameters",
    /// A template without an infrastructure version.
    TemplateWithoutInfraVersion = "template-without-infra-version",
    /// An approval value that does not parse.
    InvalidApproval = "invalid-approval",
    /// A release document that does not validate.
    InvalidRelease = "invalid-release",
    /// An update window that does not parse, names no time zone known, or lasts no time.
    InvalidUpdateWindow = "invalid-update-window",
    /// Ops retried a quarantined version (`retry`): the intent acknowledged, its marks lifted.
    Retried = "retried",
    /// The runner follows its channel's release and waits for its wave (or the release halted,
    /// or cannot be acted on).
    AwaitingWave = "awaiting-wave",
    // A record that cannot be used.
    /// Not JSON, or not a record.
    RecordCorrupt = "record-corrupt",
    /// Written by a newer controller.
    RecordNewerSchema = "record-newer-schema",
    /// JSON, but inconsistent.
    RecordInvalid = "record-invalid",
    /// Too large to store.
    RecordTooLarge = "record-too-large",
    /// No record yet (`status` of a runner the controller has not written).
    NoRecord = "no-record",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Rule> for Code {
    fn from(rule: Rule) -> Code {
        Code::Ineligible(rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_texts_are_unique_kebab_case() {
        let mut seen = std::collections::BTreeSet::new();
        let all = Code::PLAIN
            .iter()
            .cloned()
            .chain(Rule::ALL.into_iter().map(Code::from));
        for code in all {
            let text = code.as_str().to_owned();
            assert_eq!(Code::parse(&text), code, "{text}");
            assert!(seen.insert(text.clone()), "{text} twice");
            assert!(
                text.split('-')
                    .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())),
                "{text}"
            );
        }
        assert_eq!(
            Code::parse("a-code-from-the-future"),
            Code::Other("a-code-from-the-future".to_owned())
        );
    }
}
