//! `runner-updater migrate-state --from ssm --to dynamodb`: copies every runner's record from
//! the SSM store into the state table.
//!
//! It **takes every runner's SSM lease first** (as `migrate-state`, for `hold`), so that no
//! controller still running on SSM can start an attempt while the records are copied, and
//! **refuses while any attempt is in flight** (a lease another controller holds, or a record
//! out of rest, read under the lease): an attempt's lease lives in the store it started on, and
//! carrying a half-done attempt across would give it two fences. Nothing is copied then, and
//! the leases taken are released. Each copy is a conditional write (the table must hold no
//! record for the runner: the same record already there is "unchanged", another one a
//! conflict, left alone); the runner's lease item is seeded, released, at the SSM epoch the
//! migration took — higher than any epoch the runner had on SSM — so fencing tokens keep
//! increasing across the move (seeded on a rerun too, if a crash came between the two writes).
//! The leases are kept for `hold` after a copy (released after a dry run): the controllers are
//! switched to the table meanwhile. The SSM records are left where they are.

use std::time::Duration;

use runner_updater_adapters::lease::CLOCK_SKEW_TOLERANCE;
use runner_updater_core::domain::rollout::{channel_key, ReleaseRecord};
use runner_updater_core::domain::Millis;
use runner_updater_core::record::Record;
use runner_updater_ports::{
    ErrorKind, LeaseCondition, LeaseFields, Lock, LockOutcome, PortError, RecordCondition,
    StateStore, StateTable, StoreError,
};

/// The holder the migration's writes name.
pub const MIGRATION_HOLDER: &str = "migrate-state";

/// What the migration did (or, dry, would do) with one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// Copied (dry: would be).
    Copied {
        /// The record's phase.
        phase: String,
    },
    /// The table already holds the same record.
    Unchanged,
    /// The table holds another record for the runner: left alone.
    Conflict,
    /// The SSM record cannot be read: not copied.
    Unreadable(String),
}

/// The migration's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Migration {
    /// Each runner, by name, with what was done.
    pub runners: Vec<(String, Copy)>,
    /// Nothing was written.
    pub dry_run: bool,
}

impl Migration {
    /// Runners left behind (conflicts, unreadable records): the migration is not complete.
    #[must_use]
    pub fn left_behind(&self) -> usize {
        self.runners
            .iter()
            .filter(|(_, c)| matches!(c, Copy::Conflict | Copy::Unreadable(_)))
            .count()
    }
}

/// Why the migration did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Attempts are in flight (each runner with why).
    #[error("attempts are in flight: {}. An attempt's lease lives in the store it started on, so nothing was copied (and the leases taken were released). Let them end (runner-updater status), stop the controllers, and run migrate-state again", .0.join("; "))]
    InFlight(Vec<String>),
    /// A store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The table or SSM failed.
    #[error(transparent)]
    Aws(#[from] PortError),
}

/// Copies the records of `source` (the SSM store, with its lease `source_lock`) into `table`,
/// holding each runner's SSM lease for `hold`; and the release records of `channels` (each
/// under its channel's lease, `_channels/<channel>`), so that a halted release stays halted
/// and its quarantine stands across the move.
///
/// # Errors
/// A [`MigrateError`]: attempts in flight (nothing copied), or a store that cannot be read.
pub async fn migrate(
    source: &dyn StateStore,
    source_lock: &dyn Lock,
    table: &dyn StateTable,
    channels: &[String],
    now: Millis,
    hold_for: Duration,
    dry_run: bool,
) -> Result<Migration, MigrateError> {
    let runners = source.list().await?;
    let keys: Vec<String> = runners
        .iter()
        .cloned()
        .chain(channels.iter().map(|c| channel_key(c)))
        .collect();
    let leases = hold_all(source_lock, &keys, now, hold_for).await?;
    let outcome = match copy_all(source, table, &runners, &leases, now, dry_run).await {
        Ok(mut migration) => copy_channels(
            source,
            table,
            channels,
            &leases,
            now,
            dry_run,
            &mut migration,
        )
        .await
        .map(|()| migration),
        Err(error) => Err(error),
    };
    if dry_run || outcome.is_err() {
        release_all(source_lock, &leases).await;
    }
    outcome
}

/// Takes every runner's SSM lease; when one is held by another controller, releases those
/// taken and names the runners in flight.
async fn hold_all(
    lock: &dyn Lock,
    runners: &[String],
    now: Millis,
    hold_for: Duration,
) -> Result<Vec<(String, u64)>, MigrateError> {
    let mut held = Vec::with_capacity(runners.len());
    let mut busy = Vec::new();
    for runner in runners {
        match lock.acquire(runner, MIGRATION_HOLDER, now, hold_for).await {
            Ok(LockOutcome::Acquired { epoch }) => held.push((runner.clone(), epoch)),
            Ok(LockOutcome::Busy { holder, expires_at }) => busy.push(format!(
                "{runner} (its lease is held by {holder} until {expires_at})"
            )),
            Err(error) => {
                release_all(lock, &held).await;
                return Err(error.into());
            }
        }
    }
    if busy.is_empty() {
        Ok(held)
    } else {
        release_all(lock, &held).await;
        Err(MigrateError::InFlight(busy))
    }
}

async fn release_all(lock: &dyn Lock, held: &[(String, u64)]) {
    for (runner, epoch) in held {
        if let Err(error) = lock.release(runner, MIGRATION_HOLDER, *epoch).await {
            tracing::warn!(%runner, %error, "the migration's lease was not released: it ends on its own");
        }
    }
}

/// Under the leases: refuses when a record is out of rest, else copies each.
async fn copy_all(
    source: &dyn StateStore,
    table: &dyn StateTable,
    runners: &[String],
    held: &[(String, u64)],
    now: Millis,
    dry_run: bool,
) -> Result<Migration, MigrateError> {
    let records = source.load_many(runners).await?;
    let in_flight: Vec<String> = records
        .iter()
        .filter_map(|(runner, record)| match record {
            Ok(Some(record))
                if !record
                    .phase()
                    .is_ok_and(runner_updater_core::machine::phase::Phase::is_resting) =>
            {
                Some(format!("{runner} (phase {})", record.phase))
            }
            _ => None,
        })
        .collect();
    if !in_flight.is_empty() {
        return Err(MigrateError::InFlight(in_flight));
    }
    let mut migration = Migration {
        runners: Vec::with_capacity(records.len()),
        dry_run,
    };
    for (runner, record) in records {
        let epoch = held
            .iter()
            .find(|(r, _)| *r == runner)
            .map_or(0, |(_, epoch)| *epoch);
        let copy = match record {
            Ok(Some(record)) => copy(table, &runner, &record, epoch, now, dry_run).await?,
            Ok(None) => continue,
            Err(StoreError::Record(error)) => Copy::Unreadable(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        migration.runners.push((runner, copy));
    }
    Ok(migration)
}

/// The channels' release records, each copied as a runner's is (under the channel's lease).
async fn copy_channels(
    source: &dyn StateStore,
    table: &dyn StateTable,
    channels: &[String],
    held: &[(String, u64)],
    now: Millis,
    dry_run: bool,
    migration: &mut Migration,
) -> Result<(), MigrateError> {
    for channel in channels {
        let key = channel_key(channel);
        let epoch = held
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, epoch)| *epoch);
        let copied = match source.load_release(channel).await {
            Ok(Some(record)) => {
                let text = record.encode().map_err(StoreError::from)?;
                let same = |stored: &str| {
                    ReleaseRecord::decode(stored, channel).ok().as_ref() == Some(&record)
                };
                copy_text(table, &key, &text, same, epoch, "release", now, dry_run).await?
            }
            Ok(None) => continue,
            Err(StoreError::Release(error)) => Copy::Unreadable(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        migration.runners.push((key, copied));
    }
    Ok(())
}

/// One runner's copy: the record written only if the table holds none, then its lease seeded
/// (released) at `epoch` or the record's, whichever is higher.
async fn copy(
    table: &dyn StateTable,
    runner: &str,
    record: &Record,
    epoch: u64,
    now: Millis,
    dry_run: bool,
) -> Result<Copy, MigrateError> {
    let text = record.encode().map_err(StoreError::from)?;
    let seed = epoch.max(record.lock_epoch.unwrap_or(0));
    let same = |stored: &str| Record::decode(stored, runner).ok().as_ref() == Some(record);
    copy_text(
        table,
        runner,
        &text,
        same,
        seed,
        &record.phase,
        now,
        dry_run,
    )
    .await
}

/// A record's text written under `key` only if the table holds none (the same one there is
/// "unchanged", another a conflict), then the key's lease seeded (released) at `seed`.
#[allow(clippy::too_many_arguments)]
async fn copy_text(
    table: &dyn StateTable,
    key: &str,
    text: &str,
    same: impl Fn(&str) -> bool,
    seed: u64,
    phase: &str,
    now: Millis,
    dry_run: bool,
) -> Result<Copy, MigrateError> {
    let runner = key;
    if let Some(stored) = table.get(runner).await?.and_then(|item| item.record) {
        if !same(&stored.text) {
            return Ok(Copy::Conflict);
        }
        if !dry_run {
            // A rerun after a crash between the record and the lease seeds it now.
            seed_lease(table, runner, seed).await?;
        }
        return Ok(Copy::Unchanged);
    }
    let copied = Copy::Copied {
        phase: phase.to_owned(),
    };
    if dry_run {
        return Ok(copied);
    }
    let tolerance = u64::try_from(CLOCK_SKEW_TOLERANCE.as_millis()).unwrap_or(u64::MAX);
    let condition = RecordCondition {
        version: None,
        fence: runner_updater_ports::Fence::FreeOrOwn {
            holder: MIGRATION_HOLDER.to_owned(),
            free_before: Millis(now.0.saturating_sub(tolerance)),
        },
    };
    match table.write_record(runner, text, &condition).await {
        Ok(_) => {}
        // Written meanwhile (a controller already on the table): not ours to overwrite.
        Err(error) if error.kind == ErrorKind::Conflict => return Ok(Copy::Conflict),
        Err(error) => return Err(error.into()),
    }
    seed_lease(table, runner, seed).await?;
    Ok(copied)
}

/// The runner's lease item, released at `epoch`, unless the table has one already (its own
/// epochs then).
async fn seed_lease(table: &dyn StateTable, runner: &str, epoch: u64) -> Result<(), MigrateError> {
    let lease = LeaseFields {
        holder: MIGRATION_HOLDER.to_owned(),
        epoch,
        expires_at: Millis(0),
    };
    match table
        .write_lease(runner, &lease, &LeaseCondition::NoLease)
        .await
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind == ErrorKind::Conflict => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use runner_updater_adapters::lease::SsmLease;
    use runner_updater_adapters::sim::{SimSsm, SimTable};
    use runner_updater_adapters::store::SsmStore;
    use runner_updater_core::machine::{restore, Ctx, RunnerMachine, Settings, State};
    use runner_updater_ports::ParameterStore;

    fn record(runner: &str) -> Record {
        let machine = restore(
            RunnerMachine::new(runner, Settings::default()),
            State::Idle {},
            &mut Ctx::default(),
        );
        let mut record = Record::capture(&machine);
        record.lock_epoch = Some(7);
        record
    }

    const HOLD: Duration = Duration::from_mins(15);

    #[tokio::test]
    async fn records_are_copied_once_with_their_epoch_and_never_while_an_attempt_runs() {
        let ssm = SimSsm::default();
        let port: Arc<dyn ParameterStore> = Arc::new(ssm.clone());
        let store = SsmStore::new(port.clone(), "/ru");
        let lock = SsmLease::new(port, "/ru");
        for runner in ["runner-a", "runner-b"] {
            store.save(&record(runner)).await.unwrap();
        }
        let table = SimTable::default();
        let now = Millis(1_000_000);
        // An attempt's lease is live: nothing is copied, the leases taken are released.
        lock.acquire("runner-b", "c1", now, Duration::from_mins(1))
            .await
            .unwrap();
        let refused = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, MigrateError::InFlight(r) if r.len() == 1 && r[0].starts_with("runner-b (its lease is held by c1")),
            "{refused}"
        );
        assert!(table.item("runner-a").is_none(), "nothing copied");
        assert_eq!(
            lock.holder("runner-a", now).await.unwrap(),
            None,
            "released"
        );
        lock.release("runner-b", "c1", 1).await.unwrap();
        // A record out of rest (its lease lapsed): refused too, by its phase.
        let mut deploying = record("runner-b");
        deploying.phase = "awaiting_rollout".to_owned();
        store.save(&deploying).await.unwrap();
        let refused = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("runner-b (phase awaiting_rollout)"),
            "{refused}"
        );
        store.save(&record("runner-b")).await.unwrap();
        // Dry: told, not written, the leases released.
        let dry = migrate(&store, &lock, &table, &[], now, HOLD, true)
            .await
            .unwrap();
        assert_eq!(dry.runners.len(), 2);
        assert!(table.item("runner-a").is_none());
        assert_eq!(lock.holder("runner-a", now).await.unwrap(), None);
        let done = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap();
        assert!(done
            .runners
            .iter()
            .all(|(_, c)| matches!(c, Copy::Copied { .. })));
        let item = table.item("runner-a").unwrap();
        assert_eq!(
            Record::decode(&item.record.unwrap().text, "runner-a").unwrap(),
            record("runner-a")
        );
        // Held in SSM meanwhile; the table's lease seeded, released, above every SSM epoch.
        assert_eq!(
            lock.holder("runner-a", now).await.unwrap().as_deref(),
            Some(MIGRATION_HOLDER)
        );
        let lease = item.lease.unwrap();
        assert_eq!(lease.expires_at, Millis(0));
        assert!(lease.epoch >= 7, "{lease:?}: at least the record's epoch");
        // Again: unchanged. A record the table holds otherwise: a conflict, left alone.
        let again = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap();
        assert!(again.runners.iter().all(|(_, c)| *c == Copy::Unchanged));
        let mut other = record("runner-a");
        other.lock_epoch = Some(8);
        store.save(&other).await.unwrap();
        let conflict = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap();
        assert_eq!(conflict.left_behind(), 1);
    }

    #[tokio::test]
    async fn a_rerun_seeds_the_lease_a_crash_left_unseeded() {
        let ssm = SimSsm::default();
        let port: Arc<dyn ParameterStore> = Arc::new(ssm.clone());
        let store = SsmStore::new(port.clone(), "/ru");
        let lock = SsmLease::new(port, "/ru");
        store.save(&record("runner-a")).await.unwrap();
        let table = SimTable::default();
        // The record copied, the process gone before the lease.
        table.put_item(runner_updater_ports::StateItem {
            runner: "runner-a".to_owned(),
            lease: None,
            record: Some(runner_updater_ports::StoredRecord {
                text: record("runner-a").encode().unwrap(),
                version: 1,
            }),
        });
        let now = Millis(1_000_000);
        let again = migrate(&store, &lock, &table, &[], now, HOLD, false)
            .await
            .unwrap();
        assert_eq!(again.runners[0].1, Copy::Unchanged);
        assert!(table.item("runner-a").unwrap().lease.unwrap().epoch >= 7);
    }

    #[tokio::test]
    async fn a_channels_release_record_moves_with_the_records_so_a_halt_stays_a_halt() {
        use runner_updater_core::domain::channel::Budget;
        use runner_updater_core::domain::rollout::HaltRecord;
        let ssm = SimSsm::default();
        let port: Arc<dyn ParameterStore> = Arc::new(ssm.clone());
        let store = SsmStore::new(port.clone(), "/ru");
        let lock = SsmLease::new(port, "/ru");
        store.save(&record("runner-a")).await.unwrap();
        let mut halted = ReleaseRecord::new(
            "stable",
            "r1",
            "2.15.0",
            None,
            Budget::Count(0),
            Millis(5),
            vec![("2.15.0".to_owned(), String::new())],
        );
        halted.halted = Some(HaltRecord {
            at: 6,
            failed: 1,
            attempted: 1,
            runners: vec!["runner-a".to_owned()],
            reason: "1 failed".to_owned(),
        });
        store.save_release(&halted, 1).await.unwrap();
        let table = SimTable::default();
        let now = Millis(1_000_000);
        let channels = ["stable".to_owned(), "beta".to_owned()];
        let done = migrate(&store, &lock, &table, &channels, now, HOLD, false)
            .await
            .unwrap();
        assert!(
            done.runners
                .iter()
                .any(|(key, c)| key == "_channels/stable" && matches!(c, Copy::Copied { .. })),
            "{done:?}"
        );
        assert_eq!(done.runners.len(), 2, "beta has no record: nothing to copy");
        let moved = runner_updater_adapters::dynamo::DynamoStore::new(
            Arc::new(table.clone()),
            "c1",
            Arc::new(runner_updater_adapters::sim::SimClock::new(Millis(
                1_000_000,
            ))),
        );
        assert_eq!(moved.load_release("stable").await.unwrap(), Some(halted));
        assert_eq!(moved.list().await.unwrap(), ["runner-a"], "not a runner");
    }
}
