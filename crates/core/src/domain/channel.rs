//! A channel's release (issue 19, first part: the document and its waves, pure): one SSM
//! parameter, `<prefix>/_channels/<channel>/release` (the underscore cannot begin a runner's
//! name), written in one command. It holds a release document's keys ([`super::release`]:
//! `version`, `image`, `infra-version`, `stacks`; not `channel`, which its path names) and how
//! the release rolls out over the channel's runners:
//!
//! ```json
//! {
//!   "version": "2.19.0",
//!   "image": "registry.example/runner:2.19.0",
//!   "plan": {
//!     "canary": ["runner-a"],
//!     "waves": [10, 50, {"percent": 100, "concurrency": 20}],
//!     "concurrency": 5,
//!     "bake-secs": 600
//!   },
//!   "budget": "10%"
//! }
//! ```
//!
//! - `plan.canary`: runners named (each must be one of the channel's), or a count: the first N
//!   runners by a stable hash of their names. Absent: no canary wave.
//! - `plan.waves`: cumulative shares of the channel's runners (canaries included), rising to
//!   100: a percentage, or `{"percent": P, "concurrency": C}`. Absent: one wave of 100 %.
//! - `plan.concurrency`: the runners of a wave updating at once (default
//!   [`DEFAULT_CONCURRENCY`]), unless a wave says otherwise.
//! - `plan.bake-secs`: how long every runner of a wave must stay Done before the next wave
//!   starts (default 0).
//! - `plan.window-wait-secs`: how long a wave waits for its runners outside their update
//!   windows once its other runners settled (default a day, at most a week); then it goes on,
//!   and they update when their windows open.
//! - `budget`: failed runners the release tolerates before it halts: a count, or a share of the
//!   runners that attempted it (`"10%"`); 0 (the default) halts at the first failure.
//!
//! Parsing is strict, as for a runner's release: not JSON, an unknown key, a value of the wrong
//! type, percentages that do not rise to 100 — each refused by name with the field at fault
//! ([`DesiredError::InvalidRelease`]). Checked against the channel's runners
//! ([`validate_for_channel`]): a canary that is not one of them, a budget above their number, a
//! channel with no runner.

use super::desired::DesiredError;
use super::release::{parse_release_object, Release};
use super::{fnv1a, FNV_OFFSET};

/// The folder of the channels' releases under the prefix.
pub const CHANNELS_FOLDER: &str = "_channels";

/// The keys of a channel's release document.
pub const CHANNEL_RELEASE_KEYS: [&str; 6] = [
    "version",
    "image",
    "infra-version",
    "stacks",
    "plan",
    "budget",
];

/// The keys of a plan.
pub const PLAN_KEYS: [&str; 5] = [
    "canary",
    "waves",
    "concurrency",
    "bake-secs",
    "window-wait-secs",
];

/// The runners of a wave updating at once unless the plan says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 10;

/// How long a wave waits for its runners outside their update windows by default (a day).
pub const DEFAULT_WINDOW_WAIT_SECS: u64 = 24 * 3600;

/// The longest bake accepted (a week): a longer one is a typo more often than a plan.
pub const BAKE_SECS_MAX: u64 = 7 * 24 * 3600;

/// A channel's release: what to deploy, how to roll it out, how much failure to tolerate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRelease {
    /// What to deploy (its values validated as a runner's release is, per runner).
    pub release: Release,
    /// How it rolls out.
    pub plan: RolloutPlan,
    /// When it halts.
    pub budget: Budget,
}

/// The canary wave.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Canary {
    /// None: the first wave is the first percentage.
    #[default]
    None,
    /// These runners.
    Runners(Vec<String>),
    /// The first N runners by a stable hash of their names.
    First(u32),
}

/// One wave after the canary: a cumulative share of the channel's runners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaveSpec {
    /// The share of the channel's runners updated once this wave is done (1–100, rising).
    pub percent: u8,
    /// Its runners updating at once.
    pub concurrency: u32,
}

/// How a release rolls out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPlan {
    /// The canary wave.
    pub canary: Canary,
    /// The waves after it, the last at 100 %.
    pub waves: Vec<WaveSpec>,
    /// The canary wave's concurrency (the plan's).
    pub canary_concurrency: u32,
    /// Seconds every runner of a wave stays Done before the next starts.
    pub bake_secs: u64,
    /// Seconds a wave waits for its runners outside their update windows once the others
    /// settled (then it goes on; they update when their windows open).
    pub window_wait_secs: u64,
}

impl Default for RolloutPlan {
    fn default() -> Self {
        RolloutPlan {
            canary: Canary::None,
            waves: vec![WaveSpec {
                percent: 100,
                concurrency: DEFAULT_CONCURRENCY,
            }],
            canary_concurrency: DEFAULT_CONCURRENCY,
            bake_secs: 0,
            window_wait_secs: DEFAULT_WINDOW_WAIT_SECS,
        }
    }
}

/// Failed runners a release tolerates before it halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// At most this many (0: halt at the first failure).
    Count(u32),
    /// At most this share (percent) of the runners that attempted it.
    Share(u8),
}

impl Budget {
    /// Whether `failed` failures among `attempted` runners exceed the budget (the release
    /// halts).
    #[must_use]
    pub fn exceeded(self, failed: u32, attempted: u32) -> bool {
        match self {
            Budget::Count(count) => failed > count,
            Budget::Share(percent) => {
                u64::from(failed) * 100 > u64::from(percent) * u64::from(attempted)
            }
        }
    }

    /// The failures tolerated among `attempted` runners (one more halts the release).
    #[must_use]
    pub fn allowed(self, attempted: u32) -> u32 {
        match self {
            Budget::Count(count) => count,
            Budget::Share(percent) => {
                u32::try_from(u64::from(percent) * u64::from(attempted) / 100).unwrap_or(u32::MAX)
            }
        }
    }
}

/// One wave as the channel's runners fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Its runners, in the order they start.
    pub runners: Vec<String>,
    /// How many update at once.
    pub concurrency: u32,
}

fn invalid(field: String, reason: String) -> DesiredError {
    DesiredError::InvalidRelease { field, reason }
}

/// Parses a channel's release document (`name` names it in messages: the parameter's path
/// under the prefix, `_channels/<channel>/release`).
///
/// # Errors
/// [`DesiredError::InvalidRelease`] naming the field at fault.
pub fn parse_channel_release(text: &str, name: &str) -> Result<ChannelRelease, DesiredError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(name.to_owned(), format!("not JSON ({e})")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(invalid(name.to_owned(), "not a JSON object".to_owned()));
    };
    if let Some(key) = object
        .keys()
        .find(|key| !CHANNEL_RELEASE_KEYS.contains(&key.as_str()))
    {
        return Err(invalid(
            format!("{name}.{key}"),
            format!(
                "unknown key {key:?} (the keys are {})",
                CHANNEL_RELEASE_KEYS.join(", ")
            ),
        ));
    }
    let plan = match object.remove("plan") {
        Some(plan) => parse_plan(plan, &format!("{name}.plan"))?,
        None => RolloutPlan::default(),
    };
    let budget = match object.remove("budget") {
        Some(budget) => parse_budget(&budget, &format!("{name}.budget"))?,
        None => Budget::Count(0),
    };
    let release = parse_release_object(object, name)?;
    if release.version.is_none() {
        return Err(invalid(
            format!("{name}.version"),
            "missing: a release names its version".to_owned(),
        ));
    }
    Ok(ChannelRelease {
        release,
        plan,
        budget,
    })
}

fn count(value: &serde_json::Value, field: &str, least: u64) -> Result<u64, DesiredError> {
    value.as_u64().filter(|n| *n >= least).ok_or_else(|| {
        invalid(
            field.to_owned(),
            format!("not a whole number of at least {least}"),
        )
    })
}

fn concurrency(value: &serde_json::Value, field: &str) -> Result<u32, DesiredError> {
    u32::try_from(count(value, field, 1)?)
        .map_err(|_| invalid(field.to_owned(), "too large".to_owned()))
}

fn parse_plan(value: serde_json::Value, field: &str) -> Result<RolloutPlan, DesiredError> {
    let serde_json::Value::Object(object) = value else {
        return Err(invalid(field.to_owned(), "not an object".to_owned()));
    };
    if let Some(key) = object.keys().find(|key| !PLAN_KEYS.contains(&key.as_str())) {
        return Err(invalid(
            format!("{field}.{key}"),
            format!(
                "unknown key {key:?} (a plan's keys are {})",
                PLAN_KEYS.join(", ")
            ),
        ));
    }
    let default_concurrency = match object.get("concurrency") {
        Some(value) => concurrency(value, &format!("{field}.concurrency"))?,
        None => DEFAULT_CONCURRENCY,
    };
    let canary = match object.get("canary") {
        None => Canary::None,
        Some(serde_json::Value::Array(names)) => {
            let mut runners = Vec::with_capacity(names.len());
            for (index, name) in names.iter().enumerate() {
                let Some(name) = name.as_str().filter(|n| !n.is_empty()) else {
                    return Err(invalid(
                        format!("{field}.canary[{index}]"),
                        "not a runner's name".to_owned(),
                    ));
                };
                if runners.iter().any(|r: &String| r == name) {
                    return Err(invalid(
                        format!("{field}.canary[{index}]"),
                        format!("{name} is named twice"),
                    ));
                }
                runners.push(name.to_owned());
            }
            if runners.is_empty() {
                Canary::None
            } else {
                Canary::Runners(runners)
            }
        }
        Some(value) => Canary::First(
            u32::try_from(count(value, &format!("{field}.canary"), 1)?)
                .map_err(|_| invalid(format!("{field}.canary"), "too large".to_owned()))?,
        ),
    };
    let waves = match object.get("waves") {
        None => vec![WaveSpec {
            percent: 100,
            concurrency: default_concurrency,
        }],
        Some(serde_json::Value::Array(waves)) => {
            parse_waves(waves, &format!("{field}.waves"), default_concurrency)?
        }
        Some(_) => {
            return Err(invalid(
                format!("{field}.waves"),
                "not a list of percentages".to_owned(),
            ))
        }
    };
    let week = |key: &str, default: u64| match object.get(key) {
        Some(value) => {
            let secs = count(value, &format!("{field}.{key}"), 0)?;
            if secs > BAKE_SECS_MAX {
                return Err(invalid(
                    format!("{field}.{key}"),
                    format!("{secs} s is longer than a week ({BAKE_SECS_MAX} s)"),
                ));
            }
            Ok(secs)
        }
        None => Ok(default),
    };
    Ok(RolloutPlan {
        canary,
        waves,
        canary_concurrency: default_concurrency,
        bake_secs: week("bake-secs", 0)?,
        window_wait_secs: week("window-wait-secs", DEFAULT_WINDOW_WAIT_SECS)?,
    })
}

fn parse_waves(
    waves: &[serde_json::Value],
    field: &str,
    default_concurrency: u32,
) -> Result<Vec<WaveSpec>, DesiredError> {
    let mut parsed: Vec<WaveSpec> = Vec::with_capacity(waves.len());
    for (index, wave) in waves.iter().enumerate() {
        let field = format!("{field}[{index}]");
        let (percent, concurrency_value) = match wave {
            serde_json::Value::Object(object) => {
                if let Some(key) = object
                    .keys()
                    .find(|k| *k != "percent" && *k != "concurrency")
                {
                    return Err(invalid(
                        format!("{field}.{key}"),
                        format!("unknown key {key:?} (a wave's keys are percent, concurrency)"),
                    ));
                }
                let Some(percent) = object.get("percent") else {
                    return Err(invalid(field, "missing its percent".to_owned()));
                };
                (percent, object.get("concurrency"))
            }
            other => (other, None),
        };
        let percent = percent
            .as_u64()
            .filter(|p| (1..=100).contains(p))
            .and_then(|p| u8::try_from(p).ok())
            .ok_or_else(|| {
                invalid(
                    field.clone(),
                    "not a percentage of the channel's runners (1 to 100)".to_owned(),
                )
            })?;
        if let Some(previous) = parsed.last().filter(|w| w.percent >= percent) {
            return Err(invalid(
                field,
                format!(
                    "{percent} % does not rise above the wave before it ({} %)",
                    previous.percent
                ),
            ));
        }
        let concurrency = match concurrency_value {
            Some(value) => concurrency(value, &format!("{field}.concurrency"))?,
            None => default_concurrency,
        };
        parsed.push(WaveSpec {
            percent,
            concurrency,
        });
    }
    match parsed.last() {
        Some(last) if last.percent == 100 => Ok(parsed),
        Some(last) => Err(invalid(
            field.to_owned(),
            format!(
                "the waves end at {} %, not 100 %: the last wave takes the whole channel",
                last.percent
            ),
        )),
        None => Err(invalid(
            field.to_owned(),
            "no wave: the last wave takes the whole channel (100)".to_owned(),
        )),
    }
}

fn parse_budget(value: &serde_json::Value, field: &str) -> Result<Budget, DesiredError> {
    match value {
        serde_json::Value::String(text) => {
            let share = text
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u8>().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| {
                    invalid(
                        field.to_owned(),
                        format!("{text:?} is not a share such as \"10%\" (0 to 100)"),
                    )
                })?;
            Ok(Budget::Share(share))
        }
        other => Ok(Budget::Count(
            u32::try_from(count(other, field, 0)?)
                .map_err(|_| invalid(field.to_owned(), "too large".to_owned()))?,
        )),
    }
}

/// Checks a parsed release against the runners of its channel (`runners`: the configured ones,
/// in any order).
///
/// # Errors
/// [`DesiredError::InvalidRelease`] naming the field at fault: a channel with no runner, a
/// canary that is not one of them (or more canaries than runners), a budget count above their
/// number.
pub fn validate_for_channel(
    release: &ChannelRelease,
    runners: &[String],
    name: &str,
) -> Result<(), DesiredError> {
    if runners.is_empty() {
        return Err(invalid(
            name.to_owned(),
            "no runner belongs to this channel (config: [[runners]] channel)".to_owned(),
        ));
    }
    match &release.plan.canary {
        Canary::Runners(named) => {
            if let Some((index, stranger)) =
                named.iter().enumerate().find(|(_, n)| !runners.contains(n))
            {
                return Err(invalid(
                    format!("{name}.plan.canary[{index}]"),
                    format!("{stranger} is not a runner of this channel"),
                ));
            }
        }
        Canary::First(count) if usize::try_from(*count).unwrap_or(usize::MAX) > runners.len() => {
            return Err(invalid(
                format!("{name}.plan.canary"),
                format!(
                    "{count} canaries, but the channel has {} runner(s)",
                    runners.len()
                ),
            ));
        }
        Canary::First(_) | Canary::None => {}
    }
    if let Budget::Count(count) = release.budget {
        if usize::try_from(count).unwrap_or(usize::MAX) > runners.len() {
            return Err(invalid(
                format!("{name}.budget"),
                format!(
                    "{count} failures allowed, but the channel has {} runner(s)",
                    runners.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The identity of a channel's release: a hash of its document (another document, even with the
/// same version, is another release: it starts from its own first wave).
#[must_use]
pub fn release_id(text: &str) -> String {
    format!("{:016x}", fnv1a(FNV_OFFSET, text.trim().as_bytes()))
}

/// What a runner following the channel's release is given as its desired state: a release
/// document with the release's keys (not the plan nor the budget) and the channel.
///
/// # Errors
/// [`DesiredError::InvalidRelease`] when the document is not a JSON object (parse it first).
pub fn runner_release_text(text: &str, channel: &str) -> Result<String, DesiredError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(RELEASE_NAME.to_owned(), format!("not JSON ({e})")))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(invalid(
            RELEASE_NAME.to_owned(),
            "not a JSON object".to_owned(),
        ));
    };
    object.remove("plan");
    object.remove("budget");
    object.insert(
        "channel".to_owned(),
        serde_json::Value::String(channel.to_owned()),
    );
    Ok(serde_json::Value::Object(object).to_string())
}

/// The name of a channel's release document relative to its channel's folder.
pub const RELEASE_NAME: &str = "release";

/// The parameter `release resume` writes, relative to a channel's folder.
pub const RESUME_NAME: &str = "resume";

/// The runners in the order a release reaches them: by a stable hash of their names (the same
/// in every process and version), ties by name.
#[must_use]
pub fn rollout_order(runners: &[String]) -> Vec<String> {
    let mut ordered: Vec<String> = runners.to_vec();
    ordered.sort_by(|a, b| {
        (fnv1a(FNV_OFFSET, a.as_bytes()), a).cmp(&(fnv1a(FNV_OFFSET, b.as_bytes()), b))
    });
    ordered.dedup();
    ordered
}

/// The waves of a release over its channel's runners: the canary (the runners named, or the
/// first N in [`rollout_order`]), then each percentage as a cumulative share of the channel
/// (rounded up; a wave that would add nobody is left out), every runner in exactly one wave.
#[must_use]
pub fn waves(plan: &RolloutPlan, runners: &[String]) -> Vec<Wave> {
    let ordered = rollout_order(runners);
    let canary: Vec<String> = match &plan.canary {
        Canary::None => Vec::new(),
        Canary::Runners(named) => ordered
            .iter()
            .filter(|r| named.contains(r))
            .cloned()
            .collect(),
        Canary::First(count) => ordered
            .iter()
            .take(usize::try_from(*count).unwrap_or(usize::MAX))
            .cloned()
            .collect(),
    };
    let rest: Vec<String> = ordered
        .into_iter()
        .filter(|r| !canary.contains(r))
        .collect();
    let total = canary.len() + rest.len();
    let mut result = Vec::new();
    let mut placed = canary.len();
    if !canary.is_empty() {
        result.push(Wave {
            runners: canary,
            concurrency: plan.canary_concurrency,
        });
    }
    let mut next = rest.into_iter();
    for spec in &plan.waves {
        let target = (total * usize::from(spec.percent)).div_ceil(100);
        let take = target.saturating_sub(placed);
        let runners: Vec<String> = next.by_ref().take(take).collect();
        placed += runners.len();
        if !runners.is_empty() {
            result.push(Wave {
                runners,
                concurrency: spec.concurrency,
            });
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("runner-{i:02}")).collect()
    }

    #[test]
    fn a_whole_channel_release_parses_with_its_plan_and_budget() {
        let release = parse_channel_release(
            r#"{"version": "2.19.0", "image": "registry.example/runner:2.19.0",
                "plan": {"canary": ["runner-03"], "waves": [10, {"percent": 50, "concurrency": 3}, 100],
                         "concurrency": 5, "bake-secs": 600},
                "budget": "10%"}"#,
            "_channels/stable/release",
        )
        .unwrap();
        assert_eq!(release.release.version.as_deref(), Some("2.19.0"));
        assert_eq!(
            release.plan.canary,
            Canary::Runners(vec!["runner-03".to_owned()])
        );
        let percents: Vec<(u8, u32)> = release
            .plan
            .waves
            .iter()
            .map(|w| (w.percent, w.concurrency))
            .collect();
        assert_eq!(percents, [(10, 5), (50, 3), (100, 5)]);
        assert_eq!(release.plan.bake_secs, 600);
        assert_eq!(release.budget, Budget::Share(10));
        // The least document: one wave of the whole channel, halt at the first failure.
        let least = parse_channel_release(r#"{"version": "2.19.0"}"#, "r").unwrap();
        assert_eq!(least.plan, RolloutPlan::default());
        assert_eq!(least.budget, Budget::Count(0));
    }

    /// Bad channel releases, each with the field it names (after the document's name).
    #[rustfmt::skip]
    const BAD: &[(&str, &str)] = &[
        ("{", ":"),
        ("[1]", ":"),
        (r#"{"version": "2.19.0", "channel": "beta"}"#, ".channel:"),
        (r#"{"version": "2.19.0", "plans": {}}"#, ".plans:"),
        (r#"{"image": "x"}"#, ".version:"),
        (r#"{"version": 2}"#, ".version:"),
        (r#"{"version": "2.19.0", "plan": []}"#, ".plan:"),
        (r#"{"version": "2.19.0", "plan": {"wave": [100]}}"#, ".plan.wave:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [10, 50]}}"#, ".plan.waves:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [50, 10, 100]}}"#, ".plan.waves[1]:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [10, 10, 100]}}"#, ".plan.waves[1]:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [0, 100]}}"#, ".plan.waves[0]:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [150]}}"#, ".plan.waves[0]:"),
        (r#"{"version": "2.19.0", "plan": {"waves": []}}"#, ".plan.waves:"),
        (r#"{"version": "2.19.0", "plan": {"waves": "10,100"}}"#, ".plan.waves:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [{"pct": 100}]}}"#, ".plan.waves[0].pct:"),
        (r#"{"version": "2.19.0", "plan": {"waves": [{"percent": 100, "concurrency": 0}]}}"#, ".plan.waves[0].concurrency:"),
        (r#"{"version": "2.19.0", "plan": {"concurrency": 0}}"#, ".plan.concurrency:"),
        (r#"{"version": "2.19.0", "plan": {"canary": 0}}"#, ".plan.canary:"),
        (r#"{"version": "2.19.0", "plan": {"canary": [""]}}"#, ".plan.canary[0]:"),
        (r#"{"version": "2.19.0", "plan": {"canary": ["a", "a"]}}"#, ".plan.canary[1]:"),
        (r#"{"version": "2.19.0", "plan": {"bake-secs": -1}}"#, ".plan.bake-secs:"),
        (r#"{"version": "2.19.0", "plan": {"bake-secs": 99999999}}"#, ".plan.bake-secs:"),
        (r#"{"version": "2.19.0", "plan": {"window-wait-secs": 99999999}}"#, ".plan.window-wait-secs:"),
        (r#"{"version": "2.19.0", "plan": {"window-wait-secs": "1d"}}"#, ".plan.window-wait-secs:"),
        (r#"{"version": "2.19.0", "budget": "ten"}"#, ".budget:"),
        (r#"{"version": "2.19.0", "budget": "150%"}"#, ".budget:"),
        (r#"{"version": "2.19.0", "budget": -1}"#, ".budget:"),
    ];

    #[test]
    fn each_bad_channel_release_is_refused_with_the_field_at_fault() {
        let name = "_channels/stable/release";
        for (text, suffix) in BAD {
            let field = format!("{name}{suffix}");
            let error = parse_channel_release(text, name).unwrap_err();
            assert_eq!(error.code().as_str(), "invalid-release", "{text}: {error}");
            assert!(
                error.to_string().starts_with(&field),
                "{text}: {error} does not start with {field}"
            );
        }
    }

    #[test]
    fn a_release_is_checked_against_its_channel() {
        let name = "_channels/stable/release";
        let parse = |text: &str| parse_channel_release(text, name).unwrap();
        let runners = fleet(3);
        let ok = parse(r#"{"version": "2.19.0", "plan": {"canary": ["runner-01"]}, "budget": 3}"#);
        assert_eq!(validate_for_channel(&ok, &runners, name), Ok(()));
        let cases = [
            (
                parse(r#"{"version": "2.19.0", "plan": {"canary": ["runner-01", "runner-99"]}}"#),
                runners.clone(),
                "_channels/stable/release.plan.canary[1]: runner-99 is not a runner",
            ),
            (
                parse(r#"{"version": "2.19.0", "plan": {"canary": 4}}"#),
                runners.clone(),
                "_channels/stable/release.plan.canary: 4 canaries",
            ),
            (
                parse(r#"{"version": "2.19.0", "budget": 4}"#),
                runners.clone(),
                "_channels/stable/release.budget: 4 failures allowed",
            ),
            (
                parse(r#"{"version": "2.19.0"}"#),
                Vec::new(),
                "_channels/stable/release: no runner belongs",
            ),
        ];
        for (release, runners, expected) in cases {
            let error = validate_for_channel(&release, &runners, name).unwrap_err();
            assert!(error.to_string().starts_with(expected), "{error}");
        }
    }

    #[test]
    fn waves_cover_every_runner_once_canary_first_in_a_stable_order() {
        let runners = fleet(20);
        let plan = parse_channel_release(
            r#"{"version": "2.19.0", "plan": {"canary": 2, "waves": [10, 50, 100], "concurrency": 4}}"#,
            "r",
        )
        .unwrap()
        .plan;
        let waves = waves(&plan, &runners);
        let sizes: Vec<usize> = waves.iter().map(|w| w.runners.len()).collect();
        // 2 canaries, then 10 % of 20 = 2 (nobody more: left out), 50 % = 10, 100 % = 20.
        assert_eq!(sizes, [2, 8, 10]);
        let mut all: Vec<String> = waves.iter().flat_map(|w| w.runners.clone()).collect();
        all.sort();
        assert_eq!(all, runners, "every runner in exactly one wave");
        let order = rollout_order(&runners);
        assert_eq!(
            waves[0].runners,
            order[..2],
            "the canaries: the first by the hash"
        );
        // The same in any input order.
        let mut shuffled = runners.clone();
        shuffled.reverse();
        assert_eq!(super::waves(&plan, &shuffled), waves);
        // Named canaries go first; the percentages count them.
        let named = parse_channel_release(
            r#"{"version": "2.19.0", "plan": {"canary": ["runner-07"], "waves": [50, 100]}}"#,
            "r",
        )
        .unwrap()
        .plan;
        let named_waves = super::waves(&named, &runners);
        assert_eq!(named_waves[0].runners, ["runner-07"]);
        assert_eq!(named_waves[1].runners.len(), 9);
        assert!(!named_waves[1].runners.contains(&"runner-07".to_owned()));
        assert_eq!(named_waves[2].runners.len(), 10);
        // One runner, no canary: one wave.
        let one = super::waves(&RolloutPlan::default(), &fleet(1));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].concurrency, DEFAULT_CONCURRENCY);
    }

    #[test]
    fn a_budget_halts_past_its_count_or_share() {
        assert!(!Budget::Count(0).exceeded(0, 5));
        assert!(
            Budget::Count(0).exceeded(1, 1),
            "0: halt at the first failure"
        );
        assert!(!Budget::Count(2).exceeded(2, 10));
        assert!(Budget::Count(2).exceeded(3, 10));
        assert!(!Budget::Share(10).exceeded(1, 10));
        assert!(Budget::Share(10).exceeded(2, 10));
        assert!(Budget::Share(0).exceeded(1, 100));
        assert!(!Budget::Share(100).exceeded(10, 10));
    }
}
