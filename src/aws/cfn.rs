//! CloudFormation on the SDK (describe only, until change sets land).

use async_trait::async_trait;

use super::classify;
use crate::domain::observed::StackState;
use crate::ports::{CloudFormation, ErrorKind, PortError};

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

#[async_trait]
impl CloudFormation for AwsCloudFormation {
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError> {
        let output = self
            .client
            .describe_stacks()
            .stack_name(name)
            .send()
            .await
            .map_err(|e| classify("DescribeStacks", &e))?;
        let stack = output.stacks().first().ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                "DescribeStacks",
                format!("stack {name} does not exist"),
            )
        })?;
        Ok(StackState {
            name: stack.stack_name().unwrap_or(name).to_owned(),
            status: stack
                .stack_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
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
        })
    }
}
