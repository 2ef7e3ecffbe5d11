//! `runner-updater release status|resume`: a channel's release as on-call reads it, and the
//! resume of a halted one (an intent written to SSM, acknowledged by the controller).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use runner_updater_config::Config;
use runner_updater_core::domain::channel::{
    parse_channel_release, release_id, validate_for_channel, waves, Wave, CHANNELS_FOLDER,
    RELEASE_NAME,
};
use runner_updater_core::domain::rollout::{HaltRecord, ReleaseRecord, WaveCounts};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{Lock, ParameterStore, PortError, StateStore, StoreError};
use runner_updater_runtime::channels::RESUME_NAME;

use crate::report::{RunnerReleaseView, StatusView};

/// One wave of a release, for `release status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveView {
    /// 1-based.
    pub wave: usize,
    /// Its runners updating at once.
    pub concurrency: u32,
    /// Its runners, in the order they start.
    pub runners: Vec<String>,
    /// Where they stand, as the controller last counted.
    pub counts: WaveCounts,
}

/// A channel's release, for `release status` (humans and `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseView {
    /// The channel.
    pub channel: String,
    /// The runners this configuration puts on it.
    pub runners: usize,
    /// `no-release`, `refused`, `not-started`, `rolling-out`, `baking`, `halted`, `finished`,
    /// `superseded` (the record is an older document's: the controller has not taken the new
    /// one yet).
    pub state: String,
    /// Why the document is refused, when it is.
    pub refused: Option<String>,
    /// The release's version.
    pub version: Option<String>,
    /// Its image, when the document names one.
    pub image: Option<String>,
    /// Its identity (a hash of the document).
    pub release_id: Option<String>,
    /// The wave in progress (1-based; the last one once finished).
    pub wave: Option<usize>,
    /// The waves.
    pub waves: Vec<WaveView>,
    /// The budget (`0`, `2`, `10%`).
    pub budget: Option<String>,
    /// Failed runners counted against it.
    pub failed: u32,
    /// Runners that attempted the release.
    pub attempted: u32,
    /// Why it halted.
    pub halted: Option<HaltRecord>,
    /// Resumes the controller acknowledged.
    pub resumes: usize,
    /// (version, image) quarantined on the channel.
    pub quarantined: Vec<(String, String)>,
    /// The next step, in words.
    pub next_step: String,
    /// When the controller last counted (RFC 3339).
    pub counted_at: Option<String>,
    /// Who advances the channel (its lease), when read.
    pub holder: Option<String>,
}

/// The channels `config` serves, or the one named.
///
/// # Errors
/// A channel no runner of the configuration follows.
pub fn channels_of(
    config: &Config,
    only: Option<&str>,
) -> Result<Vec<(String, Vec<String>)>, String> {
    let all = config.channels();
    match only {
        None => Ok(all),
        Some(name) => all
            .into_iter()
            .find(|(channel, _)| channel == name)
            .map(|found| vec![found])
            .ok_or_else(|| {
                format!("no runner of this configuration follows channel {name} ([[runners]] channel, or the controller's channel)")
            }),
    }
}

/// The views of `channels`: the document read from SSM, the record from the store (only when
/// there is a document), the lease holder from the lock (when given). A channel that cannot be
/// read is a view saying why (`unreadable`), beside the others.
pub async fn release_views(
    config: &Config,
    store: &dyn StateStore,
    ssm: &dyn ParameterStore,
    lock: Option<&dyn Lock>,
    channels: &[(String, Vec<String>)],
    now: Millis,
) -> Vec<ReleaseView> {
    let mut views = Vec::with_capacity(channels.len());
    for (channel, runners) in channels {
        let name = format!("{CHANNELS_FOLDER}/{channel}/{RELEASE_NAME}");
        let document = match ssm.get(&format!("{}/{name}", config.prefix)).await {
            Ok(parameter) => parameter.map(|p| p.value),
            Err(error) => {
                views.push(unreadable(channel, runners, &error.to_string()));
                continue;
            }
        };
        let record = match &document {
            Some(_) => match store.load_release(channel).await {
                Ok(record) => record,
                Err(error) => {
                    views.push(unreadable(channel, runners, &error.to_string()));
                    continue;
                }
            },
            None => None,
        };
        let holder = match lock {
            Some(lock) => lock
                .holder(
                    &runner_updater_core::domain::rollout::channel_key(channel),
                    now,
                )
                .await
                .ok()
                .flatten(),
            None => None,
        };
        views.push(view_of(
            channel,
            runners,
            document.as_deref(),
            record,
            holder,
        ));
    }
    views
}

/// The view of a channel that could not be read.
fn unreadable(channel: &str, runners: &[String], why: &str) -> ReleaseView {
    let mut view = view_of(channel, runners, None, None, None);
    view.state = "unreadable".to_owned();
    view.refused = Some(why.to_owned());
    view.next_step = "read it again once the cause is mended".to_owned();
    view
}

/// A channel's view from its document, record and lease holder (pure).
#[must_use]
pub fn view_of(
    channel: &str,
    runners: &[String],
    document: Option<&str>,
    record: Option<ReleaseRecord>,
    holder: Option<String>,
) -> ReleaseView {
    let mut view = ReleaseView {
        channel: channel.to_owned(),
        runners: runners.len(),
        state: "no-release".to_owned(),
        refused: None,
        version: None,
        image: None,
        release_id: None,
        wave: None,
        waves: Vec::new(),
        budget: None,
        failed: 0,
        attempted: 0,
        halted: None,
        resumes: 0,
        quarantined: record
            .as_ref()
            .map(|r| r.quarantined.clone())
            .unwrap_or_default(),
        next_step: format!(
            "nothing: write a release to {CHANNELS_FOLDER}/{channel}/{RELEASE_NAME} to roll one out"
        ),
        counted_at: None,
        holder,
    };
    let Some(document) = document else {
        return view;
    };
    let name = format!("{CHANNELS_FOLDER}/{channel}/{RELEASE_NAME}");
    let release = match parse_channel_release(document, &name)
        .and_then(|r| validate_for_channel(&r, runners, &name).map(|()| r))
    {
        Ok(release) => release,
        Err(error) => {
            view.state = "refused".to_owned();
            view.refused = Some(error.to_string());
            view.next_step = "nothing: no runner moves until the document is corrected".to_owned();
            return view;
        }
    };
    let id = release_id(document);
    view.version.clone_from(&release.release.version);
    view.image.clone_from(&release.release.image);
    view.release_id = Some(id.clone());
    view.budget = Some(runner_updater_core::domain::rollout::budget_words(
        release.budget,
    ));
    let plan = waves(&release.plan, runners);
    if let Some(stored) = record.as_ref().filter(|r| r.release_id != id) {
        let version = release.release.version.as_deref().unwrap_or_default();
        if stored.is_quarantined(version, release.release.image.as_deref()) {
            view.state = "refused".to_owned();
            view.refused = Some(format!(
                "{version} is quarantined on this channel (a release of it halted): publish another version, or `runner-updater release resume {channel}` to lift it"
            ));
            view.next_step = "nothing: no runner starts a quarantined version".to_owned();
            view.halted.clone_from(&stored.halted);
            return view;
        }
    }
    let record = record.filter(|r| r.release_id == id);
    view.waves = wave_views(&plan, record.as_ref());
    let Some(record) = record else {
        view.state = "not-started".to_owned();
        view.wave = Some(1);
        view.next_step =
            "the controller takes it at its next sweep, from its first wave".to_owned();
        return view;
    };
    let bake = Duration::from_secs(release.plan.bake_secs);
    view.state = if record.halted.is_some() {
        "halted"
    } else if record.finished_at.is_some() {
        "finished"
    } else if record.settled_at.is_some() {
        "baking"
    } else {
        "rolling-out"
    }
    .to_owned();
    view.wave = Some((record.wave + 1).min(plan.len().max(1)));
    view.failed = record.failed;
    view.attempted = record.attempted;
    view.halted.clone_from(&record.halted);
    view.resumes = record.resumes.len();
    view.next_step = record.next_step(bake);
    view.counted_at = Some(Millis(record.counted_at).to_string());
    view
}

/// The waves of a plan with the counts of the record (when it is the release's).
fn wave_views(plan: &[Wave], record: Option<&ReleaseRecord>) -> Vec<WaveView> {
    plan.iter()
        .enumerate()
        .map(|(index, wave)| WaveView {
            wave: index + 1,
            concurrency: wave.concurrency,
            runners: wave.runners.clone(),
            counts: record
                .and_then(|r| r.counts.get(index).copied())
                .unwrap_or(WaveCounts {
                    runners: u32::try_from(wave.runners.len()).unwrap_or(u32::MAX),
                    pending: u32::try_from(wave.runners.len()).unwrap_or(u32::MAX),
                    ..WaveCounts::default()
                }),
        })
        .collect()
}

/// `release status` for humans.
#[must_use]
pub fn render_release(views: &[ReleaseView]) -> String {
    let mut out = String::new();
    for view in views {
        let _ = writeln!(
            out,
            "channel {}: {} ({} runners)",
            view.channel, view.state, view.runners
        );
        if let Some(version) = &view.version {
            let image = view.image.as_deref().unwrap_or("each runner's repository");
            let _ = writeln!(out, "  release   : {version} ({image})");
        }
        if let Some(refused) = &view.refused {
            let _ = writeln!(out, "  refused   : {refused}");
        }
        if let (Some(wave), false) = (view.wave, view.waves.is_empty()) {
            let _ = writeln!(out, "  wave      : {wave} of {}", view.waves.len());
        }
        if let Some(budget) = &view.budget {
            let _ = writeln!(
                out,
                "  budget    : {} failed of {} attempted (budget {budget})",
                view.failed, view.attempted
            );
        }
        let _ = writeln!(out, "  next step : {}", view.next_step);
        if let Some(holder) = &view.holder {
            let _ = writeln!(out, "  advanced by: {holder}");
        }
        for (version, image) in &view.quarantined {
            let image = if image.is_empty() { "any image" } else { image };
            let _ = writeln!(out, "  quarantined: {version} ({image})");
        }
        if !view.waves.is_empty() {
            let _ = writeln!(
                out,
                "  {:<6} {:>7} {:>8} {:>9} {:>6} {:>11} {:>7} {:>8} {:>8} {:>14} {:>11}",
                "WAVE",
                "RUNNERS",
                "PENDING",
                "IN FLIGHT",
                "DONE",
                "ROLLED BACK",
                "PINNED",
                "EXCUSED",
                "REFUSED",
                "OUTSIDE WINDOW",
                "CONCURRENCY"
            );
            for wave in &view.waves {
                let c = wave.counts;
                let _ = writeln!(
                    out,
                    "  {:<6} {:>7} {:>8} {:>9} {:>6} {:>11} {:>7} {:>8} {:>8} {:>14} {:>11}",
                    wave.wave,
                    c.runners,
                    c.pending,
                    c.in_flight,
                    c.done,
                    c.rolled_back,
                    c.pinned,
                    c.excused,
                    c.refused,
                    c.outside_window,
                    wave.concurrency
                );
            }
        }
        if let Some(at) = &view.counted_at {
            let _ = writeln!(out, "  (counted by the controller at {at})");
        }
    }
    out
}

/// Why `release status` or `release resume` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SSM could not be read or written.
    #[error(transparent)]
    Ssm(#[from] PortError),
    /// Nothing to resume.
    #[error("{0}")]
    NotHalted(String),
}

/// `release resume CHANNEL`: writes the halt's resume token to
/// `<prefix>/_channels/<channel>/resume` (the controller acknowledges it at its next sweep:
/// the failures so far are forgiven once, the quarantine lifted). Returns the parameter
/// written.
///
/// # Errors
/// [`ReleaseError::NotHalted`] when the channel's release is not halted; the store or SSM
/// failing.
pub async fn resume(
    config: &Config,
    store: &dyn StateStore,
    ssm: &dyn ParameterStore,
    channel: &str,
) -> Result<String, ReleaseError> {
    let record = store.load_release(channel).await?;
    let Some(token) = record.as_ref().and_then(ReleaseRecord::resume_token) else {
        let what = match record {
            Some(record) => format!(
                "channel {channel}'s release {} is not halted: nothing to resume",
                record.version
            ),
            None => format!("channel {channel} has no release record: nothing to resume"),
        };
        return Err(ReleaseError::NotHalted(what));
    };
    let name = format!(
        "{}/{CHANNELS_FOLDER}/{channel}/{RESUME_NAME}",
        config.prefix
    );
    ssm.put(&name, &token, true).await?;
    Ok(name)
}

/// Adds each runner's place in its channel's release to its status (`status`).
pub fn annotate(views: &mut [StatusView], releases: &[ReleaseView]) {
    for view in views {
        let found = releases.iter().find_map(|release| {
            let version = release.version.as_ref()?;
            let (index, _) = release
                .waves
                .iter()
                .enumerate()
                .find(|(_, wave)| wave.runners.contains(&view.runner))?;
            Some((release, version, index))
        });
        let Some((release, version, index)) = found else {
            continue;
        };
        let record = view.record.as_ref();
        let source = record
            .and_then(|r| r.desired.as_ref())
            .map(|d| d.source.as_str());
        let waiting = record.and_then(|r| r.note.as_ref()).is_some_and(|n| {
            n.code == runner_updater_core::domain::code::Code::AwaitingWave.as_str()
        });
        // A follower not admitted notes `awaiting-wave` at every pass, and an admitted one
        // reads the release as its desired state (`channel`): anything else read its own.
        let standing = match (record, source) {
            (None, _) => "waiting",
            (Some(_), _) if waiting => "waiting",
            (Some(_), Some("channel")) => "following",
            (Some(_), _) => "pinned",
        };
        view.release = Some(RunnerReleaseView {
            channel: release.channel.clone(),
            version: version.clone(),
            wave: index + 1,
            waves: release.waves.len(),
            standing: standing.to_owned(),
        });
    }
}
