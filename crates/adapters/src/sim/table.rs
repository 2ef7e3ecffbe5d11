//! The simulated DynamoDB state table: one item per runner, every write conditional, as the
//! typed conditions of the port say (the AWS adapter writes the same as condition
//! expressions; the contract suite holds both to the same answers). Scans come in pages.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{guard, Faults};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{
    AwsOp, ErrorKind, Fence, LeaseCondition, LeaseFields, PortError, RecordCondition, StateItem,
    StatePage, StateTable, StoredRecord,
};

/// Items a simulated scan page holds (DynamoDB pages by size, 1 MB; a record is at most a
/// few KB).
pub const SCAN_PAGE_ITEMS: usize = 100;

/// The simulated state table.
#[derive(Debug, Clone, Default)]
pub struct SimTable {
    items: Arc<Mutex<BTreeMap<String, StateItem>>>,
    /// Faults to inject.
    pub faults: Faults,
}

fn refused(operation: AwsOp, what: &str) -> PortError {
    PortError::new(
        ErrorKind::Conflict,
        operation,
        format!("ConditionalCheckFailedException: The conditional request failed ({what})"),
    )
}

impl SimTable {
    /// The item of `runner` as stored (tests).
    #[must_use]
    pub fn item(&self, runner: &str) -> Option<StateItem> {
        self.items.lock().ok()?.get(runner).cloned()
    }

    /// The same table without faults (for ops and for the simulation's checker).
    #[must_use]
    pub fn without_faults(&self) -> SimTable {
        SimTable {
            items: self.items.clone(),
            faults: Faults::default(),
        }
    }

    /// Bytes the items hold (keys, holders and records): what the benchmark counts as the
    /// world's, not the controller's.
    #[must_use]
    pub fn stored_bytes(&self) -> u64 {
        self.items.lock().map_or(0, |items| {
            items
                .values()
                .map(|item| {
                    let lease = item.lease.as_ref().map_or(0, |l| l.holder.len() + 16);
                    let record = item.record.as_ref().map_or(0, |r| r.text.len() + 8);
                    (item.runner.len() + lease + record) as u64
                })
                .sum()
        })
    }

    /// Writes an item as an operator (or a bug) might, unconditionally (tests).
    pub fn put_item(&self, item: StateItem) {
        if let Ok(mut items) = self.items.lock() {
            items.insert(item.runner.clone(), item);
        }
    }
}

#[async_trait]
impl StateTable for SimTable {
    async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError> {
        self.faults.check(AwsOp::GetItem)?;
        Ok(guard(&self.items, AwsOp::GetItem)?.get(runner).cloned())
    }

    async fn write_lease(
        &self,
        runner: &str,
        lease: &LeaseFields,
        condition: &LeaseCondition,
    ) -> Result<(), PortError> {
        const OP: AwsOp = AwsOp::UpdateItem;
        self.faults.mutate(OP, || {
            let mut items = guard(&self.items, OP)?;
            let current = items.get(runner).and_then(|item| item.lease.as_ref());
            if !condition.holds(current) {
                return Err(refused(OP, "the lease"));
            }
            let item = items.entry(runner.to_owned()).or_insert_with(|| StateItem {
                runner: runner.to_owned(),
                lease: None,
                record: None,
            });
            item.lease = Some(lease.clone());
            Ok(())
        })
    }

    async fn take_free_lease(
        &self,
        runner: &str,
        holder: &str,
        expires_at: Millis,
        ended_before: Millis,
    ) -> Result<Option<u64>, PortError> {
        const OP: AwsOp = AwsOp::UpdateItem;
        self.faults.mutate(OP, || {
            let mut items = guard(&self.items, OP)?;
            let current = items.get(runner).and_then(|item| item.lease.as_ref());
            if current.is_some_and(|lease| lease.expires_at >= ended_before) {
                return Ok(None);
            }
            let epoch = current.map_or(1, |lease| lease.epoch + 1);
            let item = items.entry(runner.to_owned()).or_insert_with(|| StateItem {
                runner: runner.to_owned(),
                lease: None,
                record: None,
            });
            item.lease = Some(LeaseFields {
                holder: holder.to_owned(),
                epoch,
                expires_at,
            });
            Ok(Some(epoch))
        })
    }

    async fn write_record(
        &self,
        runner: &str,
        text: &str,
        condition: &RecordCondition,
    ) -> Result<u64, PortError> {
        const OP: AwsOp = AwsOp::UpdateItem;
        self.faults.mutate(OP, || {
            let mut items = guard(&self.items, OP)?;
            let item = items.get(runner);
            if !condition.holds(
                item.and_then(|i| i.record.as_ref()),
                item.and_then(|i| i.lease.as_ref()),
            ) {
                return Err(refused(OP, "the record"));
            }
            let item = items.entry(runner.to_owned()).or_insert_with(|| StateItem {
                runner: runner.to_owned(),
                lease: None,
                record: None,
            });
            let version = item.record.as_ref().map_or(1, |r| r.version + 1);
            item.record = Some(StoredRecord {
                text: text.to_owned(),
                version,
            });
            // A renewal or a release folded into the write (the condition held: the lease is
            // the fence's).
            if let Fence::Held {
                lease_end: Some(end),
                ..
            } = &condition.fence
            {
                if let Some(lease) = item.lease.as_mut() {
                    lease.expires_at = *end;
                }
            }
            Ok(version)
        })
    }

    async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError> {
        self.faults.check(AwsOp::Scan)?;
        let items = guard(&self.items, AwsOp::Scan)?;
        let mut remaining = items
            .iter()
            .filter(|(runner, _)| token.is_none_or(|t| runner.as_str() > t));
        let page: Vec<StateItem> = remaining
            .by_ref()
            .take(SCAN_PAGE_ITEMS)
            .map(|(_, item)| item.clone())
            .collect();
        // The last key read is the next page's start, when there is more.
        let next = remaining
            .next()
            .and(page.last())
            .map(|item| item.runner.clone());
        Ok(StatePage { items: page, next })
    }
}
