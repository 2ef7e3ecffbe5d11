//! The driver's spans: a pass at rest's sampled check span, each command's span.

#[allow(clippy::wildcard_imports)] // the driver's own vocabulary, shared by its parts
use super::*;

impl RunnerDriver {
    /// A pass at rest that led nowhere: a short `check` span, when sampled.
    pub(super) fn trace_check(&mut self) {
        let Some(outcome) = self.this_pass.rest_outcome.take() else {
            return;
        };
        let (note, verdict) = *outcome;
        let code = note.as_ref().map(|note| &note.code);
        let outcome = code.map_or("idle", Code::as_str);
        let reason = note.as_ref().map_or("", |note| note.message.as_str());
        if !self.check_sampler.sample(outcome) {
            return;
        }
        // The verdict is this pass's only when the rules ran (not on a bad value or an
        // unreadable AWS, which stop before them).
        let rules_ran = matches!(
            code,
            None | Some(Code::LockBusy | Code::LockFailed | Code::Ineligible(_))
        );
        let verdict = verdict.as_ref().filter(|_| rules_ran);
        telemetry::check_span(&self.runner.name, outcome, reason, verdict);
    }

    /// A span for one command, under the current state's span.
    pub(super) fn command_span(&self, command: &Command) -> tracing::Span {
        let Some(parent) = &self.state_span else {
            return tracing::Span::none(); // at rest: no trace
        };
        tracing::info_span!(
            parent: parent,
            "command",
            otel.name = command.name(),
            runner = %self.runner.name,
            command = command.name(),
            outcome = tracing::field::Empty,
        )
    }
}
