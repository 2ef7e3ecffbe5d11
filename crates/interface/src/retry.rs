//! `runner-updater retry RUNNER [VERSION]` and `runner-updater release retry CHANNEL
//! [VERSION]`: ask the controller to try a quarantined version again, through an intent written
//! to SSM (`<prefix>/<runner>/retry/<id>`, `<prefix>/_channels/<channel>/retry/<id>`), created
//! once with a fresh id and acknowledged by the controller in its record before it deletes it
//! (see `runner_updater_core::domain::retry`). Never an edit of a record.

use std::collections::BTreeSet;

use runner_updater_config::Config;
use runner_updater_core::domain::channel::{CHANNELS_FOLDER, RELEASE_NAME};
use runner_updater_core::domain::retry::{intent_id, new_intent_id, IntentDocument, RETRY_FOLDER};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{ParameterStore, PortError, StateStore, StoreError};

/// Why a retry was not written (nothing written in any case).
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SSM could not be read or written.
    #[error(transparent)]
    Ssm(#[from] PortError),
    /// The version named (or any) is not quarantined there.
    #[error("{0}")]
    NotQuarantined(String),
    /// Several versions are quarantined and none was named.
    #[error("{0}")]
    Ambiguous(String),
    /// A retry of that version is already written and not acknowledged yet.
    #[error("{0}")]
    Pending(String),
    /// The channel has no release document: nothing would acknowledge the retry.
    #[error("{0}")]
    NoRelease(String),
}

/// A retry written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryWritten {
    /// The parameter written.
    pub parameter: String,
    /// The version retried.
    pub version: String,
}

/// Who writes the intent, as the record and the trace will say.
#[derive(Debug, Clone)]
pub struct Requester {
    /// Now (part of the id).
    pub now: Millis,
    /// A salt for the id (the process id and the time's low bits).
    pub salt: u64,
    /// Who asked (`$USER@host`, or nothing).
    pub by: Option<String>,
}

/// `retry RUNNER [VERSION]`: writes a retry intent for the runner's quarantined `version` (the
/// only one quarantined when not named).
///
/// # Errors
/// Nothing quarantined (or not that version), several versions and none named, a retry of
/// it already pending, or AWS failing.
pub async fn retry_runner(
    config: &Config,
    store: &dyn StateStore,
    ssm: &dyn ParameterStore,
    runner: &str,
    version: Option<&str>,
    requester: &Requester,
) -> Result<RetryWritten, RetryError> {
    let record = store.load(runner).await?;
    let quarantined: BTreeSet<String> = record
        .as_ref()
        .map(|r| r.failed.iter().map(|f| f.version.clone()).collect())
        .unwrap_or_default();
    let acknowledged = record.map(|r| r.retries).unwrap_or_default();
    let version = choose(&format!("runner {runner}"), &quarantined, version, || {
        format!(
            " (a version quarantined on its channel is retried with `runner-updater release retry {}`)",
            config.runner(runner).map_or("CHANNEL", |r| config.channel_of(r))
        )
    })?;
    let folder = format!("{}/{runner}", config.prefix);
    write(ssm, &folder, &version, &acknowledged, requester).await
}

/// `release retry CHANNEL [VERSION]`: writes a retry intent for the version quarantined on the
/// channel (the only one when not named): its quarantine, the halt of its release and its
/// runners' marks of it are lifted once.
///
/// # Errors
/// As [`retry_runner`].
pub async fn retry_channel(
    config: &Config,
    store: &dyn StateStore,
    ssm: &dyn ParameterStore,
    channel: &str,
    version: Option<&str>,
    requester: &Requester,
) -> Result<RetryWritten, RetryError> {
    let document = format!(
        "{}/{CHANNELS_FOLDER}/{channel}/{RELEASE_NAME}",
        config.prefix
    );
    if ssm.get(&document).await?.is_none() {
        return Err(RetryError::NoRelease(format!(
            "channel {channel} has no release document ({document}): the controller acknowledges a channel's retry when it steps its release; publish the release (a quarantined version is refused until the retry is acknowledged, which it then is)"
        )));
    }
    let record = store.load_release(channel).await?;
    let mut quarantined: BTreeSet<String> = record
        .as_ref()
        .map(|r| r.quarantined.iter().map(|(v, _)| v.clone()).collect())
        .unwrap_or_default();
    if let Some(record) = record.as_ref().filter(|r| r.halted.is_some()) {
        quarantined.insert(record.version.clone());
    }
    let acknowledged: Vec<String> = record
        .map(|r| r.retries.into_iter().map(|a| a.id).collect())
        .unwrap_or_default();
    let version = choose(&format!("channel {channel}"), &quarantined, version, || {
        " (a version quarantined on one runner only is retried with `runner-updater retry RUNNER`)"
            .to_owned()
    })?;
    let folder = format!("{}/{CHANNELS_FOLDER}/{channel}", config.prefix);
    write(ssm, &folder, &version, &acknowledged, requester).await
}

/// The version to retry: the one named, if quarantined; else the only one quarantined.
fn choose(
    what: &str,
    quarantined: &BTreeSet<String>,
    named: Option<&str>,
    hint: impl Fn() -> String,
) -> Result<String, RetryError> {
    let list = || quarantined.iter().cloned().collect::<Vec<_>>().join(", ");
    match named {
        Some(version) if quarantined.contains(version) => Ok(version.to_owned()),
        Some(version) if quarantined.is_empty() => Err(RetryError::NotQuarantined(format!(
            "{version} is not quarantined on {what}: nothing is{}",
            hint()
        ))),
        Some(version) => Err(RetryError::NotQuarantined(format!(
            "{version} is not quarantined on {what} (quarantined: {}){}",
            list(),
            hint()
        ))),
        None if quarantined.is_empty() => Err(RetryError::NotQuarantined(format!(
            "nothing is quarantined on {what}: there is nothing to retry{}",
            hint()
        ))),
        None if quarantined.len() > 1 => Err(RetryError::Ambiguous(format!(
            "several versions are quarantined on {what} ({}): name the one to retry",
            list()
        ))),
        None => Ok(list()),
    }
}

/// Writes the intent under `folder` unless one of the same version waits for the controller.
async fn write(
    ssm: &dyn ParameterStore,
    folder: &str,
    version: &str,
    acknowledged: &[String],
    requester: &Requester,
) -> Result<RetryWritten, RetryError> {
    let intents = format!("{folder}/{RETRY_FOLDER}");
    for (name, text) in ssm.get_by_path(&intents).await? {
        let Some(id) = name
            .strip_prefix(folder)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(intent_id)
        else {
            continue;
        };
        let same = IntentDocument::parse(&text).is_ok_and(|d| d.version == version);
        if same && !acknowledged.iter().any(|a| a == id) {
            return Err(RetryError::Pending(format!(
                "a retry of {version} is already written ({name}) and waits for the controller, which acknowledges it at its next pass"
            )));
        }
    }
    let document = IntentDocument {
        version: version.to_owned(),
        image: None,
        requested_by: requester.by.clone(),
    };
    let parameter = format!("{intents}/{}", new_intent_id(requester.now, requester.salt));
    // Created once: an intent is never overwritten (a fresh id each time).
    ssm.put(&parameter, &document.text(), false).await?;
    Ok(RetryWritten {
        parameter,
        version: version.to_owned(),
    })
}
