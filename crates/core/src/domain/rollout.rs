//! A channel's release as it rolls out (issue 19): the release's persisted state
//! ([`ReleaseRecord`]) and the one pure step that moves it on ([`advance`]) from where each
//! runner of the channel stands with it ([`Progress`]).
//!
//! The step decides, every sweep, which runners may follow the release now (the **admitted**
//! ones: the release is their desired state; every other follower waits, at rest): the runners
//! of the waves before the current one, and in the current wave the runners already on their way
//! plus the next pending ones up to the wave's concurrency, in the wave's order. A wave is
//! *settled* when each of its runners is done, failed within the budget, pinned or excused; the
//! next wave starts once it has stayed settled for the bake. When the failed runners exceed the
//! budget, the release **halts**: only the runners already on their way stay admitted (they end
//! through their own gate and rollback), no other starts, and the (version, image) is
//! quarantined on the channel until ops resume it or publish another release.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::channel::{Budget, Wave};
use super::Millis;

/// The release record's schema version.
pub const RELEASE_SCHEMA_VERSION: u32 = 1;

/// The key of a channel's release record and lease in the state store and the lock:
/// `_channels/<channel>` (an underscore cannot begin a runner's name).
#[must_use]
pub fn channel_key(channel: &str) -> String {
    format!("{}/{channel}", super::channel::CHANNELS_FOLDER)
}

/// Where one runner of the channel stands with the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Progress {
    /// Has not started it.
    Pending,
    /// Not heard from on this release yet (a new release, a restart, a takeover), or taking
    /// its lock: it holds a place of its wave (it may be on its way), is never admitted by
    /// this step, and its wave does not settle before it is heard from.
    Unknown,
    /// In an attempt on it.
    InFlight,
    /// Failed it, and still rolling back: a failure (the budget counts it) that still holds its
    /// place (the concurrency counts it).
    RollingBack,
    /// Runs it (after an attempt, or already did).
    Done,
    /// Failed it (rolled back, the version quarantined on the runner).
    Failed,
    /// Follows its own `release` or `desired/*` instead (a pin wins).
    Pinned,
    /// Auto-update off: passed over.
    Excused,
    /// Admitted, but it refuses a value of the release (its allowed repositories, its stacks,
    /// a pre-release on its channel): passed over, named in its own status.
    Refused,
    /// Has not started it, and its update window is closed: holds no place, is not admitted
    /// until the window opens, and its wave waits for it at most the plan's
    /// `window-wait-secs` (then goes on; it updates when its window opens).
    OutsideWindow,
    /// Failed it before the release was resumed: settled, not admitted, and no longer counted
    /// against the budget (the coordinator tells it by the time of its failure).
    Forgiven,
}

impl Progress {
    /// The stable name (`in-flight`, …).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Progress::Pending => "pending",
            Progress::Unknown => "unknown",
            Progress::InFlight => "in-flight",
            Progress::RollingBack => "rolling-back",
            Progress::Done => "done",
            Progress::Failed => "failed",
            Progress::Pinned => "pinned",
            Progress::Excused => "excused",
            Progress::Refused => "refused",
            Progress::OutsideWindow => "outside-window",
            Progress::Forgiven => "forgiven",
        }
    }

    /// Whether the wave need not wait for it any more.
    #[must_use]
    pub fn settled(self) -> bool {
        !matches!(
            self,
            Progress::Pending
                | Progress::Unknown
                | Progress::InFlight
                | Progress::RollingBack
                | Progress::OutsideWindow
        )
    }

    /// Whether it holds a place of its wave's concurrency (in an attempt).
    #[must_use]
    pub fn busy(self) -> bool {
        matches!(
            self,
            Progress::Unknown | Progress::InFlight | Progress::RollingBack
        )
    }

    /// Whether it failed the release (what the budget counts).
    #[must_use]
    pub fn failed(self) -> bool {
        matches!(self, Progress::Failed | Progress::RollingBack)
    }

    /// Whether it attempted the release (what a share budget counts).
    #[must_use]
    pub fn attempted(self) -> bool {
        matches!(
            self,
            Progress::InFlight
                | Progress::RollingBack
                | Progress::Done
                | Progress::Failed
                | Progress::Forgiven
        )
    }
}

/// Runners of one wave by where they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Runners in the wave.
    pub runners: u32,
    /// Not started.
    pub pending: u32,
    /// In an attempt.
    pub in_flight: u32,
    /// Done.
    pub done: u32,
    /// Failed (rolled back).
    pub rolled_back: u32,
    /// Pinned.
    pub pinned: u32,
    /// Auto-update off.
    pub excused: u32,
    /// Refusing a value of the release.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u32,
    /// Not started, its update window closed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outside_window: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(count: &u32) -> bool {
    *count == 0
}

impl WaveCounts {
    fn add(&mut self, progress: Progress) {
        self.runners += 1;
        let field = match progress {
            Progress::Pending | Progress::Unknown => &mut self.pending,
            Progress::InFlight => &mut self.in_flight,
            Progress::Done => &mut self.done,
            Progress::Failed | Progress::RollingBack | Progress::Forgiven => &mut self.rolled_back,
            Progress::Pinned => &mut self.pinned,
            Progress::Excused => &mut self.excused,
            Progress::Refused => &mut self.refused,
            Progress::OutsideWindow => &mut self.outside_window,
        };
        *field += 1;
    }
}

/// Why a release halted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltRecord {
    /// When (ms).
    pub at: u64,
    /// Failed runners counted against the budget then.
    pub failed: u32,
    /// Runners that had attempted it then.
    pub attempted: u32,
    /// The failed runners (the first few, by name).
    pub runners: Vec<String>,
    /// Why, in words.
    #[serde(default)]
    pub reason: String,
}

/// A channel's release, persisted before any runner acts on it (write-ahead, as a runner's
/// record): which release, which wave, and whether it halted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// [`RELEASE_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The channel.
    pub channel: String,
    /// The release's identity: a hash of its document (another document is another release).
    pub release_id: String,
    /// Its version.
    pub version: String,
    /// Its image, when the document names one (else each runner's repository and the version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Bumped by every write (compare-and-set where the store offers it).
    pub revision: u64,
    /// When it was first seen (ms).
    pub started_at: u64,
    /// The wave in progress (0-based).
    pub wave: usize,
    /// Waves in the plan over the channel's runners.
    pub waves: usize,
    /// Since when the current wave is settled: its bake runs from here (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<u64>,
    /// Since when the current wave waits only for runners outside their update windows: it
    /// goes on without them `window-wait-secs` later (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_wait_since: Option<u64>,
    /// When every wave was done and baked (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Set when the failures exceeded the budget: no runner starts it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<HaltRecord>,
    /// Failures forgiven by resumes, as last counted (not counted against the budget again).
    #[serde(default)]
    pub forgiven: u32,
    /// When the last resume was acknowledged (ms): a runner's failure of this release made up to
    /// then is forgiven (by identity: a failure lifted since by a retry takes nothing along).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgiven_before: Option<u64>,
    /// Resumes acknowledged, each the token `release resume` wrote.
    #[serde(default)]
    pub resumes: Vec<String>,
    /// Runners by where they stand, per wave, as last counted.
    #[serde(default)]
    pub counts: Vec<WaveCounts>,
    /// Failed runners counted against the budget, as last counted.
    #[serde(default)]
    pub failed: u32,
    /// Runners that attempted it, as last counted.
    #[serde(default)]
    pub attempted: u32,
    /// The budget, in words (`2`, `10%`).
    pub budget: String,
    /// Releases of this channel that halted and were not resumed: (version, image or "") —
    /// quarantined on the channel: a new document with one of them is refused.
    #[serde(default)]
    pub quarantined: Vec<(String, String)>,
    /// When it was last counted (ms).
    pub counted_at: u64,
    /// Retries of a quarantined version acknowledged (`release retry`), the last few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryAck>,
    /// The W3C `traceparent` of the release's trace (every step of the coordinator is a span
    /// of it, linked to the runners' attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A retry intent acknowledged: its id, the version it cleared, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryAck {
    /// The intent's id (written by `retry`).
    pub id: String,
    /// The version it retried.
    pub version: String,
    /// When it was acknowledged (ms): quarantine marks made before are lifted, never later
    /// ones.
    pub at: u64,
}

/// Why a release record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseRecordError {
    /// Not a release record this version reads.
    #[error("release record of channel {channel}: {reason}")]
    Unreadable {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
}

impl ReleaseRecord {
    /// A new release's record: wave 0, nothing counted, the channel's quarantine carried.
    #[must_use]
    pub fn new(
        channel: &str,
        release_id: &str,
        version: &str,
        image: Option<&str>,
        budget: Budget,
        now: Millis,
        quarantined: Vec<(String, String)>,
    ) -> Self {
        ReleaseRecord {
            schema_version: RELEASE_SCHEMA_VERSION,
            channel: channel.to_owned(),
            release_id: release_id.to_owned(),
            version: version.to_owned(),
            image: image.map(str::to_owned),
            revision: 0,
            started_at: now.0,
            wave: 0,
            waves: 0,
            settled_at: None,
            window_wait_since: None,
            finished_at: None,
            halted: None,
            forgiven: 0,
            forgiven_before: None,
            resumes: Vec::new(),
            counts: Vec::new(),
            failed: 0,
            attempted: 0,
            budget: budget_words(budget),
            quarantined,
            counted_at: now.0,
            retries: Vec::new(),
            traceparent: None,
        }
    }

    /// The JSON text stored.
    ///
    /// # Errors
    /// Never in practice (plain data); typed for the caller.
    pub fn encode(&self) -> Result<String, ReleaseRecordError> {
        serde_json::to_string(self).map_err(|e| ReleaseRecordError::Unreadable {
            channel: self.channel.clone(),
            reason: e.to_string(),
        })
    }

    /// Reads a stored record of `channel`.
    ///
    /// # Errors
    /// Not JSON of a release record, another channel's, or a newer schema.
    pub fn decode(text: &str, channel: &str) -> Result<Self, ReleaseRecordError> {
        let unreadable = |reason: String| ReleaseRecordError::Unreadable {
            channel: channel.to_owned(),
            reason,
        };
        let record: ReleaseRecord =
            serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        if record.schema_version > RELEASE_SCHEMA_VERSION {
            return Err(unreadable(format!(
                "schema version {} is newer than this build's {RELEASE_SCHEMA_VERSION}",
                record.schema_version
            )));
        }
        if record.channel != channel {
            return Err(unreadable(format!("it is channel {}'s", record.channel)));
        }
        Ok(record)
    }

    /// Whether (version, image) is quarantined on the channel.
    #[must_use]
    pub fn is_quarantined(&self, version: &str, image: Option<&str>) -> bool {
        let image = image.unwrap_or_default();
        // Recorded without an image (each runner's own repository): any image of the version.
        self.quarantined
            .iter()
            .any(|(v, i)| v == version && (i.is_empty() || i == image))
    }

    /// Acknowledges the channel's retry intent `id` of `version` (once; `None` when it was
    /// already): the channel's quarantine of the version is lifted and, when this release is
    /// of that version and halted, its halt too — its runners' failures are lifted by the same
    /// retry (each runner lifts its marks made before `now`), so nothing is forgiven twice.
    /// Returns what happened, for the log and the trace.
    pub fn acknowledge_retry(&mut self, id: &str, version: &str, now: Millis) -> Option<String> {
        if self.retries.iter().any(|r| r.id == id) {
            return None;
        }
        let before = self.quarantined.len();
        self.quarantined.retain(|(v, _)| v != version);
        let lifted = before - self.quarantined.len();
        let mut words = format!(
            "retry {id} of {version} acknowledged: {lifted} channel quarantine(s) lifted, and its runners' marks"
        );
        if self.version == version && self.halted.is_some() {
            self.halted = None;
            self.failed = 0;
            self.settled_at = None;
            words.push_str("; the halt lifted");
        }
        self.retries.push(RetryAck {
            id: id.to_owned(),
            version: version.to_owned(),
            at: now.0,
        });
        keep_last(&mut self.retries, KEPT_MAX);
        Some(words)
    }

    /// Whether a runner's quarantine mark of `version` made at `at` is lifted by one of the
    /// channel's retries.
    #[must_use]
    pub fn retried(&self, version: &str, at: Millis) -> bool {
        self.retries
            .iter()
            .any(|r| r.version == version && at.0 <= r.at)
    }

    /// The token `release resume` writes to resume this halt.
    #[must_use]
    pub fn resume_token(&self) -> Option<String> {
        self.halted
            .as_ref()
            .map(|halt| format!("{}@{}", self.release_id, halt.at))
    }

    /// Runners of the channel by where they stand, in all.
    #[must_use]
    pub fn totals(&self) -> WaveCounts {
        self.counts
            .iter()
            .fold(WaveCounts::default(), |mut all, w| {
                all.runners += w.runners;
                all.pending += w.pending;
                all.in_flight += w.in_flight;
                all.done += w.done;
                all.rolled_back += w.rolled_back;
                all.pinned += w.pinned;
                all.excused += w.excused;
                all.refused += w.refused;
                all.outside_window += w.outside_window;
                all
            })
    }

    /// The next step, in words (`release status`).
    #[must_use]
    pub fn next_step(&self, bake: Duration) -> String {
        if let Some(halt) = &self.halted {
            return format!(
                "halted at {}: {}; no runner starts it. Publish another release, or `runner-updater release resume {}` after looking",
                Millis(halt.at),
                halt.reason,
                self.channel
            );
        }
        if let Some(at) = self.finished_at {
            return format!("finished at {}: every wave done", Millis(at));
        }
        let wave = self.wave + 1;
        let counts = self.counts.get(self.wave).copied().unwrap_or_default();
        match self.settled_at {
            Some(at) if self.wave + 1 < self.waves => format!(
                "wave {wave} of {} settled; baking until {}, then wave {}",
                self.waves,
                Millis(at).after(bake),
                wave + 1
            ),
            Some(at) => format!(
                "last wave settled; baking until {}, then finished",
                Millis(at).after(bake)
            ),
            None if counts.outside_window > 0 => format!(
                "wave {wave} of {}: {} in flight, {} pending, {} done, {} waiting for their update windows{}",
                self.waves,
                counts.in_flight,
                counts.pending,
                counts.done,
                counts.outside_window,
                self.window_wait_since.map_or_else(String::new, |since| format!(
                    " (only they are left since {}: the wave goes on without them after window-wait-secs)",
                    Millis(since)
                ))
            ),
            None => format!(
                "wave {wave} of {}: {} in flight, {} pending, {} done",
                self.waves, counts.in_flight, counts.pending, counts.done
            ),
        }
    }
}

/// The budget in words.
#[must_use]
pub fn budget_words(budget: Budget) -> String {
    match budget {
        Budget::Count(count) => count.to_string(),
        Budget::Share(percent) => format!("{percent}%"),
    }
}

/// How a release moves: its failure budget, its bake, and how long a wave waits for runners
/// outside their update windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Failed runners tolerated.
    pub budget: Budget,
    /// How long a settled wave stays settled before the next starts.
    pub bake: Duration,
    /// How long a wave waits for runners outside their update windows once every other
    /// runner of it settled.
    pub window_wait: Duration,
}

impl Pace {
    /// A budget and a bake, with the default window wait.
    #[must_use]
    pub fn new(budget: Budget, bake: Duration) -> Pace {
        Pace {
            budget,
            bake,
            window_wait: Duration::from_secs(super::channel::DEFAULT_WINDOW_WAIT_SECS),
        }
    }
}

/// What one step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The record after the step (the caller saves it when it changed, before acting on it).
    pub record: ReleaseRecord,
    /// The runners that may follow the release now.
    pub admitted: BTreeSet<String>,
    /// What changed, for the log (`halted`, `wave 2 started`, …); empty when nothing did.
    pub events: Vec<String>,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Moves the release on by one step: counts the runners, halts it when the failures exceed the
/// budget (or every runner of a wave that attempted it failed), resumes it when `resume` is the
/// token of its halt, moves to the next wave once the current one stayed settled for `bake`,
/// and says which runners are admitted. A runner missing from `progress` (its pass has not
/// reported on this release yet) is [`Progress::Unknown`]: it holds a place, and its wave
/// waits for it.
#[must_use]
pub fn advance(
    record: &ReleaseRecord,
    waves: &[Wave],
    pace: Pace,
    progress: &BTreeMap<String, Progress>,
    resume: Option<&str>,
    now: Millis,
) -> Advance {
    let Pace { budget, .. } = pace;
    let mut next = record.clone();
    let mut events = Vec::new();
    let of = |runner: &String| progress.get(runner).copied().unwrap_or(Progress::Unknown);
    next.waves = waves.len();
    next.counts = waves
        .iter()
        .map(|wave| {
            wave.runners.iter().fold(WaveCounts::default(), |mut c, r| {
                c.add(of(r));
                c
            })
        })
        .collect();
    let all = || waves.iter().flat_map(|w| w.runners.iter());
    let failed_runners: Vec<String> = all().filter(|r| of(r).failed()).cloned().collect();
    let failed = u32::try_from(failed_runners.len()).unwrap_or(u32::MAX);
    let attempted = u32::try_from(all().filter(|r| of(r).attempted()).count()).unwrap_or(u32::MAX);
    // Forgiven failures are told apart by the coordinator (their time, before the resume): a
    // failure lifted since by a retry is pending again and takes no forgiveness along.
    next.forgiven =
        u32::try_from(all().filter(|r| of(r) == Progress::Forgiven).count()).unwrap_or(u32::MAX);
    next.failed = failed;
    next.attempted = attempted;
    next.counted_at = now.0;
    let quarantine = (next.version.clone(), next.image.clone().unwrap_or_default());
    if let (Some(token), Some(expected)) = (resume, next.resume_token()) {
        if token == expected && !next.resumes.iter().any(|t| t == token) {
            next.resumes.push(token.to_owned());
            keep_last(&mut next.resumes, KEPT_MAX);
            next.halted = None;
            next.forgiven += failed;
            next.forgiven_before = Some(now.0);
            next.failed = 0;
            next.quarantined.retain(|q| *q != quarantine);
            events.push(format!("resumed ({failed} failure(s) forgiven)"));
        }
    }
    // Judged even once finished: a runner that joins late (unpinned, switched back on) and
    // fails still counts.
    let why = if budget.exceeded(next.failed, attempted) {
        Some(format!(
            "{} failed of {attempted} attempted, over the budget of {}",
            next.failed, next.budget
        ))
    } else if next.failed > 0 {
        // Failures forgiven by a resume do not condemn their wave again.
        wave_failed_whole(waves, &of, next.wave.min(waves.len().saturating_sub(1)))
    } else {
        None
    };
    if let (None, Some(why)) = (&next.halted, why) {
        next.halted = Some(HaltRecord {
            at: now.0,
            failed: next.failed,
            attempted,
            runners: failed_runners.iter().take(10).cloned().collect(),
            reason: why.clone(),
        });
        if !next.quarantined.contains(&quarantine) {
            next.quarantined.push(quarantine);
            keep_last(&mut next.quarantined, KEPT_MAX);
        }
        next.settled_at = None;
        events.push(format!("halted: {why}"));
    }
    if next.halted.is_some() {
        // Only the runners in an attempt on it keep it (their attempt ends through its own
        // gate); nobody else starts it, whatever it did before.
        let admitted = all()
            .filter(|r| matches!(of(r), Progress::InFlight | Progress::RollingBack))
            .cloned()
            .collect();
        return Advance {
            record: next,
            admitted,
            events,
        };
    }
    if next.finished_at.is_none() {
        settle_and_move(&mut next, waves, &of, pace, now, &mut events);
    }
    let admitted = admitted_runners(&next, waves, &of);
    Advance {
        record: next,
        admitted,
        events,
    }
}

/// Entries kept of a record's growing lists (resumes, quarantined versions): the record stays
/// small at any age.
pub const KEPT_MAX: usize = 10;

fn keep_last<T>(list: &mut Vec<T>, max: usize) {
    let extra = list.len().saturating_sub(max);
    list.drain(..extra);
}

/// Why the wave `index` condemns the release, if it does: it is settled, some of its runners
/// attempted it and none of them is done (all failed) — a canary that failed whole halts the
/// release whatever the budget.
fn wave_failed_whole(
    waves: &[Wave],
    of: &dyn Fn(&String) -> Progress,
    index: usize,
) -> Option<String> {
    let wave = waves.get(index)?;
    // A canary outside its update window attempted nothing: the others judge the canary wave
    // (one whose runners that tried all failed halts, whoever waits for a window); a later
    // wave's failures are the budget's.
    let settled = wave
        .runners
        .iter()
        .all(|r| of(r).settled() || (index == 0 && of(r) == Progress::OutsideWindow));
    let attempted = wave.runners.iter().filter(|r| of(r).attempted()).count();
    let done = wave
        .runners
        .iter()
        .filter(|r| of(r) == Progress::Done)
        .count();
    (settled && attempted > 0 && done == 0).then(|| {
        format!(
            "every runner of wave {} that attempted it failed ({attempted})",
            index + 1
        )
    })
}

/// The current wave's bake and the move to the next wave (or the end).
fn settle_and_move(
    next: &mut ReleaseRecord,
    waves: &[Wave],
    of: &dyn Fn(&String) -> Progress,
    pace: Pace,
    now: Millis,
    events: &mut Vec<String>,
) {
    loop {
        let Some(wave) = waves.get(next.wave) else {
            next.finished_at = Some(now.0);
            events.push("finished".to_owned());
            return;
        };
        let unsettled = || wave.runners.iter().filter(|r| !of(r).settled());
        let outside = unsettled().count();
        if outside > 0 {
            let waiting =
                |r: &&String| matches!(of(r), Progress::OutsideWindow | Progress::Unknown);
            if !unsettled().all(|r| waiting(&r)) {
                next.settled_at = None;
                next.window_wait_since = None;
                return;
            }
            if unsettled().any(|r| of(r) == Progress::Unknown) {
                // Not heard from (a takeover, a restart): the wait goes on, unmoved.
                next.settled_at = None;
                return;
            }
            // Only runners outside their update windows are left: the wave waits for them a
            // while, then goes on (they update when their windows open) — provided one runner
            // of it took the release: a wave is never skipped untried (a canary least of all).
            let since = *next.window_wait_since.get_or_insert(now.0);
            let tried = wave.runners.iter().any(|r| of(r) == Progress::Done);
            if now < Millis(since).after(pace.window_wait) || !tried {
                next.settled_at = None;
                return;
            }
            if next.settled_at.is_none() {
                events.push(format!(
                    "wave {} goes on without {outside} runner(s) outside their update windows (waited {} s)",
                    next.wave + 1,
                    pace.window_wait.as_secs()
                ));
            }
        }
        let settled = *next.settled_at.get_or_insert(now.0);
        if now < Millis(settled).after(pace.bake) {
            return;
        }
        next.wave += 1;
        next.settled_at = None;
        next.window_wait_since = None;
        if next.wave < waves.len() {
            events.push(format!("wave {} of {} started", next.wave + 1, waves.len()));
        }
    }
}

/// The runners admitted: those of the waves up to the current one (every wave once finished)
/// already on their way, and the next pending ones in wave order while fewer than the current
/// wave's concurrency (the last wave's once finished) are in an attempt, across those waves —
/// a runner of an earlier wave that joins late (unpinned, switched back on) takes a place too.
fn admitted_runners(
    next: &ReleaseRecord,
    waves: &[Wave],
    of: &dyn Fn(&String) -> Progress,
) -> BTreeSet<String> {
    let open = if next.finished_at.is_some() {
        waves.len()
    } else {
        (next.wave + 1).min(waves.len())
    };
    let Some(current) = open.checked_sub(1).and_then(|i| waves.get(i)) else {
        return BTreeSet::new();
    };
    let open_waves = || waves.iter().take(open).flat_map(|w| w.runners.iter());
    let in_flight = open_waves().filter(|r| of(r).busy()).count();
    let mut room = usize::try_from(current.concurrency)
        .unwrap_or(usize::MAX)
        .saturating_sub(in_flight);
    let mut admitted = BTreeSet::new();
    for runner in open_waves() {
        match of(runner) {
            Progress::Pending if room > 0 => {
                room -= 1;
                admitted.insert(runner.clone());
            }
            // On their way or there (their desired state stays the release), or refusing it
            // (their status names why).
            Progress::InFlight | Progress::RollingBack | Progress::Done | Progress::Refused => {
                admitted.insert(runner.clone());
            }
            // A failed runner does not start it again, nor a pinned or excused one the moment
            // its pin goes or its switch comes back on: it becomes pending, and waits for a
            // place like any other.
            // Outside its window: no place until the window opens (then it reports pending).
            Progress::Pending
            | Progress::Unknown
            | Progress::Failed
            | Progress::Pinned
            | Progress::Excused
            | Progress::OutsideWindow
            | Progress::Forgiven => {}
        }
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(names: &[&str], concurrency: u32) -> Wave {
        Wave {
            runners: names.iter().map(|n| (*n).to_owned()).collect(),
            concurrency,
        }
    }

    fn plan() -> Vec<Wave> {
        vec![
            wave(&["a"], 1),
            wave(&["b", "c", "d"], 2),
            wave(&["e", "f"], 2),
        ]
    }

    fn record() -> ReleaseRecord {
        ReleaseRecord::new(
            "stable",
            "r1",
            "2.0.0",
            None,
            Budget::Count(0),
            Millis(0),
            Vec::new(),
        )
    }

    /// Every runner of the plan heard from: pending, unless said otherwise.
    fn progress(pairs: &[(&str, Progress)]) -> BTreeMap<String, Progress> {
        let mut all: BTreeMap<String, Progress> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|n| ((*n).to_owned(), Progress::Pending))
            .collect();
        all.extend(pairs.iter().map(|(n, p)| ((*n).to_owned(), *p)));
        all
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    const BAKE: Duration = Duration::from_mins(1);

    #[test]
    fn a_runner_outside_its_window_holds_no_place_and_its_wave_waits_for_it_only_a_while() {
        use Progress::{Done, OutsideWindow};
        let pace = Pace {
            budget: Budget::Count(0),
            bake: Duration::ZERO,
            window_wait: Duration::from_mins(10),
        };
        let mut at_wave_2 = record();
        at_wave_2.wave = 1;
        // b waits for its window: no place, never admitted; c and d take the two places.
        let first = progress(&[("a", Done), ("b", OutsideWindow)]);
        let step = advance(&at_wave_2, &plan(), pace, &first, None, Millis(1_000));
        assert_eq!(names(&step.admitted), ["a", "c", "d"]);
        assert_eq!(step.record.counts[1].outside_window, 1);
        assert!(step
            .record
            .next_step(pace.bake)
            .contains("1 waiting for their update windows"));
        // c and d done: only b is left; the wave waits window-wait-secs for it, no more.
        let rest = progress(&[("a", Done), ("b", OutsideWindow), ("c", Done), ("d", Done)]);
        let waiting = advance(&step.record, &plan(), pace, &rest, None, Millis(2_000));
        assert_eq!(waiting.record.wave, 1, "{:?}", waiting.events);
        assert_eq!(waiting.record.window_wait_since, Some(2_000));
        let still = advance(&waiting.record, &plan(), pace, &rest, None, Millis(601_999));
        assert_eq!(still.record.wave, 1);
        let on = advance(&still.record, &plan(), pace, &rest, None, Millis(602_000));
        assert_eq!(on.record.wave, 2, "{:?}", on.events);
        assert_eq!(on.record.window_wait_since, None);
        assert!(on.events[0].contains("without 1 runner(s) outside their update windows"));
        // Its window open (it reports pending), b takes a place beside wave 3's runners.
        let opened = progress(&[("a", Done), ("c", Done), ("d", Done)]);
        let late = advance(&on.record, &plan(), pace, &opened, None, Millis(700_000));
        assert_eq!(names(&late.admitted), ["a", "b", "c", "d", "e"]);
        assert!(late.record.halted.is_none(), "a window is not a failure");
    }

    #[test]
    fn windows_never_let_a_wave_go_untried_nor_hide_a_failed_canary_and_a_retry_takes_its_forgiveness(
    ) {
        use Progress::{Done, Failed, Forgiven, OutsideWindow, Pending};
        let pace = Pace {
            budget: Budget::Count(1),
            bake: Duration::ZERO,
            window_wait: Duration::ZERO,
        };
        let canary = vec![wave(&["a", "b"], 2), wave(&["c", "d", "e", "f"], 2)];
        // Every canary outside its window: the wait is over at once, yet the release does not
        // go on untried.
        let closed = progress(&[("a", OutsideWindow), ("b", OutsideWindow)]);
        let step = advance(&record(), &canary, pace, &closed, None, Millis(10));
        let step = advance(&step.record, &canary, pace, &closed, None, Millis(20));
        assert_eq!(step.record.wave, 0, "{:?}", step.events);
        // The one canary that tried failed, the other waits for its window: halted (a canary
        // that failed whole), whatever the budget.
        let failed = progress(&[("a", Failed), ("b", OutsideWindow)]);
        let step = advance(&record(), &canary, pace, &failed, None, Millis(30));
        assert!(step.record.halted.is_some(), "{:?}", step.events);
        // Two failures forgiven by a resume (told apart by the coordinator); one is lifted by a
        // retry (pending again): forgiveness is by runner, so a new failure counts in full.
        let both = progress(&[("a", Done), ("c", Forgiven), ("d", Forgiven)]);
        let step = advance(&record(), &canary, pace, &both, None, Millis(40));
        assert_eq!((step.record.failed, step.record.forgiven), (0, 2));
        let again = progress(&[("a", Done), ("c", Pending), ("d", Forgiven), ("e", Failed)]);
        let step = advance(&step.record, &canary, pace, &again, None, Millis(60));
        assert_eq!(step.record.failed, 1, "e counts: {:?}", step.record);
        assert!(step.record.halted.is_none(), "within the budget of 1");
        let more = progress(&[("a", Done), ("c", Failed), ("d", Forgiven), ("e", Failed)]);
        let step = advance(&step.record, &canary, pace, &more, None, Millis(70));
        assert!(
            step.record.halted.is_some(),
            "c failed again after its retry: 2 > 1"
        );
    }

    #[test]
    fn the_canary_goes_first_and_the_next_wave_waits_for_its_bake() {
        let step = advance(
            &record(),
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &progress(&[]),
            None,
            Millis(0),
        );
        assert_eq!(names(&step.admitted), ["a"]);
        assert_eq!(step.record.wave, 0);
        let done = progress(&[("a", Progress::Done)]);
        let step = advance(
            &step.record,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &done,
            None,
            Millis(1_000),
        );
        assert_eq!(step.record.settled_at, Some(1_000), "the bake starts");
        assert_eq!(
            names(&step.admitted),
            ["a"],
            "no second wave before the bake"
        );
        let step = advance(
            &step.record,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &done,
            None,
            Millis(61_000),
        );
        assert_eq!(step.record.wave, 1);
        assert_eq!(
            names(&step.admitted),
            ["a", "b", "c"],
            "two at once in wave 2"
        );
        assert_eq!(step.events, ["wave 2 of 3 started"]);
    }

    #[test]
    fn a_wave_admits_no_more_than_its_concurrency_in_flight() {
        let mut at_wave_2 = record();
        at_wave_2.wave = 1;
        let going = progress(&[
            ("a", Progress::Done),
            ("b", Progress::InFlight),
            ("c", Progress::Done),
        ]);
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &going,
            None,
            Millis(5),
        );
        assert_eq!(names(&step.admitted), ["a", "b", "c", "d"]);
        let both = progress(&[
            ("a", Progress::Done),
            ("b", Progress::InFlight),
            ("c", Progress::InFlight),
        ]);
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &both,
            None,
            Millis(5),
        );
        assert_eq!(
            names(&step.admitted),
            ["a", "b", "c"],
            "d waits for a place"
        );
    }

    #[test]
    fn a_failure_over_the_budget_halts_and_quarantines_and_only_those_on_their_way_stay() {
        let mut at_wave_2 = record();
        at_wave_2.wave = 1;
        let seen = progress(&[
            ("a", Progress::Done),
            ("b", Progress::Failed),
            ("c", Progress::InFlight),
        ]);
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(7),
        );
        let halt = step.record.halted.clone().expect("halted");
        assert_eq!(
            (halt.failed, halt.attempted, halt.runners),
            (1, 3, vec!["b".to_owned()])
        );
        assert_eq!(
            names(&step.admitted),
            ["c"],
            "only the one in flight keeps it"
        );
        assert!(step.record.is_quarantined("2.0.0", None));
        // Stays halted: nothing new is admitted however long it waits.
        let later = advance(
            &step.record,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(1_000_000),
        );
        assert!(later.record.halted.is_some());
        assert_eq!(names(&later.admitted), ["c"]);
        // A budget of one tolerates it.
        let tolerant = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(1), BAKE),
            &seen,
            None,
            Millis(7),
        );
        assert!(tolerant.record.halted.is_none());
        // A share counts the runners that attempted it: 1 of 3 is 33 %.
        let share = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Share(30), BAKE),
            &seen,
            None,
            Millis(7),
        );
        assert!(share.record.halted.is_some());
        let share = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Share(34), BAKE),
            &seen,
            None,
            Millis(7),
        );
        assert!(share.record.halted.is_none());
    }

    #[test]
    fn a_resume_with_the_halts_token_forgives_its_failures_once_and_lifts_the_quarantine() {
        let seen = progress(&[("a", Progress::Failed)]);
        let halted = advance(
            &record(),
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(3),
        )
        .record;
        let token = halted.resume_token().expect("a token");
        let stale = advance(
            &halted,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            Some("r1@1"),
            Millis(4),
        );
        assert!(
            stale.record.halted.is_some(),
            "another halt's token resumes nothing"
        );
        let resumed = advance(
            &halted,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            Some(&token),
            Millis(4),
        );
        assert!(resumed.record.halted.is_none());
        assert!(!resumed.record.is_quarantined("2.0.0", None));
        assert_eq!(resumed.record.forgiven, 1);
        assert_eq!(
            resumed.record.settled_at,
            Some(4),
            "the canary wave is settled (its runner failed)"
        );
        assert_eq!(resumed.record.forgiven_before, Some(4));
        // A second failure halts again (a's, before the resume, the coordinator tells
        // forgiven); the same token does not resume it twice.
        let again = progress(&[("a", Progress::Forgiven), ("b", Progress::Failed)]);
        let halted = advance(
            &resumed.record,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &again,
            Some(&token),
            Millis(5),
        );
        assert!(halted.record.halted.is_some());
    }

    #[test]
    fn pinned_and_excused_runners_do_not_hold_a_wave_and_the_release_finishes() {
        let seen = progress(&[
            ("a", Progress::Pinned),
            ("b", Progress::Done),
            ("c", Progress::Excused),
            ("d", Progress::Done),
            ("e", Progress::Done),
            ("f", Progress::Done),
        ]);
        let step = advance(
            &record(),
            &plan(),
            Pace::new(Budget::Count(0), Duration::ZERO),
            &seen,
            None,
            Millis(9),
        );
        assert_eq!(step.record.finished_at, Some(9));
        assert_eq!(
            step.admitted.len(),
            4,
            "the pinned and the excused ones are not: they wait for a place once they follow"
        );
        assert_eq!(step.record.totals().done, 4);
        assert!(step.record.next_step(BAKE).starts_with("finished"));
    }

    #[test]
    fn a_canary_that_failed_whole_halts_whatever_the_budget_and_a_halt_comes_even_once_finished() {
        let seen = progress(&[("a", Progress::Failed)]);
        let step = advance(
            &record(),
            &plan(),
            Pace::new(Budget::Count(5), BAKE),
            &seen,
            None,
            Millis(1),
        );
        let halt = step.record.halted.expect("halted");
        assert!(
            halt.reason.contains("every runner of wave 1"),
            "{}",
            halt.reason
        );
        // Finished, then a runner that joined late fails over the budget: halted still.
        let mut finished = record();
        finished.wave = 3;
        finished.finished_at = Some(1);
        let late = progress(&[
            ("a", Progress::Done),
            ("b", Progress::Done),
            ("c", Progress::Done),
            ("d", Progress::Failed),
            ("e", Progress::Done),
            ("f", Progress::Done),
        ]);
        let step = advance(
            &finished,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &late,
            None,
            Millis(2),
        );
        assert!(step.record.halted.is_some());
    }

    #[test]
    fn runners_joining_an_earlier_wave_late_take_places_within_the_current_waves_concurrency() {
        let mut at_wave_3 = record();
        at_wave_3.wave = 2;
        // Wave 2's b, c, d were pinned, then unpinned all at once: pending again.
        let seen = progress(&[("a", Progress::Done), ("e", Progress::InFlight)]);
        let step = advance(
            &at_wave_3,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(3),
        );
        assert_eq!(
            names(&step.admitted),
            ["a", "b", "e"],
            "one place left of two"
        );
    }

    #[test]
    fn a_runner_not_heard_from_holds_a_place_and_its_wave_waits_for_it() {
        let mut at_wave_2 = record();
        at_wave_2.wave = 1;
        // After a takeover nobody has reported: nobody new is admitted.
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &BTreeMap::new(),
            None,
            Millis(1),
        );
        assert!(step.admitted.is_empty(), "{:?}", step.admitted);
        // b not heard from (or taking its lock): one place of two left, c admitted, d waits.
        let mut seen = progress(&[("a", Progress::Done), ("b", Progress::Unknown)]);
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(2),
        );
        assert_eq!(names(&step.admitted), ["a", "c"]);
        // Halted, a runner taking its lock is not admitted: its lock's re-check stops it.
        seen.insert("c".to_owned(), Progress::Failed);
        let step = advance(
            &at_wave_2,
            &plan(),
            Pace::new(Budget::Count(0), BAKE),
            &seen,
            None,
            Millis(3),
        );
        assert!(step.record.halted.is_some());
        assert!(step.admitted.is_empty(), "{:?}", step.admitted);
        // Quarantined without an image: any image of the version.
        assert!(step
            .record
            .is_quarantined("2.0.0", Some("registry.example/runner:2.0.0-b2")));
    }

    #[test]
    fn a_record_reads_back_and_refuses_another_channel_or_a_newer_schema() {
        let text = record().encode().expect("encodes");
        assert_eq!(
            ReleaseRecord::decode(&text, "stable").expect("reads"),
            record()
        );
        assert!(ReleaseRecord::decode(&text, "beta").is_err());
        let newer = text.replace("\"schema_version\":1", "\"schema_version\":9");
        assert!(ReleaseRecord::decode(&newer, "stable").is_err());
        assert!(ReleaseRecord::decode("{", "stable").is_err());
    }
}
