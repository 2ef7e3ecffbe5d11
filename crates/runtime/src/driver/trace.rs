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

    /// After a step of the machine: the transitions it made, told as spans (an attempt's root
    /// and `checking` spans when the lock is taken, a span per state entered), metrics and
    /// logs, and the change set on the state's span.
    pub(super) fn trace_step(
        &mut self,
        history_before: usize,
        last_before: Option<&TransitionEntry>,
        report: &mut TickReport,
    ) {
        let Some(machine) = self.machine.as_ref() else {
            return;
        };
        let history = &machine.inner().memory.history;
        if history.back() != last_before || history.len() != history_before {
            let new = history
                .iter()
                .rev()
                .take_while(|t| Some(*t) != last_before)
                .cloned()
                .collect::<Vec<_>>();
            self.this_pass.entered = true;
            let state = machine.state();
            let phase = phase_of(state);
            let attempt = machine::attempt_of(state).cloned();
            let epoch = held_epoch(state);
            if let (Some(attempt), true) = (
                &attempt,
                new.iter()
                    .any(|t| t.from == Phase::Checking && t.to == Phase::Locked),
            ) {
                // An attempt under the lock: its root span, ended at once (a crash cannot lose
                // it), then its `checking` span with the verdict that started it. A Checking
                // that ends without the lock is not an attempt: it is told by a check span.
                let root = telemetry::attempt_span(&self.runner.name, attempt);
                self.traceparent = telemetry::traceparent(&root);
                self.link_to_release(&root);
                let checking = telemetry::state_span(
                    &self.runner.name,
                    Phase::Checking,
                    attempt,
                    epoch,
                    self.traceparent.as_deref(),
                    false,
                );
                if let Some(verdict) = &machine.inner().memory.verdict {
                    telemetry::record_verdict(&checking, verdict);
                }
            }
            // Leaving a state ends its span; entering one opens the next.
            self.state_span = attempt
                .as_ref()
                .filter(|_| !matches!(phase, Phase::Idle | Phase::Checking))
                .map(|attempt| {
                    telemetry::state_span(
                        &self.runner.name,
                        phase,
                        attempt,
                        epoch,
                        self.traceparent.as_deref(),
                        false,
                    )
                });
            let span = self.state_span.clone().unwrap_or_else(tracing::Span::none);
            if let Some(metrics) = &self.metrics {
                for t in &new {
                    metrics.transition(&self.runner.name, t.from, t.to);
                }
                metrics.set_state(&self.runner.name, phase);
            }
            for transition in new.into_iter().rev() {
                tracing::info!(parent: &span, runner = %self.runner.name, from = %transition.from, to = %transition.to, note = transition.note.as_deref().unwrap_or(""), "transition");
                report.transitions.push(transition);
            }
        }
        if let (Some(span), Some(step)) =
            (&self.state_span, machine::change_set_of(machine.state()))
        {
            telemetry::record_change_set(span, step);
        }
    }

    /// An attempt on the runner's channel's release: its root links to the release's trace,
    /// and the release's next step tells it (linked back).
    fn link_to_release(&self, root: &tracing::Span) {
        let (Some(board), true) = (&self.board, self.following.admitted) else {
            return;
        };
        let channel = &self.settings.channel;
        if let Some(release) = board.release_traceparent(channel) {
            telemetry::link(root, &release);
        }
        if let Some(traceparent) = &self.traceparent {
            board.attempt_started(channel, &self.runner.name, traceparent);
        }
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
