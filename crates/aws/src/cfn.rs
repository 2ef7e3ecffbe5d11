//! CloudFormation on the SDK: stacks, template summaries, change sets and stack events.
//!
//! `CreateChangeSet` and `ExecuteChangeSet` carry idempotency tokens derived from the attempt;
//! `ExecuteChangeSet` never disables rollback (every resource is rolled back on failure).

use async_trait::async_trait;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Tag};

use super::{classify, Traced};
use runner_updater_core::domain::infra::{ChangeSet, ResourceChange, StackEvent};
use runner_updater_core::domain::observed::StackState;
use runner_updater_core::domain::Millis;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    ChangeSetKind, ChangeSetRequest, CloudFormation, ErrorKind, PortError, TemplateSummary,
};

/// Pages of `DescribeChangeSet` read at most (a page holds up to 100 changes).
const CHANGE_PAGES_MAX: usize = 10;
/// Pages of `DescribeStackEvents` read at most (newest first, up to 100 events a page).
const EVENT_PAGES_MAX: usize = 10;

/// CloudFormation through the SDK.
#[derive(Debug, Clone)]
pub struct AwsCloudFormation {
    client: aws_sdk_cloudformation::Client,
}

impl AwsCloudFormation {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: aws_sdk_cloudformation::Client) -> Self {
        AwsCloudFormation { client }
    }
}

fn millis(time: Option<&aws_sdk_cloudformation::primitives::DateTime>) -> Option<Millis> {
    time.and_then(|t| t.to_millis().ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Millis)
}

fn parameter_map(parameters: &[Parameter]) -> std::collections::BTreeMap<String, String> {
    parameters
        .iter()
        .filter_map(|p| {
            Some((
                p.parameter_key()?.to_owned(),
                p.parameter_value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn is_change_set_missing(error: &PortError) -> bool {
    error.kind == ErrorKind::NotFound || error.message.contains("ChangeSetNotFound")
}

#[async_trait]
impl CloudFormation for AwsCloudFormation {
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError> {
        let output = self
            .client
            .describe_stacks()
            .stack_name(name)
            .send()
            .traced(AwsOp::DescribeStacks)
            .await
            .map_err(|e| classify(AwsOp::DescribeStacks, &e))?;
        let stack = output.stacks().first().ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                AwsOp::DescribeStacks,
                format!("stack {name} does not exist"),
            )
        })?;
        Ok(StackState {
            name: stack.stack_name().unwrap_or(name).to_owned(),
            status: stack.stack_status().map_or("", |s| s.as_str()).into(),
            tags: stack
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect(),
            outputs: stack
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                .collect(),
            parameters: parameter_map(stack.parameters()),
            last_updated: millis(stack.last_updated_time()),
        })
    }

    async fn template_summary(
        &self,
        stack: &str,
        template_url: Option<&str>,
    ) -> Result<TemplateSummary, PortError> {
        let request = self.client.get_template_summary();
        let request = match template_url {
            Some(url) => request.template_url(url),
            None => request.stack_name(stack),
        };
        let output = request
            .send()
            .traced(AwsOp::GetTemplateSummary)
            .await
            .map_err(|e| classify(AwsOp::GetTemplateSummary, &e))?;
        Ok(TemplateSummary {
            capabilities: output
                .capabilities()
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect(),
            parameters: output
                .parameters()
                .iter()
                .filter_map(|p| p.parameter_key().map(str::to_owned))
                .collect(),
        })
    }

    async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError> {
        let mut call = self
            .client
            .create_change_set()
            .stack_name(&request.stack)
            .change_set_name(&request.name)
            .change_set_type(match request.kind {
                ChangeSetKind::Update => ChangeSetType::Update,
                ChangeSetKind::Create => ChangeSetType::Create,
            })
            .client_token(&request.client_token)
            .description(&request.description);
        call = match (&request.template_body, &request.template_url) {
            (Some(body), _) => call.template_body(body),
            (None, Some(url)) => call.template_url(url),
            (None, None) => call.use_previous_template(true),
        };
        for (key, value) in &request.parameters {
            call = call.parameters(
                Parameter::builder()
                    .parameter_key(key)
                    .parameter_value(value)
                    .build(),
            );
        }
        for key in &request.keep_parameters {
            call = call.parameters(
                Parameter::builder()
                    .parameter_key(key)
                    .use_previous_value(true)
                    .build(),
            );
        }
        for capability in &request.capabilities {
            call = call.capabilities(Capability::from(capability.as_str()));
        }
        for (key, value) in &request.tags {
            call = call.tags(Tag::builder().key(key).value(value).build());
        }
        let output = call
            .send()
            .traced(AwsOp::CreateChangeSet)
            .await
            .map_err(|e| classify(AwsOp::CreateChangeSet, &e))?;
        Ok(output.id().unwrap_or(&request.name).to_owned())
    }

    async fn describe_change_set(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ChangeSet>, PortError> {
        let mut change_set: Option<ChangeSet> = None;
        let mut token: Option<String> = None;
        for _ in 0..CHANGE_PAGES_MAX {
            let output = match self
                .client
                .describe_change_set()
                .stack_name(stack)
                .change_set_name(name)
                .set_next_token(token.take())
                .send()
                .traced(AwsOp::DescribeChangeSet)
                .await
                .map_err(|e| classify(AwsOp::DescribeChangeSet, &e))
            {
                Ok(output) => output,
                Err(error) if is_change_set_missing(&error) => return Ok(None),
                Err(error) => return Err(error),
            };
            let changes = output.changes().iter().filter_map(|c| {
                let r = c.resource_change()?;
                Some(ResourceChange {
                    action: r
                        .action()
                        .map(|a| a.as_str().to_owned())
                        .unwrap_or_default(),
                    logical_id: r.logical_resource_id().unwrap_or_default().to_owned(),
                    resource_type: r.resource_type().unwrap_or_default().to_owned(),
                    replacement: r
                        .replacement()
                        .map(|x| x.as_str().to_owned())
                        .unwrap_or_default(),
                })
            });
            match &mut change_set {
                Some(set) => set.changes.extend(changes),
                None => {
                    change_set = Some(ChangeSet {
                        id: output.change_set_id().unwrap_or(name).to_owned(),
                        status: output.status().map_or("", |s| s.as_str()).into(),
                        status_reason: output.status_reason().map(str::to_owned),
                        execution_status: output
                            .execution_status()
                            .map_or("", |s| s.as_str())
                            .into(),
                        changes: changes.collect(),
                        parameters: parameter_map(output.parameters()),
                    });
                }
            }
            match output.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(change_set)
    }

    async fn execute_change_set(
        &self,
        stack: &str,
        name: &str,
        token: &str,
    ) -> Result<(), PortError> {
        self.client
            .execute_change_set()
            .stack_name(stack)
            .change_set_name(name)
            .client_request_token(token)
            .disable_rollback(false)
            .send()
            .traced(AwsOp::ExecuteChangeSet)
            .await
            .map_err(|e| classify(AwsOp::ExecuteChangeSet, &e))?;
        Ok(())
    }

    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), PortError> {
        match self
            .client
            .delete_change_set()
            .stack_name(stack)
            .change_set_name(name)
            .send()
            .traced(AwsOp::DeleteChangeSet)
            .await
            .map_err(|e| classify(AwsOp::DeleteChangeSet, &e))
        {
            Ok(_) => Ok(()),
            Err(error) if is_change_set_missing(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, PortError> {
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..EVENT_PAGES_MAX {
            let output = self
                .client
                .describe_stack_events()
                .stack_name(stack)
                .set_next_token(token.take())
                .send()
                .traced(AwsOp::DescribeStackEvents)
                .await
                .map_err(|e| classify(AwsOp::DescribeStackEvents, &e))?;
            events.extend(output.stack_events().iter().map(|e| StackEvent {
                logical_id: e.logical_resource_id().unwrap_or_default().to_owned(),
                resource_type: e.resource_type().unwrap_or_default().to_owned(),
                status: e.resource_status().map_or("", |s| s.as_str()).into(),
                reason: e.resource_status_reason().map(str::to_owned),
                timestamp: millis(e.timestamp()).unwrap_or_default(),
                token: e.client_request_token().map(str::to_owned),
            }));
            // Newest first: the start of the latest user-initiated operation ends the search.
            let started = output.stack_events().iter().any(|e| {
                e.logical_resource_id() == Some(stack)
                    && e.resource_status()
                        == Some(&aws_sdk_cloudformation::types::ResourceStatus::UpdateInProgress)
            });
            match output.next_token() {
                Some(next) if !next.is_empty() && !started => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(events)
    }
}
