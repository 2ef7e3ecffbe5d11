//! The state table (DynamoDB): one item per runner, holding its lease and its record, every
//! write conditional. The conditions are typed here, evaluated by the simulated table and
//! written as DynamoDB condition expressions by the AWS adapter; the contract suite holds both
//! to the same answers.

use async_trait::async_trait;

use runner_updater_core::domain::Millis;

use crate::PortError;

/// A runner's lease, as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFields {
    /// Who holds it.
    pub holder: String,
    /// The fencing token: one more at every take.
    pub epoch: u64,
    /// When it ends (0: released).
    pub expires_at: Millis,
}

/// A runner's record, as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's encoded text.
    pub text: String,
    /// Its version: one more at every write.
    pub version: u64,
}

/// A runner's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateItem {
    /// The runner (the item's key).
    pub runner: String,
    /// Its lease, once one was taken.
    pub lease: Option<LeaseFields>,
    /// Its record, once one was written.
    pub record: Option<StoredRecord>,
}

/// When a lease write may be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseCondition {
    /// No lease was ever taken on the runner: the first epoch.
    NoLease,
    /// The lease is still `epoch` and ended before `ended_before` (released, or expired past
    /// the skew tolerance): a takeover. A renewal made meanwhile (a later end) makes it fail.
    EndedBefore {
        /// The epoch read.
        epoch: u64,
        /// The lease's end must be before this.
        ended_before: Millis,
    },
    /// `holder` holds `epoch`: a renewal, a release, or its own late take of the next epoch.
    HeldBy {
        /// Who.
        holder: String,
        /// Which epoch.
        epoch: u64,
    },
    /// `holder` holds `epoch`, live at `now`: a renewal in one write, without a read first.
    HeldLive {
        /// Who.
        holder: String,
        /// Which epoch.
        epoch: u64,
        /// The lease must end after this.
        now: Millis,
    },
}

/// Who may write a record: the fence a record write carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// During an attempt, or leaving one: `holder` holds `epoch`, live at `now`.
    Held {
        /// Who.
        holder: String,
        /// The attempt's fencing token.
        epoch: u64,
        /// The lease must end after this.
        now: Millis,
        /// The lease's end, set by the same write (holder and epoch kept): a renewal folded
        /// into a record write of the attempt, or the release (0) folded into the write that
        /// leaves it. The condition is the renewal's own (this holder, this epoch, live), and
        /// stronger than the release's.
        lease_end: Option<Millis>,
    },
    /// At rest: nobody else holds a live lease (none was taken, it ended before `free_before`,
    /// or it is `holder`'s own).
    FreeOrOwn {
        /// Who writes.
        holder: String,
        /// Another's lease that ends before this is free.
        free_before: Millis,
    },
}

/// When a record write may be made: the record is still the version read (`None`: there was
/// none), and the fence holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCondition {
    /// The version read; `None` when there was no record.
    pub version: Option<u64>,
    /// Who may write.
    pub fence: Fence,
}

/// One page of the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatePage {
    /// The items.
    pub items: Vec<StateItem>,
    /// The next page's token; `None` on the last page.
    pub next: Option<String>,
}

/// The state table. A write whose condition fails is an `ErrorKind::Conflict` (DynamoDB's
/// `ConditionalCheckFailedException`), and changes nothing.
#[async_trait]
pub trait StateTable: Send + Sync {
    /// The runner's item (a strongly consistent read), if there is one.
    async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError>;
    /// Writes the runner's lease if `condition` holds (creating the item if need be); the
    /// record is left as it is.
    async fn write_lease(
        &self,
        runner: &str,
        lease: &LeaseFields,
        condition: &LeaseCondition,
    ) -> Result<(), PortError>;
    /// Takes the runner's lease in one write if it is free: none was ever taken, or it ended
    /// before `ended_before` (released, or expired past the clocks' skew tolerance). The
    /// epoch becomes one more than it was (1 for the first), `holder` and `expires_at` are
    /// set, the record is left as it is. Returns the epoch taken, or `None` when the lease
    /// was not free (nothing written: the caller reads it and decides).
    async fn take_free_lease(
        &self,
        runner: &str,
        holder: &str,
        expires_at: Millis,
        ended_before: Millis,
    ) -> Result<Option<u64>, PortError>;
    /// Writes the runner's record if `condition` holds; returns its new version. The lease is
    /// left as it is.
    async fn write_record(
        &self,
        runner: &str,
        text: &str,
        condition: &RecordCondition,
    ) -> Result<u64, PortError>;
    /// One page of the items, from `token` (the first page without).
    async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError>;
}

impl LeaseCondition {
    /// Whether the condition holds on `current` (the simulated table's evaluation; the AWS
    /// adapter writes the same as a condition expression).
    #[must_use]
    pub fn holds(&self, current: Option<&LeaseFields>) -> bool {
        match (self, current) {
            (LeaseCondition::NoLease, current) => current.is_none(),
            (
                LeaseCondition::EndedBefore {
                    epoch,
                    ended_before,
                },
                Some(lease),
            ) => lease.epoch == *epoch && lease.expires_at < *ended_before,
            (LeaseCondition::HeldBy { holder, epoch }, Some(lease)) => {
                lease.holder == *holder && lease.epoch == *epoch
            }
            (LeaseCondition::HeldLive { holder, epoch, now }, Some(lease)) => {
                lease.holder == *holder && lease.epoch == *epoch && lease.expires_at > *now
            }
            (_, None) => false,
        }
    }
}

impl RecordCondition {
    /// Whether the condition holds on the item as it is.
    #[must_use]
    pub fn holds(&self, record: Option<&StoredRecord>, lease: Option<&LeaseFields>) -> bool {
        let version = record.map(|r| r.version) == self.version;
        let fence = match (&self.fence, lease) {
            (
                Fence::Held {
                    holder, epoch, now, ..
                },
                Some(lease),
            ) => lease.holder == *holder && lease.epoch == *epoch && lease.expires_at > *now,
            (Fence::Held { .. }, None) => false,
            (Fence::FreeOrOwn { .. }, None) => true,
            (
                Fence::FreeOrOwn {
                    holder,
                    free_before,
                },
                Some(lease),
            ) => lease.holder == *holder || lease.expires_at < *free_before,
        };
        version && fence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, epoch: u64, expires_at: u64) -> LeaseFields {
        LeaseFields {
            holder: holder.to_owned(),
            epoch,
            expires_at: Millis(expires_at),
        }
    }

    #[test]
    fn lease_conditions_read_as_the_expressions_say() {
        let taken = lease("c1", 3, 1_000);
        let released = lease("c1", 3, 0);
        let cases = [
            (LeaseCondition::NoLease, None, true),
            (LeaseCondition::NoLease, Some(&taken), false),
            (
                LeaseCondition::EndedBefore {
                    epoch: 3,
                    ended_before: Millis(1_001),
                },
                Some(&taken),
                true,
            ),
            (
                LeaseCondition::EndedBefore {
                    epoch: 3,
                    ended_before: Millis(1_000),
                },
                Some(&taken),
                false,
            ),
            (
                LeaseCondition::EndedBefore {
                    epoch: 2,
                    ended_before: Millis(5_000),
                },
                Some(&taken),
                false,
            ),
            (
                LeaseCondition::EndedBefore {
                    epoch: 3,
                    ended_before: Millis(1),
                },
                Some(&released),
                true,
            ),
            (
                LeaseCondition::EndedBefore {
                    epoch: 3,
                    ended_before: Millis(1),
                },
                None,
                false,
            ),
            (
                LeaseCondition::HeldBy {
                    holder: "c1".to_owned(),
                    epoch: 3,
                },
                Some(&taken),
                true,
            ),
            (
                LeaseCondition::HeldBy {
                    holder: "c2".to_owned(),
                    epoch: 3,
                },
                Some(&taken),
                false,
            ),
        ];
        for (condition, current, holds) in cases {
            assert_eq!(
                condition.holds(current),
                holds,
                "{condition:?} on {current:?}"
            );
        }
    }

    #[test]
    fn a_renewal_in_one_write_needs_the_holders_epoch_still_live() {
        let taken = lease("c1", 3, 1_000);
        let released = lease("c1", 3, 0);
        let cases = [
            (
                LeaseCondition::HeldLive {
                    holder: "c1".to_owned(),
                    epoch: 3,
                    now: Millis(999),
                },
                Some(&taken),
                true,
            ),
            (
                LeaseCondition::HeldLive {
                    holder: "c1".to_owned(),
                    epoch: 3,
                    now: Millis(1_000),
                },
                Some(&taken),
                false,
            ),
            (
                LeaseCondition::HeldLive {
                    holder: "c1".to_owned(),
                    epoch: 3,
                    now: Millis(10),
                },
                Some(&released),
                false,
            ),
            (
                LeaseCondition::HeldLive {
                    holder: "c1".to_owned(),
                    epoch: 2,
                    now: Millis(10),
                },
                Some(&taken),
                false,
            ),
        ];
        for (condition, current, holds) in cases {
            assert_eq!(
                condition.holds(current),
                holds,
                "{condition:?} on {current:?}"
            );
        }
    }

    #[test]
    fn record_conditions_need_the_version_read_and_the_fence() {
        let record = StoredRecord {
            text: "{}".to_owned(),
            version: 4,
        };
        let live = lease("c1", 3, 1_000);
        let held = |epoch: u64, now: u64| Fence::Held {
            holder: "c1".to_owned(),
            epoch,
            now: Millis(now),
            lease_end: None,
        };
        let at_rest = |holder: &str, free_before: u64| Fence::FreeOrOwn {
            holder: holder.to_owned(),
            free_before: Millis(free_before),
        };
        let cases = [
            (Some(4), held(3, 999), Some(&record), Some(&live), true),
            (Some(3), held(3, 999), Some(&record), Some(&live), false),
            (None, held(3, 999), None, Some(&live), true),
            (None, held(3, 999), Some(&record), Some(&live), false),
            (Some(4), held(3, 1_000), Some(&record), Some(&live), false),
            (Some(4), held(2, 999), Some(&record), Some(&live), false),
            (Some(4), held(3, 999), Some(&record), None, false),
            (
                Some(4),
                at_rest("c2", 999),
                Some(&record),
                Some(&live),
                false,
            ),
            (
                Some(4),
                at_rest("c2", 1_001),
                Some(&record),
                Some(&live),
                true,
            ),
            (Some(4), at_rest("c1", 0), Some(&record), Some(&live), true),
            (None, at_rest("c2", 0), None, None, true),
        ];
        for (version, fence, record, lease, holds) in cases {
            let condition = RecordCondition { version, fence };
            assert_eq!(
                condition.holds(record, lease),
                holds,
                "{condition:?} on {record:?}, {lease:?}"
            );
        }
    }
}
