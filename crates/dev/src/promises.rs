//! Two promises of issue 20 the simulation checks at every record write: **a runner outside its
//! update window is never updated** (no attempt starts while every window ops had written for
//! it around that moment was closed), and **a retried version goes forward at most once per
//! retry**: a quarantine mark is lifted only by a retry acknowledged in that very write (or
//! pushed out by newer marks), each retry is acknowledged once per runner, and a channel's retry
//! lifts only marks made before the channel acknowledged it — so a failure after a retry is
//! quarantined again, and the attempts on it stop (`failed-not-retried` holds them there).

use std::collections::{HashMap, HashSet};

use runner_updater_core::domain::window::parse_windows;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::FAILED_MARKS_MAX;
use runner_updater_core::record::{FailedRecord, Record};

/// Which promise a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// An attempt started outside the runner's window.
    Window,
    /// A mark lifted without a retry, a retry acknowledged twice, or a channel's retry lifting a
    /// mark made after it (an attempt on a target still marked is `failed-not-retried`'s).
    Retry,
}

/// A failed target: version, image, desired infrastructure.
type Target = (String, String, Option<String>);

fn target_of(mark: &FailedRecord) -> Target {
    (mark.version.clone(), mark.image.clone(), mark.infra.clone())
}

#[derive(Debug, Default)]
struct Tries {
    /// Retry ids this runner's record ever acknowledged.
    acknowledged: HashSet<String>,
}

/// The windows ops wrote and the retries they asked for, and what each runner may still do.
#[derive(Debug, Default)]
pub struct Promises {
    /// Per runner: (when written, by the true clock; the value, `None` when deleted).
    windows: HashMap<String, Vec<(u64, Option<String>)>>,
    /// Retry ids as a runner's record names them → the version.
    intents: HashMap<String, String>,
    /// A channel's retries as the runners' records name them → when the channel acknowledged
    /// them (its clock).
    channel_acks: HashMap<String, u64>,
    runners: HashMap<String, Tries>,
}

/// The controllers' clocks' skew, at most, both ways.
const ACK_SKEW_MS: u64 = 5_000;

fn then_has(before: &Record, mark: &FailedRecord) -> bool {
    before
        .failed
        .iter()
        .any(|m| target_of(m) == target_of(mark))
}

/// How far apart the moment a controller read a window and the moment it started an attempt
/// may be, clocks' skew included (the attempt starts on a fresh read).
const SLACK_MS: u64 = 60_000;

impl Promises {
    /// Ops wrote (or deleted) `runner`'s `desired/update-window` at `at`.
    pub fn window_written(&mut self, runner: &str, at: Millis, value: Option<&str>) {
        self.windows
            .entry(runner.to_owned())
            .or_default()
            .push((at.0, value.map(str::to_owned)));
    }

    /// Ops wrote a retry intent, named `id` in the runners' records, of `version`.
    pub fn intent_written(&mut self, id: String, version: String) {
        self.intents.insert(id, version);
    }

    /// The channel's record says it acknowledged retry `id` (named as the runners' records
    /// name it) at `at`.
    pub fn channel_acknowledged(&mut self, id: String, at: u64) {
        // Once written, a record keeps its acknowledgement's time; a write that did not take
        // effect is followed by one that does: the last one is the truth.
        self.channel_acks.insert(id, at);
    }

    /// A controller's write of `record` over `before` took effect.
    ///
    /// # Errors
    /// The promise broken, and how.
    pub fn saved(
        &mut self,
        record: &Record,
        before: Option<&Record>,
    ) -> Result<(), (Broken, String)> {
        let runner = record.runner.clone();
        let new_attempt = record.attempt.as_ref().filter(|a| {
            before
                .and_then(|b| b.attempt.as_ref())
                .is_none_or(|old| old.id != a.id)
        });
        if let Some(attempt) = new_attempt {
            self.check_window(&runner, attempt.started_at, &attempt.id)?;
        }
        let Some(before) = before else {
            return Ok(());
        };
        let tries = self.runners.entry(runner.clone()).or_default();
        let new_ids: Vec<&String> = record
            .retries
            .iter()
            .filter(|id| !before.retries.contains(id))
            .collect();
        for id in &new_ids {
            if !tries.acknowledged.insert((*id).clone()) {
                return Err((
                    Broken::Retry,
                    format!("{runner}: retry {id} acknowledged a second time"),
                ));
            }
        }
        let now: HashSet<Target> = record.failed.iter().map(target_of).collect();
        let added = record
            .failed
            .iter()
            .filter(|m| !then_has(before, m))
            .count();
        for lifted in before
            .failed
            .iter()
            .filter(|m| !now.contains(&target_of(m)))
        {
            let by = new_ids
                .iter()
                .find(|id| self.intents.get(id.as_str()) == Some(&lifted.version));
            match by {
                Some(id) => {
                    if let Some(at) = self.channel_acks.get(id.as_str()) {
                        if lifted.at > at + ACK_SKEW_MS {
                            return Err((
                                Broken::Retry,
                                format!(
                                    "{runner}: the channel's retry {id} (acknowledged at {}) lifted a mark of {} made later, at {}",
                                    Millis(*at),
                                    lifted.version,
                                    Millis(lifted.at)
                                ),
                            ));
                        }
                    }
                }
                None if added > 0 && record.failed.len() >= FAILED_MARKS_MAX => {}
                None => {
                    return Err((
                        Broken::Retry,
                        format!(
                            "{runner}: the mark of {} ({}) was lifted without a retry acknowledged",
                            lifted.version, lifted.image
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Whether a window ops had written around `started_at` was open then.
    fn check_window(
        &self,
        runner: &str,
        started_at: u64,
        attempt: &str,
    ) -> Result<(), (Broken, String)> {
        let Some(history) = self.windows.get(runner) else {
            return Ok(()); // never written: any time (the configuration has none)
        };
        // The values in effect at some moment within the slack around the start.
        let (from, to) = (started_at.saturating_sub(SLACK_MS), started_at + SLACK_MS);
        let mut in_effect: Vec<Option<&str>> = Vec::new();
        let mut current: Option<&str> = None;
        for (at, value) in history {
            if *at > to {
                break;
            }
            if *at >= from {
                in_effect.push(current);
            }
            current = value.as_deref();
        }
        in_effect.push(current);
        let open = in_effect.iter().any(|value| match value {
            None => true,
            Some(text) => match parse_windows(text) {
                Ok(None) => true,
                Ok(Some(windows)) => windows.is_open(Millis(started_at)),
                Err(_) => false,
            },
        });
        if open {
            Ok(())
        } else {
            Err((
                Broken::Window,
                format!(
                    "{runner}: attempt {attempt} started at {} outside its window ({:?})",
                    Millis(started_at),
                    in_effect
                ),
            ))
        }
    }
}
