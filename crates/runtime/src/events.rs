//! The change events' consumer (issue 21): reads the SQS queue an `EventBridge` rule delivers
//! SSM's and ECS's change events to, and tells the scheduler which runner, channel or service
//! each one concerns ([`Nudge`]), so that a change is acted on within seconds instead of at the
//! next sweep.
//!
//! Long polling (up to 20 s a call), batches of ten; a message is deleted once its nudge is
//! handed to the scheduler (through a channel of one place, so at most one is handed over and
//! not yet taken; a crash before the pass loses nothing: the controller sweeps as it starts,
//! and a scheduler that stops closes the channel, leaving the rest in the queue). Events are best effort, so nothing depends on them: a duplicate, one out of order
//! or one for a name this controller does not serve only asks for a pass; a body that is not
//! an event it reads is counted, logged and deleted; a queue that cannot be read (deleted,
//! access denied, throttled, an outage) is named in the logs and `/metrics`, retried with a
//! backoff (1 s doubling up to a minute) and reported to the scheduler, whose sweeps come every
//! `poll_interval_secs` again until the queue answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use runner_updater_core::domain::events::{
    concerns, parse_event, ChangeEvent, Concerns, ParameterOperation,
};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{ErrorKind, EventQueue, PortError, QueueMessage, RECEIVE_MESSAGES_MAX};

use crate::metrics::Metrics;

/// What a change event asks of the scheduler, or what the consumer reports about the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nudge {
    /// A pass of this runner (its desired state, release document or a retry changed).
    Runner {
        /// The runner's name (maybe one this controller does not serve).
        name: String,
        /// The event's time.
        at: Millis,
    },
    /// A step of this channel's release (its document, a resume, a retry changed).
    Channel {
        /// The channel.
        name: String,
        /// The event's time.
        at: Millis,
    },
    /// Something happened to this service (a deployment's state): the next read of the runner
    /// whose service it is, now.
    Service {
        /// Its cluster's name.
        cluster: String,
        /// Its name.
        service: String,
        /// The event's time.
        at: Millis,
    },
    /// The queue is read (`true`) or fails (`false`): the sweeps' interval follows.
    Queue {
        /// Whether its last call succeeded.
        up: bool,
    },
}

/// The first wait after a failed call to the queue (doubling up to [`BACKOFF_MAX`]).
const BACKOFF_MIN: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a failing queue.
pub const BACKOFF_MAX: Duration = Duration::from_mins(1);

/// Why a call to the queue failed, as `/metrics` names it.
#[must_use]
pub fn failure_reason(error: &PortError) -> &'static str {
    match error.kind {
        ErrorKind::NotFound => "not-found",
        ErrorKind::Throttled => "throttled",
        ErrorKind::Transient => "transient",
        ErrorKind::Permanent | ErrorKind::Conflict
            if error.message.contains("AccessDenied") || error.message.contains("HTTP 403") =>
        {
            "access-denied"
        }
        ErrorKind::Permanent | ErrorKind::Conflict => "other",
    }
}

/// What a failure means to on-call.
fn failure_words(error: &PortError) -> &'static str {
    match failure_reason(error) {
        "not-found" => "the events' queue does not exist (deleted? events.queue_url wrong?)",
        "access-denied" => {
            "the controller may not read the events' queue (its IAM policy's ReadChangeEvents statement)"
        }
        "throttled" => "the events' queue is throttled",
        "transient" => "the events' queue cannot be reached",
        _ => "the events' queue refused the call",
    }
}

/// Reads the events' queue and hands the scheduler what each event concerns.
pub struct EventConsumer {
    queue: Arc<dyn EventQueue>,
    prefix: String,
    wait: Duration,
    metrics: Option<Arc<Metrics>>,
}

impl EventConsumer {
    /// A consumer of `queue` for the parameters under `prefix`, each receive waiting up to
    /// `wait` for a first message.
    #[must_use]
    pub fn new(queue: Arc<dyn EventQueue>, prefix: &str, wait: Duration) -> Self {
        EventConsumer {
            queue,
            prefix: prefix.trim_end_matches('/').to_owned(),
            wait,
            metrics: None,
        }
    }

    /// Counts into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the queue can be read (`GetQueueAttributes`): what `run` calls at start, so that
    /// a wrong URL or a missing right is named before the first long poll.
    ///
    /// # Errors
    /// The queue's answer.
    pub async fn check(&self) -> Result<u64, PortError> {
        self.queue.waiting().await
    }

    /// Reads the queue until `nudges` closes (the scheduler stopped). Never returns early: a
    /// failing queue is retried with a backoff, and the scheduler is told.
    pub async fn run(self, nudges: mpsc::Sender<Nudge>) {
        let mut up: Option<bool> = None;
        let mut failures: u32 = 0;
        loop {
            let received = tokio::select! {
                () = nudges.closed() => return,
                received = self.queue.receive(RECEIVE_MESSAGES_MAX, self.wait) => received,
            };
            match received {
                Ok(messages) => {
                    if up != Some(true) {
                        if up == Some(false) {
                            tracing::info!(
                                "the events' queue is read again: sweeps go back to the backstop interval"
                            );
                        }
                        up = Some(true);
                        failures = 0;
                        self.report_up(true, &nudges).await;
                    }
                    if !self.hand_over(messages, &nudges).await {
                        return;
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if let Some(metrics) = &self.metrics {
                        metrics.event_queue_error(failure_reason(&error));
                    }
                    if failures.is_power_of_two() {
                        tracing::warn!(
                            %error,
                            failures,
                            "{}: change events are not read; the sweeps every poll_interval_secs carry on",
                            failure_words(&error)
                        );
                    }
                    if up != Some(false) {
                        up = Some(false);
                        self.report_up(false, &nudges).await;
                    }
                    let backoff = BACKOFF_MIN
                        .saturating_mul(1 << failures.saturating_sub(1).min(6))
                        .min(BACKOFF_MAX);
                    tokio::select! {
                        () = nudges.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// One receive (waiting up to the long poll for a first message) and its messages handed
    /// over: what [`EventConsumer::run`] repeats, for a caller that drives time itself (the
    /// simulation's tests). Returns the messages received.
    ///
    /// # Errors
    /// The receive's failure (nothing was handed over).
    pub async fn receive_once(&self, nudges: &mpsc::Sender<Nudge>) -> Result<usize, PortError> {
        let messages = self
            .queue
            .receive(RECEIVE_MESSAGES_MAX, self.wait)
            .await
            .inspect_err(|error| {
                if let Some(metrics) = &self.metrics {
                    metrics.event_queue_error(failure_reason(error));
                }
            })?;
        let count = messages.len();
        self.hand_over(messages, nudges).await;
        Ok(count)
    }

    /// Handles `messages` in order; `false` when the scheduler is gone.
    async fn hand_over(&self, messages: Vec<QueueMessage>, nudges: &mpsc::Sender<Nudge>) -> bool {
        for message in messages {
            if !self.handle(message, nudges).await {
                return false;
            }
        }
        true
    }

    async fn report_up(&self, up: bool, nudges: &mpsc::Sender<Nudge>) {
        if let Some(metrics) = &self.metrics {
            metrics.event_queue_up(up);
        }
        let _ = nudges.send(Nudge::Queue { up }).await;
    }

    /// Reads one message, hands its nudge over, deletes it. `false` when the scheduler is gone
    /// (the message is left: it comes back to whoever reads the queue next).
    async fn handle(&self, message: QueueMessage, nudges: &mpsc::Sender<Nudge>) -> bool {
        let (kind, nudge) = self.read(&message);
        if let Some(metrics) = &self.metrics {
            metrics.event_received(kind);
        }
        if let Some(nudge) = nudge {
            if nudges.send(nudge).await.is_err() {
                return false;
            }
        }
        if let Err(error) = self.queue.delete(&message.receipt).await {
            if let Some(metrics) = &self.metrics {
                metrics.event_queue_error(failure_reason(&error));
            }
            // It comes back after the visibility timeout: one more, harmless, pass.
            tracing::warn!(%error, message = %message.id, "a change event could not be deleted");
        }
        true
    }

    /// What a message is (its `kind` for the metrics) and asks for.
    fn read(&self, message: &QueueMessage) -> (&'static str, Option<Nudge>) {
        match parse_event(&message.body) {
            Err(error) => {
                tracing::warn!(
                    message = %message.id,
                    receives = message.receives,
                    %error,
                    "a message of the events' queue is not a change event this controller reads: deleted"
                );
                ("malformed", None)
            }
            Ok(ChangeEvent::Parameter {
                operation: ParameterOperation::Label,
                ..
            }) => ("ignored", None),
            Ok(ChangeEvent::Parameter { name, at, .. }) => match concerns(&self.prefix, &name) {
                Concerns::Runner(name) => ("runner", Some(Nudge::Runner { name, at })),
                Concerns::Channel(name) => ("channel", Some(Nudge::Channel { name, at })),
                Concerns::Nothing => ("ignored", None),
            },
            Ok(ChangeEvent::Service {
                cluster,
                service,
                at,
                ..
            }) => (
                "service",
                Some(Nudge::Service {
                    cluster,
                    service,
                    at,
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Script(std::sync::Mutex<Vec<Result<Vec<QueueMessage>, PortError>>>);

    #[async_trait::async_trait]
    impl EventQueue for Script {
        async fn receive(&self, _: usize, _: Duration) -> Result<Vec<QueueMessage>, PortError> {
            let next = self.0.lock().unwrap().pop();
            match next {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        }
        async fn delete(&self, _: &str) -> Result<(), PortError> {
            Ok(())
        }
        async fn waiting(&self) -> Result<u64, PortError> {
            Ok(0)
        }
    }

    fn message(body: &str) -> QueueMessage {
        QueueMessage {
            id: "m".to_owned(),
            receipt: "r".to_owned(),
            body: body.to_owned(),
            receives: 1,
        }
    }

    fn ssm(name: &str) -> String {
        format!(
            r#"{{"detail-type":"Parameter Store Change","source":"aws.ssm","time":"2026-11-30T16:00:00Z","detail":{{"operation":"Update","name":"{name}"}}}}"#
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_become_nudges_poison_is_counted_and_a_failing_queue_is_reported() {
        use runner_updater_ports::AwsOp;
        let gone = PortError::new(
            ErrorKind::NotFound,
            AwsOp::ReceiveMessage,
            "AWS.SimpleQueueService.NonExistentQueue",
        );
        // Popped from the end: a batch, a failure, a batch.
        let script = Script(std::sync::Mutex::new(vec![
            Ok(vec![message(&ssm("/ru/_channels/stable/release"))]),
            Err(gone),
            Ok(vec![
                message(&ssm("/ru/runner-a/release")),
                message("poison"),
                message(&ssm("/ru/runner-a/status")),
            ]),
        ]));
        let metrics = Arc::new(Metrics::new());
        let consumer = EventConsumer::new(Arc::new(script), "/ru", Duration::from_secs(20))
            .with_metrics(metrics.clone());
        let (tx, mut rx) = mpsc::channel(16);
        let running = tokio::spawn(consumer.run(tx));
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.push(rx.recv().await.unwrap());
        }
        // 2026-11-30T16:00:00Z
        let at = Millis(1_796_054_400_000);
        assert_eq!(
            seen,
            vec![
                Nudge::Queue { up: true },
                Nudge::Runner {
                    name: "runner-a".to_owned(),
                    at
                },
                Nudge::Queue { up: false },
                Nudge::Queue { up: true },
                Nudge::Channel {
                    name: "stable".to_owned(),
                    at
                },
            ]
        );
        drop(rx);
        running.await.unwrap();
        let text = metrics.render();
        for line in [
            "runner_updater_events_received_total{kind=\"runner\"} 1",
            "runner_updater_events_received_total{kind=\"malformed\"} 1",
            "runner_updater_events_received_total{kind=\"ignored\"} 1",
            "runner_updater_events_received_total{kind=\"channel\"} 1",
            "runner_updater_event_queue_errors_total{reason=\"not-found\"} 1",
            "runner_updater_event_queue_up 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
