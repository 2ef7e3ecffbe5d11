//! The scheduler: runs every runner's driver on its own time.
//!
//! Runners at rest are passed over by sweeps, one per `poll_interval_secs` (or at once on a
//! trigger), each starting with a fleet read ([`crate::reader`]); a runner in an attempt is
//! passed over on its own every `active_poll_interval_secs`, and a runner at rest waiting for
//! its `desired/*` parameters to settle when they do (`RunnerDriver::wake_at`). At most
//! `max_concurrent_runners` passes run at a time, and a runner still in its pass is skipped,
//! never waited for: a slow or failing runner delays no other. With change events
//! (`with_events`), a runner, a channel or a service an event concerns is passed over at once,
//! and the sweeps become the backstop (`events.backstop_interval_secs`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use runner_updater_config::{Config, RunnerConfig};
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_ports::{Clock, ErrorKind, PortError};

use crate::channels::Channels;
use crate::driver::{DriverError, RunnerDriver, TickReport};
use crate::events::Nudge;
use crate::metrics::Metrics;
use crate::reader::{FleetReader, FleetSnapshot, GateSnapshot, RunnerSnapshot};

/// What wakes the scheduler besides its own timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The time asked for has passed.
    Timeout,
    /// Sweep now (`POST /trigger`, SIGHUP).
    Trigger,
    /// Stop (SIGTERM, SIGINT): no new pass starts; passes under way are given the grace period.
    Stop,
}

/// What the scheduler's owner provides: waiting (real or simulated time, signals), and hearing
/// of every pass that ended.
pub trait Control {
    /// Waits up to `timeout` for something to happen.
    fn wait(&mut self, timeout: Duration) -> Pin<Box<dyn Future<Output = Wake> + Send + '_>>;
    /// A runner's pass ended.
    fn ticked(&mut self, driver: &RunnerDriver, result: &Result<TickReport, DriverError>);
    /// A sweep's fleet read ended (the loop is alive and reads AWS).
    fn swept(&mut self, snapshot: &FleetSnapshot) {
        let _ = snapshot;
    }
    /// Every runner's record has been read at least once.
    fn all_loaded(&mut self) {}
}

struct Slot {
    /// `None` while its pass runs.
    driver: Option<RunnerDriver>,
    /// When it is due on its own (runners in an attempt).
    due: Millis,
    /// Waiting for a fleet read or a free place.
    queued: bool,
    loaded: bool,
    /// A runner at rest waiting for its desired state to settle: its pass is due then, not at
    /// the next sweep (`RunnerDriver::wake_at`).
    wake: Option<Millis>,
    /// Queued for a pass that reads for itself when it starts (no read taken before): a
    /// change event meanwhile needs no pass of its own.
    own_reads: bool,
    /// What change events asked of this runner.
    heard: Heard,
}

/// What change events asked of a runner.
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    /// A change event asked for a pass while this runner was in one (or queued with a read
    /// that may predate it): another pass follows at once.
    again: bool,
    /// The time of the earliest change event not yet followed by a pass (the events' lag).
    announced: Option<Millis>,
    /// A change event announced a change since this runner's last attempt started: an attempt
    /// starting now is not one of the backstop's catches.
    flagged: bool,
    /// At rest when its pass (the last, or the one under way) started.
    rested: bool,
}

impl Heard {
    fn announce(&mut self, at: Millis) {
        self.announced = Some(self.announced.map_or(at, |a| a.min(at)));
    }
}

/// The change events' side of the scheduler (see [`Scheduler::with_events`]).
struct Events {
    /// Taken by [`Scheduler::run`] for its loop.
    nudges: Option<mpsc::Receiver<Nudge>>,
    /// The sweeps' interval while the queue is read.
    backstop: Duration,
    /// Whether the queue was read at its last call.
    up: bool,
    by_name: HashMap<String, usize>,
    by_service: HashMap<(String, String), usize>,
    by_channel: HashMap<String, Vec<usize>>,
    metrics: Option<Arc<Metrics>>,
}

/// The cluster's name in `cluster` (a name or an ARN, as the configuration may give it).
fn cluster_name(cluster: &str) -> &str {
    cluster
        .rsplit_once(":cluster/")
        .map_or(cluster, |(_, name)| name)
}

/// A fleet read under way, with the runners it is for.
type Reading = (Vec<usize>, Pin<Box<dyn Future<Output = FleetSnapshot>>>);

/// A gate read under way, with the runners it is for.
type GateReading = (Vec<usize>, Pin<Box<dyn Future<Output = GateSnapshot>>>);

/// The fewest runners due in the health gate at once that are read together: one alone reads
/// its own service (the same one call).
const GATE_READ_MIN: usize = 2;

type Pass = Pin<Box<dyn Future<Output = (usize, RunnerDriver, Result<TickReport, DriverError>)>>>;

/// Passes waiting for a place: runners in an attempt first (their lease is running), then the
/// sweep's runners at rest.
#[derive(Default)]
struct Queue {
    /// Runners in the health gate whose service a gate read just handed them.
    read: VecDeque<usize>,
    urgent: VecDeque<usize>,
    sweep: VecDeque<(usize, Option<RunnerSnapshot>)>,
}

impl Queue {
    fn pop(&mut self) -> Option<(usize, Option<RunnerSnapshot>)> {
        self.read
            .pop_front()
            .or_else(|| self.urgent.pop_front())
            .map(|index| (index, None))
            .or_else(|| self.sweep.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.read.is_empty() && self.urgent.is_empty() && self.sweep.is_empty()
    }
}

/// Runs every runner's driver on its own time (see the module documentation).
pub struct Scheduler {
    slots: Vec<Slot>,
    reader: FleetReader,
    clock: Arc<dyn Clock>,
    concurrency: usize,
    sweep_interval: Duration,
    grace: Duration,
    loaded: usize,
    /// Whether the records were read ahead (once, before the first pass).
    read_ahead: bool,
    /// The earliest `due` of the runners in an attempt that are neither queued nor in a pass
    /// (no earlier than this, no slot needs looking at).
    earliest_due: Millis,
    /// The channels' releases, moved on after each sweep's fleet read.
    channels: Option<Arc<Channels>>,
    /// The change events, when the controller reads them.
    events: Option<Events>,
}

/// When the loop sweeps next: the sweep interval in force after the last sweep, or now when
/// one was asked for (the first, a trigger, a channel's change event) or the wall clock stepped
/// back past the last one (what was due stays due).
#[derive(Debug, Default)]
struct SweepClock {
    last: Option<Millis>,
    asked: bool,
    /// The sweep asked for is a channel's: it reads the fleet even with no runner at rest.
    for_channels: bool,
}

impl SweepClock {
    fn next(&self, now: Millis, every: Duration) -> Millis {
        match self.last {
            Some(last) if !self.asked && last <= now => last.after(every),
            _ => now,
        }
    }

    fn swept(&mut self, now: Millis) {
        self.last = Some(now);
        self.asked = false;
        self.for_channels = false;
    }

    fn ask(&mut self) {
        self.asked = true;
    }

    fn ask_for_channels(&mut self) {
        self.asked = true;
        self.for_channels = true;
    }
}

/// The next nudge of the consumer's, if there is a consumer (else never).
async fn next_nudge(nudges: &mut Option<mpsc::Receiver<Nudge>>) -> Option<Nudge> {
    match nudges.as_mut() {
        Some(nudges) => nudges.recv().await,
        None => std::future::pending().await,
    }
}

/// One step of the channels' releases, from a fleet read (none when it could not read the
/// parameters: the followers keep what they were told).
async fn step_channels(channels: Option<&Channels>, snapshot: &FleetSnapshot) {
    if let (Some(channels), Some(documents)) = (channels, snapshot.channel_documents()) {
        channels.sweep(&documents).await;
    }
}

impl Scheduler {
    /// The records of the runners not loaded yet, read ahead in as few calls as the store
    /// allows (the state table: one scan, not a read per runner); when that fails, each runner
    /// reads its own, as without it.
    async fn read_records_ahead(&mut self) {
        if std::mem::replace(&mut self.read_ahead, true) {
            return;
        }
        let drivers = || self.slots.iter().filter_map(|slot| slot.driver.as_ref());
        let Some(store) = drivers().next().map(RunnerDriver::store) else {
            return;
        };
        let names: Vec<String> = drivers()
            .filter(|driver| !driver.loaded())
            .map(|driver| driver.runner().to_owned())
            .collect();
        if names.is_empty() {
            return;
        }
        if let Err(error) = store.prefetch(&names).await {
            tracing::warn!(%error, "reading the records ahead failed: each runner reads its own");
        }
    }

    /// A scheduler of `drivers`, reading the fleet with `reader`.
    #[must_use]
    pub fn new(
        config: &Config,
        drivers: Vec<RunnerDriver>,
        reader: FleetReader,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.now();
        Scheduler {
            slots: drivers
                .into_iter()
                .map(|driver| Slot {
                    driver: Some(driver),
                    due: now,
                    queued: false,
                    loaded: false,
                    wake: None,
                    own_reads: false,
                    heard: Heard::default(),
                })
                .collect(),
            reader,
            clock,
            concurrency: config.max_concurrent_runners.max(1),
            sweep_interval: Duration::from_secs(config.poll_interval_secs),
            grace: Duration::from_secs(25),
            loaded: 0,
            read_ahead: false,
            earliest_due: now,
            channels: None,
            events: None,
        }
    }

    /// Follows the change events `nudges` brings (the [`crate::events::EventConsumer`]'s): a
    /// pass of the runner, or a step of the channel, an event concerns, at once; the runner's
    /// next read when its service changed. While they arrive, sweeps come every `backstop`
    /// instead of every `poll_interval_secs` (unless a channel's release is under way).
    #[must_use]
    pub fn with_events(
        mut self,
        config: &Config,
        nudges: mpsc::Receiver<Nudge>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let mut by_name = HashMap::new();
        let mut by_service = HashMap::new();
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(driver) = &slot.driver {
                let runner = driver.runner_config();
                by_name.insert(runner.name.clone(), index);
                by_service.insert(
                    (
                        cluster_name(&runner.cluster).to_owned(),
                        runner.service.clone(),
                    ),
                    index,
                );
            }
        }
        let by_channel = config
            .channels()
            .into_iter()
            .map(|(channel, runners)| {
                let indices = runners
                    .iter()
                    .filter_map(|name| by_name.get(name).copied())
                    .collect();
                (channel, indices)
            })
            .collect();
        self.events = Some(Events {
            nudges: Some(nudges),
            backstop: Duration::from_secs(config.events.backstop_interval_secs)
                .max(self.sweep_interval),
            up: false,
            by_name,
            by_service,
            by_channel,
            metrics,
        });
        self
    }

    /// The interval to the next sweep: the backstop's while the events arrive and this
    /// controller advances no channel's release under way, `poll_interval_secs` otherwise.
    fn sweep_every(&self) -> Duration {
        match &self.events {
            Some(events) if events.up && !self.channels.as_ref().is_some_and(|c| c.advancing()) => {
                events.backstop
            }
            _ => self.sweep_interval,
        }
    }

    /// What a change event asks: a pass of its runner now (after the one under way, if any),
    /// the runner's next read now when its service changed and it is in an attempt, a sweep now for a channel (whose
    /// step reads its documents). Names this controller does not serve are ignored. Returns
    /// whether a sweep is wanted now.
    pub fn nudge(&mut self, nudge: Nudge) -> bool {
        let now = self.clock.now();
        let Some(events) = self.events.as_mut() else {
            return false;
        };
        let (indices, at, announces): (Vec<usize>, Millis, bool) = match nudge {
            Nudge::Queue { up } => {
                // The sweeps' interval follows (`sweep_every`): `poll_interval_secs` from the
                // last sweep while the queue fails, without a sweep of its own (a flapping
                // queue would make a storm of them).
                events.up = up;
                return false;
            }
            Nudge::Runner { name, at } => {
                let Some(&index) = events.by_name.get(&name) else {
                    tracing::debug!(runner = %name, "a change event for a runner this controller does not serve");
                    return false;
                };
                (vec![index], at, true)
            }
            Nudge::Service {
                cluster,
                service,
                at,
            } => {
                let Some(&index) = events.by_service.get(&(cluster, service)) else {
                    return false;
                };
                // Only a runner in an attempt reads its service on its own time; at rest the
                // sweeps read it (someone else's deployment is theirs to notice).
                let resting = self
                    .slots
                    .get(index)
                    .and_then(|slot| slot.driver.as_ref())
                    .is_some_and(RunnerDriver::at_rest);
                if resting {
                    return false;
                }
                (vec![index], at, false)
            }
            Nudge::Channel { name, at } => {
                let Some(indices) = events.by_channel.get(&name) else {
                    return false;
                };
                for &index in indices {
                    if let Some(slot) = self.slots.get_mut(index) {
                        slot.heard.flagged = true;
                        slot.heard.announce(at);
                    }
                }
                return true;
            }
        };
        for index in indices {
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            slot.heard.announce(at);
            slot.heard.flagged |= announces;
            match &slot.driver {
                Some(driver) if !slot.queued => {
                    if driver.at_rest() {
                        slot.wake = Some(now);
                    } else {
                        slot.due = now;
                    }
                    self.earliest_due = now;
                }
                // Queued for a pass that reads when it starts: it will see the change.
                Some(_) if slot.own_reads => {}
                // In a pass, or queued with a read that may predate the change.
                _ => slot.heard.again = true,
            }
        }
        false
    }

    /// Serves the channels' releases: the coordinator steps after each sweep's fleet read, and
    /// every driver follows its channel on the coordinator's board.
    #[must_use]
    pub fn with_channels(mut self, channels: Channels) -> Self {
        let board = channels.board();
        for slot in &mut self.slots {
            if let Some(driver) = slot.driver.as_mut() {
                driver.follow_channels(board.clone());
            }
        }
        self.channels = Some(Arc::new(channels));
        self
    }

    /// Sets how long passes under way are given to end after a stop (default 25 s: within
    /// Kubernetes' default grace period of 30 s, with room to flush the spans).
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The drivers not in a pass (all of them between [`Scheduler::step`]s, and after
    /// [`Scheduler::run`] unless a pass outlived the grace period of a stop).
    pub fn drivers(&self) -> impl Iterator<Item = &RunnerDriver> {
        self.slots.iter().filter_map(|s| s.driver.as_ref())
    }

    /// One round, waiting for all of it: a sweep (a fleet read, then every runner at rest)
    /// when `sweep`, and every runner in an attempt that is due. For the benchmark and tests;
    /// `run` is the controller's loop. Returns how many runners are at rest after it, and the
    /// fleet read (what is left of it).
    pub async fn step(
        &mut self,
        sweep: bool,
        control: &mut dyn Control,
    ) -> (usize, Option<FleetSnapshot>) {
        self.read_records_ahead().await;
        let mut queue = Queue::default();
        self.queue_due(self.clock.now(), &mut queue);
        if let Some((gate, read)) = self.gate_reading(&mut queue) {
            let mut snapshot = read.await;
            self.hand_out_gate(&mut snapshot, gate, &mut queue);
        }
        let mut leftover = None;
        if sweep {
            let resting = self.resting_idle();
            let mut snapshot = self.read(&resting).await;
            step_channels(self.channels.as_deref(), &snapshot).await;
            control.swept(&snapshot);
            self.hand_out(&mut snapshot, resting, &mut queue);
            leftover = Some(snapshot);
        }
        let mut in_flight: FuturesUnordered<Pass> = FuturesUnordered::new();
        loop {
            self.dispatch(&mut queue, &mut in_flight);
            let Some((index, driver, result)) = in_flight.next().await else {
                break;
            };
            self.finish(index, driver, &result, control);
        }
        let resting = self.drivers().filter(|d| d.at_rest()).count();
        (resting, leftover)
    }

    /// The controller's loop: sweeps every `poll_interval_secs` (or on a trigger), runners in
    /// an attempt on their own time, until `sweeps` sweeps have been made (then the passes they
    /// started end) or a stop.
    pub async fn run(&mut self, control: &mut dyn Control, sweeps: Option<u64>) {
        self.read_records_ahead().await;
        let mut in_flight: FuturesUnordered<Pass> = FuturesUnordered::new();
        let mut queue = Queue::default();
        let mut reading: Option<Reading> = None;
        let mut gate_reading: Option<GateReading> = None;
        let mut sweeping = SweepClock::default();
        let mut made: u64 = 0;
        let mut stopping = false;
        let mut nudges = self.events.as_mut().and_then(|events| events.nudges.take());
        loop {
            let now = self.clock.now();
            let next_sweep = sweeping.next(now, self.sweep_every());
            let finishing = stopping || sweeps.is_some_and(|max| made >= max);
            if finishing {
                // No more nudges: what arrives now stays in the queue, for others.
                nudges = None;
            } else {
                self.queue_due(now, &mut queue);
                if gate_reading.is_none() {
                    gate_reading = self.gate_reading(&mut queue);
                }
                // A sweep: the runners at rest that are not in a pass, after a fleet read.
                if reading.is_none() && now >= next_sweep {
                    reading = self.sweep_now(now, &mut sweeping, &mut made, control);
                }
            }
            if !stopping {
                self.dispatch(&mut queue, &mut in_flight);
            }
            if finishing
                && reading.is_none()
                && gate_reading.is_none()
                && queue.is_empty()
                && in_flight.is_empty()
            {
                return;
            }
            if stopping {
                self.drain(&mut in_flight, control).await;
                return;
            }
            let wait = if finishing {
                Duration::from_hours(1)
            } else {
                self.next_due(next_sweep, reading.is_some(), &queue)
                    .since(now)
            };
            tokio::select! {
                Some((index, driver, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(index, driver, &result, control);
                }
                snapshot = async {
                    match reading.as_mut() {
                        Some((_, read)) => read.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if reading.is_some() => {
                    let mut snapshot = snapshot;
                    control.swept(&snapshot);
                    made += 1;
                    if let Some((resting, _)) = reading.take() {
                        self.hand_out(&mut snapshot, resting, &mut queue);
                    }
                }
                gate = async {
                    match gate_reading.as_mut() {
                        Some((_, read)) => read.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if gate_reading.is_some() => {
                    let mut gate = gate;
                    if let Some((runners, _)) = gate_reading.take() {
                        self.hand_out_gate(&mut gate, runners, &mut queue);
                    }
                }
                nudge = next_nudge(&mut nudges), if nudges.is_some() && !finishing => {
                    if self.heard(nudge, &mut nudges) {
                        sweeping.ask_for_channels();
                    }
                },
                wake = control.wait(wait), if !finishing || !in_flight.is_empty() || reading.is_some() || gate_reading.is_some() => match wake {
                    Wake::Timeout => {}
                    Wake::Trigger => {
                        self.trigger();
                        sweeping.ask();
                    }
                    Wake::Stop => stopping = true,
                },
            }
        }
    }

    /// A sweep starts: the fleet read of the runners at rest that are not in a pass (none when
    /// nobody is at rest and the channels need no read: the sweep is made at once).
    fn sweep_now(
        &mut self,
        now: Millis,
        sweeping: &mut SweepClock,
        made: &mut u64,
        control: &mut dyn Control,
    ) -> Option<Reading> {
        let for_channels =
            sweeping.for_channels || self.channels.as_ref().is_some_and(|c| c.wants_sweep());
        sweeping.swept(now);
        let resting = self.resting_idle();
        if resting.is_empty() && !for_channels {
            *made += 1;
            control.swept(&FleetSnapshot::empty(now));
            return None;
        }
        Some(self.fleet_reading(resting))
    }

    /// `POST /trigger`, SIGHUP: everything is due now (the sweep too: the caller asks it).
    fn trigger(&mut self) {
        let now = self.clock.now();
        for slot in &mut self.slots {
            slot.due = slot.due.min(now);
        }
        self.earliest_due = now;
    }

    /// A nudge the consumer sent (`None`: the consumer ended, so no more events and the short
    /// interval again). Returns whether a sweep is wanted now.
    fn heard(&mut self, nudge: Option<Nudge>, nudges: &mut Option<mpsc::Receiver<Nudge>>) -> bool {
        let nudge = nudge.unwrap_or_else(|| {
            *nudges = None;
            Nudge::Queue { up: false }
        });
        self.nudge(nudge)
    }

    /// The grace period of a stop: passes under way may end; what does not is left as a crash
    /// would leave it (every step is persisted before it is acted on).
    async fn drain(&mut self, in_flight: &mut FuturesUnordered<Pass>, control: &mut dyn Control) {
        let grace = tokio::time::sleep(self.grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = in_flight.next() => match next {
                    Some((index, driver, result)) => self.finish(index, driver, &result, control),
                    None => return,
                },
                () = &mut grace => {
                    tracing::warn!(passes = in_flight.len(), "stopping with passes under way; they resume from their records");
                    return;
                }
            }
        }
    }

    /// Queues the runners in an attempt that are due (on their own time), and the runners at
    /// rest whose desired state settles now (after them, with their own reads).
    fn queue_due(&mut self, now: Millis, queue: &mut Queue) {
        // The wall clock stepped back: nothing waits longer than a sweep interval.
        let latest = now.after(self.sweep_interval);
        if self.earliest_due > now && self.earliest_due <= latest {
            return;
        }
        let mut earliest = latest;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(driver) = &slot.driver else {
                continue;
            };
            if slot.queued {
                continue;
            }
            if driver.at_rest() {
                if let Some(wake) = slot.wake.map(|wake| wake.min(latest)) {
                    if wake <= now {
                        slot.wake = None;
                        slot.queued = true;
                        slot.own_reads = true;
                        queue.sweep.push_back((index, None));
                    } else {
                        earliest = earliest.min(wake);
                    }
                }
                continue;
            }
            slot.due = slot.due.min(latest);
            if slot.due <= now {
                slot.queued = true;
                queue.urgent.push_back(index);
            } else {
                earliest = earliest.min(slot.due);
            }
        }
        self.earliest_due = earliest;
    }

    /// Hands each runner of a sweep its part of the fleet read. A part that AWS failed to
    /// read after the retries (throttling, an outage) is not used: that runner waits for the
    /// next sweep rather than note an unreadable AWS (and write its record) with all the
    /// others. A part refused for good (access denied, a parameter that cannot be decrypted)
    /// sends the runner to its own reads, which isolate the cause to the runners it concerns.
    fn hand_out(&mut self, snapshot: &mut FleetSnapshot, resting: Vec<usize>, queue: &mut Queue) {
        let mut postponed = 0_usize;
        for index in resting {
            let part = self.name_of(index).and_then(|name| snapshot.take(&name));
            let transient = |e: &PortError| e.is_transient();
            match part {
                Some(part)
                    if part.desired.as_ref().err().is_some_and(transient)
                        || part.service.as_ref().err().is_some_and(transient) =>
                {
                    postponed += 1;
                    let now = self.clock.now();
                    if let Some(slot) = self.slots.get_mut(index) {
                        slot.queued = false;
                        // A change event came meanwhile: its pass, on its own reads, now.
                        if std::mem::take(&mut slot.heard.again) {
                            slot.wake = Some(now);
                            self.earliest_due = now;
                        }
                    }
                }
                Some(part)
                    if part.desired.is_err()
                        || part
                            .service
                            .as_ref()
                            .err()
                            .is_some_and(|e| e.kind != ErrorKind::NotFound) =>
                {
                    if let Some(slot) = self.slots.get_mut(index) {
                        // It reads for itself: what an event announced meanwhile it sees.
                        slot.own_reads = true;
                        slot.heard.again = false;
                    }
                    queue.sweep.push_back((index, None));
                }
                part => queue.sweep.push_back((index, part)),
            }
        }
        if postponed > 0 {
            tracing::warn!(
                runners = postponed,
                "the fleet read failed for these runners after its retries; they wait for the next sweep"
            );
        }
    }

    /// A fleet read of the runners at rest `resting` (queued meanwhile), to hand out when done.
    fn fleet_reading(&mut self, resting: Vec<usize>) -> Reading {
        for &index in &resting {
            if let Some(slot) = self.slots.get_mut(index) {
                slot.queued = true;
            }
        }
        let configs: Vec<RunnerConfig> = resting
            .iter()
            .filter_map(|&i| self.slots.get(i)?.driver.as_ref())
            .map(|d| d.runner_config().clone())
            .collect();
        let reader = self.reader.clone();
        let channels = self.channels.clone();
        (
            resting,
            Box::pin(async move {
                let refs: Vec<&RunnerConfig> = configs.iter().collect();
                let snapshot = reader.read(&refs).await;
                step_channels(channels.as_deref(), &snapshot).await;
                snapshot
            }),
        )
    }

    /// The runners of `queue`'s urgent ones that are in the health gate, taken out of it with
    /// a read of their services (ten a call by cluster) that hands them back: `None` when
    /// fewer than [`GATE_READ_MIN`] are due (each reads its own).
    fn gate_reading(&mut self, queue: &mut Queue) -> Option<GateReading> {
        let gate: Vec<usize> = queue
            .urgent
            .iter()
            .copied()
            .filter(|&index| {
                self.slots
                    .get(index)
                    .and_then(|slot| slot.driver.as_ref())
                    .is_some_and(RunnerDriver::in_gate)
            })
            .collect();
        if gate.len() < GATE_READ_MIN {
            return None;
        }
        queue.urgent.retain(|index| !gate.contains(index));
        let configs: Vec<(RunnerConfig, Option<String>)> = gate
            .iter()
            .filter_map(|&i| self.slots.get(i)?.driver.as_ref())
            .map(|d| (d.runner_config().clone(), d.gate_service_deployment()))
            .collect();
        let reader = self.reader.clone();
        Some((
            gate,
            Box::pin(async move {
                let refs: Vec<(&RunnerConfig, Option<String>)> =
                    configs.iter().map(|(c, arn)| (c, arn.clone())).collect();
                reader.read_gate(&refs).await
            }),
        ))
    }

    /// Hands each runner of a gate read its service, and queues its pass (first: its lease is
    /// running). A service the read could not give is read by the runner itself.
    fn hand_out_gate(
        &mut self,
        snapshot: &mut GateSnapshot,
        runners: Vec<usize>,
        queue: &mut Queue,
    ) {
        for index in runners {
            let name = self.name_of(index);
            if let (Some(name), Some(driver)) = (
                name,
                self.slots.get_mut(index).and_then(|s| s.driver.as_mut()),
            ) {
                if let Some(read) = snapshot.take(&name) {
                    driver.offer_gate_read(snapshot.taken_at, read);
                }
            }
            // Not among the urgent ones: those are what the next gate read takes. In the order
            // they became due, after those an earlier gate read handed out.
            queue.read.push_back(index);
        }
    }

    /// Starts queued passes while there is room.
    fn dispatch(&mut self, queue: &mut Queue, in_flight: &mut FuturesUnordered<Pass>) {
        while in_flight.len() < self.concurrency {
            let Some((index, view)) = queue.pop() else {
                break;
            };
            if let Some(pass) = self.start(index, view) {
                in_flight.push(pass);
            }
        }
    }

    /// When the loop next has something to do on its own.
    fn next_due(&self, next_sweep: Millis, reading: bool, queue: &Queue) -> Millis {
        let due = if reading {
            // The read ends on its own; only runners in an attempt can be due before.
            self.clock.now().after(self.sweep_interval)
        } else {
            next_sweep
        };
        if !queue.is_empty() {
            // Waiting for a free place: a pass ending wakes the loop.
            return due;
        }
        due.min(self.earliest_due)
    }

    /// The runners at rest that are neither in a pass nor queued.
    fn resting_idle(&self) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| {
                slot.driver.as_ref().is_some_and(RunnerDriver::at_rest) && !slot.queued
            })
            .map(|(index, _)| index)
            .collect()
    }

    async fn read(&self, indices: &[usize]) -> FleetSnapshot {
        let configs: Vec<&RunnerConfig> = indices
            .iter()
            .filter_map(|&i| self.slots.get(i)?.driver.as_ref())
            .map(RunnerDriver::runner_config)
            .collect();
        self.reader.read(&configs).await
    }

    fn name_of(&self, index: usize) -> Option<String> {
        self.slots
            .get(index)?
            .driver
            .as_ref()
            .map(|d| d.runner().to_owned())
    }

    /// Takes the driver out of its slot and starts its pass.
    fn start(&mut self, index: usize, view: Option<RunnerSnapshot>) -> Option<Pass> {
        let now = self.clock.now();
        let metrics = self.events.as_ref().and_then(|e| e.metrics.clone());
        let slot = self.slots.get_mut(index)?;
        slot.queued = false;
        slot.own_reads = false;
        slot.heard.rested = slot.driver.as_ref().is_some_and(RunnerDriver::at_rest);
        // A pass on a read that may predate the event (`again`) is not the one it asked for.
        if !slot.heard.again {
            if let (Some(at), Some(metrics)) = (slot.heard.announced.take(), metrics) {
                metrics.event_lag(now.since(at).as_secs_f64());
            }
        }
        let mut driver = slot.driver.take()?;
        Some(Box::pin(async move {
            let result = driver.tick_with(view).await;
            (index, driver, result)
        }))
    }

    /// Puts the driver back, due again after its own interval.
    fn finish(
        &mut self,
        index: usize,
        driver: RunnerDriver,
        result: &Result<TickReport, DriverError>,
        control: &mut dyn Control,
    ) {
        control.ticked(&driver, result);
        let now = self.clock.now();
        let total = self.slots.len();
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.due = now.after(driver.requeue_after());
        if !driver.at_rest() {
            self.earliest_due = self.earliest_due.min(slot.due);
        }
        slot.wake = driver.wake_at();
        if let Some(events) = &self.events {
            // An attempt started: its lease taken (not a lease found busy).
            let started = result
                .as_ref()
                .is_ok_and(|report| report.transitions.iter().any(|t| t.to == Phase::Locked));
            let again = std::mem::take(&mut slot.heard.again);
            if started {
                let announced = std::mem::take(&mut slot.heard.flagged);
                if !announced && events.up && !driver.follows_channel_release() {
                    if let Some(metrics) = &events.metrics {
                        metrics.backstop_catch();
                    }
                    tracing::info!(runner = %driver.runner(), "an update started on a change no event announced (the backstop's catch)");
                }
            } else if !again && result.is_ok() && driver.at_rest() && !driver.change_still_to_come()
            {
                // What an event announced was read, and nothing of it waits for time (a settle,
                // a window, a busy lease keep it announced; ops' next write is an event).
                slot.heard.flagged = false;
            }
            // An attempt ended: one pass at rest on its own reads, at once, for what changed
            // meanwhile (a change announced during the attempt waits for no sweep).
            let ended = !slot.heard.rested && driver.at_rest();
            if ended && slot.wake.is_none() && !again {
                slot.wake = Some(now);
            }
            if again {
                if driver.at_rest() {
                    slot.wake = Some(now);
                } else {
                    slot.due = now;
                    self.earliest_due = now;
                }
            }
        }
        if let Some(wake) = slot.wake {
            self.earliest_due = self.earliest_due.min(wake);
        }
        if !slot.loaded && driver.loaded() {
            slot.loaded = true;
            self.loaded += 1;
            if self.loaded == total {
                control.all_loaded();
            }
        }
        slot.driver = Some(driver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_comes_one_interval_after_the_last_or_now_when_asked_or_the_clock_stepped_back() {
        let every = Duration::from_mins(10);
        let mut clock = SweepClock::default();
        assert_eq!(
            clock.next(Millis(1_000), every),
            Millis(1_000),
            "the first: now"
        );
        clock.swept(Millis(1_000));
        assert_eq!(clock.next(Millis(2_000), every), Millis(601_000));
        // The interval in force counts from the last sweep (the queue failed: 60 s).
        assert_eq!(
            clock.next(Millis(2_000), Duration::from_mins(1)),
            Millis(61_000)
        );
        clock.ask();
        assert_eq!(
            clock.next(Millis(2_000), every),
            Millis(2_000),
            "asked: now"
        );
        clock.swept(Millis(2_000));
        assert_eq!(
            clock.next(Millis(500), every),
            Millis(500),
            "stepped back: now"
        );
    }
}
