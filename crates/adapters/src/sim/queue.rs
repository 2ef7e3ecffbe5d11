//! A simulated SQS queue with the `EventBridge` rule in front of it: what the simulated SSM
//! publishes (once [`SimQueue`] is attached to it: `SimSsm::publish_to`) arrives here as the
//! AWS-shaped event an `EventBridge` rule would deliver (the simulated ECS publishes nothing:
//! [`SimQueue::service_event`] sends its events by hand), and the controller's consumer reads it through the
//! [`EventQueue`] port. Modelled: long polling (a receiver waits for a first message, up to
//! the time asked), batches, the visibility timeout (a message received and not deleted comes
//! back), receive counts, a deleted queue and a denied one (every call refused, as AWS names
//! them), and one-off faults per call. Not modelled: ordering guarantees beyond arrival order,
//! the dead-letter queue's redrive, message retention.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use runner_updater_core::domain::Millis;
use runner_updater_ports::{
    AwsOp, Clock, ErrorKind, EventQueue, PortError, QueueMessage, RECEIVE_MESSAGES_MAX,
};

use super::{guard, Faults};

/// How long a message received stays hidden from other receivers (SQS's default).
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Held {
    id: String,
    body: String,
    receives: u32,
    /// Hidden until then (received, not deleted).
    hidden_until: Option<Millis>,
    /// The receipt of its last reception.
    receipt: Option<String>,
}

/// The simulated queue (shared: clones are the same queue).
#[derive(Clone)]
pub struct SimQueue {
    messages: Arc<Mutex<VecDeque<Held>>>,
    arrived: Arc<Notify>,
    clock: Arc<dyn Clock>,
    next: Arc<AtomicU64>,
    gone: Arc<AtomicBool>,
    denied: Arc<AtomicBool>,
    /// Faults to inject (`ReceiveMessage`, `DeleteMessage`, `GetQueueAttributes`).
    pub faults: Faults,
}

impl std::fmt::Debug for SimQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimQueue")
            .field("waiting", &self.len())
            .finish_non_exhaustive()
    }
}

impl SimQueue {
    /// An empty queue on `clock` (events are stamped with its time).
    #[must_use]
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        SimQueue {
            messages: Arc::new(Mutex::new(VecDeque::new())),
            arrived: Arc::new(Notify::new()),
            clock,
            next: Arc::new(AtomicU64::new(1)),
            gone: Arc::new(AtomicBool::new(false)),
            denied: Arc::new(AtomicBool::new(false)),
            faults: Faults::default(),
        }
    }

    /// Messages held (visible or not).
    #[must_use]
    pub fn len(&self) -> usize {
        self.messages.lock().map_or(0, |m| m.len())
    }

    /// Whether no message is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends a raw body (a test's poison message, or an event published by hand).
    pub fn send(&self, body: &str) {
        let id = format!("sim-{}", self.next.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut messages) = self.messages.lock() {
            messages.push_back(Held {
                id,
                body: body.to_owned(),
                receives: 0,
                hidden_until: None,
                receipt: None,
            });
        }
        self.arrived.notify_waiters();
        self.arrived.notify_one();
    }

    /// What `EventBridge` delivers for an SSM change of `name` (`Create`, `Update`, `Delete`).
    pub fn parameter_changed(&self, name: &str, operation: &str) {
        let body = serde_json::json!({
            "version": "0",
            "id": format!("ssm-{}", self.next.load(Ordering::Relaxed)),
            "detail-type": "Parameter Store Change",
            "source": "aws.ssm",
            "account": "000000000000",
            "time": self.clock.now().to_string(),
            "region": "eu-west-1",
            "resources": [format!("arn:aws:ssm:eu-west-1:000000000000:parameter{name}")],
            "detail": {"operation": operation, "name": name, "type": "String"},
        });
        self.send(&body.to_string());
    }

    /// What `EventBridge` delivers for an ECS service event (`SERVICE_DEPLOYMENT_COMPLETED`, …).
    pub fn service_event(&self, cluster: &str, service: &str, event: &str) {
        let body = serde_json::json!({
            "version": "0",
            "id": format!("ecs-{}", self.next.load(Ordering::Relaxed)),
            "detail-type": "ECS Deployment State Change",
            "source": "aws.ecs",
            "account": "000000000000",
            "time": self.clock.now().to_string(),
            "region": "eu-west-1",
            "resources": [format!("arn:aws:ecs:eu-west-1:000000000000:service/{cluster}/{service}")],
            "detail": {"eventType": "INFO", "eventName": event},
        });
        self.send(&body.to_string());
    }

    /// Deletes the queue: every call fails as AWS answers for a queue that does not exist.
    pub fn delete_queue(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// Denies (or allows again) the controller's access: every call fails as access denied.
    pub fn deny(&self, denied: bool) {
        self.denied.store(denied, Ordering::SeqCst);
    }

    fn refused(&self, operation: AwsOp) -> Result<(), PortError> {
        if self.gone.load(Ordering::SeqCst) {
            return Err(PortError::new(
                ErrorKind::NotFound,
                operation,
                "AWS.SimpleQueueService.NonExistentQueue (HTTP 400): The specified queue does not exist.",
            ));
        }
        if self.denied.load(Ordering::SeqCst) {
            return Err(PortError::new(
                ErrorKind::Permanent,
                operation,
                "AccessDenied (HTTP 403): not authorized to perform sqs:ReceiveMessage on the queue",
            ));
        }
        self.faults.check(operation)
    }

    /// Takes up to `max` visible messages, hiding them for the visibility timeout.
    fn take(&self, max: usize) -> Result<Vec<QueueMessage>, PortError> {
        let now = self.clock.now();
        let mut messages = guard(&self.messages, AwsOp::ReceiveMessage)?;
        let mut taken = Vec::new();
        for held in messages.iter_mut() {
            if taken.len() >= max {
                break;
            }
            if held.hidden_until.is_some_and(|until| until > now) {
                continue;
            }
            held.receives += 1;
            let receipt = format!("{}#{}", held.id, self.next.fetch_add(1, Ordering::Relaxed));
            held.receipt = Some(receipt.clone());
            held.hidden_until = Some(now.after(VISIBILITY_TIMEOUT));
            taken.push(QueueMessage {
                id: held.id.clone(),
                receipt,
                body: held.body.clone(),
                receives: held.receives,
            });
        }
        Ok(taken)
    }
}

#[async_trait]
impl EventQueue for SimQueue {
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, PortError> {
        self.refused(AwsOp::ReceiveMessage)?;
        let max = max.clamp(1, RECEIVE_MESSAGES_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            let taken = self.take(max)?;
            if !taken.is_empty() {
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), PortError> {
        self.refused(AwsOp::DeleteMessage)?;
        let mut messages = guard(&self.messages, AwsOp::DeleteMessage)?;
        let before = messages.len();
        messages.retain(|held| held.receipt.as_deref() != Some(receipt));
        if messages.len() == before {
            return Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::DeleteMessage,
                "ReceiptHandleIsInvalid (HTTP 400): the receipt handle has expired",
            ));
        }
        Ok(())
    }

    async fn waiting(&self) -> Result<u64, PortError> {
        self.refused(AwsOp::GetQueueAttributes)?;
        let now = self.clock.now();
        Ok(guard(&self.messages, AwsOp::GetQueueAttributes)?
            .iter()
            .filter(|held| held.hidden_until.is_none_or(|until| until <= now))
            .count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimClock;

    #[tokio::test]
    async fn messages_come_in_batches_hide_while_received_and_come_back_unless_deleted() {
        let clock = SimClock::new(Millis(1_000_000));
        let queue = SimQueue::new(Arc::new(clock.clone()));
        for i in 0..12 {
            queue.parameter_changed(&format!("/p/r{i}/release"), "Update");
        }
        assert_eq!(queue.waiting().await.unwrap(), 12);
        let first = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 10);
        let rest = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        for message in &first {
            queue.delete(&message.receipt).await.unwrap();
        }
        assert!(
            queue.delete(&first[0].receipt).await.is_err(),
            "deleted once"
        );
        clock.advance(VISIBILITY_TIMEOUT);
        let again = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(
            again.len(),
            2,
            "not deleted: back after the visibility timeout"
        );
        assert!(again.iter().all(|m| m.receives == 2));
        queue.delete_queue();
        let error = queue.receive(10, Duration::ZERO).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_long_poll_waits_for_a_first_message() {
        let queue = SimQueue::new(Arc::new(SimClock::new(Millis(0))));
        let sender = queue.clone();
        let receiving =
            tokio::spawn(async move { queue.receive(10, Duration::from_mins(10)).await.unwrap() });
        // On this one thread the receiver runs until it waits; the message then wakes it
        // long before its 10 minutes.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!receiving.is_finished(), "waiting for a first message");
        sender.send("{}");
        assert_eq!(receiving.await.unwrap().len(), 1);
    }
}
