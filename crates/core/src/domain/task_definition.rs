//! Task definitions: the summary the controller decides on ([`TaskDefinition`]), and the
//! reference clone on documents in the ECS API shape (`RegisterTaskDefinition` input, camelCase)
//! that swaps one container's image and keeps every other field.
//!
//! Working on the document rather than on a hand-written struct is what makes the clone
//! faithful: a field that this code does not know about (a new ECS feature) is carried over
//! untouched instead of being dropped. Only the read-only fields that `DescribeTaskDefinition`
//! returns and `RegisterTaskDefinition` refuses are removed. The simulated ECS clones with it;
//! the SDK adapter copies the typed fields and is held to the same result by the contract tests.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Fields `DescribeTaskDefinition` returns that `RegisterTaskDefinition` does not accept.
pub const READ_ONLY_FIELDS: &[&str] = &[
    "taskDefinitionArn",
    "revision",
    "status",
    "requiresAttributes",
    "compatibilities",
    "registeredAt",
    "registeredBy",
    "deregisteredAt",
];

/// What the controller needs to know of a registered task definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDefinition {
    /// ARN of this revision.
    pub arn: String,
    /// Family.
    pub family: String,
    /// Its containers.
    pub containers: Vec<ContainerSummary>,
    /// Tags (`DescribeTaskDefinition(include=[TAGS])`).
    pub tags: BTreeMap<String, String>,
}

/// One container definition, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Name.
    pub name: String,
    /// Image.
    pub image: Option<String>,
    /// Whether it defines a health check.
    pub has_health_check: bool,
    /// Whether it is essential (ECS's default when the field is absent): the task stops when it
    /// does, and ECS counts the task toward a deployment only once its health check passes.
    pub essential: bool,
}

/// Why a clone cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneError {
    /// No `containerDefinitions` array.
    #[error("the task definition has no containerDefinitions")]
    NoContainers,
    /// No container of that name.
    #[error("the task definition has no container named {0:?}")]
    ContainerNotFound(String),
}

impl TaskDefinition {
    /// The container of that name.
    #[must_use]
    pub fn container(&self, name: &str) -> Option<&ContainerSummary> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Summarises an API-shaped document.
    #[must_use]
    pub fn from_document(
        arn: &str,
        document: &Map<String, Value>,
        tags: BTreeMap<String, String>,
    ) -> Self {
        let containers = document
            .get("containerDefinitions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .map(|c| ContainerSummary {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                image: c.get("image").and_then(Value::as_str).map(str::to_owned),
                has_health_check: c.get("healthCheck").is_some_and(|h| !h.is_null()),
                essential: c.get("essential").and_then(Value::as_bool).unwrap_or(true),
            })
            .collect();
        TaskDefinition {
            arn: arn.to_owned(),
            family: document
                .get("family")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            containers,
            tags,
        }
    }
}

/// The `RegisterTaskDefinition` input for a new revision: the same document without its
/// read-only fields, with `container`'s image replaced. Nothing else changes.
///
/// # Errors
/// When the document has no container of that name.
pub fn clone_with_image(
    document: &Map<String, Value>,
    container: &str,
    image: &str,
) -> Result<Map<String, Value>, CloneError> {
    let mut clone = document.clone();
    for field in READ_ONLY_FIELDS {
        clone.remove(*field);
    }
    let containers = clone
        .get_mut("containerDefinitions")
        .and_then(Value::as_array_mut)
        .ok_or(CloneError::NoContainers)?;
    let target = containers
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .find(|c| c.get("name").and_then(Value::as_str) == Some(container))
        .ok_or_else(|| CloneError::ContainerNotFound(container.to_owned()))?;
    target.insert("image".to_owned(), Value::String(image.to_owned()));
    Ok(clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rich task definition as `DescribeTaskDefinition` returns it (read-only fields included).
    pub(crate) fn rich_document() -> Map<String, Value> {
        let value = serde_json::json!({
            "taskDefinitionArn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/runner:7",
            "family": "runner",
            "revision": 7,
            "status": "ACTIVE",
            "registeredAt": "2025-03-01T10:00:00Z",
            "registeredBy": "arn:aws:iam::123456789012:role/deployer",
            "requiresAttributes": [{"name": "com.amazonaws.ecs.capability.logging-driver.awslogs"}],
            "compatibilities": ["EC2", "FARGATE"],
            "taskRoleArn": "arn:aws:iam::123456789012:role/runner-task",
            "executionRoleArn": "arn:aws:iam::123456789012:role/runner-exec",
            "networkMode": "awsvpc",
            "cpu": "1024",
            "memory": "2048",
            "requiresCompatibilities": ["FARGATE"],
            "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
            "ephemeralStorage": {"sizeInGiB": 40},
            "volumes": [{"name": "cache", "efsVolumeConfiguration": {"fileSystemId": "fs-1", "transitEncryption": "ENABLED"}}],
            "placementConstraints": [{"type": "memberOf", "expression": "attribute:ecs.availability-zone in [eu-west-1a]"}],
            "proxyConfiguration": {"type": "APPMESH", "containerName": "envoy", "properties": [{"name": "AppPorts", "value": "8080"}]},
            "containerDefinitions": [
                {
                    "name": "runner",
                    "image": "registry.example/runner:2.13.0",
                    "essential": true,
                    "memory": 1024,
                    "environment": [{"name": "MODE", "value": "production"}],
                    "secrets": [{"name": "TOKEN", "valueFrom": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:runner"}],
                    "healthCheck": {"command": ["CMD-SHELL", "curl -f http://localhost:8080/health"], "interval": 10, "retries": 3},
                    "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": "/runner"}},
                    "mountPoints": [{"sourceVolume": "cache", "containerPath": "/cache"}],
                    "dependsOn": [{"containerName": "envoy", "condition": "HEALTHY"}],
                    "ulimits": [{"name": "nofile", "softLimit": 65536, "hardLimit": 65536}],
                    "linuxParameters": {"initProcessEnabled": true, "capabilities": {"drop": ["ALL"]}}
                },
                {
                    "name": "envoy",
                    "image": "public.ecr.aws/appmesh/aws-appmesh-envoy:v1.27",
                    "essential": true,
                    "memory": 256
                }
            ]
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("the literal is an object"),
        }
    }

    #[test]
    fn clone_changes_only_the_runner_image_and_drops_read_only_fields() {
        let original = rich_document();
        let clone =
            clone_with_image(&original, "runner", "registry.example/runner:2.14.0").unwrap();
        for field in READ_ONLY_FIELDS {
            assert!(!clone.contains_key(*field), "{field} must be removed");
        }
        for (key, value) in &original {
            if READ_ONLY_FIELDS.contains(&key.as_str()) || key == "containerDefinitions" {
                continue;
            }
            assert_eq!(
                clone.get(key),
                Some(value),
                "field {key} changed or was dropped"
            );
        }
        let before = original["containerDefinitions"].as_array().unwrap();
        let after = clone["containerDefinitions"].as_array().unwrap();
        assert_eq!(before.len(), after.len());
        for (old, new) in before.iter().zip(after) {
            let (old, new) = (old.as_object().unwrap(), new.as_object().unwrap());
            assert_eq!(
                old.len(),
                new.len(),
                "a container field was added or dropped"
            );
            for (key, value) in old {
                if old["name"] == "runner" && key == "image" {
                    assert_eq!(new[key], "registry.example/runner:2.14.0");
                } else {
                    assert_eq!(
                        &new[key], value,
                        "container {} field {key} changed",
                        old["name"]
                    );
                }
            }
        }
    }

    #[test]
    fn clone_refuses_a_missing_container() {
        let error = clone_with_image(&rich_document(), "absent", "x:1").unwrap_err();
        assert_eq!(error, CloneError::ContainerNotFound("absent".to_owned()));
    }
}
