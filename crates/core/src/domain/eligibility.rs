//! The eligibility rules (CONTRACT.md, "Eligibility": its six, and the update window), each with a
//! name and a human reason.
//!
//! Every rule is always evaluated, so `plan`, `status` and traces show the whole picture even
//! when an early rule already fails.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use super::desired::DesiredState;
use super::image::ImageRef;
use super::infra;
use super::observed::Observed;
use super::version::Version;
use super::window;
use super::Millis;

/// The rules, in the contract's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// 1. The desired version's channel is the controller's channel.
    Channel,
    /// 2. The auto-update switch is on.
    AutoUpdate,
    /// 3. The infrastructure has the version the runner version requires.
    Infrastructure,
    /// 4. The desired version is newer than the running one, or it is the same version with
    ///    another image (a rebuild: a hotfix rebuilt under the same tag, a digest pin).
    NewerVersion,
    /// 5. The desired image differs from the running image.
    DifferentImage,
    /// 6. This version and image have not already failed.
    NotFailed,
    /// 7. The runner's update window is open (or it has none).
    UpdateWindow,
}

impl Rule {
    /// All rules, in order.
    pub const ALL: [Rule; 7] = [
        Rule::Channel,
        Rule::AutoUpdate,
        Rule::Infrastructure,
        Rule::NewerVersion,
        Rule::DifferentImage,
        Rule::NotFailed,
        Rule::UpdateWindow,
    ];

    /// The rule's stable name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Rule::Channel => "channel",
            Rule::AutoUpdate => "auto-update",
            Rule::Infrastructure => "infrastructure",
            Rule::NewerVersion => "newer-version",
            Rule::DifferentImage => "different-image",
            Rule::NotFailed => "not-failed",
            Rule::UpdateWindow => "update-window",
        }
    }

    /// Parses a stable name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|rule| rule.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The rule.
    pub rule: Rule,
    /// Whether it passed.
    pub passed: bool,
    /// Why, in words for on-call (a fixed text borrowed, not allocated: a verdict is kept per
    /// runner, twice, at every size of fleet).
    pub reason: Cow<'static, str>,
}

/// All seven outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// One per rule, in order.
    pub outcomes: Vec<RuleOutcome>,
}

impl Verdict {
    /// Eligible when every rule passed.
    #[must_use]
    pub fn eligible(&self) -> bool {
        self.outcomes.iter().all(|o| o.passed)
    }

    /// The first failing rule, if any.
    #[must_use]
    pub fn first_failure(&self) -> Option<&RuleOutcome> {
        self.outcomes.iter().find(|o| !o.passed)
    }
}

/// A version (and image) that failed, quarantined until the desired state changes or ops retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMark {
    /// The failed version.
    pub version: String,
    /// The failed image.
    pub image: String,
    /// Why it failed.
    pub reason: String,
    /// When.
    pub at: Millis,
    /// Fingerprint of the desired infrastructure of the failed attempt (see
    /// [`infra::fingerprint`]); a change of the desired infrastructure lifts the mark too.
    pub infra: Option<String>,
}

impl FailedMark {
    /// Whether this mark quarantines that target.
    #[must_use]
    pub fn matches(&self, version: &Version, image: &ImageRef, infra: Option<&str>) -> bool {
        self.version == version.to_string()
            && self.image == image.to_string()
            && self.infra.as_deref() == infra
    }
}

/// What an eligible attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// Update the runner (after the due stacks, when there are any).
    Runner,
    /// The runner already runs the desired image: update the due stacks only.
    InfrastructureOnly,
}

/// Whether the verdict starts an attempt, and which. Every rule passing means a runner update;
/// a runner already on the desired image with stacks due means an infrastructure-only attempt
/// (channel, auto-update, infrastructure and not-failed must still pass).
#[must_use]
pub fn attempt_kind(verdict: &Verdict, infra_due: bool) -> Option<AttemptKind> {
    if verdict.eligible() {
        return Some(AttemptKind::Runner);
    }
    let passed = |rule: Rule| verdict.outcomes.iter().any(|o| o.rule == rule && o.passed);
    let same_image = verdict
        .outcomes
        .iter()
        .any(|o| o.rule == Rule::DifferentImage && !o.passed);
    let gates = [
        Rule::Channel,
        Rule::AutoUpdate,
        Rule::Infrastructure,
        Rule::NotFailed,
        Rule::UpdateWindow,
    ];
    (infra_due && same_image && gates.into_iter().all(passed))
        .then_some(AttemptKind::InfrastructureOnly)
}

/// What the rules read.
#[derive(Debug, Clone, Copy)]
pub struct EligibilityInput<'a> {
    /// Desired state.
    pub desired: &'a DesiredState,
    /// Observed state.
    pub observed: &'a Observed,
    /// The controller's channel.
    pub controller_channel: &'a str,
    /// Quarantined versions.
    pub failed: &'a [FailedMark],
    /// Now (the update window's rule).
    pub now: Millis,
}

/// Evaluates every rule, in order.
#[must_use]
pub fn evaluate(input: EligibilityInput<'_>) -> Verdict {
    let EligibilityInput {
        desired,
        observed,
        controller_channel,
        failed,
        now,
    } = input;
    Verdict {
        outcomes: vec![
            channel(desired, controller_channel),
            auto_update(desired),
            infrastructure(desired, observed),
            newer_version(desired, observed),
            different_image(desired, observed),
            not_failed(desired, failed),
            update_window(desired, now),
        ],
    }
}

fn outcome(rule: Rule, passed: bool, reason: impl Into<Cow<'static, str>>) -> RuleOutcome {
    RuleOutcome {
        rule,
        passed,
        reason: reason.into(),
    }
}

/// Rule 1, `channel`: the runner is on the controller's channel.
fn channel(desired: &DesiredState, controller_channel: &str) -> RuleOutcome {
    if desired.channel == controller_channel {
        outcome(
            Rule::Channel,
            true,
            format!("channel {} is the controller's channel", desired.channel),
        )
    } else {
        outcome(
            Rule::Channel,
            false,
            format!(
                "channel {} is not the controller's channel {controller_channel}",
                desired.channel
            ),
        )
    }
}

/// Rule 2, `auto-update`: the runner is not held.
fn auto_update(desired: &DesiredState) -> RuleOutcome {
    if desired.auto_update {
        outcome(Rule::AutoUpdate, true, "auto-update is on")
    } else {
        outcome(
            Rule::AutoUpdate,
            false,
            "auto-update is off: the runner is held where it is",
        )
    }
}

/// Rule 3, `infrastructure`: the stacks can serve the version (or are updated first).
fn infrastructure(desired: &DesiredState, observed: &Observed) -> RuleOutcome {
    match infra::plan(desired, &observed.stacks, &[]) {
        Err(gap) => outcome(
            Rule::Infrastructure,
            false,
            format!(
                "version {} cannot be served: {}",
                desired.version,
                gap.reason()
            ),
        ),
        Ok(due) if !due.is_empty() => outcome(
            Rule::Infrastructure,
            true,
            format!(
                "the infrastructure is updated first: {}",
                due.iter()
                    .map(infra::StackPlan::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        Ok(_) => match &desired.infra_version {
            None => outcome(
                Rule::Infrastructure,
                true,
                "no infrastructure version required",
            ),
            Some(wanted) => outcome(
                Rule::Infrastructure,
                true,
                format!("the infrastructure is at the required version {wanted}"),
            ),
        },
    }
}

/// Rule 4, `newer-version`: the desired version is newer (or a rebuild of the running one).
fn newer_version(desired: &DesiredState, observed: &Observed) -> RuleOutcome {
    match &observed.current_version {
        None => outcome(
            Rule::NewerVersion,
            true,
            format!(
                "the running version is unknown; {} is the target",
                desired.version
            ),
        ),
        Some(current) => match desired.version.compare(current) {
            Some(Ordering::Greater) => outcome(
                Rule::NewerVersion,
                true,
                format!("{} is newer than the running {current}", desired.version),
            ),
            Some(Ordering::Equal) if desired.image != observed.running_image && !desired.image_given => outcome(
                Rule::NewerVersion,
                false,
                format!(
                    "{} is already the running version; its image {} is not the default {}, and no desired image asks for another: not redeployed (set the image to rebuild)",
                    desired.version, observed.running_image, desired.image
                ),
            ),
            Some(Ordering::Equal) if desired.image != observed.running_image => outcome(
                Rule::NewerVersion,
                true,
                format!(
                    "{} is the running version with another image: a rebuild ({} replaces {})",
                    desired.version, desired.image, observed.running_image
                ),
            ),
            Some(Ordering::Equal) => outcome(
                Rule::NewerVersion,
                false,
                format!(
                    "{} is already the running version, with the desired image",
                    desired.version
                ),
            ),
            Some(Ordering::Less) => outcome(
                Rule::NewerVersion,
                false,
                format!(
                    "{} is older than the running {current}: downgrades are never automatic",
                    desired.version
                ),
            ),
            None => outcome(
                Rule::NewerVersion,
                false,
                format!(
                    "{} ({}) cannot be compared with the running {current} ({})",
                    desired.version,
                    desired.version.form(),
                    current.form()
                ),
            ),
        },
    }
}

/// Rule 5, `different-image`: the desired image is not the running one.
fn different_image(desired: &DesiredState, observed: &Observed) -> RuleOutcome {
    if desired.image == observed.running_image {
        outcome(
            Rule::DifferentImage,
            false,
            format!("{} is already the running image", desired.image),
        )
    } else {
        outcome(
            Rule::DifferentImage,
            true,
            format!(
                "{} differs from the running {}",
                desired.image, observed.running_image
            ),
        )
    }
}

/// Rule 6, `not-failed`: the version and image are not quarantined.
fn not_failed(desired: &DesiredState, failed: &[FailedMark]) -> RuleOutcome {
    let fingerprint = infra::fingerprint(desired);
    match failed
        .iter()
        .find(|mark| mark.matches(&desired.version, &desired.image, fingerprint.as_deref()))
    {
        Some(mark) => outcome(
            Rule::NotFailed,
            false,
            format!(
                "{} ({}) is quarantined: {}; change the desired version or image, or `runner-updater retry RUNNER {}` to try it once more",
                mark.version, mark.image, mark.reason, mark.version
            ),
        ),
        None => outcome(
            Rule::NotFailed,
            true,
            "this version has not failed before",
        ),
    }
}

/// Rule 7, `update-window`: an update starts only inside the runner's update window.
fn update_window(desired: &DesiredState, now: Millis) -> RuleOutcome {
    match &desired.update_windows {
        None => outcome(
            Rule::UpdateWindow,
            true,
            "no update window: updates may start at any time",
        ),
        Some(windows) => outcome(
            Rule::UpdateWindow,
            windows.is_open(now),
            window::describe(windows, now),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::observed::ServiceState;
    use std::collections::BTreeMap;

    fn desired() -> DesiredState {
        DesiredState {
            version: Version::parse("2.14.0").unwrap(),
            image: ImageRef::parse("registry.example/runner:2.14.0").unwrap(),
            image_given: true,
            channel: "stable".to_owned(),
            auto_update: true,
            infra_version: None,
            stacks: BTreeMap::new(),
            approved_change_set: None,
            update_windows: None,
            source: crate::domain::desired::DesiredSource::Parameters,
            ignored: Vec::new(),
        }
    }

    fn main_stack(version: Option<&str>) -> crate::domain::observed::StackState {
        crate::domain::observed::StackState {
            name: "main".to_owned(),
            status: crate::domain::infra::StackStatus::UpdateComplete,
            tags: version
                .map(|v| {
                    (
                        crate::domain::observed::INFRA_VERSION_TAG.to_owned(),
                        v.to_owned(),
                    )
                })
                .into_iter()
                .collect(),
            outputs: BTreeMap::new(),
            parameters: BTreeMap::new(),
            last_updated: None,
        }
    }

    fn observed() -> Observed {
        Observed {
            service: ServiceState {
                cluster: "c".to_owned(),
                service: "s".to_owned(),
                task_definition_arn: "td:1".to_owned(),
                deployments: vec![],
                tasks: None,
                current_service_deployment: None,
            },
            running_image: ImageRef::parse("registry.example/runner:2.13.0").unwrap(),
            current_version: Some(Version::parse("2.13.0").unwrap()),
            has_health_check: true,
            health_gated_by_ecs: true,
            stacks: vec![main_stack(Some("7"))],
        }
    }

    /// One row: a change to the eligible baseline, and the single rule it must fail.
    type Row = (
        &'static str,
        fn(&mut DesiredState, &mut Observed, &mut Vec<FailedMark>),
        Option<Rule>,
    );

    /// Each rule failing on its own (and the baseline passing every rule).
    const RULE_ROWS: &[Row] = &[
        ("baseline is eligible", |_, _, _| {}, None),
        (
            "other channel",
            |d, _, _| d.channel = "beta".to_owned(),
            Some(Rule::Channel),
        ),
        (
            "auto-update off",
            |d, _, _| d.auto_update = false,
            Some(Rule::AutoUpdate),
        ),
        (
            "infra matches",
            |d, _, _| d.infra_version = Some("7".to_owned()),
            None,
        ),
        (
            "infra differs",
            |d, _, _| d.infra_version = Some("8".to_owned()),
            Some(Rule::Infrastructure),
        ),
        (
            "infra unknown",
            |d, o, _| {
                d.infra_version = Some("8".to_owned());
                o.stacks = vec![main_stack(None)];
            },
            Some(Rule::Infrastructure),
        ),
        (
            "infra differs, a template brings it there",
            |d, _, _| {
                d.infra_version = Some("8".to_owned());
                d.stacks.insert(
                    "main".to_owned(),
                    crate::domain::desired::DesiredStack {
                        template_url: Some("https://b.s3.amazonaws.com/m.json".to_owned()),
                        parameters: BTreeMap::new(),
                    },
                );
            },
            None,
        ),
        (
            "same version, other image: a rebuild",
            |_, o, _| o.current_version = Some(Version::parse("2.14.0").unwrap()),
            None,
        ),
        (
            "same version, only the derived default image differs: not a rebuild",
            |d, o, _| {
                o.current_version = Some(Version::parse("2.14.0").unwrap());
                d.image_given = false;
            },
            Some(Rule::NewerVersion),
        ),
        (
            "same version, a digest pin of it",
            |d, o, _| {
                o.current_version = Some(Version::parse("2.14.0").unwrap());
                d.image = ImageRef::parse(&format!(
                    "registry.example/runner@sha256:{}",
                    "a".repeat(64)
                ))
                .unwrap();
            },
            None,
        ),
        (
            "same version, a rebuild that failed before",
            |d, o, f| {
                o.current_version = Some(Version::parse("2.14.0").unwrap());
                d.image = ImageRef::parse("registry.example/runner:2.14.0-hotfix").unwrap();
                f.push(FailedMark {
                    version: "2.14.0".to_owned(),
                    image: "registry.example/runner:2.14.0-hotfix".to_owned(),
                    reason: "circuit breaker".to_owned(),
                    at: Millis(0),
                    infra: None,
                });
            },
            Some(Rule::NotFailed),
        ),
        (
            "a downgrade with another image",
            |d, o, _| {
                o.current_version = Some(Version::parse("2.15.0").unwrap());
                d.image = ImageRef::parse("registry.example/runner:2.14.0-hotfix").unwrap();
            },
            Some(Rule::NewerVersion),
        ),
        (
            "downgrade",
            |_, o, _| o.current_version = Some(Version::parse("2.15.0").unwrap()),
            Some(Rule::NewerVersion),
        ),
        (
            "forms differ",
            |_, o, _| o.current_version = Some(Version::parse("20250301.1").unwrap()),
            Some(Rule::NewerVersion),
        ),
        (
            "unknown current version",
            |_, o, _| o.current_version = None,
            None,
        ),
        (
            "same image, older tag in version",
            |_, o, _| {
                o.running_image = ImageRef::parse("registry.example/runner:2.14.0").unwrap();
            },
            Some(Rule::DifferentImage),
        ),
        (
            "failed before",
            |_, _, f| {
                f.push(FailedMark {
                    version: "2.14.0".to_owned(),
                    image: "registry.example/runner:2.14.0".to_owned(),
                    reason: "circuit breaker".to_owned(),
                    at: Millis(0),
                    infra: None,
                });
            },
            Some(Rule::NotFailed),
        ),
        (
            "failed with another image",
            |_, _, f| {
                f.push(FailedMark {
                    version: "2.14.0".to_owned(),
                    image: "registry.example/runner:2.14.0-hotfix".to_owned(),
                    reason: "circuit breaker".to_owned(),
                    at: Millis(0),
                    infra: None,
                });
            },
            None,
        ),
        (
            // Now is 1970-01-01T00:00Z, a Thursday.
            "outside its update window",
            |d, _, _| d.update_windows = windows("Sat 02:00-05:00 Europe/Berlin"),
            Some(Rule::UpdateWindow),
        ),
        (
            "inside its update window",
            |d, _, _| d.update_windows = windows("Wed,Thu 23:00-02:00 Europe/Berlin"),
            None,
        ),
    ];

    fn windows(text: &str) -> Option<std::sync::Arc<crate::domain::window::UpdateWindows>> {
        crate::domain::window::parse_windows(text)
            .unwrap()
            .map(std::sync::Arc::new)
    }

    #[test]
    fn each_rule_passes_and_fails_on_its_own() {
        let rows = RULE_ROWS;
        for (name, change, failing) in rows {
            let (mut d, mut o, mut f) = (desired(), observed(), Vec::new());
            change(&mut d, &mut o, &mut f);
            let verdict = evaluate(EligibilityInput {
                desired: &d,
                observed: &o,
                controller_channel: "stable",
                failed: &f,
                now: Millis(0),
            });
            let failed_rules: Vec<Rule> = verdict
                .outcomes
                .iter()
                .filter(|o| !o.passed)
                .map(|o| o.rule)
                .collect();
            assert_eq!(
                failed_rules,
                failing.iter().copied().collect::<Vec<_>>(),
                "row {name:?}: {verdict:?}"
            );
            assert_eq!(verdict.eligible(), failing.is_none(), "row {name:?}");
            assert_eq!(verdict.outcomes.len(), Rule::ALL.len());
            assert!(verdict.outcomes.iter().all(|o| !o.reason.is_empty()));
        }
    }

    #[test]
    fn the_running_version_with_the_desired_image_fails_rules_four_and_five_and_nothing_else() {
        let mut o = observed();
        o.current_version = Some(Version::parse("2.14.0").unwrap());
        o.running_image = ImageRef::parse("registry.example/runner:2.14.0").unwrap();
        let verdict = evaluate(EligibilityInput {
            desired: &desired(),
            observed: &o,
            controller_channel: "stable",
            failed: &[],
            now: Millis(0),
        });
        let failed: Vec<Rule> = verdict
            .outcomes
            .iter()
            .filter(|o| !o.passed)
            .map(|o| o.rule)
            .collect();
        assert_eq!(failed, [Rule::NewerVersion, Rule::DifferentImage]);
    }

    #[test]
    fn rule_names_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.name()), Some(rule));
        }
    }

    #[test]
    fn infrastructure_only_attempts_need_the_gates_and_the_runner_in_place() {
        let verdict = |pass: &[bool; 7]| Verdict {
            outcomes: Rule::ALL
                .iter()
                .zip(pass)
                .map(|(rule, passed)| RuleOutcome {
                    rule: *rule,
                    passed: *passed,
                    reason: "r".into(),
                })
                .collect(),
        };
        let all = verdict(&[true; 7]);
        assert_eq!(attempt_kind(&all, false), Some(AttemptKind::Runner));
        let in_place = verdict(&[true, true, true, false, false, true, true]);
        assert_eq!(
            attempt_kind(&in_place, true),
            Some(AttemptKind::InfrastructureOnly)
        );
        assert_eq!(attempt_kind(&in_place, false), None, "nothing due");
        let paused = verdict(&[true, false, true, false, false, true, true]);
        assert_eq!(
            attempt_kind(&paused, true),
            None,
            "auto-update off holds stacks too"
        );
        let quarantined = verdict(&[true, true, true, false, false, false, true]);
        assert_eq!(attempt_kind(&quarantined, true), None);
        let closed = verdict(&[true, true, true, false, false, true, false]);
        assert_eq!(
            attempt_kind(&closed, true),
            None,
            "stacks wait for the window too"
        );
        let downgrade = verdict(&[true, true, true, false, true, true, true]);
        assert_eq!(
            attempt_kind(&downgrade, true),
            None,
            "only with the desired image running"
        );
    }
}
