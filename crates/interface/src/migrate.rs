//! `runner-updater migrate-state --from ssm --to dynamodb`: copies every runner's record from
//! the SSM store into the state table.
//!
//! It **refuses while any attempt is in flight** (a record out of rest, or a live lease in SSM):
//! an attempt's lease lives in the store it started on, and carrying a half-done attempt across
//! would have two fences for one attempt. Ops stop the controllers (or wait for the attempts to
//! end), migrate, switch the backend, start them again. Each copy is a conditional write (the
//! table must hold no record for the runner: a record already there and equal is "unchanged",
//! a different one is a conflict, left alone); the runner's lease item is seeded, released, at
//! the last epoch the record names, so fencing tokens keep increasing across the move. The SSM
//! records are left where they are (ops delete them once the controllers run on the table).

use runner_updater_core::domain::Millis;
use runner_updater_core::record::Record;
use runner_updater_ports::{
    ErrorKind, LeaseCondition, LeaseFields, Lock, PortError, RecordCondition, StateStore,
    StateTable, StoreError,
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
    /// Attempts are in flight.
    #[error("attempts are in flight on {}: an attempt's lease lives in the store it started on, so nothing was copied. Let them end (runner-updater status), stop the controllers, and run migrate-state again", .0.join(", "))]
    InFlight(Vec<String>),
    /// A store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The table or SSM failed.
    #[error(transparent)]
    Aws(#[from] PortError),
}

/// Copies the records of `source` (the SSM store, with its lease `source_lock`) into `table`.
///
/// # Errors
/// A [`MigrateError`]: attempts in flight (nothing copied), or a store that cannot be read.
pub async fn migrate(
    source: &dyn StateStore,
    source_lock: &dyn Lock,
    table: &dyn StateTable,
    now: Millis,
    dry_run: bool,
) -> Result<Migration, MigrateError> {
    let runners = source.list().await?;
    let records = source.load_many(&runners).await?;
    let in_flight = in_flight(source_lock, &records, now).await?;
    if !in_flight.is_empty() {
        return Err(MigrateError::InFlight(in_flight));
    }
    let mut migration = Migration {
        runners: Vec::with_capacity(records.len()),
        dry_run,
    };
    for (runner, record) in records {
        let copy = match record {
            Ok(Some(record)) => copy(table, &runner, &record, now, dry_run).await?,
            Ok(None) => continue,
            Err(StoreError::Record(error)) => Copy::Unreadable(error.to_string()),
            Err(error) => return Err(error.into()),
        };
        migration.runners.push((runner, copy));
    }
    Ok(migration)
}

/// The runners with an attempt in flight: a record out of rest, or a live lease.
async fn in_flight(
    lock: &dyn Lock,
    records: &[(String, Result<Option<Record>, StoreError>)],
    now: Millis,
) -> Result<Vec<String>, MigrateError> {
    let names: Vec<String> = records.iter().map(|(runner, _)| runner.clone()).collect();
    let holders = lock.holders(&names, now).await;
    let mut busy = Vec::new();
    for ((runner, record), (_, holder)) in records.iter().zip(holders) {
        let resting = match record {
            Ok(Some(record)) => record
                .phase()
                .is_ok_and(runner_updater_core::machine::phase::Phase::is_resting),
            _ => true,
        };
        if !resting || holder?.is_some() {
            busy.push(runner.clone());
        }
    }
    Ok(busy)
}

/// One runner's copy: the record written only if the table holds none, then its lease seeded.
async fn copy(
    table: &dyn StateTable,
    runner: &str,
    record: &Record,
    now: Millis,
    dry_run: bool,
) -> Result<Copy, MigrateError> {
    let text = record.encode().map_err(StoreError::from)?;
    if let Some(stored) = table.get(runner).await?.and_then(|item| item.record) {
        let same = Record::decode(&stored.text, runner).ok().as_ref() == Some(record);
        return Ok(if same {
            Copy::Unchanged
        } else {
            Copy::Conflict
        });
    }
    let copied = Copy::Copied {
        phase: record.phase.clone(),
    };
    if dry_run {
        return Ok(copied);
    }
    let condition = RecordCondition {
        version: None,
        fence: runner_updater_ports::Fence::FreeOrOwn {
            holder: MIGRATION_HOLDER.to_owned(),
            free_before: now,
        },
    };
    match table.write_record(runner, &text, &condition).await {
        Ok(_) => {}
        // Written meanwhile (a controller already on the table): not ours to overwrite.
        Err(error) if error.kind == ErrorKind::Conflict => return Ok(Copy::Conflict),
        Err(error) => return Err(error.into()),
    }
    let lease = LeaseFields {
        holder: MIGRATION_HOLDER.to_owned(),
        epoch: record.lock_epoch.unwrap_or(0),
        expires_at: Millis(0),
    };
    match table
        .write_lease(runner, &lease, &LeaseCondition::NoLease)
        .await
    {
        // A lease taken on the table already has its own epochs.
        Ok(()) => Ok(copied),
        Err(error) if error.kind == ErrorKind::Conflict => Ok(copied),
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
        // An attempt's lease is live: nothing is copied.
        lock.acquire("runner-b", "c1", now, Duration::from_secs(60))
            .await
            .unwrap();
        let refused = migrate(&store, &lock, &table, now, false)
            .await
            .unwrap_err();
        assert!(matches!(&refused, MigrateError::InFlight(r) if r == &["runner-b"]));
        assert!(table.item("runner-a").is_none(), "nothing copied");
        lock.release("runner-b", "c1", 1).await.unwrap();
        // Dry: told, not written.
        let dry = migrate(&store, &lock, &table, now, true).await.unwrap();
        assert_eq!(dry.runners.len(), 2);
        assert!(table.item("runner-a").is_none());
        let done = migrate(&store, &lock, &table, now, false).await.unwrap();
        assert!(done
            .runners
            .iter()
            .all(|(_, c)| matches!(c, Copy::Copied { .. })));
        let item = table.item("runner-a").unwrap();
        assert_eq!(
            Record::decode(&item.record.unwrap().text, "runner-a").unwrap(),
            record("runner-a")
        );
        let lease = item.lease.unwrap();
        assert_eq!(
            (lease.epoch, lease.expires_at),
            (7, Millis(0)),
            "released at the record's epoch"
        );
        // Again: unchanged. A record the table holds otherwise: a conflict, left alone.
        let again = migrate(&store, &lock, &table, now, false).await.unwrap();
        assert!(again.runners.iter().all(|(_, c)| *c == Copy::Unchanged));
        let mut other = record("runner-a");
        other.lock_epoch = Some(8);
        store.save(&other).await.unwrap();
        let conflict = migrate(&store, &lock, &table, now, false).await.unwrap();
        assert_eq!(conflict.left_behind(), 1);
    }
}
