//! Infrastructure: which stacks an attempt updates and how, how change sets are named, reviewed
//! and judged, and how a stack's status and events read. Pure: AWS's answers come in as values.
//!
//! # The model
//! - Every stack of a runner carries the tag [`INFRA_VERSION_TAG`] (falling back to the
//!   [`INFRA_VERSION_OUTPUT`] output). A stack is **due** when ops want an infrastructure version
//!   it does not carry (its template is then replaced from `desired/stacks/<stack>/template-url`,
//!   which must be set), or when a parameter named in `desired/stacks/<stack>/parameters`
//!   differs from the stack's current value (a parameters-only update keeps the template).
//! - Stacks are updated one at a time, in the configured order.
//! - Change sets and execution tokens are named from the attempt id and the stack, so a
//!   resumed attempt finds its change set instead of creating another, and a repeated execution
//!   is recognised by CloudFormation as the same request.

use std::collections::BTreeMap;
use std::fmt::Write;

pub use super::cfn_status::{
    ChangeSetStatus, Execution, ResourceStatus, StackProgress, StackStatus,
};
use super::desired::DesiredState;
use super::observed::{StackState, INFRA_VERSION_OUTPUT, INFRA_VERSION_TAG};
use super::Millis;

/// What CloudFormation shows instead of a `NoEcho` parameter's value.
pub const MASKED_VALUE: &str = "****";
/// Names listed per kind in a review (the rest are counted).
const REVIEW_NAMES_MAX: usize = 8;

/// When change sets are executed without a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalPolicy {
    /// Every change set waits for `runner-updater approve`.
    Never,
    /// Change sets without replacements and without IAM changes run; others wait.
    #[default]
    Safe,
    /// Every change set runs.
    Always,
}

impl ApprovalPolicy {
    /// Parses `never` / `safe` / `always`.
    #[must_use]
    pub fn parse(text: &str) -> Option<ApprovalPolicy> {
        match text {
            "never" => Some(ApprovalPolicy::Never),
            "safe" => Some(ApprovalPolicy::Safe),
            "always" => Some(ApprovalPolicy::Always),
            _ => None,
        }
    }

    /// The configuration name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ApprovalPolicy::Never => "never",
            ApprovalPolicy::Safe => "safe",
            ApprovalPolicy::Always => "always",
        }
    }
}

/// How one due stack is to be updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackPlan {
    /// The stack.
    pub stack: String,
    /// The new template; `None` keeps the current one (`UsePreviousTemplate`).
    pub template_url: Option<String>,
    /// Parameter overrides; every other parameter keeps its previous value.
    pub parameters: BTreeMap<String, String>,
    /// Overrides whose value differs from the stack's.
    pub changed_parameters: Vec<String>,
    /// The stack's infrastructure version now.
    pub from_version: Option<String>,
    /// The version it is tagged with by the update.
    pub to_version: Option<String>,
    /// The full tag set for the change set: the stack's tags and the version (CloudFormation
    /// replaces a stack's tags with the change set's, and propagates them to the resources, so
    /// nothing per attempt is tagged: an unchanged version changes no tag).
    pub tags: BTreeMap<String, String>,
}

impl StackPlan {
    /// Whether the update brings the stack to another infrastructure version.
    #[must_use]
    pub fn changes_version(&self) -> bool {
        self.to_version.is_some() && self.to_version != self.from_version
    }

    /// One line for status and logs.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(to) = &self.to_version {
            parts.push(format!(
                "{} → {to}",
                self.from_version.as_deref().unwrap_or("unknown")
            ));
        }
        match &self.template_url {
            Some(_) => parts.push("new template".to_owned()),
            None => parts.push("previous template".to_owned()),
        }
        if !self.changed_parameters.is_empty() {
            parts.push(format!("parameters {}", self.changed_parameters.join(", ")));
        }
        format!("{} ({})", self.stack, parts.join(", "))
    }
}

/// A stack that cannot reach the required version: no template to bring it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfraGap {
    /// The stack.
    pub stack: String,
    /// Its version.
    pub have: Option<String>,
    /// The required version.
    pub wanted: String,
}

impl InfraGap {
    /// Words for on-call.
    #[must_use]
    pub fn reason(&self) -> String {
        format!(
            "stack {} is at infrastructure {} and {} is required, but desired/stacks/{}/template-url is not set",
            self.stack,
            self.have.as_deref().unwrap_or("unknown"),
            self.wanted,
            self.stack
        )
    }
}

/// The infrastructure version a stack carries.
#[must_use]
pub fn stack_version(stack: &StackState) -> Option<&str> {
    stack
        .tags
        .get(INFRA_VERSION_TAG)
        .or_else(|| stack.outputs.get(INFRA_VERSION_OUTPUT))
        .map(String::as_str)
}

/// The due stacks, in order, skipping those already updated in this attempt (`done`).
///
/// # Errors
/// An [`InfraGap`] when a stack lacks the required version and has no template to reach it.
pub fn plan(
    desired: &DesiredState,
    stacks: &[StackState],
    done: &[String],
) -> Result<Vec<StackPlan>, InfraGap> {
    let mut plans = Vec::new();
    for stack in stacks {
        if done.contains(&stack.name) {
            continue;
        }
        let wanted = desired.stacks.get(&stack.name).cloned().unwrap_or_default();
        let have = stack_version(stack).map(str::to_owned);
        let behind = desired
            .infra_version
            .as_ref()
            .is_some_and(|v| have.as_ref() != Some(v));
        if behind && wanted.template_url.is_none() {
            return Err(InfraGap {
                stack: stack.name.clone(),
                have,
                wanted: desired.infra_version.clone().unwrap_or_default(),
            });
        }
        // A NoEcho parameter reads as "****": it cannot be compared, so it is applied only
        // together with another change.
        let changed_parameters: Vec<String> = wanted
            .parameters
            .iter()
            .filter(|(key, value)| {
                stack
                    .parameters
                    .get(*key)
                    .is_none_or(|current| current != *value && current != MASKED_VALUE)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if !behind && changed_parameters.is_empty() {
            continue;
        }
        let mut tags = stack.tags.clone();
        if let Some(version) = &desired.infra_version {
            tags.insert(INFRA_VERSION_TAG.to_owned(), version.clone());
        }
        plans.push(StackPlan {
            stack: stack.name.clone(),
            template_url: if behind { wanted.template_url } else { None },
            parameters: wanted.parameters,
            changed_parameters,
            from_version: have,
            to_version: desired.infra_version.clone(),
            tags,
        });
    }
    Ok(plans)
}

/// Whether every stack carries the required infrastructure version (rule 3 after the update).
///
/// # Errors
/// The first stack that does not.
pub fn at_version(desired: &DesiredState, stacks: &[StackState]) -> Result<(), InfraGap> {
    let Some(wanted) = &desired.infra_version else {
        return Ok(());
    };
    match stacks.iter().find(|s| stack_version(s) != Some(wanted)) {
        None => Ok(()),
        Some(stack) => Err(InfraGap {
            stack: stack.name.clone(),
            have: stack_version(stack).map(str::to_owned),
            wanted: wanted.clone(),
        }),
    }
}

/// A short fingerprint of the desired infrastructure (`None` when none is desired). An attempt
/// keeps the fingerprint it started with: a change means ops changed their mind mid-attempt.
/// FNV-1a over a canonical text, so it is stable across controller versions.
#[must_use]
pub fn fingerprint(desired: &DesiredState) -> Option<String> {
    if desired.infra_version.is_none() && desired.stacks.is_empty() {
        return None;
    }
    let mut text = format!("v={}\n", desired.infra_version.as_deref().unwrap_or(""));
    for (name, stack) in &desired.stacks {
        let _ = write!(
            text,
            "s={name}\nt={}\n",
            stack.template_url.as_deref().unwrap_or("")
        );
        for (key, value) in &stack.parameters {
            let _ = writeln!(text, "p={key}={value}");
        }
    }
    Some(format!(
        "{:016x}",
        super::fnv1a(super::FNV_OFFSET, text.as_bytes())
    ))
}

/// CloudFormation names: `[A-Za-z][-A-Za-z0-9]*`, at most 128 characters. Longer names keep a
/// hash of the whole so that two stacks never share one.
fn cfn_name(prefix: &str, attempt_id: &str, stack: &str) -> String {
    let raw = format!("{prefix}-{attempt_id}-{stack}");
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if clean.len() <= 128 {
        clean
    } else {
        format!(
            "{}-{:016x}",
            &clean[..111],
            super::fnv1a(super::FNV_OFFSET, raw.as_bytes())
        )
    }
}

/// The change set of `stack` in an attempt.
#[must_use]
pub fn change_set_name(attempt_id: &str, stack: &str) -> String {
    cfn_name("ru", attempt_id, stack)
}

/// The `ClientRequestToken` of the execution of that change set.
#[must_use]
pub fn execution_token(attempt_id: &str, stack: &str) -> String {
    cfn_name("ru-exec", attempt_id, stack)
}

/// One resource change of a change set, as `DescribeChangeSet` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChange {
    /// `Add`, `Modify`, `Remove`, `Import`, `Dynamic`.
    pub action: String,
    /// Logical id.
    pub logical_id: String,
    /// `AWS::IAM::Role`, …
    pub resource_type: String,
    /// `True`, `False`, `Conditional`, or empty.
    pub replacement: String,
}

/// A change set as `DescribeChangeSet` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// Its ARN.
    pub id: String,
    /// Its creation status.
    pub status: ChangeSetStatus,
    /// Why, when it failed.
    pub status_reason: Option<String>,
    /// Its execution status.
    pub execution_status: Execution,
    /// Resource changes.
    pub changes: Vec<ResourceChange>,
    /// The parameters the stack will have.
    pub parameters: BTreeMap<String, String>,
}

/// What the creation of a change set came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Still being computed.
    Pending,
    /// Ready to review and execute.
    Ready,
    /// CloudFormation found nothing to change.
    NoChanges,
    /// Refused (bad template, bad parameter, …).
    Failed,
}

impl ChangeSet {
    /// Reads the creation status.
    #[must_use]
    pub fn creation(&self) -> Creation {
        match self.status {
            ChangeSetStatus::CreateComplete => Creation::Ready,
            ChangeSetStatus::Failed => {
                let reason = self.status_reason.as_deref().unwrap_or_default();
                if reason.contains("didn't contain changes")
                    || reason.contains("No updates are to be performed")
                {
                    Creation::NoChanges
                } else {
                    Creation::Failed
                }
            }
            ChangeSetStatus::DeleteComplete | ChangeSetStatus::DeleteFailed => Creation::Failed,
            _ => Creation::Pending,
        }
    }
}

/// A change set summarised for a human: what it adds, changes and removes, what it replaces,
/// which IAM resources it touches, which parameters change, and warnings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Review {
    /// Resources added.
    pub added: u32,
    /// Resources modified.
    pub modified: u32,
    /// Resources removed.
    pub removed: u32,
    /// Resources replaced (or possibly replaced), by logical id.
    pub replaced: Vec<String>,
    /// IAM resources touched, by logical id.
    pub iam: Vec<String>,
    /// Parameters whose value changes.
    pub parameters: Vec<String>,
    /// Things a human should know.
    pub warnings: Vec<String>,
}

impl Review {
    /// Safe: no replacement, no IAM or resource-policy change, and no removal (a removal is a
    /// replacement without a successor).
    #[must_use]
    pub fn is_safe(&self) -> bool {
        self.replaced.is_empty() && self.iam.is_empty() && self.removed == 0
    }

    /// One line: `+1 ~2 -0; replaces Db; IAM TaskRole; parameters Subnets; warning: …`.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut text = format!("+{} ~{} -{}", self.added, self.modified, self.removed);
        if !self.replaced.is_empty() {
            let _ = write!(text, "; replaces {}", self.replaced.join(", "));
        }
        if !self.iam.is_empty() {
            let _ = write!(text, "; IAM {}", self.iam.join(", "));
        }
        if !self.parameters.is_empty() {
            let _ = write!(text, "; parameters {}", self.parameters.join(", "));
        }
        for warning in &self.warnings {
            let _ = write!(text, "; warning: {warning}");
        }
        text
    }
}

/// IAM resources, resource policies (`AWS::S3::BucketPolicy`, `AWS::SQS::QueuePolicy`, …) and
/// Lambda permissions: what changes who may do what.
fn touches_access(resource_type: &str) -> bool {
    resource_type.starts_with("AWS::IAM::")
        || resource_type.ends_with("Policy")
        || resource_type == "AWS::Lambda::Permission"
}

/// At most [`REVIEW_NAMES_MAX`] names of at most 64 characters, then a count.
fn capped(mut names: Vec<String>) -> Vec<String> {
    for name in &mut names {
        if name.len() > 64 {
            let mut end = 63;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
            name.push('…');
        }
    }
    if names.len() > REVIEW_NAMES_MAX {
        let more = names.len() - REVIEW_NAMES_MAX;
        names.truncate(REVIEW_NAMES_MAX);
        names.push(format!("+{more} more"));
    }
    names
}

/// Reviews a change set against the stack's current parameters.
#[must_use]
pub fn review(change_set: &ChangeSet, before: &BTreeMap<String, String>) -> Review {
    let count = |action: &str| {
        u32::try_from(
            change_set
                .changes
                .iter()
                .filter(|c| c.action == action)
                .count(),
        )
        .unwrap_or(u32::MAX)
    };
    let names = |keep: &dyn Fn(&ResourceChange) -> bool| {
        capped(
            change_set
                .changes
                .iter()
                .filter(|c| keep(c))
                .map(|c| c.logical_id.clone())
                .collect(),
        )
    };
    let parameters: Vec<String> = change_set
        .parameters
        .iter()
        .filter(|(key, value)| {
            before
                .get(*key)
                .is_none_or(|old| old != *value && old != MASKED_VALUE && *value != MASKED_VALUE)
        })
        .map(|(key, _)| key.clone())
        .collect();
    let mut warnings = Vec::new();
    let lower: Vec<String> = parameters.iter().map(|p| p.to_ascii_lowercase()).collect();
    let zones = lower
        .iter()
        .any(|p| p.contains("availabilityzone") || p == "azs" || p.ends_with("zones"));
    let subnets = lower.iter().any(|p| p.contains("subnet"));
    if zones && !subnets {
        warnings.push(
            "the availability-zone parameter changes but no subnet parameter does: availability follows the subnets the instances run in, so this alone changes nothing"
                .to_owned(),
        );
    }
    Review {
        added: count("Add"),
        modified: count("Modify") + count("Dynamic"),
        removed: count("Remove"),
        replaced: names(&|c| c.replacement == "True" || c.replacement == "Conditional"),
        iam: names(&|c| touches_access(&c.resource_type)),
        parameters: capped(parameters),
        warnings,
    }
}

/// Whether a computed change set changes nothing worth an update: no resource changes and no
/// new infrastructure version to tag (only the attempt tag, or a parameter no resource reads).
/// It is deleted instead of executed, like one CloudFormation refused as "didn't contain
/// changes".
#[must_use]
pub fn changes_nothing(change_set: &ChangeSet, plan: &StackPlan) -> bool {
    change_set.changes.is_empty() && !plan.changes_version()
}

/// Whether the change set waits for `runner-updater approve` under `policy`.
#[must_use]
pub fn needs_approval(policy: ApprovalPolicy, review: &Review) -> bool {
    match policy {
        ApprovalPolicy::Never => true,
        ApprovalPolicy::Safe => !review.is_safe(),
        ApprovalPolicy::Always => false,
    }
}

/// The capabilities the controller acknowledges on a change set: IAM resources, named or not.
pub const ACKNOWLEDGED_CAPABILITIES: [&str; 2] = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"];

/// The first capability a template needs that the controller does not acknowledge (macros:
/// `CAPABILITY_AUTO_EXPAND`, or anything newer), if any: such a template is applied by hand.
#[must_use]
pub fn unacknowledged_capability(capabilities: &[String]) -> Option<&str> {
    capabilities
        .iter()
        .map(String::as_str)
        .find(|c| !ACKNOWLEDGED_CAPABILITIES.contains(c))
}

/// The parameters a change set keeps at their current value: the template's parameters the
/// stack has now and the plan does not set.
#[must_use]
pub fn kept_parameters(
    template_parameters: &[String],
    stack_parameters: &BTreeMap<String, String>,
    planned: &BTreeMap<String, String>,
) -> Vec<String> {
    template_parameters
        .iter()
        .filter(|p| stack_parameters.contains_key(*p) && !planned.contains_key(*p))
        .cloned()
        .collect()
}

/// What an executed change set's execution status and its stack's progress say together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// Still going (the stack is updating, or CloudFormation has not reported yet:
    /// `EXECUTE_IN_PROGRESS`, `UNAVAILABLE`).
    Pending,
    /// `EXECUTE_COMPLETE` on a complete stack: done.
    Updated,
    /// `EXECUTE_FAILED`, the stack rolled back or needing a human: the stack events say why.
    Failed,
    /// `EXECUTE_FAILED` yet the stack is complete: CloudFormation contradicts itself.
    FailedOnCompleteStack,
    /// `EXECUTE_COMPLETE` yet the stack is rolled back or failed: updated outside the attempt.
    CompletedOnMovedStack,
}

/// Reads a change set's execution status (`None`: not read) beside its stack's progress. An
/// updating stack is always pending, whatever the change set says.
#[must_use]
pub fn execution_outcome(
    execution: Option<Execution>,
    progress: StackProgress,
) -> ExecutionOutcome {
    match (execution, progress) {
        (_, StackProgress::InProgress) => ExecutionOutcome::Pending,
        (Some(Execution::Complete), StackProgress::Complete) => ExecutionOutcome::Updated,
        (Some(Execution::Failed), StackProgress::RolledBack | StackProgress::NeedsHuman) => {
            ExecutionOutcome::Failed
        }
        (Some(Execution::Failed), StackProgress::Complete) => {
            ExecutionOutcome::FailedOnCompleteStack
        }
        (Some(Execution::Complete), _) => ExecutionOutcome::CompletedOnMovedStack,
        _ => ExecutionOutcome::Pending,
    }
}

/// One stack event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    /// Logical id (the stack's own name for stack-level events).
    pub logical_id: String,
    /// Resource type.
    pub resource_type: String,
    /// Its status.
    pub status: ResourceStatus,
    /// Why.
    pub reason: Option<String>,
    /// When.
    pub timestamp: Millis,
    /// The request token of the operation that caused it, when AWS gives it.
    pub token: Option<String>,
}

/// The first resource that failed in the operation with `token` (or, when events carry no
/// token, since `since`), with its reason: the root cause, not the cancellations it caused.
#[must_use]
pub fn first_failure(
    events: &[StackEvent],
    stack: &str,
    token: &str,
    since: Millis,
) -> Option<(String, String)> {
    let any_token = events.iter().any(|e| e.token.is_some());
    events
        .iter()
        .filter(|e| {
            if any_token {
                e.token.as_deref() == Some(token)
            } else {
                e.timestamp >= since
            }
        })
        .filter(|e| e.status.failed() && e.logical_id != stack)
        .min_by_key(|e| e.timestamp)
        .map(|e| {
            (
                format!("{} ({})", e.logical_id, e.resource_type),
                e.reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".to_owned()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_iam_capabilities_are_acknowledged_and_unset_parameters_keep_their_value() {
        let caps = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(unacknowledged_capability(&caps(&[])), None);
        assert_eq!(
            unacknowledged_capability(&caps(&["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])),
            None
        );
        assert_eq!(
            unacknowledged_capability(&caps(&["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"])),
            Some("CAPABILITY_AUTO_EXPAND")
        );
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let template = caps(&["Size", "Owner", "New"]);
        let stack = map(&[("Size", "2"), ("Owner", "ops")]);
        let planned = map(&[("Size", "3")]);
        assert_eq!(kept_parameters(&template, &stack, &planned), ["Owner"]);
    }

    #[test]
    fn a_change_set_execution_is_read_with_its_stack_progress() {
        use ExecutionOutcome as O;
        use StackProgress as P;
        let cases = [
            (Some("EXECUTE_COMPLETE"), P::InProgress, O::Pending),
            (Some("EXECUTE_FAILED"), P::InProgress, O::Pending),
            (Some("EXECUTE_COMPLETE"), P::Complete, O::Updated),
            (Some("EXECUTE_FAILED"), P::RolledBack, O::Failed),
            (Some("EXECUTE_FAILED"), P::NeedsHuman, O::Failed),
            (
                Some("EXECUTE_FAILED"),
                P::Complete,
                O::FailedOnCompleteStack,
            ),
            (
                Some("EXECUTE_COMPLETE"),
                P::RolledBack,
                O::CompletedOnMovedStack,
            ),
            (
                Some("EXECUTE_COMPLETE"),
                P::NeedsHuman,
                O::CompletedOnMovedStack,
            ),
            (Some("EXECUTE_IN_PROGRESS"), P::Complete, O::Pending),
            (Some("UNAVAILABLE"), P::RolledBack, O::Pending),
            (Some("SOMETHING_NEW"), P::Complete, O::Pending),
            (None, P::Complete, O::Pending),
        ];
        for (execution, progress, outcome) in cases {
            assert_eq!(
                execution_outcome(execution.map(Execution::parse), progress),
                outcome,
                "{execution:?} x {progress:?}"
            );
        }
    }
    use crate::domain::desired::DesiredStack;
    use crate::domain::image::ImageRef;
    use crate::domain::version::Version;

    fn stack(name: &str, version: &str, params: &[(&str, &str)]) -> StackState {
        StackState {
            name: name.to_owned(),
            status: StackStatus::UpdateComplete,
            tags: BTreeMap::from([
                (INFRA_VERSION_TAG.to_owned(), version.to_owned()),
                ("team".to_owned(), "runners".to_owned()),
            ]),
            outputs: BTreeMap::new(),
            parameters: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            last_updated: None,
        }
    }

    type StackRow<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

    fn desired(infra: Option<&str>, stacks: &[StackRow<'_>]) -> DesiredState {
        DesiredState {
            version: Version::parse("2.14.0").unwrap(),
            image: ImageRef::parse("registry.example/runner:2.14.0").unwrap(),
            image_given: true,
            channel: "stable".to_owned(),
            auto_update: true,
            infra_version: infra.map(str::to_owned),
            stacks: stacks
                .iter()
                .map(|(name, url, params)| {
                    (
                        (*name).to_owned(),
                        DesiredStack {
                            template_url: url.map(str::to_owned),
                            parameters: params
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                                .collect(),
                        },
                    )
                })
                .collect(),
            approved_change_set: None,
            update_windows: None,
            source: crate::domain::desired::DesiredSource::Parameters,
            ignored: Vec::new(),
        }
    }

    #[test]
    fn stacks_behind_the_version_are_due_in_order_with_merged_tags() {
        let stacks = [stack("iam", "4", &[]), stack("main", "4", &[("Size", "2")])];
        let want = desired(
            Some("5"),
            &[
                ("iam", Some("https://b.s3.amazonaws.com/iam-5.json"), &[]),
                (
                    "main",
                    Some("https://b.s3.amazonaws.com/main-5.json"),
                    &[("Size", "2")],
                ),
            ],
        );
        let due = plan(&want, &stacks, &[]).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].stack, "iam");
        assert_eq!(due[1].changed_parameters, Vec::<String>::new());
        assert_eq!(due[0].tags.get(INFRA_VERSION_TAG).unwrap(), "5");
        assert_eq!(
            due[0].tags.len(),
            2,
            "no per-attempt tag: {:?}",
            due[0].tags
        );
        assert_eq!(due[0].tags.get("team").unwrap(), "runners", "tags kept");
        let after_iam = plan(&want, &stacks, &["iam".to_owned()]).unwrap();
        assert_eq!(after_iam.len(), 1);
        assert_eq!(after_iam[0].stack, "main");
    }

    #[test]
    fn parameters_only_updates_keep_the_template_and_masked_values_never_loop() {
        let stacks = [stack(
            "main",
            "5",
            &[("Subnets", "a,b"), ("Secret", MASKED_VALUE)],
        )];
        let want = desired(
            Some("5"),
            &[(
                "main",
                Some("https://b.s3.amazonaws.com/main-5.json"),
                &[("Subnets", "a,b,c"), ("Secret", "x")],
            )],
        );
        let due = plan(&want, &stacks, &[]).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].template_url, None, "version reached: template kept");
        assert_eq!(due[0].changed_parameters, vec!["Subnets".to_owned()]);
        let settled = desired(
            Some("5"),
            &[("main", None, &[("Subnets", "a,b"), ("Secret", "x")])],
        );
        assert!(plan(&settled, &stacks, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_stack_behind_without_a_template_is_a_gap() {
        let stacks = [stack("iam", "4", &[]), stack("main", "5", &[])];
        let want = desired(Some("5"), &[]);
        let gap = plan(&want, &stacks, &[]).unwrap_err();
        assert_eq!(gap.stack, "iam");
        assert!(gap.reason().contains("desired/stacks/iam/template-url"));
        assert!(at_version(&want, &stacks).is_err());
        assert!(at_version(&desired(Some("4"), &[]), &stacks[..1]).is_ok());
    }

    #[test]
    fn fingerprints_follow_every_infrastructure_value() {
        let a = desired(Some("5"), &[("main", None, &[("Size", "2")])]);
        let b = desired(Some("5"), &[("main", None, &[("Size", "3")])]);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_eq!(fingerprint(&desired(None, &[])), None);
        assert_eq!(fingerprint(&a).unwrap().len(), 16);
    }

    #[test]
    fn names_are_valid_deterministic_and_distinct() {
        let name = change_set_name("runner-a-3-65f1a2b0", "runner-a-main");
        assert_eq!(name, "ru-runner-a-3-65f1a2b0-runner-a-main");
        let long = "s".repeat(120);
        let (one, two) = (
            change_set_name("a", &format!("{long}1")),
            change_set_name("a", &format!("{long}2")),
        );
        assert!(one.len() <= 128 && two.len() <= 128);
        assert_ne!(one, two);
        assert!(execution_token("a", "b").starts_with("ru-exec-"));
    }

    fn change(action: &str, id: &str, kind: &str, replacement: &str) -> ResourceChange {
        ResourceChange {
            action: action.to_owned(),
            logical_id: id.to_owned(),
            resource_type: kind.to_owned(),
            replacement: replacement.to_owned(),
        }
    }

    #[test]
    fn reviews_count_replacements_iam_parameters_and_warn_on_zones_alone() {
        let set = ChangeSet {
            id: "arn".to_owned(),
            status: ChangeSetStatus::CreateComplete,
            status_reason: None,
            execution_status: Execution::Available,
            changes: vec![
                change("Add", "Queue", "AWS::SQS::Queue", ""),
                change("Modify", "Db", "AWS::RDS::DBInstance", "True"),
                change("Modify", "TaskRole", "AWS::IAM::Role", "False"),
                change("Remove", "Old", "AWS::SNS::Topic", ""),
            ],
            parameters: BTreeMap::from([
                ("AvailabilityZones".to_owned(), "a,b,c".to_owned()),
                ("Size".to_owned(), "2".to_owned()),
            ]),
        };
        let before = BTreeMap::from([
            ("AvailabilityZones".to_owned(), "a,b".to_owned()),
            ("Size".to_owned(), "2".to_owned()),
        ]);
        let review = review(&set, &before);
        assert_eq!((review.added, review.modified, review.removed), (1, 2, 1));
        assert_eq!(review.replaced, vec!["Db".to_owned()]);
        assert_eq!(review.iam, vec!["TaskRole".to_owned()]);
        assert_eq!(review.parameters, vec!["AvailabilityZones".to_owned()]);
        assert_eq!(review.warnings.len(), 1);
        assert!(!review.is_safe());
        assert!(needs_approval(ApprovalPolicy::Safe, &review));
        assert!(!needs_approval(ApprovalPolicy::Always, &review));
        assert!(needs_approval(ApprovalPolicy::Never, &Review::default()));
        assert!(!needs_approval(ApprovalPolicy::Safe, &Review::default()));
        assert!(review
            .summary()
            .starts_with("+1 ~2 -1; replaces Db; IAM TaskRole"));
    }

    #[test]
    fn creation_statuses_read_as_aws_means_them() {
        let mut set = ChangeSet {
            id: String::new(),
            status: ChangeSetStatus::CreatePending,
            status_reason: None,
            execution_status: Execution::Unavailable,
            changes: vec![],
            parameters: BTreeMap::new(),
        };
        assert_eq!(set.creation(), Creation::Pending);
        set.status = ChangeSetStatus::Failed;
        set.status_reason = Some("The submitted information didn't contain changes. Submit different information to create a change set.".to_owned());
        assert_eq!(set.creation(), Creation::NoChanges);
        set.status_reason = Some("Parameters: [Nope] do not exist in the template".to_owned());
        assert_eq!(set.creation(), Creation::Failed);
    }

    #[test]
    fn the_first_failure_of_our_operation_is_the_root_cause() {
        let event = |id: &str, status: &str, reason: &str, at: u64, token: &str| StackEvent {
            logical_id: id.to_owned(),
            resource_type: "AWS::SQS::Queue".to_owned(),
            status: ResourceStatus::parse(status),
            reason: Some(reason.to_owned()),
            timestamp: Millis(at),
            token: Some(token.to_owned()),
        };
        let events = vec![
            event("main", "UPDATE_ROLLBACK_COMPLETE", "", 50, "t2"),
            event(
                "Other",
                "UPDATE_FAILED",
                "Resource update cancelled",
                40,
                "t2",
            ),
            event("Queue", "UPDATE_FAILED", "quota exceeded", 30, "t2"),
            event("Old", "UPDATE_FAILED", "an older failure", 10, "t1"),
        ];
        let (resource, reason) = first_failure(&events, "main", "t2", Millis(0)).unwrap();
        assert_eq!(resource, "Queue (AWS::SQS::Queue)");
        assert_eq!(reason, "quota exceeded");
        assert_eq!(first_failure(&events, "main", "t3", Millis(0)), None);
    }
}
