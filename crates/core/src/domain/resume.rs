//! What a service update command decides from what ECS shows before it acts: whether its call
//! was already made (a resume after a crash, a lost answer, a retry), whether ECS already
//! rolled it back, whether someone else moved the service. Pure: the driver reads the service
//! and does what these say; each decision has its table here.

use std::time::Duration;

use super::observed::ServiceState;
use super::Millis;

/// Where the attempt's forward service update stands, read against the deployments the
/// service had before it (the baseline, persisted before the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateProgress<'a> {
    /// No deployment outside the baseline: the update is still to be made.
    NotMade,
    /// A deployment of the attempt's task definition is outside the baseline: made.
    Made {
        /// The deployment.
        deployment_id: &'a str,
    },
    /// ECS's circuit breaker already rolled the attempt's deployment back (its reason says
    /// so), leaving the service on the baseline: made, and the health gate reports it.
    RolledBackByEcs {
        /// ECS's rollback deployment.
        deployment_id: &'a str,
    },
    /// Another deployment appeared outside the attempt (a console force-deploy, Terraform):
    /// a foreign writer, never "done".
    Foreign {
        /// The foreign deployment.
        deployment_id: &'a str,
        /// Its task definition.
        task_definition_arn: &'a str,
    },
}

/// Reads where the forward update to `task_definition_arn` stands, given the ids of the
/// deployments the service had before the attempt.
#[must_use]
pub fn update_progress<'a>(
    service: &'a ServiceState,
    task_definition_arn: &str,
    baseline_ids: &[String],
) -> UpdateProgress<'a> {
    let new: Vec<_> = service
        .deployments
        .iter()
        .filter(|d| !baseline_ids.contains(&d.id))
        .collect();
    let ours = new
        .iter()
        .find(|d| d.task_definition_arn == task_definition_arn);
    if let Some(deployment) = ours {
        return UpdateProgress::Made {
            deployment_id: &deployment.id,
        };
    }
    if let Some(rollback) = new.iter().find(|d| d.rollout_cause().circuit_breaker) {
        return UpdateProgress::RolledBackByEcs {
            deployment_id: &rollback.id,
        };
    }
    match new.first() {
        Some(other) => UpdateProgress::Foreign {
            deployment_id: &other.id,
            task_definition_arn: &other.task_definition_arn,
        },
        None => UpdateProgress::NotMade,
    }
}

/// Whether the rollback to `baseline_arn` was already made: the service runs the baseline, or
/// has a deployment of it outside the baseline's ids (ours, or ECS's own rollback).
#[must_use]
pub fn rollback_made(service: &ServiceState, baseline_arn: &str, baseline_ids: &[String]) -> bool {
    service.task_definition_arn == baseline_arn
        || service
            .deployments
            .iter()
            .any(|d| d.task_definition_arn == baseline_arn && !baseline_ids.contains(&d.id))
}

/// How long a register / update / rollback call that may already have been made must wait
/// before it decides on a read of ECS (eventually consistent): `None` when it may decide now.
/// A call whose state was entered in this pass is a first call (nothing to find yet); any other
/// (a restore, a retry) waits until `window` after its state was entered (`since`) or the call
/// was last tried (`last_call_at`), whichever is later.
#[must_use]
pub fn consistency_wait(
    entered_this_pass: bool,
    since: Millis,
    last_call_at: Option<Millis>,
    now: Millis,
    window: Duration,
) -> Option<Duration> {
    if entered_this_pass {
        return None;
    }
    let reference = last_call_at.map_or(since, |at| at.max(since));
    let age = now.since(reference);
    (age < window).then(|| window.saturating_sub(age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::observed::{Deployment, DeploymentStatus, RolloutState};

    const BASE: &str = "arn:td/runner:1";
    const OURS: &str = "arn:td/runner:2";
    const OTHER: &str = "arn:td/runner:3";

    fn deployment(id: &str, arn: &str, reason: Option<&str>) -> Deployment {
        Deployment {
            id: id.to_owned(),
            status: DeploymentStatus::Primary,
            task_definition_arn: arn.to_owned(),
            rollout_state: RolloutState::InProgress,
            rollout_reason: reason.map(str::to_owned),
            desired_count: 1,
            running_count: 1,
            failed_tasks: 0,
        }
    }

    fn service(on: &str, deployments: Vec<Deployment>) -> ServiceState {
        ServiceState {
            cluster: "runners".to_owned(),
            service: "runner".to_owned(),
            task_definition_arn: on.to_owned(),
            deployments,
            tasks: None,
            current_service_deployment: None,
        }
    }

    #[test]
    fn a_forward_update_is_made_once_and_anything_else_outside_the_baseline_is_named() {
        let baseline = vec!["d-base".to_owned()];
        let base = || deployment("d-base", BASE, None);
        let breaker = Some("ECS deployment circuit breaker: rolling back to deploymentId d-base");
        let cases: Vec<(&str, ServiceState, UpdateProgress<'static>)> = vec![
            (
                "nothing new",
                service(BASE, vec![base()]),
                UpdateProgress::NotMade,
            ),
            (
                "ours is there",
                service(OURS, vec![deployment("d-1", OURS, None), base()]),
                UpdateProgress::Made {
                    deployment_id: "d-1",
                },
            ),
            (
                "ours and ECS's rollback of it: ours wins",
                service(
                    BASE,
                    vec![
                        deployment("d-2", BASE, breaker),
                        deployment("d-1", OURS, None),
                    ],
                ),
                UpdateProgress::Made {
                    deployment_id: "d-1",
                },
            ),
            (
                "only ECS's rollback left (ours gone)",
                service(BASE, vec![deployment("d-2", BASE, breaker)]),
                UpdateProgress::RolledBackByEcs {
                    deployment_id: "d-2",
                },
            ),
            (
                "a rollback not by the circuit breaker is no rollback of ours",
                service(
                    BASE,
                    vec![deployment("d-7", BASE, Some("rolling back: alarm"))],
                ),
                UpdateProgress::Foreign {
                    deployment_id: "d-7",
                    task_definition_arn: BASE,
                },
            ),
            (
                "a foreign deployment",
                service(OTHER, vec![deployment("d-9", OTHER, None), base()]),
                UpdateProgress::Foreign {
                    deployment_id: "d-9",
                    task_definition_arn: OTHER,
                },
            ),
            (
                "a force-deploy of the baseline's revision is foreign too",
                service(BASE, vec![deployment("d-8", BASE, None)]),
                UpdateProgress::Foreign {
                    deployment_id: "d-8",
                    task_definition_arn: BASE,
                },
            ),
        ];
        for (case, state, expect) in &cases {
            let got = update_progress(state, OURS, &baseline);
            assert_eq!(got, *expect, "{case}");
        }
    }

    #[test]
    fn a_rollback_is_made_when_the_service_runs_the_baseline_or_has_a_new_deployment_of_it() {
        let baseline = vec!["d-base".to_owned()];
        let cases = [
            ("on the baseline", service(BASE, vec![]), true),
            (
                "a new deployment of the baseline, still rolling",
                service(OURS, vec![deployment("d-3", BASE, None)]),
                true,
            ),
            (
                "only the baseline's own old deployment",
                service(OURS, vec![deployment("d-base", BASE, None)]),
                false,
            ),
            (
                "on ours",
                service(OURS, vec![deployment("d-1", OURS, None)]),
                false,
            ),
        ];
        for (case, state, made) in &cases {
            assert_eq!(rollback_made(state, BASE, &baseline), *made, "{case}");
        }
    }

    #[test]
    fn a_call_that_may_have_been_made_waits_out_the_consistency_window_from_its_last_try() {
        let window = Duration::from_mins(1);
        let at = |secs: u64| Millis(1_000_000 + secs * 1_000);
        let secs = Duration::from_secs;
        let cases = [
            ("first call of the pass", true, at(0), None, at(1), None),
            (
                "restored just now",
                false,
                at(0),
                None,
                at(1),
                Some(secs(59)),
            ),
            ("restored long after", false, at(0), None, at(90), None),
            ("at the window's end", false, at(0), None, at(60), None),
            (
                "tried after the state was entered",
                false,
                at(0),
                Some(at(50)),
                at(80),
                Some(secs(30)),
            ),
            (
                "a try older than the state counts from the state",
                false,
                at(40),
                Some(at(10)),
                at(70),
                Some(secs(30)),
            ),
        ];
        for (case, entered, since, last_call, now, wait) in cases {
            assert_eq!(
                consistency_wait(entered, since, last_call, now, window),
                wait,
                "{case}"
            );
        }
    }
}
