//! The change events' queue (SQS) on the SDK.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::{classify, Traced};
use runner_updater_ports::{
    AwsOp, ErrorKind, EventQueue, PortError, QueueMessage, LONG_POLL_MAX, RECEIVE_MESSAGES_MAX,
};

/// One SQS queue through the SDK.
#[derive(Debug, Clone)]
pub struct AwsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl AwsQueue {
    /// The queue at `url` on `client` (whose timeouts allow a long poll: see
    /// [`crate::AwsClients`]).
    #[must_use]
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Self {
        AwsQueue {
            client,
            url: url.to_owned(),
        }
    }
}

/// A whole number of seconds within what SQS allows a long poll.
fn wait_seconds(wait: Duration) -> i32 {
    i32::try_from(wait.min(LONG_POLL_MAX).as_secs()).unwrap_or(20)
}

#[async_trait]
impl EventQueue for AwsQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, PortError> {
        let max = i32::try_from(max.clamp(1, RECEIVE_MESSAGES_MAX)).unwrap_or(10);
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_seconds(wait))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .traced(AwsOp::ReceiveMessage)
            .await
            .map_err(|e| classify(AwsOp::ReceiveMessage, &e))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|message| {
                Some(QueueMessage {
                    id: message.message_id().unwrap_or_default().to_owned(),
                    receipt: message.receipt_handle()?.to_owned(),
                    body: message.body().unwrap_or_default().to_owned(),
                    receives: message
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|count| count.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .traced(AwsOp::DeleteMessage)
            .await
            .map(|_| ())
            .map_err(|e| classify(AwsOp::DeleteMessage, &e))
    }

    async fn waiting(&self) -> Result<u64, PortError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .traced(AwsOp::GetQueueAttributes)
            .await
            .map_err(|e| classify(AwsOp::GetQueueAttributes, &e))?;
        output
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|count| count.parse().ok())
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::Transient,
                    AwsOp::GetQueueAttributes,
                    "the answer names no ApproximateNumberOfMessages",
                )
            })
    }
}
