//! The lease and the record in the DynamoDB state table, on any [`StateTable`]: one item per
//! runner, every write conditional, so that DynamoDB itself refuses a stale or fenced
//! controller's write (ARCHITECTURE.md, "The state table").
//!
//! - **Take**: no lease yet → epoch 1 if still none; the current one ended (released, or expired
//!   past the skew tolerance) → epoch + 1 if it is still that epoch and still ended; ours but
//!   late → epoch + 1 if it is still ours. Of several controllers racing, exactly one wins.
//! - **Renew**: ours and live → a later end, if still ours (same epoch).
//! - **Release**: an end of 0, if still ours.
//! - **Check** (the fence before every ECS and CloudFormation mutation): ours, that epoch, live.
//! - **Record write**: only if the record is still the version this controller read or wrote
//!   last, and — during an attempt, or leaving one — our lease of the attempt's epoch is live;
//!   at rest, nobody else's lease is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::lease::CLOCK_SKEW_TOLERANCE;
use runner_updater_core::domain::rollout::{channel_key, ReleaseRecord};
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::record::Record;
use runner_updater_ports::{
    AwsOp, Clock, ErrorKind, Fence, LeaseCondition, LeaseFields, LeaseFold, LeaseWritten, Lock,
    LockOutcome, PortError, RecordCondition, StateItem, StateStore, StateTable, StoreError,
    StoredRecord,
};

/// The most scan pages `list` reads (a bound on a runaway table).
const SCAN_PAGES_MAX: usize = 10_000;

/// Every item of the table, page by page (strongly consistent), keyed by runner.
///
/// # Errors
/// A page that cannot be read, or more than [`SCAN_PAGES_MAX`] pages.
pub async fn scan_all(table: &dyn StateTable) -> Result<HashMap<String, StateItem>, PortError> {
    let mut items = HashMap::new();
    let mut token: Option<String> = None;
    for _ in 0..SCAN_PAGES_MAX {
        let page = table.scan_page(token.as_deref()).await?;
        items.extend(
            page.items
                .into_iter()
                .map(|item| (item.runner.clone(), item)),
        );
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(items),
        }
    }
    Err(PortError::new(
        ErrorKind::Permanent,
        AwsOp::Scan,
        format!("more than {SCAN_PAGES_MAX} pages in the state table"),
    ))
}

/// The runner lock as a lease in the state table.
#[derive(Clone)]
pub struct DynamoLease {
    table: Arc<dyn StateTable>,
}

impl DynamoLease {
    /// The lease of each runner's item in `table`.
    #[must_use]
    pub fn new(table: Arc<dyn StateTable>) -> Self {
        DynamoLease { table }
    }

    async fn lease(&self, runner: &str) -> Result<Option<LeaseFields>, PortError> {
        Ok(self.table.get(runner).await?.and_then(|item| item.lease))
    }
}

fn busy(lease: LeaseFields) -> LockOutcome {
    LockOutcome::Busy {
        holder: lease.holder,
        expires_at: lease.expires_at,
    }
}

#[async_trait]
impl Lock for DynamoLease {
    async fn acquire(
        &self,
        runner: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        // A free lease (never taken, released, or expired past the skew tolerance) is taken
        // in one write, the table counting the epoch on; only a lease that is not free is read
        // (its holder's own, live or late; another's, busy; a take that raced ours).
        let free_before = Millis(
            now.0
                .saturating_sub(u64::try_from(CLOCK_SKEW_TOLERANCE.as_millis()).unwrap_or(0))
                .saturating_add(1),
        );
        match self
            .table
            .take_free_lease(runner, holder, now.after(ttl), free_before)
            .await
        {
            Ok(Some(epoch)) => return Ok(LockOutcome::Acquired { epoch }),
            // A transient failure is the take's answer (retried next pass).
            Err(error) if error.is_transient() => return Err(error),
            // Not free: the read below decides.
            Ok(None) => {}
            // Refused otherwise (an item whose lease attributes are not numbers: DynamoDB
            // refuses the arithmetic; access denied): the read below decides, and names it.
            Err(error) => {
                tracing::warn!(%runner, %error, "the lease could not be taken in one write: reading it");
            }
        }
        let current = self.lease(runner).await?;
        let (epoch, condition) = match current {
            None => (1, LeaseCondition::NoLease),
            // Ours and live: renewed in place (the epoch stays).
            Some(lease) if lease.holder == holder && now < lease.expires_at => (
                lease.epoch,
                LeaseCondition::HeldBy {
                    holder: holder.to_owned(),
                    epoch: lease.epoch,
                },
            ),
            // Ours but late (a slow pass, a pause): the next epoch, if it is still ours — as
            // the SSM lease does, so both backends fence a late holder alike.
            Some(lease) if lease.holder == holder && lease.expires_at != Millis(0) => (
                lease.epoch + 1,
                LeaseCondition::HeldBy {
                    holder: holder.to_owned(),
                    epoch: lease.epoch,
                },
            ),
            // Another's, live (or within the skew tolerance): busy.
            Some(lease)
                if lease.expires_at != Millis(0)
                    && now < lease.expires_at.after(CLOCK_SKEW_TOLERANCE) =>
            {
                return Ok(busy(lease));
            }
            // Ended: the next epoch, if it is still this one and still ends when it did (a
            // renewal meanwhile, a later end, makes the write fail).
            Some(lease) => (
                lease.epoch + 1,
                LeaseCondition::EndedBefore {
                    epoch: lease.epoch,
                    ended_before: Millis(lease.expires_at.0.saturating_add(1)),
                },
            ),
        };
        let wanted = LeaseFields {
            holder: holder.to_owned(),
            epoch,
            expires_at: now.after(ttl),
        };
        match self.table.write_lease(runner, &wanted, &condition).await {
            Ok(()) => Ok(LockOutcome::Acquired { epoch }),
            Err(error) if error.kind == ErrorKind::Conflict => {
                // Another controller wrote first — unless it was this very write, sent again
                // after its answer was lost (the SDK's retry).
                match self.lease(runner).await? {
                    Some(lease) if lease.holder == holder && lease.epoch == epoch => {
                        Ok(LockOutcome::Acquired { epoch })
                    }
                    Some(lease) => Ok(busy(lease)),
                    None => Ok(LockOutcome::Busy {
                        holder: "another controller".to_owned(),
                        expires_at: now.after(ttl),
                    }),
                }
            }
            Err(error) => Err(error),
        }
    }

    async fn check(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
    ) -> Result<bool, PortError> {
        Ok(self
            .lease(runner)
            .await?
            .is_some_and(|l| l.holder == holder && l.epoch == epoch && now < l.expires_at))
    }

    async fn holder(&self, runner: &str, now: Millis) -> Result<Option<String>, PortError> {
        Ok(self
            .lease(runner)
            .await?
            .filter(|l| now < l.expires_at)
            .map(|l| l.holder))
    }

    async fn renew(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        let renewed = LeaseFields {
            holder: holder.to_owned(),
            epoch,
            expires_at: now.after(ttl),
        };
        let condition = LeaseCondition::HeldLive {
            holder: holder.to_owned(),
            epoch,
            now,
        };
        match self.table.write_lease(runner, &renewed, &condition).await {
            Ok(()) => Ok(LockOutcome::Acquired { epoch }),
            // Not ours and live any more (ran out, taken over, released): read, and answer as
            // a take would.
            Err(error) if error.kind == ErrorKind::Conflict => {
                self.acquire(runner, holder, now, ttl).await
            }
            Err(error) => Err(error),
        }
    }

    async fn holders(
        &self,
        runners: &[String],
        now: Millis,
    ) -> Vec<(String, Result<Option<String>, PortError>)> {
        let items = scan_all(self.table.as_ref()).await;
        runners
            .iter()
            .map(|runner| {
                let holder = match &items {
                    Ok(items) => Ok(items
                        .get(runner)
                        .and_then(|item| item.lease.clone())
                        .filter(|l| now < l.expires_at)
                        .map(|l| l.holder)),
                    Err(error) => Err(error.clone()),
                };
                (runner.clone(), holder)
            })
            .collect()
    }

    async fn release(&self, runner: &str, holder: &str, epoch: u64) -> Result<(), PortError> {
        let released = LeaseFields {
            holder: holder.to_owned(),
            epoch,
            expires_at: Millis(0),
        };
        let condition = LeaseCondition::HeldBy {
            holder: holder.to_owned(),
            epoch,
        };
        match self.table.write_lease(runner, &released, &condition).await {
            // Not ours (any more): nothing to release.
            Err(error) if error.kind == ErrorKind::Conflict => Ok(()),
            other => other,
        }
    }
}

/// The key `check_table` reads: no runner is named so (a runner's name starts with a letter).
pub const PROBE_KEY: &str = "_probe";

/// Whether the state table can be used, checked once before `run` and `status` rely on it:
/// one read of a key no runner has. A table that does not exist, a key schema that is not
/// `runner` (a string), or access denied is refused by name, with what to do.
///
/// # Errors
/// The reason, in words for ops (the AWS error in parentheses).
pub async fn check_table(table: &dyn StateTable, name: &str) -> Result<(), String> {
    match table.get(PROBE_KEY).await {
        Ok(_) => Ok(()),
        Err(error) => Err(table_refusal(name, &error)),
    }
}

/// What a failed read of the state table means for ops.
#[must_use]
pub fn table_refusal(name: &str, error: &PortError) -> String {
    let text = error.message.as_str();
    let why = if error.kind == ErrorKind::NotFound {
        "does not exist in this account and region: create it (README, \"State\": an on-demand table whose key is `runner`, a string)"
    } else if text.contains("AccessDenied") || text.contains("not authorized") {
        "cannot be read: access denied (the role needs the policy's `ReadAndWriteTheStateTable` statement on this table)"
    } else if text.contains("ValidationException") && text.contains("key") {
        "has another key schema: its key must be `runner`, a string (one item per runner)"
    } else if error.is_transient() {
        "cannot be read now (throttled or unavailable): try again"
    } else {
        "cannot be used"
    };
    format!("state_store.table {name:?} {why} ({error})")
}

/// What this controller last read or wrote of a runner's record: its version, and the epoch
/// of the attempt it was in (a write leaving that attempt is fenced by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    version: Option<u64>,
    attempt_epoch: Option<u64>,
}

/// The records in the state table, written by compare-and-set.
pub struct DynamoStore {
    table: Arc<dyn StateTable>,
    holder: String,
    clock: Arc<dyn Clock>,
    seen: Mutex<HashMap<String, Seen>>,
    /// Records read ahead by [`StateStore::prefetch`], each used by its runner's next load.
    ahead: Mutex<HashMap<String, Option<StoredRecord>>>,
}

impl DynamoStore {
    /// The records of `table`, written as `holder` (the lease's holder id).
    #[must_use]
    pub fn new(table: Arc<dyn StateTable>, holder: &str, clock: Arc<dyn Clock>) -> Self {
        DynamoStore {
            table,
            holder: holder.to_owned(),
            clock,
            seen: Mutex::new(HashMap::new()),
            ahead: Mutex::new(HashMap::new()),
        }
    }

    fn remember(&self, runner: &str, seen: Seen) {
        if let Ok(mut all) = self.seen.lock() {
            all.insert(runner.to_owned(), seen);
        }
    }

    fn forget(&self, runner: &str) {
        if let Ok(mut all) = self.seen.lock() {
            all.remove(runner);
        }
    }

    fn last_seen(&self, runner: &str) -> Option<Seen> {
        self.seen.lock().ok()?.get(runner).copied()
    }
}

/// The epoch of the attempt a record is in, if it is in one (not at rest).
fn attempt_epoch(record: &Record) -> Option<u64> {
    record
        .phase()
        .is_ok_and(|p| !p.is_resting() && p != Phase::Checking)
        .then_some(record.lock_epoch)
        .flatten()
}

fn io(error: &PortError) -> StoreError {
    StoreError::Io(error.to_string())
}

#[async_trait]
impl StateStore for DynamoStore {
    fn fences_writes(&self) -> bool {
        true
    }

    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        let ahead = self
            .ahead
            .lock()
            .ok()
            .and_then(|mut all| all.remove(runner))
            // What was read ahead serves a runner's first load only: once this store has read
            // or written the record, what it read ahead is older than what it knows.
            .filter(|_| self.last_seen(runner).is_none());
        let stored = if let Some(stored) = ahead {
            stored
        } else {
            let item = self.table.get(runner).await.map_err(|e| io(&e))?;
            item.and_then(|item| item.record)
        };
        let Some(stored) = stored else {
            self.remember(
                runner,
                Seen {
                    version: None,
                    attempt_epoch: None,
                },
            );
            return Ok(None);
        };
        let record = Record::decode(&stored.text, runner)?;
        self.remember(
            runner,
            Seen {
                version: Some(stored.version),
                attempt_epoch: attempt_epoch(&record),
            },
        );
        Ok(Some(record))
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        self.save_folding(record, LeaseFold::Keep).await.map(|_| ())
    }

    /// The lease rides on the record write (one `UpdateItem` instead of two) as `fold` asks:
    /// renewed with a write of an attempt's record (its fence is the renewal's own condition:
    /// this holder, this epoch, live), released with the write that leaves the attempt.
    async fn save_folding(
        &self,
        record: &Record,
        fold: LeaseFold,
    ) -> Result<LeaseWritten, StoreError> {
        let runner = record.runner.as_str();
        let text = record.encode()?;
        // Compare-and-set needs what this controller read: a record it never read (or whose
        // write was refused since) is not written blind; the caller loads first (the driver
        // always does, and reloads after a refusal).
        let Some(seen) = self.last_seen(runner) else {
            return Err(StoreError::Refused(format!(
                "{runner}'s record was not read by this controller before its write: load it first"
            )));
        };
        let now = self.clock.now();
        // In an attempt, or leaving one: fenced by the attempt's epoch; with the lease in the
        // writes, renewed by the attempt's writes, released by the one that leaves it.
        let in_attempt = attempt_epoch(record);
        let (fence, lease) = match in_attempt.or(seen.attempt_epoch) {
            Some(epoch) => {
                let lease = match (fold, in_attempt) {
                    (LeaseFold::Renew { ttl }, Some(_)) => LeaseWritten::Renewed { ttl },
                    (LeaseFold::Release, None) => LeaseWritten::Released { epoch },
                    _ => LeaseWritten::Untouched,
                };
                let lease_end = match lease {
                    LeaseWritten::Renewed { ttl } => Some(now.after(ttl)),
                    LeaseWritten::Released { .. } => Some(Millis(0)),
                    LeaseWritten::Untouched => None,
                };
                let fence = Fence::Held {
                    holder: self.holder.clone(),
                    epoch,
                    now,
                    lease_end,
                };
                (fence, lease)
            }
            None => (
                Fence::FreeOrOwn {
                    holder: self.holder.clone(),
                    free_before: Millis(now.0.saturating_sub(
                        u64::try_from(CLOCK_SKEW_TOLERANCE.as_millis()).unwrap_or(u64::MAX),
                    )),
                },
                LeaseWritten::Untouched,
            ),
        };
        let condition = RecordCondition {
            version: seen.version,
            fence,
        };
        match self.table.write_record(runner, &text, &condition).await {
            Ok(version) => {
                self.remember(
                    runner,
                    Seen {
                        version: Some(version),
                        attempt_epoch: in_attempt,
                    },
                );
                Ok(lease)
            }
            Err(error) if error.kind == ErrorKind::Conflict => {
                // What this controller knew is stale: the next load reads it again.
                self.forget(runner);
                Err(StoreError::Refused(format!(
                    "the state table refused the write of {runner}'s record: another controller wrote it, or holds its lease ({error})"
                )))
            }
            Err(error) => Err(io(&error)),
        }
    }

    /// The item `_channels/<channel>`, beside the channel's lease (the same item).
    async fn load_release(&self, channel: &str) -> Result<Option<ReleaseRecord>, StoreError> {
        let key = channel_key(channel);
        let item = self.table.get(&key).await.map_err(|e| io(&e))?;
        let stored = item.and_then(|item| item.record);
        self.remember(
            &key,
            Seen {
                version: stored.as_ref().map(|s| s.version),
                attempt_epoch: None,
            },
        );
        stored
            .map(|s| ReleaseRecord::decode(&s.text, channel).map_err(StoreError::from))
            .transpose()
    }

    /// Compare-and-set on what this controller last read, fenced by the channel's lease of
    /// `epoch` in the same write.
    async fn save_release(&self, record: &ReleaseRecord, epoch: u64) -> Result<(), StoreError> {
        let key = channel_key(&record.channel);
        let text = record.encode()?;
        let Some(seen) = self.last_seen(&key) else {
            return Err(StoreError::Refused(format!(
                "channel {}'s release record was not read by this controller before its write: load it first",
                record.channel
            )));
        };
        let condition = RecordCondition {
            version: seen.version,
            fence: Fence::Held {
                holder: self.holder.clone(),
                epoch,
                now: self.clock.now(),
                lease_end: None,
            },
        };
        match self.table.write_record(&key, &text, &condition).await {
            Ok(version) => {
                self.remember(
                    &key,
                    Seen {
                        version: Some(version),
                        attempt_epoch: None,
                    },
                );
                Ok(())
            }
            Err(error) if error.kind == ErrorKind::Conflict => {
                self.forget(&key);
                Err(StoreError::Refused(format!(
                    "the state table refused the write of channel {}'s release record: another controller wrote it, or holds the channel's lease ({error})",
                    record.channel
                )))
            }
            Err(error) => Err(io(&error)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let items = scan_all(self.table.as_ref()).await.map_err(|e| io(&e))?;
        let mut runners: Vec<String> = items
            .into_values()
            .filter(|item| item.record.is_some() && !item.runner.starts_with('_'))
            .map(|item| item.runner)
            .collect();
        runners.sort();
        Ok(runners)
    }

    async fn prefetch(&self, runners: &[String]) -> Result<(), StoreError> {
        let mut items = scan_all(self.table.as_ref()).await.map_err(|e| io(&e))?;
        if let Ok(mut ahead) = self.ahead.lock() {
            for runner in runners.iter().filter(|r| self.last_seen(r).is_none()) {
                let record = items.remove(runner).and_then(|item| item.record);
                ahead.insert(runner.clone(), record);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::sim::SimTable;
    use runner_updater_ports::{AwsOp, StateItem, StatePage};

    /// A table whose lease writes take effect and are then answered "condition failed" once:
    /// what the SDK's resend meets when its first send was applied and its answer lost.
    struct ResentAfterLostAnswer {
        inner: SimTable,
        lost: AtomicBool,
    }

    #[async_trait]
    impl StateTable for ResentAfterLostAnswer {
        async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError> {
            self.inner.get(runner).await
        }
        async fn write_lease(
            &self,
            runner: &str,
            lease: &LeaseFields,
            condition: &LeaseCondition,
        ) -> Result<(), PortError> {
            self.inner.write_lease(runner, lease, condition).await?;
            if self.lost.swap(false, Ordering::SeqCst) {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::UpdateItem,
                    "ConditionalCheckFailedException (the resend of an applied write)",
                ));
            }
            Ok(())
        }
        async fn take_free_lease(
            &self,
            runner: &str,
            holder: &str,
            expires_at: Millis,
            ended_before: Millis,
        ) -> Result<Option<u64>, PortError> {
            let taken = self
                .inner
                .take_free_lease(runner, holder, expires_at, ended_before)
                .await?;
            if self.lost.swap(false, Ordering::SeqCst) {
                // The resend finds the lease taken (by this very write): not free.
                return Ok(None);
            }
            Ok(taken)
        }
        async fn write_record(
            &self,
            runner: &str,
            text: &str,
            condition: &RecordCondition,
        ) -> Result<u64, PortError> {
            self.inner.write_record(runner, text, condition).await
        }
        async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError> {
            self.inner.scan_page(token).await
        }
    }

    #[test]
    fn a_table_that_cannot_be_used_is_refused_with_what_to_do() {
        let refusal = |kind: ErrorKind, message: &str| {
            table_refusal("t", &PortError::new(kind, AwsOp::GetItem, message))
        };
        let missing = refusal(
            ErrorKind::NotFound,
            "ResourceNotFoundException (HTTP 400): Requested resource not found",
        );
        assert!(
            missing.contains("does not exist") && missing.contains("ResourceNotFoundException")
        );
        assert!(refusal(
            ErrorKind::Permanent,
            "ValidationException (HTTP 400): The provided key element does not match the schema"
        )
        .contains("another key schema"));
        assert!(refusal(
            ErrorKind::Permanent,
            "AccessDeniedException (HTTP 400): User is not authorized to perform dynamodb:GetItem"
        )
        .contains("ReadAndWriteTheStateTable"));
        assert!(refusal(ErrorKind::Throttled, "ThrottlingException").contains("try again"));
    }

    #[tokio::test]
    async fn its_own_write_met_again_after_a_lost_answer_is_its_lease() {
        let ttl = Duration::from_secs(30);
        let table = Arc::new(ResentAfterLostAnswer {
            inner: SimTable::default(),
            lost: AtomicBool::new(true),
        });
        let lease = DynamoLease::new(table.clone());
        assert_eq!(
            lease.acquire("r", "c1", Millis(0), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 },
            "the first take, its answer lost"
        );
        // A takeover after expiry, its answer lost too: its own epoch 2, not "busy".
        table.lost.store(true, Ordering::SeqCst);
        assert_eq!(
            lease.acquire("r", "c2", Millis(40_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        // Someone else's write that wins is still someone else's.
        let other = SimTable::default();
        let first = DynamoLease::new(Arc::new(other.clone()));
        first.acquire("r", "c1", Millis(0), ttl).await.unwrap();
        let raced = DynamoLease::new(Arc::new(ResentAfterLostAnswer {
            inner: other,
            lost: AtomicBool::new(false),
        }));
        assert!(matches!(
            raced.acquire("r", "c2", Millis(1_000), ttl).await.unwrap(),
            LockOutcome::Busy { holder, .. } if holder == "c1"
        ));
    }

    /// Counts the reads a store and a lease make.
    #[derive(Default)]
    struct Counted {
        inner: SimTable,
        gets: std::sync::atomic::AtomicUsize,
        scans: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl StateTable for Counted {
        async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(runner).await
        }
        async fn write_lease(
            &self,
            runner: &str,
            lease: &LeaseFields,
            condition: &LeaseCondition,
        ) -> Result<(), PortError> {
            self.inner.write_lease(runner, lease, condition).await
        }
        async fn take_free_lease(
            &self,
            runner: &str,
            holder: &str,
            expires_at: Millis,
            ended_before: Millis,
        ) -> Result<Option<u64>, PortError> {
            self.inner
                .take_free_lease(runner, holder, expires_at, ended_before)
                .await
        }
        async fn write_record(
            &self,
            runner: &str,
            text: &str,
            condition: &RecordCondition,
        ) -> Result<u64, PortError> {
            self.inner.write_record(runner, text, condition).await
        }
        async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            self.inner.scan_page(token).await
        }
    }

    fn record(runner: &str) -> Record {
        use runner_updater_core::machine::{restore, Ctx, RunnerMachine, Settings, State};
        let machine = restore(
            RunnerMachine::new(runner, Settings::default()),
            State::Idle {},
            &mut Ctx::default(),
        );
        Record::capture(&machine)
    }

    #[tokio::test]
    async fn the_fleet_is_read_in_scan_pages_not_a_read_per_runner() {
        let clock: Arc<dyn Clock> = Arc::new(crate::sim::SimClock::new(Millis(1_000)));
        let table = Arc::new(Counted::default());
        let names: Vec<String> = (0..250).map(|i| format!("runner-{i:03}")).collect();
        let writer = DynamoStore::new(table.clone(), "c1", clock.clone());
        for name in &names[..240] {
            writer.load(name).await.unwrap();
            writer.save(&record(name)).await.unwrap();
        }
        let gets = table.gets.load(Ordering::SeqCst);
        let store = DynamoStore::new(table.clone(), "c2", clock.clone());
        let records = store.load_many(&names).await.unwrap();
        assert_eq!(records.len(), 250);
        assert_eq!(
            records
                .iter()
                .filter(|(_, r)| matches!(r, Ok(Some(_))))
                .count(),
            240
        );
        assert_eq!(
            table.gets.load(Ordering::SeqCst),
            gets,
            "no read per runner"
        );
        assert_eq!(
            table.scans.load(Ordering::SeqCst),
            3,
            "250 items, 100 a page"
        );
        // What was read ahead serves once: the next load reads the table again, and a
        // record read ahead is written with the version it had (compare-and-set).
        store.save(&record("runner-000")).await.unwrap();
        store.load("runner-000").await.unwrap();
        assert_eq!(table.gets.load(Ordering::SeqCst), gets + 1);
        let lease = DynamoLease::new(table.clone());
        lease
            .acquire("runner-001", "c1", Millis(0), Duration::from_secs(30))
            .await
            .unwrap();
        let holders = lease.holders(&names, Millis(1)).await;
        assert_eq!(table.scans.load(Ordering::SeqCst), 6);
        assert_eq!(holders[1].1.as_ref().unwrap().as_deref(), Some("c1"));
        assert_eq!(holders[2].1.as_ref().unwrap().as_deref(), None);
    }

    #[tokio::test]
    async fn a_record_read_ahead_and_moved_on_by_another_controller_is_not_written_over() {
        let clock: Arc<dyn Clock> = Arc::new(crate::sim::SimClock::new(Millis(1_000)));
        let table = Arc::new(SimTable::default());
        let a = DynamoStore::new(table.clone(), "a", clock.clone());
        a.load("runner-a").await.unwrap();
        a.save(&record("runner-a")).await.unwrap();
        let b = DynamoStore::new(table.clone(), "b", clock.clone());
        b.prefetch(&["runner-a".to_owned()]).await.unwrap();
        // A moves the record on after B read it ahead.
        let mut moved = record("runner-a");
        moved.lock_epoch = Some(2);
        a.save(&moved).await.unwrap();
        let stale = b.load("runner-a").await.unwrap().unwrap();
        assert_eq!(
            stale.lock_epoch,
            record("runner-a").lock_epoch,
            "B's first load is the read ahead"
        );
        assert!(matches!(b.save(&stale).await, Err(StoreError::Refused(_))));
        assert_eq!(
            b.load("runner-a").await.unwrap().unwrap(),
            moved,
            "reloaded fresh"
        );
        // Read ahead again after B knows the runner: its own knowledge wins.
        b.prefetch(&["runner-a".to_owned()]).await.unwrap();
        let mut newer = moved.clone();
        newer.lock_epoch = Some(3);
        b.save(&newer).await.unwrap();
        assert_eq!(b.load("runner-a").await.unwrap().unwrap(), newer);
    }

    #[tokio::test]
    async fn a_live_lease_is_renewed_in_one_write_without_a_read() {
        let ttl = Duration::from_secs(30);
        let table = Arc::new(Counted::default());
        let lease = DynamoLease::new(table.clone());
        lease.acquire("r", "c1", Millis(0), ttl).await.unwrap();
        let gets = table.gets.load(Ordering::SeqCst);
        assert_eq!(
            lease
                .renew("r", "c1", 1, Millis(10_000), ttl)
                .await
                .unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        assert_eq!(table.gets.load(Ordering::SeqCst), gets, "no read");
        assert_eq!(
            table.inner.item("r").unwrap().lease.unwrap().expires_at,
            Millis(40_000)
        );
        // Released meanwhile: refused, answered as a take (the next epoch), the free lease
        // taken in one write.
        lease.release("r", "c1", 1).await.unwrap();
        assert_eq!(
            lease
                .renew("r", "c1", 1, Millis(11_000), ttl)
                .await
                .unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert_eq!(table.gets.load(Ordering::SeqCst), gets, "no read");
    }

    #[tokio::test]
    async fn a_free_lease_is_taken_in_one_write_and_only_a_lease_not_free_is_read() {
        let ttl = Duration::from_secs(30);
        let table = Arc::new(Counted::default());
        let lease = DynamoLease::new(table.clone());
        let gets = || table.gets.load(Ordering::SeqCst);
        // Never taken: epoch 1, no read.
        assert_eq!(
            lease.acquire("r", "c1", Millis(0), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        assert_eq!(gets(), 0);
        // Another's, live: read, busy; nothing written.
        assert!(matches!(
            lease.acquire("r", "c2", Millis(1_000), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ));
        assert_eq!(gets(), 1);
        assert_eq!(table.inner.item("r").unwrap().lease.unwrap().holder, "c1");
        // Ended, but within the clocks' skew tolerance: still busy.
        let within = 30_000 + u64::try_from(CLOCK_SKEW_TOLERANCE.as_millis()).unwrap() - 1;
        assert!(matches!(
            lease.acquire("r", "c2", Millis(within), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ));
        // Past it: the next epoch, in one write.
        let before = gets();
        assert_eq!(
            lease
                .acquire("r", "c2", Millis(within + 1), ttl)
                .await
                .unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert_eq!(gets(), before, "no read");
        // Its holder's own live lease: read, kept (the epoch stays).
        assert_eq!(
            lease
                .acquire("r", "c2", Millis(within + 2), ttl)
                .await
                .unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert_eq!(gets(), before + 1);
    }
}
