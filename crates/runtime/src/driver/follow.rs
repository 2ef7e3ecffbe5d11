//! A runner following its channel's release (see [`crate::channels`]): its desired state is
//! the release while it is admitted, unless its own `release` or `desired/*` pin it; and where
//! it stands with the release, reported to the coordinator after each pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use runner_updater_core::domain::desired::{
    parse_desired, DesiredError, DesiredSource, DesiredState, RELEASE_PARAMETER, SWITCHES,
    UPDATE_WINDOW_PARAMETER,
};
use runner_updater_core::domain::eligibility::Rule;
use runner_updater_core::domain::observed::{ObserveError, Observed};
use runner_updater_core::domain::retry::is_retry_name;
use runner_updater_core::domain::rollout::Progress;
use runner_updater_core::domain::window::parse_windows;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;

use super::{Following, RunnerDriver, Standing};
use crate::channels::{CurrentRelease, Follow};

impl RunnerDriver {
    /// The desired state from the runner's folder (`relative`), its channel's release taking
    /// the place of the `release` document while the runner is admitted and not pinned.
    pub(super) fn desired_following(
        &mut self,
        relative: &BTreeMap<String, String>,
    ) -> Result<DesiredState, DesiredError> {
        let Some(board) = &self.board else {
            return parse_desired(relative, &self.policy);
        };
        let pinned = relative
            .keys()
            .any(|name| !SWITCHES.contains(&name.as_str()) && !is_retry_name(name));
        let excused = relative
            .get("desired/auto-update")
            .is_some_and(|value| value == "false");
        self.following = Following {
            standing: if pinned {
                Standing::Pinned
            } else if excused {
                Standing::Excused
            } else {
                Standing::Follows
            },
            admitted: false,
            running_it: false,
            refused: false,
            outside_window: None,
        };
        if pinned {
            return parse_desired(relative, &self.policy);
        }
        let now = self.ports.clock.now();
        // Its window (its own, else its configuration's; a bad one is refused when admitted).
        let windows = match relative.get(UPDATE_WINDOW_PARAMETER) {
            Some(text) => parse_windows(text).ok().flatten().map(Arc::new),
            None => self.policy.update_windows.clone(),
        };
        self.following.outside_window = windows
            .filter(|w| !w.is_open(now))
            .map(|w| w.next_open(now).unwrap_or(Millis(u64::MAX)));
        // An attempt past its lock keeps its release (see `Board::follow`); at rest, in
        // Checking or under the lock's re-check, admission is asked afresh.
        let phase = self.phase();
        let attempt_target = (!phase.is_resting()
            && !matches!(phase, Phase::Checking | Phase::Locked))
        .then(|| {
            self.last_saved
                .as_ref()
                .and_then(|r| r.attempt.as_ref())
                .map(|a| a.target_version.clone())
        })
        .flatten();
        match board.follow(
            &self.settings.channel,
            &self.runner.name,
            attempt_target.as_deref(),
            now,
        ) {
            Follow::Unknown => Err(DesiredError::Unavailable(format!(
                "channel {}'s release is not read yet (the first sweep reads it)",
                self.settings.channel
            ))),
            Follow::Nothing => parse_desired(relative, &self.policy),
            Follow::Waiting(why) => Err(DesiredError::AwaitingWave {
                channel: self.settings.channel.to_string(),
                why: why.to_string(),
            }),
            Follow::Admitted(text) => {
                self.following.admitted = true;
                let mut with = relative.clone();
                with.insert(RELEASE_PARAMETER.to_owned(), text.to_string());
                let desired = parse_desired(&with, &self.policy).map(|mut desired| {
                    desired.source = DesiredSource::Channel;
                    desired
                });
                // A value of the release this runner refuses (its allowed repositories, its
                // stacks, a pre-release on its channel) stops this runner only: its wave does
                // not wait for it.
                self.following.refused =
                    matches!(&desired, Err(e) if !matches!(e, DesiredError::Unavailable(_)));
                desired
            }
        }
    }

    /// Notes whether an admitted runner already runs the release it was given.
    pub(super) fn note_running(
        &mut self,
        desired: &Result<DesiredState, DesiredError>,
        observed: &Result<Observed, ObserveError>,
    ) {
        self.following.running_it = self.following.admitted
            && matches!((desired, observed), (Ok(d), Ok(o)) if o.running_image == d.image);
        // Admitted but unable to take it for a reason of its own that waiting does not mend
        // (its service or container not found): it does not hold its wave.
        if self.following.admitted
            && matches!(observed, Err(e) if !matches!(e, ObserveError::Unavailable(_)))
        {
            self.following.refused = true;
        }
    }

    /// When this controller has just taken the runner's channel over, a runner at rest reads its
    /// record again before it reports (its machine is dropped: the pass reloads it), so that an
    /// attempt another controller made meanwhile is seen, not counted as pending.
    pub(super) fn reread_after_channel_takeover(&mut self) {
        let Some(board) = &self.board else {
            return;
        };
        let generation = board.generation(&self.settings.channel);
        if generation == self.channel_generation {
            return;
        }
        self.channel_generation = generation;
        if self.machine.is_some() && self.phase().is_resting() && self.pending.is_empty() {
            self.machine = None;
        }
    }

    /// Whether an admitted runner at rest found the release not for it by a rule that waiting
    /// does not change: it runs a newer version, or lacks the infrastructure version it needs.
    fn refuses_by_rule(&self, phase: Phase) -> bool {
        self.following.admitted
            && phase.is_resting()
            && self
                .machine
                .as_ref()
                .and_then(|m| m.inner().memory.verdict.as_ref())
                .and_then(|v| v.first_failure())
                .is_some_and(|failure| {
                    matches!(failure.rule, Rule::NewerVersion | Rule::Infrastructure)
                })
    }

    /// Tells the coordinator where the runner stands with its channel's release.
    pub(super) fn report_channel_progress(&self) {
        let Some(board) = &self.board else {
            return;
        };
        let Some(release) = board.current(&self.settings.channel) else {
            return;
        };
        let progress = self.progress_on(&release);
        let at = match progress {
            Progress::OutsideWindow => self.following.outside_window,
            // When it failed: a failure up to the release's last resume is forgiven.
            Progress::Failed | Progress::RollingBack => self.last_saved.as_ref().and_then(|r| {
                r.failed
                    .iter()
                    .filter(|f| {
                        f.version == *release.version
                            && release.image.as_deref().is_none_or(|i| i == f.image)
                    })
                    .map(|f| Millis(f.at))
                    .max()
            }),
            _ => None,
        };
        board.report(&self.runner.name, &release, progress, at);
    }

    /// Where the runner stands with `release`, from its state and its record: what it did
    /// with the release first (failed it, in an attempt on it — a pin written meanwhile does
    /// not end that attempt's count), then a pin.
    fn progress_on(&self, release: &CurrentRelease) -> Progress {
        if self.machine.is_none() && self.last_saved.is_none() {
            // Its record not read yet (a first load that failed): nothing is known of it.
            return Progress::Unknown;
        }
        // Without its machine (dropped after a failed or fenced pass, to be reloaded), what its
        // record last said.
        let phase = match &self.machine {
            Some(_) => self.phase(),
            None => self
                .last_saved
                .as_ref()
                .and_then(|r| r.phase().ok())
                .unwrap_or(Phase::Idle),
        };
        if matches!(phase, Phase::Checking | Phase::Locked) {
            // Taking its lock: it holds a place, and its lock's re-check decides.
            return Progress::Unknown;
        }
        let on = |version: &str, image: &str| {
            version == &*release.version && release.image.as_deref().is_none_or(|i| i == image)
        };
        let record = self.last_saved.as_ref();
        let failed = record.is_some_and(|r| {
            r.failed
                .iter()
                .any(|f| on(&f.version, &f.image) && !self.channel_retried(&f.version, f.at))
        });
        let attempt_on = record
            .and_then(|r| r.attempt.as_ref())
            .is_some_and(|a| on(&a.target_version, &a.target_image));
        // A mark a retry lifted (the runner's own, or its channel's) is no failure: it may try
        // once more.
        let lifted = record.is_some_and(|r| {
            r.failed
                .iter()
                .any(|f| on(&f.version, &f.image) && self.channel_retried(&f.version, f.at))
        });
        if !phase.is_resting() && attempt_on {
            if failed || (phase == Phase::RollingBack && !lifted) {
                Progress::RollingBack
            } else {
                Progress::InFlight
            }
        } else if failed {
            Progress::Failed
        } else if self.following.standing == Standing::Pinned {
            Progress::Pinned
        } else if self.following.running_it || (phase == Phase::Done && attempt_on) {
            Progress::Done
        } else if self.following.refused || self.refuses_by_rule(phase) {
            Progress::Refused
        } else if self.following.standing == Standing::Excused {
            Progress::Excused
        } else if self.following.outside_window.is_some() {
            Progress::OutsideWindow
        } else {
            Progress::Pending
        }
    }
}
