//! Change events (issue 21, first part): the `EventBridge` events an SQS queue delivers — SSM's
//! "Parameter Store Change" and ECS's "ECS Deployment State Change" / "ECS Service Action" —
//! read into what they concern: a runner's folder, a channel's release, or a runner's service.
//! Pure: the consumer (not built yet) hands each message body here, and a pass of exactly the
//! runners (or the channel) named follows. Events are best effort: polling stays the backstop,
//! so an event for a name the controller does not know, a duplicate or one out of order is
//! harmless (it only asks for a pass), and a body that is not such an event is refused by name
//! (counted and deleted by the consumer, never a crash).

use jiff::Timestamp;

use super::channel::{CHANNELS_FOLDER, RELEASE_NAME, RESUME_NAME};
use super::desired::is_desired_name;
use super::retry::RETRY_FOLDER;
use super::Millis;

/// What an SSM change did to a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterOperation {
    /// `Create`.
    Create,
    /// `Update`.
    Update,
    /// `Delete`.
    Delete,
    /// `LabelParameterVersion` (no value changed: nothing to do, but harmless).
    Label,
}

/// One change event, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// A parameter changed.
    Parameter {
        /// Its full name (`/runner-updater/runner-a/desired/version`).
        name: String,
        /// What happened to it.
        operation: ParameterOperation,
        /// When AWS says it happened.
        at: Millis,
    },
    /// Something happened to an ECS service (a deployment's state, a steady state, …).
    Service {
        /// Its cluster's name.
        cluster: String,
        /// Its name.
        service: String,
        /// ECS's event name (`SERVICE_DEPLOYMENT_COMPLETED`, `SERVICE_STEADY_STATE`, …).
        name: String,
        /// When AWS says it happened.
        at: Millis,
    },
}

/// What a parameter change concerns, under the controller's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concerns {
    /// A runner's desired state, release document or retry intent
    /// (`<prefix>/<runner>/desired/…`, `…/release`, `…/retry/…`).
    Runner(String),
    /// A channel's release, resume or retry (`<prefix>/_channels/<channel>/release`,
    /// `…/resume`, `…/retry/…`).
    Channel(String),
    /// Outside the prefix, or what the controller writes itself (a record `…/status`, a lease
    /// `…/lock/…`): a change of those asks for no pass (else each write of a record would
    /// ask for another pass).
    Nothing,
}

/// Why a message body is not a change event this controller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not an object.
    #[error("not an EventBridge event: {0}")]
    NotAnEvent(String),
    /// An event of a source or type the controller does not subscribe to.
    #[error(
        "an event the controller does not read: source {origin:?}, detail-type {detail_type:?}"
    )]
    Unexpected {
        /// `source`.
        origin: String,
        /// `detail-type`.
        detail_type: String,
    },
    /// An event of a known type with a field missing or malformed.
    #[error("{detail_type} event: {why}")]
    Malformed {
        /// `detail-type`.
        detail_type: String,
        /// What is wrong.
        why: String,
    },
}

/// Reads a message body.
///
/// # Errors
/// An [`EventError`] naming what is wrong; the consumer counts it, logs it and deletes the
/// message (or leaves it to the queue's dead-letter queue).
pub fn parse_event(body: &str) -> Result<ChangeEvent, EventError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| EventError::NotAnEvent(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| EventError::NotAnEvent("not a JSON object".to_owned()))?;
    let text = |key: &str| object.get(key).and_then(serde_json::Value::as_str);
    let source = text("source").unwrap_or_default().to_owned();
    let detail_type = text("detail-type").unwrap_or_default().to_owned();
    let malformed = |why: &str| EventError::Malformed {
        detail_type: detail_type.clone(),
        why: why.to_owned(),
    };
    let at = text("time")
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
        .map(Millis)
        .ok_or_else(|| malformed("no time, or not an RFC 3339 time"))?;
    let detail = object
        .get("detail")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| malformed("no detail object"))?;
    let field = |key: &str| detail.get(key).and_then(serde_json::Value::as_str);
    match (source.as_str(), detail_type.as_str()) {
        ("aws.ssm", "Parameter Store Change") => {
            let name = field("name").ok_or_else(|| malformed("no detail.name"))?;
            let operation = match field("operation") {
                Some("Create") => ParameterOperation::Create,
                Some("Update") => ParameterOperation::Update,
                Some("Delete") => ParameterOperation::Delete,
                Some("LabelParameterVersion") => ParameterOperation::Label,
                _ => return Err(malformed("detail.operation is not a known operation")),
            };
            // AWS names a parameter with its leading slash in `detail.name` when it has one.
            Ok(ChangeEvent::Parameter {
                name: name.to_owned(),
                operation,
                at,
            })
        }
        ("aws.ecs", "ECS Deployment State Change" | "ECS Service Action") => {
            let resource = object
                .get("resources")
                .and_then(serde_json::Value::as_array)
                .and_then(|r| r.first())
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| malformed("no resources"))?;
            let (cluster, service) = service_of_arn(resource)
                .ok_or_else(|| malformed("resources[0] is not a service ARN"))?;
            let name = field("eventName").ok_or_else(|| malformed("no detail.eventName"))?;
            Ok(ChangeEvent::Service {
                cluster: cluster.to_owned(),
                service: service.to_owned(),
                name: name.to_owned(),
                at,
            })
        }
        _ => Err(EventError::Unexpected {
            origin: source,
            detail_type,
        }),
    }
}

/// The cluster and service of a service ARN in its long form
/// (`arn:aws:ecs:<region>:<account>:service/<cluster>/<service>`).
fn service_of_arn(arn: &str) -> Option<(&str, &str)> {
    let resource = arn.strip_prefix("arn:")?.splitn(5, ':').nth(4)?;
    let (cluster, service) = resource.strip_prefix("service/")?.split_once('/')?;
    (!cluster.is_empty() && !service.is_empty() && !service.contains('/'))
        .then_some((cluster, service))
}

/// What the parameter `name` concerns under `prefix` (`/runner-updater`).
#[must_use]
pub fn concerns(prefix: &str, name: &str) -> Concerns {
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Concerns::Nothing;
    };
    let Some((owner, relative)) = rest.split_once('/') else {
        return Concerns::Nothing;
    };
    let retry = |relative: &str| {
        relative
            .strip_prefix(RETRY_FOLDER)
            .is_some_and(|id| id.len() > 1 && id.starts_with('/'))
    };
    if owner == CHANNELS_FOLDER {
        return match relative.split_once('/') {
            Some((channel, document))
                if !channel.is_empty()
                    && (document == RELEASE_NAME || document == RESUME_NAME || retry(document)) =>
            {
                Concerns::Channel(channel.to_owned())
            }
            _ => Concerns::Nothing,
        };
    }
    if !owner.is_empty() && (is_desired_name(relative) || retry(relative)) {
        Concerns::Runner(owner.to_owned())
    } else {
        Concerns::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSM: &str = r#"{"version":"0","id":"6a7e8feb-b491-4cf7-a9f1-bf3703467718","detail-type":"Parameter Store Change","source":"aws.ssm","account":"123456789012","time":"2026-11-30T16:00:00Z","region":"eu-west-1","resources":["arn:aws:ssm:eu-west-1:123456789012:parameter/runner-updater/runner-a/desired/version"],"detail":{"operation":"Update","name":"/runner-updater/runner-a/desired/version","type":"String","description":""}}"#;
    const ECS: &str = r#"{"version":"0","id":"ddca6449-b258-46c0-8653-e0e3a6d0468b","detail-type":"ECS Deployment State Change","source":"aws.ecs","account":"123456789012","time":"2026-11-30T16:00:01Z","region":"eu-west-1","resources":["arn:aws:ecs:eu-west-1:123456789012:service/runners/runner-a"],"detail":{"eventType":"INFO","eventName":"SERVICE_DEPLOYMENT_COMPLETED","deploymentId":"ecs-svc/0123456789","updatedAt":"2026-11-30T16:00:00.512Z","reason":"ECS deployment ecs-svc/0123456789 completed."}}"#;

    #[test]
    fn ssm_and_ecs_events_are_read_into_what_they_concern() {
        let ChangeEvent::Parameter {
            name,
            operation,
            at,
        } = parse_event(SSM).unwrap()
        else {
            panic!("a parameter event");
        };
        assert_eq!(operation, ParameterOperation::Update);
        assert_eq!(at.to_string(), "2026-11-30T16:00:00Z");
        assert_eq!(
            concerns("/runner-updater", &name),
            Concerns::Runner("runner-a".to_owned())
        );
        assert_eq!(
            concerns(
                "/runner-updater",
                "/runner-updater/_channels/stable/release"
            ),
            Concerns::Channel("stable".to_owned())
        );
        for (inside, runner) in [
            ("/runner-updater/runner-a/release", "runner-a"),
            ("/runner-updater/runner-a/retry/r-1", "runner-a"),
            ("/runner-updater/runner-b/desired/auto-update", "runner-b"),
        ] {
            assert_eq!(
                concerns("/runner-updater", inside),
                Concerns::Runner(runner.to_owned()),
                "{inside}"
            );
        }
        for inside in [
            "/runner-updater/_channels/stable/resume",
            "/runner-updater/_channels/stable/retry/r-2",
        ] {
            assert_eq!(
                concerns("/runner-updater", inside),
                Concerns::Channel("stable".to_owned())
            );
        }
        for outside in [
            "/runner-updater/runner-a/status",
            "/runner-updater/runner-a/lock/1",
            "/runner-updater/runner-a/retry",
            "/runner-updater/_channels/stable/status",
            "/other/runner-a/desired/version",
            "/runner-updater",
            "/runner-updater/runner-a",
            "/runner-updater/_channels",
            "/runner-updaterx/runner-a/release",
        ] {
            assert_eq!(
                concerns("/runner-updater", outside),
                Concerns::Nothing,
                "{outside}"
            );
        }
        assert_eq!(
            parse_event(ECS).unwrap(),
            ChangeEvent::Service {
                cluster: "runners".to_owned(),
                service: "runner-a".to_owned(),
                name: "SERVICE_DEPLOYMENT_COMPLETED".to_owned(),
                at: parse_time("2026-11-30T16:00:01Z"),
            }
        );
        let action = ECS
            .replace("ECS Deployment State Change", "ECS Service Action")
            .replace("SERVICE_DEPLOYMENT_COMPLETED", "SERVICE_STEADY_STATE");
        assert!(matches!(
            parse_event(&action),
            Ok(ChangeEvent::Service { name, .. }) if name == "SERVICE_STEADY_STATE"
        ));
    }

    fn parse_time(text: &str) -> Millis {
        Millis(u64::try_from(text.parse::<Timestamp>().unwrap().as_millisecond()).unwrap())
    }

    #[test]
    fn bodies_that_are_not_such_events_are_refused_by_name() {
        let not = |body: &str| parse_event(body).unwrap_err();
        assert!(matches!(not("poison"), EventError::NotAnEvent(_)));
        assert!(matches!(not("[1, 2]"), EventError::NotAnEvent(_)));
        assert!(matches!(
            not(&SSM.replace("aws.ssm", "aws.s3")),
            EventError::Unexpected { .. }
        ));
        for (from, to, why) in [
            (
                "\"operation\":\"Update\"",
                "\"operation\":\"Rename\"",
                "detail.operation",
            ),
            (
                "\"name\":\"/runner-updater",
                "\"nom\":\"/runner-updater",
                "detail.name",
            ),
            ("2026-11-30T16:00:00Z", "yesterday", "time"),
        ] {
            let error = not(&SSM.replacen(from, to, 1));
            assert!(error.to_string().contains(why), "{error}");
        }
        for (from, to) in [
            ("service/runners/runner-a", "task/runners/0123"),
            ("service/runners/runner-a", "service/runner-a"),
            ("\"eventName\"", "\"name\""),
        ] {
            assert!(
                matches!(not(&ECS.replace(from, to)), EventError::Malformed { .. }),
                "{from} -> {to}"
            );
        }
    }
}
