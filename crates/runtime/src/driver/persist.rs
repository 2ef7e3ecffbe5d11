//! The driver's persistence and fencing: loading the record, the write-ahead save's guards
//! (who may write, the fence before every mutation, the local lease deadline), taking and
//! renewing the lease.

#[allow(clippy::wildcard_imports)] // the driver's own vocabulary, shared by its parts
use super::*;

impl RunnerDriver {
    /// The write-ahead save of the machine's state, when it changed: only when no other
    /// controller wrote the record since it was read, when this controller may write, and
    /// before its lease ends on its own clock. `false`: not written, the machine dropped (the
    /// next pass reloads), nothing to execute.
    ///
    /// On a store that holds the lease with the record (the state table), the write renews the
    /// lease when it is an attempt's held here, and releases it when it leaves the attempt with
    /// nothing fenced to do after it but the release (`commands`: a change set still to delete
    /// keeps the lease until it is deleted).
    pub(super) async fn save_step(
        &mut self,
        commands: &[Command],
        report: &mut TickReport,
    ) -> Result<bool, DriverError> {
        let Some(machine) = self.machine.as_ref() else {
            return Err(DriverError::Bug("save without a machine".to_owned()));
        };
        let mut record = Record::capture(machine);
        if self.traceparent.is_some() {
            record.traceparent.clone_from(&self.traceparent);
        }
        if self.last_saved.as_ref() == Some(&record) {
            return Ok(true);
        }
        // A store whose writes are conditional (the state table) refuses the write itself when
        // either check would fail: no read is made for them.
        let checked_by_store = self.ports.store.fences_writes();
        let refused = if !checked_by_store && self.written_by_another().await? {
            Some("the record changed since this controller read it (another controller's attempt): reloading")
        } else if !checked_by_store && !self.may_write().await? {
            Some("another controller holds the runner: not writing; reloading next pass")
        } else if self.fenced_save() && self.lease_lapsed() {
            // Checked last, right before the write: a controller paused between its fencing
            // check and here must not write (issue 14, 7b).
            Some("the lease ended on this controller's own clock before the record was written: not writing; reloading next pass")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::info!(runner = %self.runner.name, "{why}");
            self.lease_lost(self.held());
            self.machine = None;
            self.pending.clear();
            return Ok(false);
        }
        let sent = self.ports.clock.monotonic();
        let proves = checked_by_store
            .then(|| self.machine.as_ref().and_then(|m| held_epoch(m.state())))
            .flatten();
        let fold = if proves.is_some() && self.lease_until.is_some() {
            LeaseFold::Renew {
                ttl: self.lease_ttl,
            }
        } else if checked_by_store && matches!(commands, [Command::ReleaseLock { .. }]) {
            LeaseFold::Release
        } else {
            LeaseFold::Keep
        };
        self.fence_proof = None;
        match self.ports.store.save_folding(&record, fold).await {
            Ok(written) => {
                self.fence_proof = proves.map(|epoch| (epoch, sent));
                // The lease rode on the write: renewed from when it was sent, or released
                // with the attempt it left.
                match written {
                    LeaseWritten::Renewed { ttl } if self.lease_until.is_some() => {
                        self.lease_until = Some(sent + ttl);
                    }
                    LeaseWritten::Released { epoch } => self.released_by_save = Some(epoch),
                    _ => {}
                }
            }
            // The state table refused it by its condition: another controller wrote the record
            // since it was read, or holds the lease. Nothing was written: reload.
            Err(StoreError::Refused(why)) => {
                tracing::info!(runner = %self.runner.name, "{why}: not written; reloading next pass");
                self.lease_lost(self.held());
                self.machine = None;
                self.pending.clear();
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        }
        self.wrote_epoch = self.held().or(self.wrote_epoch);
        self.last_saved = Some(record);
        self.saves += 1;
        report.saves += 1;
        if self.crash.after_save == Some(self.saves) {
            return Err(DriverError::Crashed(format!("after save #{}", self.saves)));
        }
        Ok(true)
    }

    pub(super) async fn load(&mut self) -> Result<(), DriverError> {
        let loaded =
            self.ports
                .store
                .load(&self.runner.name)
                .await
                .and_then(|record| match record {
                    Some(record) => {
                        let restored = record
                            .restore(self.settings.clone())
                            .map_err(StoreError::from)?;
                        Ok((Some(record), restored))
                    }
                    None => Ok((
                        None,
                        (
                            RunnerMachine::new(&self.runner.name, self.settings.clone()),
                            State::Idle {},
                        ),
                    )),
                });
        let (record, (shared, state)) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                if let StoreError::Record(unusable) = &error {
                    // Nothing is done with (or written over) a record this controller cannot
                    // read; the pass says why, by name.
                    self.unreadable = true;
                    self.this_pass.rest_outcome = Some(Box::new((
                        Some(Note {
                            code: unusable.code(),
                            message: unusable.to_string(),
                            at: self.ports.clock.now(),
                        }),
                        None,
                    )));
                }
                return Err(error.into());
            }
        };
        self.unreadable = false;
        let mut ctx = Ctx {
            now: self.ports.clock.now(),
            ..Ctx::default()
        };
        let machine = machine::restore(shared, state, &mut ctx);
        tracing::info!(runner = %self.runner.name, phase = %phase_of(machine.state()), resumed = record.is_some(), "loaded");
        self.traceparent = record.as_ref().and_then(|r| r.traceparent.clone());
        let phase = phase_of(machine.state());
        self.this_pass.attempt_active |= !phase.is_resting();
        if let Some(metrics) = &self.metrics {
            metrics.set_state(&self.runner.name, phase);
        }
        self.state_span = machine::attempt_of(machine.state())
            .filter(|_| !phase.is_resting())
            .map(|attempt| {
                telemetry::state_span(
                    &self.runner.name,
                    phase,
                    attempt,
                    held_epoch(machine.state()),
                    self.traceparent.as_deref(),
                    true,
                )
            });
        if let (Some(span), Some(step)) =
            (&self.state_span, machine::change_set_of(machine.state()))
        {
            telemetry::record_change_set(span, step);
        }
        self.machine = Some(machine);
        self.last_saved = record;
        self.pending = ctx.commands;
        Ok(())
    }

    /// Whether another controller wrote the record since this one last read or wrote it, while
    /// this one was at rest (at rest nothing fences the record: a controller whose lease
    /// expired mid-attempt, crashed or frozen, left its attempt there, and a stale at-rest
    /// machine must adopt it, not overwrite it). During an attempt the fencing token keeps
    /// everyone else out, so the extra read is made only from rest. Not made at all on a store
    /// whose write is conditional (`StateStore::fences_writes`: the version read is the check).
    pub(super) async fn written_by_another(&self) -> Result<bool, DriverError> {
        let from_rest = self
            .last_saved
            .as_ref()
            .is_none_or(|r| r.phase().is_ok_and(Phase::is_resting));
        if !from_rest {
            return Ok(false);
        }
        let stored = self.ports.store.load(&self.runner.name).await?;
        // The store may shorten what it keeps (the 4 KB fit): compare what identifies a state,
        // and what another controller may change at rest — the quarantine marks and the retries
        // acknowledged (a stale machine writing over them would lift a mark again, or lose one).
        let key = |r: &Record| {
            (
                r.phase.clone(),
                r.since,
                r.attempt.as_ref().map(|a| a.id.clone()),
                r.lock_epoch,
                r.failed
                    .iter()
                    .map(|m| (m.version.clone(), m.image.clone(), m.at))
                    .collect::<Vec<_>>(),
                r.retries.clone(),
            )
        };
        Ok(stored.as_ref().map(key) != self.last_saved.as_ref().map(key))
    }

    /// The fence of the command being executed (`fencing`): the lease's highest epoch is still
    /// its token, and the lease has not ended on this controller's own clock. Checked before
    /// the command starts and again right before its mutating call, after the reads that
    /// decide it (they may take long: a search through a busy family, retried reads). `Some`
    /// is the event that refuses the command.
    ///
    /// On a store whose writes are fenced (`StateStore::fences_writes`), a record write of the
    /// same token that succeeded at most [`FENCE_PROOF_MAX`] ago is that check (its condition is
    /// the same: this holder, this epoch, live), provided the lease still has more than the
    /// clocks' skew tolerance left on this controller's own clock: no one can have taken over
    /// a lease that was live for every clock since. The remote read is made otherwise.
    pub(super) async fn fence(&self) -> Option<Event> {
        let (command, epoch) = self.fencing?;
        let monotonic = self.ports.clock.monotonic();
        let proven = self.fence_proof.is_some_and(|(proven, at)| {
            proven == epoch && monotonic.saturating_sub(at) <= FENCE_PROOF_MAX
        });
        let margin = self
            .lease_until
            .is_some_and(|until| until.saturating_sub(monotonic) > CLOCK_SKEW_TOLERANCE);
        if proven && margin {
            return None;
        }
        let now = self.ports.clock.now();
        let held = self
            .ports
            .lock
            .check(&self.runner.name, &self.holder, epoch, now)
            .await;
        let (class, message) = match held {
            Ok(true) if self.lease_lapsed() => (
                FailureClass::Fenced,
                format!("the lease of fencing token {epoch} ended on this controller's own clock (a pause?): not acting on it"),
            ),
            Ok(true) => return None,
            Ok(false) => (
                FailureClass::Fenced,
                format!("fencing token {epoch} is no longer valid: another controller may hold the lock"),
            ),
            // Not knowing is not losing: try again next pass, without acting now.
            Err(error) => (
                FailureClass::Transient,
                format!("cannot check the lease: {error}"),
            ),
        };
        Some(Event::CommandFailed {
            command,
            class,
            message,
        })
    }

    /// Whether the lease this driver holds ended on its own monotonic clock.
    pub(super) fn lease_lapsed(&self) -> bool {
        self.lease_until
            .is_some_and(|until| self.ports.clock.monotonic() >= until)
    }

    /// Whether the save about to be made is fenced by a lease (during an attempt, or leaving
    /// one), as [`RunnerDriver::may_write`] decides.
    pub(super) fn fenced_save(&self) -> bool {
        let in_attempt = self
            .machine
            .as_ref()
            .is_some_and(|m| held_epoch(m.state()).is_some());
        let leaving = self
            .last_saved
            .as_ref()
            .is_some_and(|r| r.phase().is_ok_and(|p| !p.is_resting()) && r.lock_epoch.is_some());
        in_attempt || leaving
    }

    /// Whether this controller may write the runner's record now: during an attempt only with
    /// a valid fencing token; at rest only when no other controller holds a live lease. The
    /// record is shared (the SSM store): a controller that lost the runner must not overwrite
    /// the holder's progress. Not asked on a store whose write is conditional
    /// (`StateStore::fences_writes`: the write's fence is the check).
    pub(super) async fn may_write(&self) -> Result<bool, DriverError> {
        let Some(machine) = self.machine.as_ref() else {
            return Ok(false);
        };
        let now = self.ports.clock.now();
        let (lock, runner) = (&self.ports.lock, &self.runner.name);
        // Leaving an attempt for rest (Done, RolledBack, an abort) is fenced by the token of
        // the attempt being left: a controller whose lease lapsed (a failed renewal, a long
        // pause) must not end an attempt that another controller has since taken over or
        // replaced (found by the simulation, seed 136).
        let leaving = self
            .last_saved
            .as_ref()
            .filter(|r| r.phase().is_ok_and(|p| !p.is_resting()))
            .and_then(|r| r.lock_epoch);
        if let Some(epoch) = held_epoch(machine.state()).or(leaving) {
            return lock
                .check(runner, &self.holder, epoch, now)
                .await
                .map_err(DriverError::Lock);
        }
        let holder = lock.holder(runner, now).await.map_err(DriverError::Lock)?;
        Ok(holder.is_none_or(|h| h == self.holder))
    }

    /// Renews the lease of an attempt in flight. Returns whether this pass may act.
    ///
    /// A machine just loaded from the store whose lease expired takes it again and adopts the
    /// new fencing token (a restarted controller resuming its attempt). A machine that was
    /// already in memory and finds its lease gone is dropped and reloaded from the store next
    /// pass: the store, not a stale memory, says what happens next.
    pub(super) async fn secure_lease(
        &mut self,
        fresh: bool,
        report: &mut TickReport,
    ) -> Result<bool, DriverError> {
        let Some(epoch) = self.machine.as_ref().and_then(|m| held_epoch(m.state())) else {
            return Ok(true);
        };
        let now = self.ports.clock.now();
        let sent = self.ports.clock.monotonic();
        // A lease this driver holds (taken or renewed by it, in memory) is renewed in one
        // conditional write where the lease has them; a machine just loaded (a restart, a
        // standby following another's attempt) asks as a take.
        let held_here = !fresh && self.lease_until.is_some();
        let left = self
            .lease_until
            .map(|until| until.saturating_sub(self.ports.clock.monotonic()));
        if held_here && left.is_some_and(|left| left > self.renew_within) {
            // Held here with more than the floor left: the next pass still renews in time
            // (every mutation is fenced by its own check, whatever this pass skips).
            return Ok(true);
        }
        let asked = if held_here {
            self.ports
                .lock
                .renew(&self.runner.name, &self.holder, epoch, now, self.lease_ttl)
                .await
        } else {
            self.ports
                .lock
                .acquire(&self.runner.name, &self.holder, now, self.lease_ttl)
                .await
        };
        match asked {
            Ok(LockOutcome::Acquired { epoch: held }) if held == epoch => {
                self.lease_until = Some(sent + self.lease_ttl);
                Ok(true)
            }
            Ok(LockOutcome::Acquired { epoch: adopted }) => {
                // A new epoch: the persisted attempt's lease had expired — another
                // controller's (this one just loaded the record after a restart), or this
                // one's own, renewed too late (a slow pass, a pause), which is taken again
                // by atomic create rather than renewed in place.
                self.lease_until = Some(sent + self.lease_ttl);
                // The record may have moved on between our load and this take-over (its holder
                // finished and released): read it again, under the new lease.
                self.load().await?;
                let still = self.machine.as_ref().and_then(|m| held_epoch(m.state()));
                if still != Some(epoch) {
                    if !fresh {
                        tracing::warn!(runner = %self.runner.name, epoch, "the lease is no longer ours: it lapsed and another controller moved the attempt on; reloading from the store");
                        self.lease_lost(Some(epoch));
                    }
                    self.ports
                        .lock
                        .release(&self.runner.name, &self.holder, adopted)
                        .await
                        .map_err(DriverError::Lock)?;
                    self.machine = None;
                    self.pending.clear();
                    return Ok(false);
                }
                tracing::info!(runner = %self.runner.name, old = epoch, new = adopted, "adopted the expired lease of the persisted attempt");
                self.handle(Event::LeaseAdopted { epoch: adopted }, report)
                    .await?;
                // The commands issued on restore carry the old token: reload the record just
                // saved with the new one, which re-issues them.
                self.load().await?;
                Ok(true)
            }
            Ok(outcome) => {
                if fresh {
                    // Just loaded: this controller did not hold the attempt's lease in memory
                    // (a standby, or one that already said why it let go): another controller
                    // running the attempt is the normal situation, not an alarm.
                    tracing::info!(runner = %self.runner.name, ?outcome, "another controller holds the runner's attempt; following it from the store");
                } else {
                    tracing::warn!(runner = %self.runner.name, ?outcome, "the lease is no longer ours; reloading from the store next pass");
                    self.lease_lost(Some(epoch));
                }
                self.machine = None;
                self.pending.clear();
                Ok(false)
            }
            Err(error) => {
                // Acting is still safe: every mutation is fenced by a fresh check.
                tracing::warn!(runner = %self.runner.name, %error, "lease renewal failed");
                Ok(true)
            }
        }
    }
}
