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

use runner_updater_core::domain::Millis;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{ErrorKind, Lock, LockOutcome, ParameterStore, PortError};

pub use runner_updater_ports::CLOCK_SKEW_TOLERANCE;

/// A controller's identity in the lease: `<host>-<pid>-<random>`. The host name alone is
/// shared by the containers of a pod's restarts, and the pid is 1 in every container: the
/// random part, drawn once per process, makes a restarted or cloned process another holder,
/// so that it never mistakes the lease of the process it replaces for its own.
#[must_use]
pub fn holder_id(host: &str, pid: u32, random: u64) -> String {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(63)
        .collect();
    let host = if host.is_empty() { "controller" } else { &host };
    format!("{host}-{pid}-{:08x}", random & 0xffff_ffff)
}

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
        .map_err(|e| PortError::new(ErrorKind::Permanent, AwsOp::PutParameter, e.to_string()))
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
            // Ours and live: renewed in place (the epoch stays).
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
            // Ours but expired (a renewal that comes late: a slow pass, a pause): not busy with
            // itself, and not renewed in place either — another controller may be creating the
            // next epoch right now. Take the next epoch by atomic create, at once (the skew
            // tolerance protects the holder from others, not from itself): exactly one of the
            // two wins.
            Current::Lease(epoch, value) if value.holder == holder && value.expires_at != 0 => {
                epoch + 1
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
                // Someone created this epoch first: they hold it — unless it was this very
                // create, sent again after its answer was lost (the SDK's retry).
                match self.current(runner).await?.0 {
                    Current::Lease(epoch, value) if epoch == next && value.holder == holder => {
                        Ok(LockOutcome::Acquired { epoch })
                    }
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
    async fn a_late_renewal_of_its_own_lease_is_never_busy_with_itself_and_takes_one_next_epoch() {
        let ssm = SimSsm::default();
        let lease = SsmLease::new(Arc::new(ssm.clone()), "/ru");
        let ttl = Duration::from_secs(30);
        assert_eq!(
            lease.acquire("a", "c1", Millis(0), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        // Renewed in time: the same epoch.
        assert_eq!(
            lease.acquire("a", "c1", Millis(20_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        // Late, within the skew tolerance (others may not take it yet, but may soon): the
        // next epoch by atomic create, never "busy" with itself; then in time again, kept.
        assert_eq!(
            lease.acquire("a", "c1", Millis(52_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert_eq!(
            lease.acquire("a", "c1", Millis(60_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert!(!lease.check("a", "c1", 1, Millis(60_001)).await.unwrap());
        assert!(lease.check("a", "c1", 2, Millis(60_001)).await.unwrap());
        // Late and raced by another controller that created the next epoch first: busy with
        // that one, never two holders.
        ssm.set(
            "/ru/a/lock/000000000003",
            r#"{"holder":"c2","expires_at":200000}"#,
        );
        let stale = SsmLease::new(
            Arc::new(Resent(
                ssm.clone(),
                std::sync::atomic::AtomicBool::new(false),
            )),
            "/ru",
        );
        assert!(matches!(
            stale.acquire("a", "c1", Millis(100_000), ttl).await.unwrap(),
            LockOutcome::Busy { holder, .. } if holder == "c2"
        ));
        assert!(lease.check("a", "c2", 3, Millis(100_001)).await.unwrap());
    }

    #[tokio::test]
    async fn a_lease_created_but_its_answer_lost_is_recognised_as_ours() {
        let ssm = SimSsm::default();
        let lease = SsmLease::new(Arc::new(ssm.clone()), "/ru");
        let ttl = Duration::from_secs(30);
        ssm.faults.lose_answer(AwsOp::PutParameter);
        assert!(lease.acquire("a", "c1", Millis(0), ttl).await.is_err());
        assert_eq!(
            lease.acquire("a", "c1", Millis(1_000), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 1 }
        );
        // The SDK's own resend of the create meets ParameterAlreadyExists: ours all the same.
        let other = SimSsm::default();
        let lease = SsmLease::new(Arc::new(other.clone()), "/ru");
        other.set(
            "/ru/a/lock/000000000001",
            r#"{"holder":"c1","expires_at":0}"#,
        );
        other.set(
            "/ru/a/lock/000000000002",
            r#"{"holder":"c1","expires_at":30000}"#,
        );
        // c1 reads epoch 1 released and creates epoch 2, which exists: its own lost create.
        let raced = SsmLease::new(
            Arc::new(Resent(
                other.clone(),
                std::sync::atomic::AtomicBool::new(false),
            )),
            "/ru",
        );
        assert_eq!(
            raced.acquire("a", "c1", Millis(0), ttl).await.unwrap(),
            LockOutcome::Acquired { epoch: 2 }
        );
        assert!(matches!(
            raced.acquire("a", "c2", Millis(0), ttl).await.unwrap(),
            LockOutcome::Busy { holder, .. } if holder == "c1"
        ));
        drop(lease);
    }

    /// An SSM whose first path read misses the newest lease epoch (created by a request
    /// whose answer was lost; the SDK's resend read the folder as before it): the create then
    /// conflicts.
    struct Resent(SimSsm, std::sync::atomic::AtomicBool);

    #[async_trait]
    impl ParameterStore for Resent {
        async fn get_by_path(
            &self,
            path: &str,
        ) -> Result<std::collections::BTreeMap<String, String>, PortError> {
            let mut all = self.0.get_by_path(path).await?;
            if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
                all.pop_last();
            }
            Ok(all)
        }
        async fn get_page(
            &self,
            path: &str,
            token: Option<&str>,
        ) -> Result<runner_updater_ports::ParameterPage, PortError> {
            self.0.get_page(path, token).await
        }
        async fn get(
            &self,
            name: &str,
        ) -> Result<Option<runner_updater_ports::Parameter>, PortError> {
            self.0.get(name).await
        }
        async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError> {
            self.0.put(name, value, overwrite).await
        }
        async fn delete(&self, name: &str) -> Result<(), PortError> {
            self.0.delete(name).await
        }
    }

    #[test]
    fn the_holder_id_tells_apart_processes_with_the_same_host_and_pid() {
        let first = holder_id("runner-updater-7d9f-x2", 1, 0x1234_5678_9abc);
        let second = holder_id("runner-updater-7d9f-x2", 1, 0x0000_0000_0001);
        assert_eq!(first, "runner-updater-7d9f-x2-1-56789abc");
        assert_ne!(first, second);
        assert_eq!(holder_id("", 7, 1), "controller-7-00000001");
        assert_eq!(holder_id("bad host\n", 7, 1), "badhost-7-00000001");
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
