//! Change events (issue 21) on the simulated AWS: what the simulated SSM announces reaches the
//! scheduler through the real consumer, and a pass of exactly the runner concerned follows with
//! no sweep; a desired state written parameter by parameter is acted on when it settles, not at
//! the next sweep; duplicates, unknown names, the controller's own writes and poison are
//! harmless; a change no event announced is caught by the sweep and counted; a failing queue is
//! named and counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use runner_updater_adapters::sim::SimQueue;
use runner_updater_config::Config;
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::scenario::{fleet_config, Scenario};
use runner_updater_ports::Clock as _;
use runner_updater_runtime::driver::{DriverError, RunnerDriver, TickReport};
use runner_updater_runtime::events::{EventConsumer, Nudge};
use runner_updater_runtime::metrics::Metrics;
use runner_updater_runtime::scheduler::{Control, Scheduler, Wake};

/// Records which runners had a pass.
#[derive(Default)]
struct Passes(Vec<String>);

impl Control for Passes {
    fn wait(&mut self, _: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async { Wake::Stop })
    }

    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        assert!(result.is_ok(), "{}: {result:?}", driver.runner());
        self.0.push(driver.runner().to_owned());
    }
}

struct World {
    s: Scenario,
    queue: SimQueue,
    scheduler: Scheduler,
    consumer: EventConsumer,
    nudges: mpsc::Sender<Nudge>,
    received: mpsc::Receiver<Nudge>,
    metrics: Arc<Metrics>,
}

impl World {
    /// Three runners, events on (a sweep every 600 s while they arrive), one first sweep.
    async fn new() -> World {
        let mut config = Config::from_toml(&fleet_config(3, 1, 1000)).unwrap();
        config.events.queue_url =
            Some("https://sqs.eu-west-1.amazonaws.com/000000000000/ru-events".to_owned());
        config.settle_secs = 30;
        let s = Scenario::with_config(7, config).unwrap();
        let queue = SimQueue::new(Arc::new(s.aws.clock.clone()));
        s.aws.ssm.publish_to(&queue);
        let metrics = Arc::new(Metrics::new());
        // The scheduler's own end of the nudges is fed by `deliver` (time is the test's).
        let (_, unused) = mpsc::channel(1);
        let scheduler =
            s.scheduler_as("controller-1")
                .with_events(&s.config, unused, Some(metrics.clone()));
        let consumer =
            EventConsumer::new(Arc::new(queue.clone()), &s.config.prefix, Duration::ZERO)
                .with_metrics(metrics.clone());
        let (nudges, received) = mpsc::channel(64);
        let mut world = World {
            s,
            queue,
            scheduler,
            consumer,
            nudges,
            received,
            metrics,
        };
        world.scheduler.nudge(Nudge::Queue { up: true });
        let mut passes = Passes::default();
        world.scheduler.step(true, &mut passes).await;
        assert_eq!(passes.0.len(), 3, "the first sweep passes every runner");
        world
    }

    /// The consumer reads the queue once and the scheduler takes what it handed over; then
    /// the runners due have their passes (no sweep). Returns who had one.
    async fn deliver(&mut self) -> Vec<String> {
        self.consumer.receive_once(&self.nudges).await.unwrap();
        while let Ok(nudge) = self.received.try_recv() {
            self.scheduler.nudge(nudge);
        }
        let mut passes = Passes::default();
        self.scheduler.step(false, &mut passes).await;
        passes.0
    }

    fn phase(&self, runner: &str) -> Phase {
        self.scheduler
            .drivers()
            .find(|d| d.runner() == runner)
            .unwrap()
            .phase()
    }

    fn metric(&self, line: &str) -> bool {
        self.metrics.render().lines().any(|l| l == line)
    }
}

#[tokio::test]
async fn a_release_written_is_acted_on_through_its_event_by_a_pass_of_that_runner_alone() {
    let mut w = World::new().await;
    w.s.set_release("runner-01", r#"{"version": "2.14.0"}"#);
    let passed = w.deliver().await;
    assert_eq!(passed, ["runner-01"], "exactly the runner concerned");
    assert_ne!(w.phase("runner-01"), Phase::Idle, "its attempt started");
    assert_eq!(w.phase("runner-00"), Phase::Idle);
    assert!(w.metric("runner_updater_events_received_total{kind=\"runner\"} 1"));
    assert!(
        w.metric("runner_updater_event_lag_seconds_count 1"),
        "{}",
        w.metrics.render()
    );
    // Its pass wrote its record and lease in SSM (this fleet's store): SSM announced those
    // too, and they ask for no pass.
    assert!(!w.queue.is_empty());
    assert!(w.deliver().await.is_empty(), "the controller's own writes");
    assert!(w.queue.is_empty(), "every message deleted once handled");
}

#[tokio::test]
async fn desired_parameters_are_acted_on_when_they_settle_not_at_the_next_sweep() {
    let mut w = World::new().await;
    w.s.set_desired("runner-02", "version", "2.14.0");
    assert_eq!(w.deliver().await, ["runner-02"]);
    assert_eq!(w.phase("runner-02"), Phase::Idle, "settling first");
    // The settle ends (30 s) long before the next sweep (600 s): its own pass comes then.
    w.s.aws.clock.advance(Duration::from_secs(31));
    let mut passes = Passes::default();
    w.scheduler.step(false, &mut passes).await;
    assert_eq!(passes.0, ["runner-02"]);
    assert_ne!(w.phase("runner-02"), Phase::Idle, "its attempt started");
}

#[tokio::test]
async fn duplicates_unknown_names_own_writes_and_poison_are_harmless() {
    let mut w = World::new().await;
    let prefix = w.s.config.prefix.clone();
    w.queue
        .parameter_changed(&format!("{prefix}/runner-99/release"), "Update");
    w.queue
        .parameter_changed(&format!("{prefix}/runner-00/status"), "Update");
    w.queue
        .parameter_changed(&format!("{prefix}/runner-00/lock/3"), "Create");
    w.queue.send("poison");
    w.queue
        .send(r#"{"source":"aws.s3","detail-type":"Object Created"}"#);
    w.queue
        .service_event("fleet-0", "someone-else", "SERVICE_STEADY_STATE");
    assert!(
        w.deliver().await.is_empty(),
        "nothing this controller serves"
    );
    // The same change announced three times, out of order with another runner's: one pass each.
    w.s.set_release("runner-00", r#"{"version": "2.14.0"}"#);
    w.queue
        .parameter_changed(&format!("{prefix}/runner-00/release"), "Update");
    w.queue
        .parameter_changed(&format!("{prefix}/runner-01/desired/auto-update"), "Update");
    w.queue
        .parameter_changed(&format!("{prefix}/runner-00/release"), "Update");
    let mut passed = w.deliver().await;
    passed.sort();
    assert_eq!(passed, ["runner-00", "runner-01"]);
    assert_ne!(w.phase("runner-00"), Phase::Idle);
    for line in [
        "runner_updater_events_received_total{kind=\"malformed\"} 2",
        "runner_updater_events_received_total{kind=\"ignored\"} 2",
        "runner_updater_events_received_total{kind=\"runner\"} 5",
        "runner_updater_events_received_total{kind=\"service\"} 1",
    ] {
        assert!(w.metric(line), "{line}:\n{}", w.metrics.render());
    }
}

#[tokio::test]
async fn a_service_event_brings_the_next_read_of_a_runner_in_an_attempt_forward() {
    let mut w = World::new().await;
    // At rest, its service is the sweeps' to read.
    w.queue
        .service_event("fleet-0", "runner-01", "SERVICE_DEPLOYMENT_COMPLETED");
    assert!(w.deliver().await.is_empty());
    w.s.set_release("runner-01", r#"{"version": "2.14.0"}"#);
    w.deliver().await;
    assert_ne!(w.phase("runner-01"), Phase::Idle);
    // Its next pass is due in active_poll_interval_secs; an event brings it forward.
    let mut passes = Passes::default();
    w.scheduler.step(false, &mut passes).await;
    assert!(passes.0.is_empty(), "not due yet");
    w.queue
        .service_event("fleet-0", "runner-01", "SERVICE_DEPLOYMENT_IN_PROGRESS");
    assert_eq!(w.deliver().await, ["runner-01"]);
}

#[tokio::test]
async fn a_change_no_event_announced_is_caught_by_the_sweep_and_counted() {
    let mut w = World::new().await;
    w.s.set_release("runner-00", r#"{"version": "2.14.0"}"#);
    // The event is lost on its way (received and deleted by nobody's consumer).
    let lost = {
        use runner_updater_ports::EventQueue as _;
        w.queue.receive(10, Duration::ZERO).await.unwrap()
    };
    assert_eq!(lost.len(), 1);
    for message in &lost {
        use runner_updater_ports::EventQueue as _;
        w.queue.delete(&message.receipt).await.unwrap();
    }
    assert!(w.deliver().await.is_empty());
    assert_eq!(w.phase("runner-00"), Phase::Idle, "nothing announced it");
    assert!(w.metric("runner_updater_backstop_catches_total 0"));
    let mut passes = Passes::default();
    w.scheduler.step(true, &mut passes).await;
    assert_ne!(w.phase("runner-00"), Phase::Idle, "the sweep caught it");
    assert!(w.metric("runner_updater_backstop_catches_total 1"));
    // An announced change is not a catch.
    w.s.set_release("runner-01", r#"{"version": "2.14.0"}"#);
    w.deliver().await;
    assert_ne!(w.phase("runner-01"), Phase::Idle);
    assert!(w.metric("runner_updater_backstop_catches_total 1"));
}

#[tokio::test]
async fn a_deleted_or_denied_queue_is_named_and_counted_and_the_events_come_back() {
    let mut w = World::new().await;
    w.queue.deny(true);
    let error = w.consumer.receive_once(&w.nudges).await.unwrap_err();
    assert!(error.message.contains("AccessDenied"), "{error}");
    assert_eq!(
        runner_updater_runtime::events::failure_reason(&error),
        "access-denied"
    );
    w.queue.deny(false);
    w.s.set_release("runner-02", r#"{"version": "2.14.0"}"#);
    assert_eq!(w.deliver().await, ["runner-02"], "read again once allowed");
    w.queue.delete_queue();
    let error = w.consumer.receive_once(&w.nudges).await.unwrap_err();
    assert_eq!(
        runner_updater_runtime::events::failure_reason(&error),
        "not-found"
    );
    for line in [
        "runner_updater_event_queue_errors_total{reason=\"access-denied\"} 1",
        "runner_updater_event_queue_errors_total{reason=\"not-found\"} 1",
    ] {
        assert!(w.metric(line), "{line}:\n{}", w.metrics.render());
    }
}

/// Simulated time for `Scheduler::run` (each wait advances the clock by at most 5 s, after the
/// passes and the consumer had their turn) that writes a channel's release at `write_at` — the
/// simulated SSM announces it — and stops once the channel's release record exists.
struct WritesARelease {
    s: Scenario,
    write_at: runner_updater_core::domain::Millis,
    written: Option<runner_updater_core::domain::Millis>,
    started: Option<runner_updater_core::domain::Millis>,
    until: runner_updater_core::domain::Millis,
}

impl Control for WritesARelease {
    fn wait(&mut self, timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let now = self.s.aws.clock.now();
            if self.written.is_none() && now >= self.write_at {
                self.s.set_channel_release(
                    "stable",
                    r#"{"version": "2.14.0", "plan": {"canary": 1, "waves": [100]}}"#,
                );
                self.written = Some(now);
            }
            if self.written.is_some()
                && self.s.store.load_release("stable").await.unwrap().is_some()
            {
                self.started = Some(now);
                return Wake::Stop;
            }
            if now >= self.until {
                return Wake::Stop;
            }
            self.s
                .aws
                .clock
                .advance(timeout.clamp(Duration::from_millis(1), Duration::from_secs(5)));
            Wake::Timeout
        })
    }

    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>) {
        assert!(result.is_ok(), "{}: {result:?}", driver.runner());
    }
}

/// The controller's own loop with the consumer running beside it: a channel's release written
/// two minutes after the first sweep is stepped within seconds (of simulated time), though the
/// sweeps come every 600 s.
#[tokio::test]
async fn the_loop_steps_a_channel_release_its_event_announced_long_before_the_next_sweep() {
    let mut config = Config::from_toml(&fleet_config(4, 1, 1000)).unwrap();
    config.events.queue_url =
        Some("https://sqs.eu-west-1.amazonaws.com/000000000000/ru-events".to_owned());
    config.settle_secs = 0;
    let s = Scenario::with_config(5, config).unwrap();
    s.follow_channels();
    let queue = SimQueue::new(Arc::new(s.aws.clock.clone()));
    s.aws.ssm.publish_to(&queue);
    let metrics = Arc::new(Metrics::new());
    let consumer = EventConsumer::new(
        Arc::new(queue.clone()),
        &s.config.prefix,
        Duration::from_millis(100),
    )
    .with_metrics(metrics.clone());
    let (nudges, received) = mpsc::channel(1);
    let consuming = tokio::spawn(consumer.run(nudges));
    let mut scheduler =
        s.scheduler_as("controller-1")
            .with_events(&s.config, received, Some(metrics.clone()));
    scheduler.nudge(Nudge::Queue { up: true });
    let start = s.aws.clock.now();
    let mut control = WritesARelease {
        s: s.clone(),
        write_at: start.after(Duration::from_mins(2)),
        written: None,
        started: None,
        until: start.after(Duration::from_mins(20)),
    };
    scheduler.run(&mut control, None).await;
    drop(scheduler);
    consuming.await.unwrap();
    let (written, started) = (control.written.unwrap(), control.started.unwrap());
    let took = started.since(written);
    assert!(
        took < Duration::from_mins(5),
        "stepped {took:?} after its event: the backstop sweep (600 s), not the event"
    );
    assert!(
        metrics
            .render()
            .contains("runner_updater_events_received_total{kind=\"channel\"} 1"),
        "{}",
        metrics.render()
    );
}
