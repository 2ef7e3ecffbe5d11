//! Prometheus metrics (text exposition on `/metrics`) and the liveness / readiness state behind
//! `/healthz` and `/readyz`. The driver reports into [`Metrics`]; `server` serves them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_ports::AwsOp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunnerLabels {
    runner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    runner: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    runner: String,
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    runner: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    runner: String,
    command: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelStateLabels {
    channel: String,
    state: String,
}

/// A channel's release as its coordinator last counted it, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleaseGauges {
    /// The wave in progress, 1-based (0: no release).
    pub wave: u32,
    /// Its waves.
    pub waves: u32,
    /// Failures counted against the budget.
    pub failed: u32,
    /// Failures tolerated now (one more halts it).
    pub allowed: u32,
    /// Halted.
    pub halted: bool,
    /// Finished (every wave done).
    pub finished: bool,
    /// Runners by where they stand.
    pub counts: runner_updater_core::domain::rollout::WaveCounts,
    /// When the wave in progress started, or last had runners waiting for their windows, as
    /// this controller saw it (its first step of the wave; after a restart or a takeover, that
    /// step's time).
    pub wave_since: Millis,
    /// The release's bake, in seconds.
    pub bake_secs: u64,
    /// How long a wave waits for its runners outside their windows at most, in seconds.
    pub window_wait_secs: u64,
}

/// Registers what the records and the loop say for the alerts: since when each runner is in
/// its state, whether its record can be read, when a pass last ended.
fn register_records(registry: &mut Registry, metrics: &Metrics) {
    registry.register(
        "state_since_timestamp_seconds",
        "When the runner entered its state (Unix seconds), as its record says where this controller last saved or read it; one series per runner, labelled with that state",
        metrics.state_since.clone(),
    );
    registry.register(
        "lease_lost",
        "Times this controller found the lease of a runner it was updating taken or lapsed (its write refused, its renewal refused, a command fenced)",
        metrics.lease_lost.clone(),
    );
    registry.register(
        "record_unreadable",
        "1 while the runner's record cannot be read (it is neither updated nor rolled back)",
        metrics.record_unreadable.clone(),
    );
    registry.register(
        "last_pass_timestamp_seconds",
        "When this controller last ended a pass or a sweep (Unix seconds): its loop is alive",
        metrics.last_pass.clone(),
    );
}

/// Registers the channels' release families.
fn register_releases(registry: &mut Registry, metrics: &Metrics) {
    let releases: [(&str, &str, &Family<ChannelLabels, Gauge>); 10] = [
        (
            "release_finished",
            "1 once the channel's release has finished (every wave done)",
            &metrics.release_finished,
        ),
        (
            "release_wave_since_timestamp_seconds",
            "When the wave in progress of the channel's release started, or last had runners waiting for their update windows, as this controller saw it (Unix seconds; after a restart or a takeover, its first step since)",
            &metrics.release_wave_since,
        ),
        (
            "release_bake_seconds",
            "The bake of the channel's release (seconds a settled wave waits before the next)",
            &metrics.release_bake,
        ),
        (
            "release_window_wait_seconds",
            "How long a wave of the channel's release waits at most for its runners outside their update windows (seconds)",
            &metrics.release_window_wait,
        ),
        (
            "release_wave",
            "The wave in progress of the channel's release, 1-based (0: no release)",
            &metrics.release_wave,
        ),
        (
            "release_waves",
            "Waves of the channel's release",
            &metrics.release_waves,
        ),
        (
            "release_failures",
            "Failed runners of the channel's release counted against its budget",
            &metrics.release_failures,
        ),
        (
            "release_budget",
            "Failed runners the channel's release tolerates now (one more halts it)",
            &metrics.release_budget,
        ),
        (
            "release_halted",
            "1 while the channel's release is halted",
            &metrics.release_halted,
        ),
        (
            "release_waiting_for_window",
            "Runners of the channel's release not started because their update window is closed",
            &metrics.release_waiting,
        ),
    ];
    for (name, help, family) in releases {
        registry.register(name, help, family.clone());
    }
    registry.register(
        "release_runners",
        "Runners of the channel's release by where they stand (pending, in-flight, done, rolled-back, pinned, excused, refused, outside-window)",
        metrics.release_runners.clone(),
    );
}

/// The `state` label values of `release_runners`.
const RELEASE_STATES: [&str; 8] = [
    "pending",
    "in-flight",
    "done",
    "rolled-back",
    "pinned",
    "excused",
    "refused",
    "outside-window",
];

/// The change events' families (issue 21).
#[derive(Debug)]
struct EventFamilies {
    received: Family<KindLabels, Counter>,
    lag: Histogram,
    queue_errors: Family<ReasonLabels, Counter>,
    queue_up: Gauge,
    backstop_catches: Counter,
    enabled: Gauge,
}

impl EventFamilies {
    fn new() -> Self {
        EventFamilies {
            received: Family::default(),
            lag: Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
            queue_errors: Family::default(),
            queue_up: Gauge::default(),
            backstop_catches: Counter::default(),
            enabled: Gauge::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "events_received",
            "Change events received from the queue, by kind (runner, channel, service, ignored: for nothing this controller serves or its own writes, malformed: not an event it reads)",
            self.received.clone(),
        );
        registry.register(
            "event_lag_seconds",
            "From a change event's time (AWS's) to the start of the pass it asked for",
            self.lag.clone(),
        );
        registry.register(
            "event_queue_errors",
            "Failed calls to the events' queue, by reason (not-found, access-denied, throttled, transient, other)",
            self.queue_errors.clone(),
        );
        registry.register(
            "event_queue_up",
            "1 while the events' queue is read (its last call succeeded), 0 while it fails or when events are off",
            self.queue_up.clone(),
        );
        registry.register(
            "events_enabled",
            "1 when change events are configured (events.queue_url)",
            self.enabled.clone(),
        );
        registry.register(
            "backstop_catches",
            "Update attempts started by a sweep with no change event announcing the change (events on): events lost or late",
            self.backstop_catches.clone(),
        );
    }
}

fn reconcile_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// Every metric the controller exposes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Family<StateLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    updates: Family<ResultLabels, Counter>,
    rollbacks: Family<RunnerLabels, Counter>,
    commands: Family<CommandLabels, Counter>,
    aws_calls: Family<AwsLabels, Counter>,
    retries: Family<RunnerLabels, Counter>,
    reconcile: Family<RunnerLabels, Histogram, fn() -> Histogram>,
    lease_held: Family<RunnerLabels, Gauge>,
    last_success: Family<RunnerLabels, Gauge>,
    aws_reachable: Family<RunnerLabels, Gauge>,
    release_wave: Family<ChannelLabels, Gauge>,
    release_waves: Family<ChannelLabels, Gauge>,
    release_runners: Family<ChannelStateLabels, Gauge>,
    release_failures: Family<ChannelLabels, Gauge>,
    release_budget: Family<ChannelLabels, Gauge>,
    release_halted: Family<ChannelLabels, Gauge>,
    release_waiting: Family<ChannelLabels, Gauge>,
    release_wave_since: Family<ChannelLabels, Gauge>,
    release_finished: Family<ChannelLabels, Gauge>,
    release_bake: Family<ChannelLabels, Gauge>,
    release_window_wait: Family<ChannelLabels, Gauge>,
    state_since: Family<StateLabels, Gauge>,
    lease_lost: Family<RunnerLabels, Counter>,
    record_unreadable: Family<RunnerLabels, Gauge>,
    last_pass: Gauge,
    events: EventFamilies,
    passes: AtomicU64,
    last_pass_ms: AtomicU64,
    loaded: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric declared.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("runner_updater");
        let metrics = Metrics {
            state: Family::default(),
            transitions: Family::default(),
            updates: Family::default(),
            rollbacks: Family::default(),
            commands: Family::default(),
            aws_calls: Family::default(),
            retries: Family::default(),
            reconcile: Family::new_with_constructor(reconcile_histogram),
            lease_held: Family::default(),
            last_success: Family::default(),
            aws_reachable: Family::default(),
            release_wave: Family::default(),
            release_waves: Family::default(),
            release_runners: Family::default(),
            release_failures: Family::default(),
            release_budget: Family::default(),
            release_halted: Family::default(),
            release_waiting: Family::default(),
            release_wave_since: Family::default(),
            release_finished: Family::default(),
            release_bake: Family::default(),
            release_window_wait: Family::default(),
            state_since: Family::default(),
            lease_lost: Family::default(),
            record_unreadable: Family::default(),
            last_pass: Gauge::default(),
            events: EventFamilies::new(),
            passes: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "state",
            "1 for the state each runner is in, 0 for the others",
            metrics.state.clone(),
        );
        registry.register(
            "transitions",
            "State transitions taken",
            metrics.transitions.clone(),
        );
        registry.register(
            "updates",
            "Update attempts ended, by result (done, rolled_back)",
            metrics.updates.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks of the service started by the health gate",
            metrics.rollbacks.clone(),
        );
        registry.register(
            "commands",
            "Effects performed against AWS (each one or more AWS calls), by command and outcome",
            metrics.commands.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls, by operation and outcome (ok, throttled, transient-error, permanent-error, not-found, conflict)",
            metrics.aws_calls.clone(),
        );
        registry.register(
            "retries",
            "Retries of transient AWS errors",
            metrics.retries.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one pass over a runner",
            metrics.reconcile.clone(),
        );
        registry.register(
            "lease_held",
            "1 while this controller holds the runner's lease",
            metrics.lease_held.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the runner's last update reached Done (Unix seconds)",
            metrics.last_success.clone(),
        );
        registry.register(
            "aws_reachable",
            "1 when the last observation of the runner could read AWS",
            metrics.aws_reachable.clone(),
        );
        register_records(&mut registry, &metrics);
        register_releases(&mut registry, &metrics);
        metrics.events.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// This controller does not advance `channel`'s release (another does, or it has none):
    /// its series go (the controller that advances it exposes them).
    pub fn release_gone(&self, channel: &str) {
        let labels = ChannelLabels {
            channel: channel.to_owned(),
        };
        for family in [
            &self.release_wave,
            &self.release_waves,
            &self.release_failures,
            &self.release_budget,
            &self.release_halted,
            &self.release_waiting,
            &self.release_wave_since,
            &self.release_finished,
            &self.release_bake,
            &self.release_window_wait,
        ] {
            family.remove(&labels);
        }
        for state in RELEASE_STATES {
            self.release_runners.remove(&ChannelStateLabels {
                channel: channel.to_owned(),
                state: state.to_owned(),
            });
        }
    }

    /// A channel's release as its coordinator last counted it.
    pub fn release(&self, channel: &str, gauges: &ReleaseGauges) {
        let labels = ChannelLabels {
            channel: channel.to_owned(),
        };
        let set = |family: &Family<ChannelLabels, Gauge>, value: u32| {
            family.get_or_create(&labels).set(i64::from(value));
        };
        set(&self.release_wave, gauges.wave);
        set(&self.release_waves, gauges.waves);
        set(&self.release_failures, gauges.failed);
        set(&self.release_budget, gauges.allowed);
        set(&self.release_halted, u32::from(gauges.halted));
        set(&self.release_finished, u32::from(gauges.finished));
        set(&self.release_waiting, gauges.counts.outside_window);
        let seconds = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.release_wave_since
            .get_or_create(&labels)
            .set(seconds(gauges.wave_since.0 / 1000));
        self.release_bake
            .get_or_create(&labels)
            .set(seconds(gauges.bake_secs));
        self.release_window_wait
            .get_or_create(&labels)
            .set(seconds(gauges.window_wait_secs));
        let c = gauges.counts;
        let values = [
            c.pending,
            c.in_flight,
            c.done,
            c.rolled_back,
            c.pinned,
            c.excused,
            c.refused,
            c.outside_window,
        ];
        for (state, value) in RELEASE_STATES.into_iter().zip(values) {
            self.release_runners
                .get_or_create(&ChannelStateLabels {
                    channel: channel.to_owned(),
                    state: state.to_owned(),
                })
                .set(i64::from(value));
        }
    }

    /// The runner is in `phase` now.
    pub fn set_state(&self, runner: &str, phase: Phase) {
        for each in Phase::ALL {
            self.state
                .get_or_create(&StateLabels {
                    runner: runner.to_owned(),
                    state: each.name().to_owned(),
                })
                .set(i64::from(each == phase));
        }
    }

    /// A transition was taken.
    pub fn transition(&self, runner: &str, from: Phase, to: Phase) {
        self.transitions
            .get_or_create(&TransitionLabels {
                runner: runner.to_owned(),
                from: from.name().to_owned(),
                to: to.name().to_owned(),
            })
            .inc();
        let runner_labels = RunnerLabels {
            runner: runner.to_owned(),
        };
        match to {
            Phase::Done | Phase::RolledBack => {
                self.updates
                    .get_or_create(&ResultLabels {
                        runner: runner.to_owned(),
                        result: to.name().to_owned(),
                    })
                    .inc();
            }
            Phase::RollingBack => {
                self.rollbacks.get_or_create(&runner_labels).inc();
            }
            _ => {}
        }
    }

    /// A command ran.
    pub fn command(&self, runner: &str, command: &str, outcome: &str) {
        self.commands
            .get_or_create(&CommandLabels {
                runner: runner.to_owned(),
                command: command.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// An AWS API call ended.
    pub fn aws_call(&self, operation: AwsOp, outcome: &str) {
        self.aws_calls
            .get_or_create(&AwsLabels {
                operation: operation.name().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A change event of `kind` was received (`runner`, `channel`, `service`, `ignored`,
    /// `malformed`).
    pub fn event_received(&self, kind: &str) {
        self.events
            .received
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A pass asked for by a change event started `seconds` after the event's time.
    pub fn event_lag(&self, seconds: f64) {
        self.events.lag.observe(seconds.max(0.0));
    }

    /// A call to the events' queue failed for `reason`.
    pub fn event_queue_error(&self, reason: &str) {
        self.events
            .queue_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Whether the events' queue is read now.
    pub fn event_queue_up(&self, up: bool) {
        self.events.queue_up.set(i64::from(up));
    }

    /// A sweep started an update attempt that no change event announced.
    pub fn backstop_catch(&self) {
        self.events.backstop_catches.inc();
    }

    /// A transient error is retried.
    pub fn retry(&self, runner: &str) {
        self.retries
            .get_or_create(&RunnerLabels {
                runner: runner.to_owned(),
            })
            .inc();
    }

    /// A pass over `runner` ended at `now`, having taken `seconds`, reading AWS or not.
    pub fn pass(&self, runner: &str, seconds: f64, now: Millis, aws_reachable: bool) {
        let labels = RunnerLabels {
            runner: runner.to_owned(),
        };
        self.reconcile.get_or_create(&labels).observe(seconds);
        self.aws_reachable
            .get_or_create(&labels)
            .set(i64::from(aws_reachable));
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.heartbeat(now);
    }

    /// The runner's lease and last success, as the record says.
    pub fn runner_status(&self, runner: &str, lease_held: bool, last_success: Option<Millis>) {
        let labels = RunnerLabels {
            runner: runner.to_owned(),
        };
        self.lease_held
            .get_or_create(&labels)
            .set(i64::from(lease_held));
        if let Some(at) = last_success {
            self.last_success
                .get_or_create(&labels)
                .set(i64::try_from(at.0 / 1000).unwrap_or(i64::MAX));
        }
    }

    /// The control loop finished a round over every runner at `now` (also with no runner at
    /// all: liveness is the loop's, not a runner's).
    pub fn heartbeat(&self, now: Millis) {
        self.last_pass_ms.store(now.0, Ordering::Relaxed);
        self.last_pass
            .set(i64::try_from(now.0 / 1000).unwrap_or(i64::MAX));
    }

    /// What the runner's record says, as this controller last saved or read it: its state and
    /// since when (none: no record yet), and whether it could be read at all.
    pub fn runner_record(&self, runner: &str, state: Option<(Phase, Millis)>, unreadable: bool) {
        let labels = RunnerLabels {
            runner: runner.to_owned(),
        };
        if let Some((phase, since)) = state {
            for each in Phase::ALL {
                let labels = StateLabels {
                    runner: runner.to_owned(),
                    state: each.name().to_owned(),
                };
                if each == phase {
                    self.state_since
                        .get_or_create(&labels)
                        .set(i64::try_from(since.0 / 1000).unwrap_or(i64::MAX));
                } else {
                    self.state_since.remove(&labels);
                }
            }
        }

        self.record_unreadable
            .get_or_create(&labels)
            .set(i64::from(unreadable));
    }

    /// A runner this controller passes over: its counters start at zero, so that the first
    /// rollback or lost lease is an increase (and the series exist for the alert rules).
    pub fn runner_known(&self, runner: &str) {
        let labels = RunnerLabels {
            runner: runner.to_owned(),
        };
        let _ = self.rollbacks.get_or_create(&labels);
        let _ = self.lease_lost.get_or_create(&labels);
    }

    /// This controller found the lease of `runner`, which it was updating, taken or lapsed.
    pub fn lease_lost(&self, runner: &str) {
        self.lease_lost
            .get_or_create(&RunnerLabels {
                runner: runner.to_owned(),
            })
            .inc();
    }

    /// Whether change events are configured (`events.queue_url`). When they are, the queue's
    /// failures are counted from zero for every reason (their series exist before a failure).
    pub fn events_enabled(&self, enabled: bool) {
        self.events.enabled.set(i64::from(enabled));
        if enabled {
            for reason in [
                "not-found",
                "access-denied",
                "throttled",
                "transient",
                "other",
            ] {
                let _ = self.events.queue_errors.get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// Every runner's record was loaded from the store at least once.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }

    /// Liveness: a pass ended within `window` of `now`.
    #[must_use]
    pub fn alive(&self, now: Millis, window: std::time::Duration) -> bool {
        let last = self.last_pass_ms.load(Ordering::Relaxed);
        last != 0 && now.since(Millis(last)) <= window
    }

    /// Readiness: the store was loaded and the last observation of every runner read AWS.
    #[must_use]
    pub fn ready(&self) -> bool {
        if !self.loaded.load(Ordering::Relaxed) {
            return false;
        }
        let text = self.render_openmetrics();
        !text
            .lines()
            .any(|l| l.starts_with("runner_updater_aws_reachable{") && l.ends_with(" 0"))
    }

    /// The OpenMetrics text format (`application/openmetrics-text; version=1.0.0`).
    #[must_use]
    pub fn render_openmetrics(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): OpenMetrics names a
    /// counter family without its `_total` suffix and ends with `# EOF`; Prometheus' own format
    /// (and `promtool check metrics`) want the sample's name in `# HELP` / `# TYPE`.
    #[must_use]
    pub fn render(&self) -> String {
        let open = self.render_openmetrics();
        let counters: Vec<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut text = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(&name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            text.push_str(renamed.as_deref().unwrap_or(line));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_its_labels() {
        let metrics = Metrics::new();
        metrics.set_state("runner-a", Phase::Soaking);
        metrics.transition("runner-a", Phase::Soaking, Phase::Done);
        metrics.transition("runner-b", Phase::AwaitingRollout, Phase::RollingBack);
        metrics.command("runner-a", "update_service", "ok");
        metrics.retry("runner-a");
        metrics.aws_call(AwsOp::DescribeServices, "ok");
        metrics.pass("runner-a", 0.2, Millis(5_000), true);
        metrics.runner_status("runner-a", true, Some(Millis(4_000)));
        let text = metrics.render();
        for line in [
            "runner_updater_state{runner=\"runner-a\",state=\"soaking\"} 1",
            "runner_updater_state{runner=\"runner-a\",state=\"idle\"} 0",
            "runner_updater_transitions_total{runner=\"runner-a\",from=\"soaking\",to=\"done\"} 1",
            "runner_updater_updates_total{runner=\"runner-a\",result=\"done\"} 1",
            "runner_updater_rollbacks_total{runner=\"runner-b\"} 1",
            "runner_updater_commands_total{runner=\"runner-a\",command=\"update_service\",outcome=\"ok\"} 1",
            "runner_updater_retries_total{runner=\"runner-a\"} 1",
            "runner_updater_aws_calls_total{operation=\"DescribeServices\",outcome=\"ok\"} 1",
            "runner_updater_reconcile_duration_seconds_count{runner=\"runner-a\"} 1",
            "runner_updater_lease_held{runner=\"runner-a\"} 1",
            "runner_updater_last_success_timestamp_seconds{runner=\"runner-a\"} 4",
            "runner_updater_aws_reachable{runner=\"runner-a\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("# TYPE runner_updater_transitions_total counter"));
        assert!(!text.contains("# EOF"));
        assert!(metrics.render_openmetrics().ends_with("# EOF\n"));
        assert!(metrics.alive(Millis(10_000), std::time::Duration::from_secs(5)));
        assert!(!metrics.alive(Millis(11_000), std::time::Duration::from_secs(5)));
        assert!(!metrics.ready(), "not ready before the store was loaded");
        metrics.set_loaded();
        assert!(metrics.ready());
        metrics.pass("runner-a", 0.2, Millis(12_000), false);
        assert!(!metrics.ready(), "not ready while AWS cannot be read");
    }

    #[test]
    fn a_release_is_exposed_per_channel_and_a_halt_leaves_readiness_alone() {
        let metrics = Metrics::new();
        metrics.set_loaded();
        metrics.pass("runner-a", 0.2, Millis(5_000), true);
        let mut gauges = ReleaseGauges {
            wave: 2,
            waves: 3,
            failed: 1,
            allowed: 0,
            halted: true,
            ..ReleaseGauges::default()
        };
        gauges.counts.done = 4;
        gauges.counts.outside_window = 2;
        metrics.release("stable", &gauges);
        let text = metrics.render();
        for line in [
            "runner_updater_release_wave{channel=\"stable\"} 2",
            "runner_updater_release_waves{channel=\"stable\"} 3",
            "runner_updater_release_failures{channel=\"stable\"} 1",
            "runner_updater_release_budget{channel=\"stable\"} 0",
            "runner_updater_release_halted{channel=\"stable\"} 1",
            "runner_updater_release_waiting_for_window{channel=\"stable\"} 2",
            "runner_updater_release_runners{channel=\"stable\",state=\"done\"} 4",
            "runner_updater_release_runners{channel=\"stable\",state=\"outside-window\"} 2",
            "# TYPE runner_updater_release_halted gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            metrics.ready(),
            "a halted release is not the controller's unreadiness"
        );
        metrics.release_gone("stable");
        assert!(!metrics.render().contains("channel=\"stable\""));
    }
}
