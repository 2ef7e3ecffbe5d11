//! The runner lock as a lease in SSM, on any [`ParameterStore`].
//!
//! One parameter per epoch: `<prefix>/<runner>/lock/<epoch>` (epoch zero-padded so names sort),
//! value `{"holder": …, "expires_at": ms}`. The current lease is the highest epoch.
//!
//! - **Take**: if there is no lease, or the current one expired (plus a clock-skew tolerance)
//!   or was released, create epoch + 1 with `Overwrite=false`. The create is atomic: of several
//!   controllers racing for the same epoch exactly one succeeds. That epoch is the fencing token.
//! - **Renew**: the holder overwrites its own epoch with a later expiry.
//! - **Check** (before every mutating call): the highest epoch is ours, by our holder, unexpired.
//!   A renewal that races with a takeover loses: the takeover created a higher epoch.
//! - **Release**: the holder overwrites its epoch with expiry 0.
//! - Older epochs are deleted after a takeover (SSM counts parameters).
//! - A lease value that cannot be read (garbage written by hand) is treated as held by
//!   `unreadable-lease`: nothing acts on that runner until ops delete it; status says so.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::Millis;
use crate::ports::{ErrorKind, Lock, LockOutcome, ParameterStore, PortError};

/// Expiry is trusted only this much past its time: controllers' clocks may differ.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    expires_at: u64,
}

/// The lease in SSM.
#[derive(Clone)]
pub struct SsmLease {
    ssm: Arc<dyn ParameterStore>,
    prefix: String,
}

/// The current lease as read.
enum Current {
    None,
    Unreadable(u64),
    Lease(u64, LeaseValue),
}

impl SsmLease {
    /// A lease store under `prefix`.
    #[must_use]
    pub fn new(ssm: Arc<dyn ParameterStore>, prefix: &str) -> Self {
        SsmLease {
            ssm,
            prefix: prefix.to_owned(),
        }
    }

    fn folder(&self, runner: &str) -> String {
        format!("{}/{runner}/lock/", self.prefix)
    }

    fn name(&self, runner: &str, epoch: u64) -> String {
        format!("{}{epoch:012}", self.folder(runner))
    }

    async fn current(&self, runner: &str) -> Result<(Current, Vec<u64>), PortError> {
        let folder = self.folder(runner);
        let parameters = self.ssm.get_by_path(&folder).await?;
        let mut epochs: Vec<(u64, String)> = parameters
            .into_iter()
            .filter_map(|(name, value)| {
                Some((name.strip_prefix(&folder)?.parse::<u64>().ok()?, value))
            })
            .collect();
        epochs.sort_by_key(|(epoch, _)| *epoch);
        let all = epochs.iter().map(|(e, _)| *e).collect();
        let current = match epochs.pop() {
            None => Current::None,
            Some((epoch, text)) => match serde_json::from_str::<LeaseValue>(&text) {
                Ok(value) => Current::Lease(epoch, value),
                Err(_) => Current::Unreadable(epoch),
            },
        };
        Ok((current, all))
    }

    fn encode(holder: &str, expires_at: Millis) -> Result<String, PortError> {
        serde_json::to_string(&LeaseValue {
            holder: holder.to_owned(),
            expires_at: expires_at.0,
        })
        .map_err(|e| PortError::new(ErrorKind::Permanent, "PutParameter", e.to_string()))
    }
}

#[async_trait]
impl Lock for SsmLease {
    async fn acquire(
        &self,
        runner: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        let (current, epochs) = self.current(runner).await?;
        let next = match current {
            Current::Unreadable(epoch) => {
                return Ok(LockOutcome::Busy {
                    holder: format!(
                        "unreadable-lease ({} holds garbage; delete it)",
                        self.name(runner, epoch)
                    ),
                    expires_at: Millis(u64::MAX),
                })
            }
            Current::Lease(epoch, value) if value.holder == holder && now.0 < value.expires_at => {
                self.ssm
                    .put(
                        &self.name(runner, epoch),
                        &Self::encode(holder, now.after(ttl))?,
                        true,
                    )
                    .await?;
                return Ok(LockOutcome::Acquired { epoch });
            }
            Current::Lease(_, value)
                if now < Millis(value.expires_at).after(CLOCK_SKEW_TOLERANCE)
                    && value.expires_at != 0 =>
            {
                return Ok(LockOutcome::Busy {
                    holder: value.holder,
                    expires_at: Millis(value.expires_at),
                });
            }
            Current::Lease(epoch, _) => epoch + 1,
            Current::None => 1,
        };
        match self
            .ssm
            .put(
                &self.name(runner, next),
                &Self::encode(holder, now.after(ttl))?,
                false,
            )
            .await
        {
            Ok(_) => {
                // Housekeeping: older epochs are history. Failing to delete is harmless.
                for old in epochs.into_iter().filter(|e| *e + 1 < next) {
                    if let Err(error) = self.ssm.delete(&self.name(runner, old)).await {
                        tracing::debug!(runner, %error, "could not delete an old lease epoch");
                    }
                }
                Ok(LockOutcome::Acquired { epoch: next })
            }
            Err(error) if error.kind == ErrorKind::Conflict => {
                // Someone created this epoch first: they hold it.
                match self.current(runner).await?.0 {
                    Current::Lease(_, value) => Ok(LockOutcome::Busy {
                        holder: value.holder,
                        expires_at: Millis(value.expires_at),
                    }),
                    _ => Ok(LockOutcome::Busy {
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
        Ok(
            matches!(self.current(runner).await?.0, Current::Lease(e, v) if e == epoch && v.holder == holder && now.0 < v.expires_at),
        )
    }

    async fn holder(&self, runner: &str, now: Millis) -> Result<Option<String>, PortError> {
        Ok(match self.current(runner).await?.0 {
            Current::None => None,
            Current::Unreadable(_) => Some("unreadable-lease".to_owned()),
            Current::Lease(_, v) => (now.0 < v.expires_at).then_some(v.holder),
        })
    }

    async fn release(&self, runner: &str, holder: &str, epoch: u64) -> Result<(), PortError> {
        if let Current::Lease(e, v) = self.current(runner).await?.0 {
            if e == epoch && v.holder == holder {
                self.ssm
                    .put(
                        &self.name(runner, epoch),
                        &Self::encode(holder, Millis(0))?,
                        true,
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimSsm;

    #[tokio::test]
    async fn epochs_are_created_atomically_and_only_after_expiry() {
        let ssm = SimSsm::default();
        let lease = SsmLease::new(Arc::new(ssm.clone()), "/ru");
        let ttl = Duration::from_secs(30);
        assert_eq!(
            lease.acquire("a", "c1", Millis(0), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        assert!(matches!(
            lease.acquire("a", "c2", Millis(10_000), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ));
        // Renewal keeps the epoch.
        assert_eq!(
            lease.acquire("a", "c1", Millis(20_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        // Expired, but within the skew tolerance: still busy.
        assert!(matches!(
            lease.acquire("a", "c2", Millis(52_000), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ));
        assert_eq!(
            lease.acquire("a", "c2", Millis(56_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert!(
            !lease.check("a", "c1", 1, Millis(56_001)).await.unwrap(),
            "the old holder is fenced"
        );
        assert!(lease.check("a", "c2", 2, Millis(56_001)).await.unwrap());
        lease.release("a", "c1", 1).await.unwrap();
        assert!(
            lease.check("a", "c2", 2, Millis(56_002)).await.unwrap(),
            "a stale release changes nothing"
        );
        lease.release("a", "c2", 2).await.unwrap();
        assert_eq!(
            lease.acquire("a", "c3", Millis(57_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 3 }
        );
        assert!(
            ssm.get_by_path("/ru/a/lock/").await.unwrap().len() <= 2,
            "old epochs are deleted"
        );
    }

    #[tokio::test]
    async fn garbage_in_the_lease_blocks_with_a_named_holder() {
        let ssm = SimSsm::default();
        ssm.set("/ru/a/lock/000000000004", "{not json");
        let lease = SsmLease::new(Arc::new(ssm), "/ru");
        let outcome = lease
            .acquire("a", "c1", Millis(0), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            matches!(outcome, LockOutcome::Busy { holder, .. } if holder.starts_with("unreadable-lease"))
        );
    }
}
