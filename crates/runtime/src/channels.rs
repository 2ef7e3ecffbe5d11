//! Channel releases (issue 19): one release per channel, rolled out in waves, halted by its
//! failure budget.
//!
//! Every sweep, after the fleet read (which brings each channel's document,
//! `<prefix>/_channels/<channel>/release`, and a `resume` token if ops wrote one), the
//! [`Channels`] coordinator moves each channel this controller serves on by one step:
//!
//! 1. parses and checks the document (a bad one is refused by name; no runner moves);
//! 2. takes or renews the **channel's lease** (`_channels/<channel>` in the lock: one controller
//!    advances a channel at a time across replicas; the others' followers wait);
//! 3. loads the channel's [`ReleaseRecord`] (a new document starts a new record at its first
//!    wave; a version the channel quarantined is refused);
//! 4. counts where each runner stands with the release, from what the runners' own passes
//!    reported ([`Board::report`]), and takes the pure step ([`rollout::advance`]);
//! 5. **saves the record before anything acts on it** (fenced by the channel's lease: in the
//!    write itself on the state table, by a check right before on the other stores);
//! 6. publishes on the [`Board`] which runners are admitted: an admitted follower's desired
//!    state is the release (a runner's own `release` or `desired/*` is a pin and wins); every
//!    other follower waits at rest, its note saying why (`awaiting-wave`).
//!
//! A runner's attempt is its own (its lease, its gate, its rollback), exactly as for a release
//! of its own; the channel decides only when it may start. Under the lock an attempt reads its
//! desired state fresh, admission included: a runner whose admission was withdrawn (the release
//! halted) between its check and its lock does not start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_updater_config::Config;
use runner_updater_core::domain::channel::{
    parse_channel_release, release_id, runner_release_text, validate_for_channel, waves, Budget,
    ChannelRelease, CHANNELS_FOLDER, RELEASE_NAME,
};
use runner_updater_core::domain::retry::{intent_id, IntentDocument, RETRY_FOLDER};
use runner_updater_core::domain::rollout::{self, channel_key, Progress, ReleaseRecord, RetryAck};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{Clock, Lock, LockOutcome, ParameterStore, StateStore};

use crate::metrics::{Metrics, ReleaseGauges};
use crate::telemetry;

/// How much sooner than its end this controller stops trusting its lease on a channel (the
/// clocks' tolerance and a pass's length), at most: a third of a shorter lease.
const LEASE_MARGIN_MS: u64 = 30_000;

pub use runner_updater_core::domain::channel::RESUME_NAME;

/// What a follower of a channel is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// The channel has not been read yet since this process started (a runner in an attempt
    /// waits for it, as for an unreadable AWS: its attempt is neither continued on a guess nor
    /// abandoned).
    Unknown,
    /// The channel has no release: the runner's own desired state, as without channels.
    Nothing,
    /// Admitted: this release document is its desired state.
    Admitted(Arc<str>),
    /// Not admitted now, and why.
    Waiting(Arc<str>),
}

/// What a channel's followers are told now.
#[derive(Debug, Clone)]
struct ChannelView {
    release_id: Arc<str>,
    version: Arc<str>,
    image: Option<Arc<str>>,
    /// The runners' release document (`Follow::Admitted`).
    text: Arc<str>,
    admitted: HashSet<String>,
    /// What the others are told.
    waiting: Arc<str>,
    /// The release's trace (its root's `traceparent`), for the attempts to link to.
    traceparent: Option<Arc<str>>,
    /// Until when this controller's lease on the channel is surely live (less a margin for
    /// the clocks): past it, only the runners already in an attempt keep the release.
    valid_until: Millis,
}

/// One runner's last report: where it stands with which release.
#[derive(Debug, Clone)]
struct Report {
    release_id: Arc<str>,
    progress: Progress,
    /// For [`Progress::OutsideWindow`]: when its window opens (past it, the runner counts as
    /// pending); for a failure ([`Progress::Failed`], [`Progress::RollingBack`]): when it
    /// failed (up to the last resume, it is forgiven). Ms; `u64::MAX`: not known, or never.
    at: u64,
}

/// Where the coordinator and the runners' passes meet: the admission of each channel (written
/// by the coordinator after the channel's record is saved), and where each runner stands with
/// its channel's release (written by its passes).
#[derive(Debug, Default)]
pub struct Board {
    views: Mutex<HashMap<String, Option<ChannelView>>>,
    blocked: Mutex<HashMap<String, Arc<str>>>,
    reports: Mutex<HashMap<String, Report>>,
    /// The retries each channel acknowledged (`release retry`), for its runners to lift their
    /// marks of the version.
    retries: Mutex<HashMap<String, Arc<[RetryAck]>>>,
    /// Attempts started on a channel's release since its last step: (runner, the attempt's
    /// `traceparent`), told in the release's trace by the next step.
    attempts: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Bumped for a channel whenever this controller takes its lease anew: the channel's
    /// drivers at rest then read their records again before they report (another controller
    /// may have moved their runners meanwhile).
    generations: Mutex<HashMap<String, u64>>,
}

/// The release a follower reports against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRelease {
    /// Its identity.
    pub release_id: Arc<str>,
    /// Its version.
    pub version: Arc<str>,
    /// Its image, when the document names one.
    pub image: Option<Arc<str>>,
}

impl Board {
    /// What `runner`, a follower of `channel`, is told at `now`. `attempt_target` is the
    /// version of the attempt it is in past its lock, if it is in one: an attempt on the
    /// channel's current release keeps it, whatever else happened (a halt, a lapsed lease, a
    /// refused document: the attempt ends through its own gate and rollback), and one on an
    /// unknown release waits rather than being abandoned.
    #[must_use]
    pub fn follow(
        &self,
        channel: &str,
        runner: &str,
        attempt_target: Option<&str>,
        now: Millis,
    ) -> Follow {
        let Ok(views) = self.views.lock() else {
            return Follow::Unknown;
        };
        let view = views.get(channel);
        if let (Some(target), Some(Some(view))) = (attempt_target, view) {
            if *view.version == *target {
                return Follow::Admitted(view.text.clone());
            }
        }
        if let Some(why) = self
            .blocked
            .lock()
            .ok()
            .and_then(|blocked| blocked.get(channel).cloned())
        {
            return if attempt_target.is_some() {
                Follow::Unknown
            } else {
                Follow::Waiting(why)
            };
        }
        match view {
            None => Follow::Unknown,
            Some(None) => Follow::Nothing,
            Some(Some(view)) if view.admitted.contains(runner) && now < view.valid_until => {
                Follow::Admitted(view.text.clone())
            }
            Some(Some(view)) => Follow::Waiting(view.waiting.clone()),
        }
    }

    /// The release of `channel` its followers report against, if it has one.
    #[must_use]
    pub fn current(&self, channel: &str) -> Option<CurrentRelease> {
        let views = self.views.lock().ok()?;
        let view = views.get(channel)?.as_ref()?;
        Some(CurrentRelease {
            release_id: view.release_id.clone(),
            version: view.version.clone(),
            image: view.image.clone(),
        })
    }

    /// The channel's generation (see [`Board`]): a driver seeing it change re-reads its record.
    #[must_use]
    pub fn generation(&self, channel: &str) -> u64 {
        self.generations
            .lock()
            .ok()
            .and_then(|g| g.get(channel).copied())
            .unwrap_or(0)
    }

    /// This controller took `channel`'s lease anew: what its runners reported is forgotten
    /// (they report again after reading their records again).
    fn taken_anew(&self, channel: &str, runners: &[String]) {
        if let Ok(mut generations) = self.generations.lock() {
            *generations.entry(channel.to_owned()).or_insert(0) += 1;
        }
        if let Ok(mut reports) = self.reports.lock() {
            for runner in runners {
                reports.remove(runner);
            }
        }
    }

    /// Where `runner` stands with `release` (its pass just ended).
    pub fn report(
        &self,
        runner: &str,
        release: &CurrentRelease,
        progress: Progress,
        at: Option<Millis>,
    ) {
        let at = at.map_or(u64::MAX, |at| at.0);
        if let Ok(mut reports) = self.reports.lock() {
            let same = reports.get(runner).is_some_and(|r| {
                r.release_id == release.release_id && r.progress == progress && r.at == at
            });
            if !same {
                reports.insert(
                    runner.to_owned(),
                    Report {
                        release_id: release.release_id.clone(),
                        progress,
                        at,
                    },
                );
            }
        }
    }

    /// Where each of `runners` stands with release `id` at `now` (a runner that has not
    /// reported on it is left out: unknown; one outside its update window whose window has
    /// opened since is pending; a failure made up to `forgiven_before`, the last resume, is
    /// forgiven — one still rolling back holds its place as in flight).
    fn progress(
        &self,
        runners: &[String],
        id: &str,
        now: Millis,
        forgiven_before: Option<u64>,
    ) -> BTreeMap<String, Progress> {
        let forgiven = |at: u64| forgiven_before.is_some_and(|before| at <= before);
        let Ok(reports) = self.reports.lock() else {
            return BTreeMap::new();
        };
        runners
            .iter()
            .filter_map(|runner| {
                let report = reports.get(runner)?;
                let progress = match report.progress {
                    Progress::OutsideWindow if report.at <= now.0 => Progress::Pending,
                    Progress::Failed if forgiven(report.at) => Progress::Forgiven,
                    Progress::RollingBack if forgiven(report.at) => Progress::InFlight,
                    other => other,
                };
                (&*report.release_id == id).then(|| (runner.clone(), progress))
            })
            .collect()
    }

    /// The trace of `channel`'s release, while this controller advances it.
    #[must_use]
    pub fn release_traceparent(&self, channel: &str) -> Option<Arc<str>> {
        let views = self.views.lock().ok()?;
        views.get(channel)?.as_ref()?.traceparent.clone()
    }

    /// `runner` started an attempt on `channel`'s release, its trace `traceparent`.
    pub fn attempt_started(&self, channel: &str, runner: &str, traceparent: &str) {
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts
                .entry(channel.to_owned())
                .or_default()
                .push((runner.to_owned(), traceparent.to_owned()));
        }
    }

    fn take_attempts(&self, channel: &str) -> Vec<(String, String)> {
        self.attempts
            .lock()
            .ok()
            .and_then(|mut attempts| attempts.remove(channel))
            .unwrap_or_default()
    }

    /// The retries `channel` acknowledged, as last read by this controller.
    #[must_use]
    pub fn retries(&self, channel: &str) -> Option<Arc<[RetryAck]>> {
        self.retries.lock().ok()?.get(channel).cloned()
    }

    fn set_retries(&self, channel: &str, retries: &[RetryAck]) {
        if let Ok(mut all) = self.retries.lock() {
            let same = all.get(channel).is_some_and(|r| **r == *retries);
            if !same {
                all.insert(channel.to_owned(), Arc::from(retries));
            }
        }
    }

    /// A retry lifted the failures of release `id`: its runners' reports of a failure are
    /// forgotten (each reports again after its next pass, its marks lifted).
    fn forget_failures(&self, runners: &[String], id: &str) {
        if let Ok(mut reports) = self.reports.lock() {
            for runner in runners {
                if let Some(report) = reports.get_mut(runner) {
                    if &*report.release_id == id && report.progress.failed() {
                        report.progress = Progress::Unknown;
                    }
                }
            }
        }
    }

    fn publish(&self, channel: &str, view: Option<ChannelView>) {
        if let Ok(mut blocked) = self.blocked.lock() {
            blocked.remove(channel);
        }
        if let Ok(mut views) = self.views.lock() {
            views.insert(channel.to_owned(), view);
        }
    }

    /// The channel's published admissions are trusted until `until`: at the latest, when its
    /// lease is about to be shortened (`longer` false); at least, once it was lengthened
    /// (`longer` true).
    fn trust_until(&self, channel: &str, until: Millis, longer: bool) {
        if let Ok(mut views) = self.views.lock() {
            if let Some(Some(view)) = views.get_mut(channel) {
                view.valid_until = if longer {
                    view.valid_until.max(until)
                } else {
                    view.valid_until.min(until)
                };
            }
        }
    }

    /// Nobody of `channel` starts the release now, for `why` (those in an attempt on it keep
    /// it: see [`Board::follow`]).
    fn block(&self, channel: &str, why: &str) {
        if let Ok(mut views) = self.views.lock() {
            if let Some(Some(view)) = views.get_mut(channel) {
                view.admitted.clear();
                view.waiting = Arc::from(why);
                return;
            }
        }
        if let Ok(mut blocked) = self.blocked.lock() {
            blocked.insert(channel.to_owned(), Arc::from(why));
        }
    }
}

/// A channel this controller serves.
#[derive(Debug)]
struct Served {
    channel: String,
    runners: Vec<String>,
    /// The channel's lease epoch, while held.
    epoch: Option<u64>,
    /// The record as last saved or loaded (`None`: load it).
    record: Option<ReleaseRecord>,
    /// What was last logged about the channel (logged again only when it changes).
    said: String,
    /// The length of the lease taken at the last step: short while the release moves on at
    /// every sweep, long enough to outlast the sweeps' longest interval once it waits for ops
    /// (finished or halted), so that it is renewed in time at the backstop's sweeps.
    ttl: Duration,
    /// Another controller holds the lease on a short length (it advances a release under way):
    /// this one sweeps often enough to take over soon after it stops.
    watching: bool,
    /// The release and wave in progress as last counted, and since when (the metrics).
    wave_seen: Option<(String, usize, Millis)>,
}

/// The coordinator of the channels' releases (see the module documentation).
pub struct Channels {
    board: Arc<Board>,
    served: tokio::sync::Mutex<Vec<Served>>,
    store: Arc<dyn StateStore>,
    lock: Arc<dyn Lock>,
    clock: Arc<dyn Clock>,
    ssm: Arc<dyn ParameterStore>,
    prefix: String,
    holder: String,
    lease_ttl: Duration,
    /// The lease's length while the release waits for ops (finished or halted): outlasts three
    /// of the sweeps' longest intervals (the backstop's, with change events on).
    idle_lease_ttl: Duration,
    /// Stepped at least once since this process started.
    stepped: AtomicBool,
    /// The last step saw a channel's release document.
    releasing: AtomicBool,
    /// Whether this controller advances a release that is neither finished nor halted (its
    /// bake, its waves and its window waits move on at sweeps).
    advancing: AtomicBool,
    metrics: Option<Arc<Metrics>>,
}

impl Channels {
    /// The coordinator of the channels `config`'s runners follow, as `holder`; its lease on a
    /// channel lasts `lease_secs` (renewed every sweep: keep it above the poll interval).
    #[must_use]
    pub fn new(
        config: &Config,
        holder: &str,
        store: Arc<dyn StateStore>,
        lock: Arc<dyn Lock>,
        clock: Arc<dyn Clock>,
        ssm: Arc<dyn ParameterStore>,
    ) -> Self {
        let served = config
            .channels()
            .into_iter()
            .map(|(channel, runners)| Served {
                channel,
                runners,
                epoch: None,
                record: None,
                said: String::new(),
                ttl: Duration::ZERO,
                watching: false,
                wave_seen: None,
            })
            .collect();
        Channels {
            board: Arc::new(Board::default()),
            served: tokio::sync::Mutex::new(served),
            store,
            lock,
            clock,
            ssm,
            prefix: config.prefix.clone(),
            holder: holder.to_owned(),
            stepped: AtomicBool::new(false),
            releasing: AtomicBool::new(false),
            advancing: AtomicBool::new(false),
            metrics: None,
            lease_ttl: Duration::from_secs(
                config
                    .lease_secs
                    .max(config.poll_interval_secs.saturating_mul(3)),
            ),
            idle_lease_ttl: Duration::from_secs(
                config
                    .lease_secs
                    .max(config.longest_sweep_interval_secs().saturating_mul(3)),
            ),
        }
    }

    /// Reports each channel's release to `metrics` (the channels this controller advances).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn gone(&self, channel: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.release_gone(channel);
        }
    }

    /// Whether a sweep should read the fleet for the channels even when no runner is at rest
    /// (all in attempts): until the first step of this process, and while a channel has a
    /// release (its runners in flight keep following it, the waves go on). A fleet that uses
    /// no channel costs nothing more.
    #[must_use]
    pub fn wants_sweep(&self) -> bool {
        !self.stepped.load(Ordering::Relaxed) || self.releasing.load(Ordering::Relaxed)
    }

    /// The board the runners' drivers follow.
    #[must_use]
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// One step of every channel, from the documents of the fleet read (names relative to
    /// `_channels/`: `<channel>/release`, `<channel>/resume`).
    pub async fn sweep(&self, documents: &BTreeMap<String, String>) {
        self.stepped.store(true, Ordering::Relaxed);
        let releasing = served_documents(documents);
        self.releasing.store(releasing, Ordering::Relaxed);
        let mut served = self.served.lock().await;
        for channel in served.iter_mut() {
            self.step(channel, documents).await;
        }
        let advancing = served.iter().any(|channel| {
            channel.watching
                || channel
                    .record
                    .as_ref()
                    .is_some_and(|r| r.finished_at.is_none() && r.halted.is_none())
        });
        self.advancing.store(advancing, Ordering::Relaxed);
    }

    /// Whether this controller advances a release under way (neither finished nor halted):
    /// its steps come at sweeps, so with change events on the sweeps keep `poll_interval_secs`
    /// meanwhile (a halted or finished release waits for ops, whose writes are events).
    #[must_use]
    pub fn advancing(&self) -> bool {
        self.advancing.load(Ordering::Relaxed)
    }

    async fn step(&self, served: &mut Served, documents: &BTreeMap<String, String>) {
        let channel = served.channel.clone();
        served.watching = false;
        let name = format!("{CHANNELS_FOLDER}/{channel}/{RELEASE_NAME}");
        let Some(text) = documents.get(&format!("{channel}/{RELEASE_NAME}")) else {
            self.board.publish(&channel, None);
            served.record = None;
            self.gone(&channel);
            return;
        };
        let parsed = parse_channel_release(text, &name).and_then(|release| {
            validate_for_channel(&release, &served.runners, &name).map(|()| release)
        });
        let release = match parsed {
            Ok(release) => release,
            Err(error) => {
                let why = format!("its release document is refused: {error}");
                say(served, &why, true);
                self.board.block(&channel, &why);
                self.gone(&channel);
                return;
            }
        };
        let now = self.clock.now();
        let key = channel_key(&channel);
        let waits_for_ops = served
            .record
            .as_ref()
            .is_some_and(|r| r.finished_at.is_some() || r.halted.is_some());
        served.ttl = if waits_for_ops {
            self.idle_lease_ttl
        } else {
            self.lease_ttl
        };
        let epoch = match self.lock.acquire(&key, &self.holder, now, served.ttl).await {
            Ok(LockOutcome::Acquired { epoch }) => epoch,
            Ok(LockOutcome::Busy { holder, expires_at }) => {
                served.watching = expires_at.since(now) <= self.lease_ttl;
                served.epoch = None;
                served.record = None;
                self.gone(&channel);
                say(
                    served,
                    &format!("the release is advanced by another controller ({holder})"),
                    false,
                );
                self.board.block(&channel, &waiting_words(&channel));
                return;
            }
            Err(error) => {
                say(
                    served,
                    &format!("the channel's lease cannot be taken: {error}"),
                    true,
                );
                self.board.block(&channel, &waiting_words(&channel));
                return;
            }
        };
        if served.epoch != Some(epoch) {
            // Newly ours: what another controller wrote since is read again, the channel's
            // record and its runners' records alike.
            served.record = None;
            served.epoch = Some(epoch);
            self.board.taken_anew(&channel, &served.runners);
        }
        // Why it stopped is logged; the followers are told the same words on every replica.
        if let Err(why) = self
            .advance(served, &release, text, documents, epoch, now)
            .await
        {
            say(served, &why, true);
            self.board.block(&channel, &waiting_words(&channel));
        }
        self.fit_lease(served, &key, epoch).await;
    }

    /// Renews the channel's lease for the length its release needs now, when the step changed
    /// it: long once it waits for ops (finished, halted: renewed by the backstop's sweeps),
    /// short again once it moves on (a new release, a resume: another controller takes over
    /// soon if this one stops, and watches it meanwhile).
    async fn fit_lease(&self, served: &mut Served, key: &str, epoch: u64) {
        // A step that failed left no record to judge by: the lease stays as it was taken.
        let Some(record) = served.record.as_ref() else {
            return;
        };
        let waits_for_ops = record.finished_at.is_some() || record.halted.is_some();
        let wanted = if waits_for_ops {
            self.idle_lease_ttl
        } else {
            self.lease_ttl
        };
        if wanted == served.ttl {
            return;
        }
        let now = self.clock.now();
        let until = Millis(now.after(wanted).0.saturating_sub(margin(wanted)));
        if wanted < served.ttl {
            // Shorter: what was published under the longer lease is trusted no longer than the
            // lease will last (before the renewal, so never past it).
            self.board.trust_until(&served.channel, until, false);
        }
        match self.lock.renew(key, &self.holder, epoch, now, wanted).await {
            Ok(LockOutcome::Acquired { epoch: renewed }) if renewed == epoch => {
                if wanted > served.ttl {
                    // Longer, and renewed: trusted as long as the lease now lasts.
                    self.board.trust_until(&served.channel, until, true);
                }
                served.ttl = wanted;
            }
            Ok(outcome) => {
                tracing::info!(channel = %served.channel, ?outcome, "the channel's lease changed hands while its length was fitted: read again at the next step");
                self.board
                    .block(&served.channel, &waiting_words(&served.channel));
                served.epoch = None;
                served.record = None;
            }
            Err(error) => {
                tracing::warn!(channel = %served.channel, %error, "the channel's lease could not be fitted to its release; renewed at the next step");
            }
        }
    }

    /// Loads, steps, saves and publishes one channel's release.
    async fn advance(
        &self,
        served: &mut Served,
        release: &ChannelRelease,
        text: &str,
        documents: &BTreeMap<String, String>,
        epoch: u64,
        now: Millis,
    ) -> Result<(), String> {
        let channel = served.channel.clone();
        let stored = match served.record.take() {
            Some(record) => Some(record),
            None => self
                .store
                .load_release(&channel)
                .await
                .map_err(|e| format!("the channel's release record cannot be read: {e}"))?,
        };
        let id = release_id(text);
        let version = release.release.version.clone().unwrap_or_default();
        let image = release.release.image.clone();
        let resume = documents
            .get(&format!("{channel}/{RESUME_NAME}"))
            .map(String::as_str);
        let before = match stored {
            Some(record) if record.release_id == id => record,
            other => new_release(&channel, &id, release, other, resume, now),
        };
        // Ops' retries of a quarantined version, acknowledged in the record before they are
        // deleted (each acted on once).
        let intents = retry_intents(documents, &channel);
        let mut current = before.clone();
        let retried = self.acknowledge_retries(served, &mut current, &intents, &id, now);
        // The rest in one block: when it fails, the acknowledgements published early go back
        // to what the store holds (the runners must not lift marks against an unsaved one).
        let result: Result<(), String> = async {
            if current.halted.is_none() && current.is_quarantined(&version, image.as_deref()) {
                // Read again next time: a resume may lift it meanwhile.
                return Err(format!(
                    "{version} is quarantined on this channel (a release of it halted): publish another version, `runner-updater release retry {channel}`, or resume the halted release"
                ));
            }
            if current.traceparent.is_none() {
                // The release's trace: its root, ended at once (a crash cannot lose it); made once
                // the release is taken, kept in its record.
                current.traceparent =
                    telemetry::traceparent(&telemetry::release_span(&channel, &id, &version));
            }
            let runner_text = runner_release_text(text, &channel)
                .map_err(|e| format!("its release document is refused: {e}"))?;
            let mut view = ChannelView {
                release_id: Arc::from(id.as_str()),
                version: Arc::from(version.as_str()),
                image: image.as_deref().map(Arc::from),
                text: Arc::from(runner_text.as_str()),
                admitted: HashSet::new(),
                waiting: Arc::from(waiting_words(&channel).as_str()),
                traceparent: None,
                valid_until: Millis(now.after(served.ttl).0.saturating_sub(margin(served.ttl))),
            };
            // A runner that has not reported on this release yet (a new release, a restart, a
            // takeover) holds a place and keeps its wave from settling until it does.
            let progress = self
                .board
                .progress(&served.runners, &id, now, current.forgiven_before);
            let bake = Duration::from_secs(release.plan.bake_secs);
            let pace = rollout::Pace {
                budget: release.budget,
                bake,
                window_wait: Duration::from_secs(release.plan.window_wait_secs),
            };
            let step = rollout::advance(
                &current,
                &waves(&release.plan, &served.runners),
                pace,
                &progress,
                resume,
                now,
            );
            let record = self.save(&before, step.record, epoch).await?;
            self.board.set_retries(&channel, &record.retries);
            let trace = record.traceparent.as_deref();
            for event in retried.iter().chain(&step.events) {
                let span = telemetry::release_step_span(
                    &channel,
                    trace,
                    event,
                    record.wave,
                    record.halted.is_some(),
                );
                tracing::info!(parent: &span, channel = %channel, release = %version, event = %event, "channel release");
            }
            for (runner, attempt) in self.board.take_attempts(&channel) {
                telemetry::release_attempt_span(&channel, trace, record.wave, &runner, &attempt);
            }
            view.traceparent = record.traceparent.as_deref().map(Arc::from);
            self.delete_acknowledged(&channel, &intents, &record).await;
            self.report(served, &record, release, now);
            view.admitted = step.admitted.into_iter().collect();
            self.board.publish(&channel, Some(view));
            say(served, &record.next_step(bake), false);
            served.record = Some(record);
            Ok(())
        }
        .await;
        if result.is_err() && !retried.is_empty() {
            self.board.set_retries(&channel, &before.retries);
        }
        result
    }

    /// Acknowledges ops' retry intents in `current` (each once); the runners read the
    /// acknowledgements from now on (a pass ending before the save must not report a lifted
    /// failure again), and their reports of a failure of release `id` are forgotten when a
    /// retry is of its version. What happened, for the log and the trace.
    fn acknowledge_retries(
        &self,
        served: &Served,
        current: &mut ReleaseRecord,
        intents: &[(String, IntentDocument)],
        id: &str,
        now: Millis,
    ) -> Vec<String> {
        let mut of_this_release = false;
        let retried: Vec<String> = intents
            .iter()
            .filter_map(|(intent, document)| {
                let words = current.acknowledge_retry(intent, &document.version, now)?;
                of_this_release |= document.version == current.version;
                Some(words)
            })
            .collect();
        if !retried.is_empty() {
            self.board.set_retries(&served.channel, &current.retries);
            if of_this_release {
                self.board.forget_failures(&served.runners, id);
            }
        }
        retried
    }

    /// Deletes the retry intents the saved `record` acknowledged (a failed delete is tried again
    /// at the next step; the record says it was acted on).
    async fn delete_acknowledged(
        &self,
        channel: &str,
        intents: &[(String, IntentDocument)],
        record: &ReleaseRecord,
    ) {
        for (id, _) in intents {
            if record.retries.iter().any(|r| r.id == *id) {
                let name = format!(
                    "{}/{CHANNELS_FOLDER}/{channel}/{RETRY_FOLDER}/{id}",
                    self.prefix
                );
                if let Err(error) = self.ssm.delete(&name).await {
                    tracing::warn!(%channel, intent = %id, %error, "an acknowledged retry intent could not be deleted; tried again at the next sweep");
                }
            }
        }
    }

    /// Saves the record after a step when the step changed it, fenced by the channel's lease
    /// of `epoch`; returns what is now stored.
    async fn save(
        &self,
        current: &ReleaseRecord,
        mut record: ReleaseRecord,
        epoch: u64,
    ) -> Result<ReleaseRecord, String> {
        if !changed(current, &record) {
            record.revision = current.revision;
            return Ok(record);
        }
        record.revision = current.revision + 1;
        let key = channel_key(&record.channel);
        if !self.store.fences_writes() {
            match self.lock.check(&key, &self.holder, epoch, self.clock.now()).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err("the channel's lease was lost before its record was written".to_owned())
                }
                Err(error) => {
                    return Err(format!(
                        "the channel's lease could not be checked before its record was written: {error}"
                    ))
                }
            }
        }
        self.store
            .save_release(&record, epoch)
            .await
            .map_err(|e| format!("the channel's release record cannot be written: {e}"))?;
        Ok(record)
    }
}

/// What a follower not admitted is told: the same words on every controller (the runner's
/// note does not change with the replica that passes over it), pointing at `release status`.
fn waiting_words(channel: &str) -> String {
    format!("waits for its turn in the channel's release (`runner-updater release status {channel}` says why)")
}

/// The record of a release the channel has not had yet: the quarantine carried from `before`,
/// less `before`'s own version when ops resumed `before`'s halt (`resume` its token: a halted
/// release resumed with its document edited).
fn new_release(
    channel: &str,
    id: &str,
    release: &ChannelRelease,
    before: Option<ReleaseRecord>,
    resume: Option<&str>,
    now: Millis,
) -> ReleaseRecord {
    let mut quarantined = Vec::new();
    let mut resumes = Vec::new();
    let mut retries = Vec::new();
    if let Some(before) = before {
        // The channel's retries carry over: a runner that has not lifted its marks yet still
        // does (once).
        retries.clone_from(&before.retries);
        let acknowledged = before
            .resume_token()
            .filter(|token| Some(token.as_str()) == resume);
        quarantined = before.quarantined;
        if let Some(token) = acknowledged {
            let image = before.image.unwrap_or_default();
            quarantined.retain(|(v, i)| !(*v == before.version && *i == image));
            resumes.push(token);
        }
    }
    let version = release.release.version.as_deref().unwrap_or_default();
    let mut record = ReleaseRecord::new(
        channel,
        id,
        version,
        release.release.image.as_deref(),
        release.budget,
        now,
        quarantined,
    );
    record.resumes = resumes;
    record.retries = retries;
    record
}

/// The channel's retry intents in the fleet read (`<channel>/retry/<id>`), in id order; one that
/// does not parse is named in the log and left alone.
fn retry_intents(
    documents: &BTreeMap<String, String>,
    channel: &str,
) -> Vec<(String, IntentDocument)> {
    let folder = format!("{channel}/");
    documents
        .iter()
        .filter_map(|(name, text)| {
            let id = intent_id(name.strip_prefix(&folder)?)?;
            match IntentDocument::parse(text) {
                Ok(document) => Some((id.to_owned(), document)),
                Err(error) => {
                    tracing::warn!(%channel, intent = %id, %error, "a retry intent that does not parse is ignored (`runner-updater release retry` writes them)");
                    None
                }
            }
        })
        .collect()
}

impl Channels {
    /// Reports the channel's release to the metrics, if any (the wave's start as this
    /// controller first counted it).
    fn report(
        &self,
        served: &mut Served,
        record: &ReleaseRecord,
        release: &ChannelRelease,
        now: Millis,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        // Since the wave started, or last had runners waiting for their windows (a wait the
        // release allows for: `window-wait-secs`).
        let since = match &served.wave_seen {
            Some((id, wave, since))
                if *id == record.release_id
                    && *wave == record.wave
                    && record.totals().outside_window == 0 =>
            {
                *since
            }
            _ => now,
        };
        served.wave_seen = Some((record.release_id.clone(), record.wave, since));
        let mut gauges = gauges(record, release.budget);
        gauges.wave_since = since;
        gauges.bake_secs = release.plan.bake_secs;
        gauges.window_wait_secs = release.plan.window_wait_secs;
        metrics.release(&served.channel, &gauges);
    }
}

/// How much sooner than a lease of `ttl` ends its holder stops trusting it (the clocks'
/// tolerance and a pass's length): at most a third of it.
fn margin(ttl: Duration) -> u64 {
    LEASE_MARGIN_MS.min(u64::try_from(ttl.as_millis() / 3).unwrap_or(u64::MAX))
}

/// The metrics of a release record.
fn gauges(record: &ReleaseRecord, budget: Budget) -> ReleaseGauges {
    let waves = u32::try_from(record.waves).unwrap_or(u32::MAX);
    ReleaseGauges {
        wave: u32::try_from(record.wave + 1)
            .unwrap_or(u32::MAX)
            .min(waves),
        waves,
        failed: record.failed,
        allowed: budget.allowed(record.attempted),
        halted: record.halted.is_some(),
        finished: record.finished_at.is_some(),
        counts: record.totals(),
        ..ReleaseGauges::default()
    }
}

/// Whether the fleet read found any channel's release document.
fn served_documents(documents: &BTreeMap<String, String>) -> bool {
    documents
        .keys()
        .any(|name| name.ends_with(&format!("/{RELEASE_NAME}")))
}

/// Whether a step changed the record (not counting when it was counted).
fn changed(before: &ReleaseRecord, after: &ReleaseRecord) -> bool {
    let mut same = after.clone();
    same.counted_at = before.counted_at;
    same.revision = before.revision;
    same != *before
}

/// Logs what is new about a channel.
fn say(served: &mut Served, words: &str, warn: bool) {
    if served.said == words {
        return;
    }
    served.said = words.to_owned();
    if warn {
        tracing::warn!(channel = %served.channel, "{words}");
    } else {
        tracing::info!(channel = %served.channel, "{words}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_forgives_failures_by_their_time_and_opens_windows_by_theirs() {
        let board = Board::default();
        let release = CurrentRelease {
            release_id: Arc::from("r1"),
            version: Arc::from("2.0.0"),
            image: None,
        };
        board.report("a", &release, Progress::Failed, Some(Millis(100)));
        board.report("b", &release, Progress::Failed, Some(Millis(300)));
        board.report("c", &release, Progress::RollingBack, Some(Millis(150)));
        board.report("d", &release, Progress::OutsideWindow, Some(Millis(500)));
        board.report("e", &release, Progress::Failed, None);
        let runners: Vec<String> = ["a", "b", "c", "d", "e"].map(str::to_owned).to_vec();
        let seen = board.progress(&runners, "r1", Millis(400), Some(200));
        let of = |r: &str| seen[r];
        assert_eq!(of("a"), Progress::Forgiven, "failed before the resume");
        assert_eq!(of("b"), Progress::Failed, "failed after it");
        assert_eq!(
            of("c"),
            Progress::InFlight,
            "forgiven, still holding its place"
        );
        assert_eq!(of("d"), Progress::OutsideWindow);
        assert_eq!(
            of("e"),
            Progress::Failed,
            "a failure of unknown time is not forgiven"
        );
        let later = board.progress(&runners, "r1", Millis(500), None);
        assert_eq!(later["d"], Progress::Pending, "its window has opened");
        assert_eq!(later["a"], Progress::Failed, "no resume: nothing forgiven");
        assert!(board.progress(&runners, "r2", Millis(500), None).is_empty());
    }
}
