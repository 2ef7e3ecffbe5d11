//! Retry intents for one runner (see `runner_updater_core::domain::retry`): its own
//! `retry/<id>` parameters, and the retries its channel acknowledged.

use std::collections::BTreeMap;

use runner_updater_core::domain::retry::{intent_id, parse_intent, RetryFrom, RetryIntent};
use runner_updater_core::domain::Millis;

use super::RunnerDriver;

impl RunnerDriver {
    /// The retry intents of this pass, from the runner's folder (`relative`): its own that its
    /// record has not acknowledged (those it has are deleted now: the record said so first),
    /// and its channel's acknowledged retries (each lifts the marks made before it).
    pub(super) async fn retry_intents(
        &mut self,
        relative: &BTreeMap<String, String>,
    ) -> Vec<RetryIntent> {
        let acknowledged: &[String] = self
            .last_saved
            .as_ref()
            .map_or(&[], |record| record.retries.as_slice());
        let mut intents = Vec::new();
        let mut done = Vec::new();
        for (name, text) in relative {
            let Some(id) = intent_id(name) else {
                continue;
            };
            if acknowledged.iter().any(|a| a == id) {
                done.push(name.clone());
                continue;
            }
            match parse_intent(id, text, RetryFrom::Runner) {
                Ok(intent) => intents.push(intent),
                Err(error) => tracing::warn!(
                    runner = %self.runner.name,
                    %error,
                    "a retry intent that does not parse is ignored (`runner-updater retry` writes them)"
                ),
            }
        }
        // At rest only: a health gate's passes reuse the folder read before the attempt.
        let resting = self
            .last_saved
            .as_ref()
            .and_then(|record| record.phase().ok())
            .is_none_or(runner_updater_core::machine::phase::Phase::is_resting);
        if !resting {
            done.clear();
        }
        for name in done {
            let full = format!("{}/{}/{name}", self.prefix, self.runner.name);
            if let Err(error) = self.ports.ssm.delete(&full).await {
                tracing::warn!(runner = %self.runner.name, intent = %full, %error, "an acknowledged retry intent could not be deleted; tried again at the next pass");
            }
        }
        if let Some(acks) = self
            .board
            .as_ref()
            .and_then(|board| board.retries(&self.settings.channel))
        {
            intents.extend(acks.iter().map(|ack| RetryIntent {
                id: format!("channel-{}-{}", self.settings.channel, ack.id),
                version: ack.version.clone(),
                image: None,
                requested_by: None,
                from: RetryFrom::Channel(Millis(ack.at)),
            }));
        }
        intents
    }

    /// Whether the runner's quarantine mark of `version` made at `at` is lifted by a retry of
    /// its channel (its machine lifts it at its next pass at rest; meanwhile it is not counted
    /// as a failure of the release).
    pub(super) fn channel_retried(&self, version: &str, at: u64) -> bool {
        self.board
            .as_ref()
            .and_then(|board| board.retries(&self.settings.channel))
            .is_some_and(|acks| acks.iter().any(|a| a.version == version && at <= a.at))
    }
}
