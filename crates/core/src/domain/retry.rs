//! Retry intents: ops asking to try a quarantined version again (`runner-updater retry RUNNER
//! [VERSION]`, `runner-updater release retry CHANNEL [VERSION]`).
//!
//! An intent is a parameter of its own, `<prefix>/<runner>/retry/<id>` (or
//! `<prefix>/_channels/<channel>/retry/<id>`), created once (`Overwrite=false`) with a fresh id:
//! two retries never overwrite each other, and the controller deletes exactly the intents it has
//! acknowledged — never one written meanwhile. The controller acknowledges an intent by recording
//! its id (in the runner's record, or the channel's release record) before it deletes it, so
//! an intent is acted on once, whatever crashes: the quarantine marks of that version existing
//! **when it is acknowledged** are lifted, never a mark made later — a retried version goes
//! forward at most once per retry.

use serde::{Deserialize, Serialize};

use super::version::Version;
use super::Millis;

/// The folder of the intents, relative to a runner's (or a channel's) folder.
pub const RETRY_FOLDER: &str = "retry";

/// Retry ids kept as acknowledged in a runner's record (its own, and the channel's that lifted a mark of it).
pub const RETRIES_KEPT: usize = 10;

/// Whether a name relative to a runner's folder is a retry intent (`retry/<id>`).
#[must_use]
pub fn is_retry_name(relative: &str) -> bool {
    relative
        .strip_prefix(RETRY_FOLDER)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(is_intent_id)
}

/// The intent id of a name relative to a runner's folder.
#[must_use]
pub fn intent_id(relative: &str) -> Option<&str> {
    relative
        .strip_prefix(RETRY_FOLDER)?
        .strip_prefix('/')
        .filter(|id| is_intent_id(id))
}

/// An id: 1 to 64 of `a-z 0-9 -`.
#[must_use]
pub fn is_intent_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A fresh intent id from the time and a salt (the writer's process id, a random word).
#[must_use]
pub fn new_intent_id(now: Millis, salt: u64) -> String {
    let hash = super::fnv1a(super::FNV_OFFSET, &salt.to_le_bytes());
    format!("{:x}-{:08x}", now.0, hash & 0xffff_ffff)
}

/// The intent's document, as `retry` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IntentDocument {
    /// The version to retry.
    pub version: String,
    /// Only this image of it; absent: every image of the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Who asked (the caller's identity as the CLI saw it), for the record and the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl IntentDocument {
    /// Reads an intent's document.
    ///
    /// # Errors
    /// Not JSON of an intent, or a version that is not a version, in words.
    pub fn parse(text: &str) -> Result<IntentDocument, String> {
        let document: IntentDocument = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Version::parse(&document.version).map_err(|e| format!("version: {e}"))?;
        Ok(document)
    }

    /// The JSON text written.
    #[must_use]
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where an intent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryFrom {
    /// `retry RUNNER`: the runner's own folder (the controller deletes it once acknowledged).
    Runner,
    /// `release retry CHANNEL`, acknowledged by the channel's coordinator at that time: marks
    /// made before it are lifted.
    Channel(Millis),
}

/// A retry intent as the machine reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryIntent {
    /// Its id (`channel:<channel>:<id>` for a channel's, unique beside a runner's own).
    pub id: String,
    /// The version.
    pub version: String,
    /// The image, or every image of the version.
    pub image: Option<String>,
    /// Who asked.
    pub requested_by: Option<String>,
    /// Where it comes from.
    pub from: RetryFrom,
}

/// Why an intent cannot be used (a hand-written parameter): it is left where it is and named in
/// the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry intent {id}: {reason}")]
pub struct IntentError {
    /// The intent's id.
    pub id: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads the intent `id` from its document.
///
/// # Errors
/// Not JSON of an intent, or a version that is not a version.
pub fn parse_intent(id: &str, text: &str, from: RetryFrom) -> Result<RetryIntent, IntentError> {
    let error = |reason: String| IntentError {
        id: id.to_owned(),
        reason,
    };
    let document = IntentDocument::parse(text).map_err(error)?;
    Ok(RetryIntent {
        id: id.to_owned(),
        version: document.version,
        image: document.image,
        requested_by: document.requested_by,
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_read_back_and_bad_ones_are_named() {
        let id = new_intent_id(Millis(1_700_000_000_000), 42);
        assert!(is_intent_id(&id), "{id}");
        assert!(is_retry_name(&format!("retry/{id}")));
        assert_eq!(intent_id(&format!("retry/{id}")), Some(id.as_str()));
        assert!(!is_retry_name("retry"));
        assert!(!is_retry_name("retry/"));
        assert!(!is_retry_name("retry/UPPER"));
        assert!(!is_retry_name("desired/version"));
        let text = serde_json::to_string(&IntentDocument {
            version: "2.15.0".to_owned(),
            image: None,
            requested_by: Some("ops".to_owned()),
        })
        .unwrap();
        let intent = parse_intent(&id, &text, RetryFrom::Runner).unwrap();
        assert_eq!(intent.version, "2.15.0");
        for bad in [
            "",
            "{}",
            r#"{"version": "two"}"#,
            r#"{"version": "2.15.0", "x": 1}"#,
        ] {
            let error = parse_intent(&id, bad, RetryFrom::Runner).unwrap_err();
            assert!(error.to_string().contains(&id), "{error}");
        }
        assert_ne!(new_intent_id(Millis(1), 1), new_intent_id(Millis(1), 2));
    }
}
