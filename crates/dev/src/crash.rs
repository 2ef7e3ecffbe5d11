//! The crash hook of `runner-updater-dev run`: decorators around the product's own ports that
//! abort the process right after a chosen save or call — as abruptly as `kill -9`, with the
//! call made and its result never recorded. The product has no such hook: the dev binary
//! builds the product's ports and loop (`runner_updater::cli::run::prepare`, `control_loop`)
//! and wraps the ports in between.
//!
//! `RUNNER_UPDATER_TEST_CRASH=after_save:N` aborts right after a runner's N-th record save
//! (counted per runner, as each driver counts its own); `after_command:NAME` right after the
//! process's first call of that command's port method returns, whatever it returned.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_core::domain::Millis;
use runner_updater_core::record::Record;
use runner_updater_ports::{
    Call, Decorated, Hooks, Lock, LockOutcome, PortCall, PortError, StateStore, StoreError,
};
use runner_updater_runtime::driver::Ports;

/// The environment variable that plans the crash.
pub const CRASH_VARIABLE: &str = "RUNNER_UPDATER_TEST_CRASH";

/// A command after whose call the process aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashCommand {
    /// `Lock::acquire` (taking or renewing the lease).
    AcquireLock,
    /// `Ecs::register_clone` (`RegisterTaskDefinition`).
    RegisterTaskDefinition,
    /// `Ecs::update_service` (the process's first: the forward update).
    UpdateService,
    /// `Lock::release`.
    ReleaseLock,
}

impl CrashCommand {
    const ALL: [(&'static str, CrashCommand); 4] = [
        ("acquire_lock", CrashCommand::AcquireLock),
        (
            "register_task_definition",
            CrashCommand::RegisterTaskDefinition,
        ),
        ("update_service", CrashCommand::UpdateService),
        ("release_lock", CrashCommand::ReleaseLock),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, command)| *command == self)
            .map_or("?", |(name, _)| name)
    }
}

/// Where the process aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after a runner's N-th record save.
    AfterSave(u32),
    /// Right after the first call of the command returns.
    AfterCommand(CrashCommand),
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashPoint::AfterSave(n) => write!(f, "after_save:{n}"),
            CrashPoint::AfterCommand(command) => write!(f, "after_command:{}", command.name()),
        }
    }
}

/// A crash point that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CRASH_VARIABLE}={text:?}: {why}")]
pub struct CrashPointError {
    text: String,
    why: String,
}

impl FromStr for CrashPoint {
    type Err = CrashPointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: String| CrashPointError {
            text: text.to_owned(),
            why,
        };
        match text.split_once(':') {
            Some(("after_save", n)) => match n.parse::<u32>() {
                Ok(n) if n > 0 => Ok(CrashPoint::AfterSave(n)),
                _ => Err(refuse("after_save:N needs a count of 1 or more".to_owned())),
            },
            Some(("after_command", name)) => CrashCommand::ALL
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, command)| CrashPoint::AfterCommand(*command))
                .ok_or_else(|| {
                    let known: Vec<&str> = CrashCommand::ALL.iter().map(|(n, _)| *n).collect();
                    refuse(format!("unknown command; use one of {}", known.join(", ")))
                }),
            _ => Err(refuse("use after_save:N or after_command:NAME".to_owned())),
        }
    }
}

/// Dies at once, without cleanup, like `kill -9`.
fn abort(point: CrashPoint, what: &str) -> ! {
    eprintln!("runner-updater-dev: planned crash {point} ({what}); aborting ({CRASH_VARIABLE})");
    std::process::abort();
}

/// The ports with the crash point planted.
#[must_use]
pub fn plant(ports: Ports, point: CrashPoint) -> Ports {
    Ports {
        store: Arc::new(CrashStore {
            inner: ports.store,
            point,
            saves: Mutex::new(HashMap::new()),
        }),
        ecs: Arc::new(Decorated::new(ports.ecs, CrashAfterCall { point })),
        lock: Arc::new(CrashLock {
            inner: ports.lock,
            point,
        }),
        ..ports
    }
}

struct CrashStore {
    inner: Arc<dyn StateStore>,
    point: CrashPoint,
    saves: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl StateStore for CrashStore {
    async fn load(&self, runner: &str) -> Result<Option<Record>, StoreError> {
        self.inner.load(runner).await
    }

    async fn load_release(
        &self,
        channel: &str,
    ) -> Result<Option<runner_updater_core::domain::rollout::ReleaseRecord>, StoreError> {
        self.inner.load_release(channel).await
    }

    async fn save_release(
        &self,
        record: &runner_updater_core::domain::rollout::ReleaseRecord,
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.inner.save_release(record, epoch).await
    }

    async fn save(&self, record: &Record) -> Result<(), StoreError> {
        self.save_folding(record, runner_updater_ports::LeaseFold::Keep)
            .await
            .map(|_| ())
    }

    async fn save_folding(
        &self,
        record: &Record,
        fold: runner_updater_ports::LeaseFold,
    ) -> Result<runner_updater_ports::LeaseWritten, StoreError> {
        let written = self.inner.save_folding(record, fold).await?;
        if let CrashPoint::AfterSave(at) = self.point {
            let saves = self.saves.lock().map(|mut saves| {
                let count = saves.entry(record.runner.clone()).or_default();
                *count += 1;
                *count
            });
            if saves.ok() == Some(at) {
                abort(
                    self.point,
                    &format!("{} saved in {}", record.runner, record.phase),
                );
            }
        }
        Ok(written)
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list().await
    }

    async fn prefetch(&self, runners: &[String]) -> Result<(), StoreError> {
        self.inner.prefetch(runners).await
    }

    fn fences_writes(&self) -> bool {
        self.inner.fences_writes()
    }
}

/// Around ECS: aborts right after the call the crash point names returns.
struct CrashAfterCall {
    point: CrashPoint,
}

#[async_trait]
impl Hooks for CrashAfterCall {
    async fn before(&self, _call: &Call<'_>) {}

    async fn after(&self, call: &Call<'_>, _failed: Option<&PortError>) {
        let command = match call.port {
            PortCall::RegisterClone => CrashCommand::RegisterTaskDefinition,
            PortCall::UpdateService => CrashCommand::UpdateService,
            _ => return,
        };
        if self.point == CrashPoint::AfterCommand(command) {
            abort(self.point, "the call was made");
        }
    }
}

struct CrashLock {
    inner: Arc<dyn Lock>,
    point: CrashPoint,
}

#[async_trait]
impl Lock for CrashLock {
    async fn acquire(
        &self,
        runner: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        let result = self.inner.acquire(runner, holder, now, ttl).await;
        if self.point == CrashPoint::AfterCommand(CrashCommand::AcquireLock) {
            abort(self.point, "the lease was asked for");
        }
        result
    }

    async fn check(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
    ) -> Result<bool, PortError> {
        self.inner.check(runner, holder, epoch, now).await
    }

    async fn holder(&self, runner: &str, now: Millis) -> Result<Option<String>, PortError> {
        self.inner.holder(runner, now).await
    }

    async fn renew(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: Millis,
        ttl: Duration,
    ) -> Result<LockOutcome, PortError> {
        let result = self.inner.renew(runner, holder, epoch, now, ttl).await;
        if self.point == CrashPoint::AfterCommand(CrashCommand::AcquireLock) {
            abort(self.point, "the lease was asked for");
        }
        result
    }

    async fn release(&self, runner: &str, holder: &str, epoch: u64) -> Result<(), PortError> {
        let result = self.inner.release(runner, holder, epoch).await;
        if self.point == CrashPoint::AfterCommand(CrashCommand::ReleaseLock) {
            abort(self.point, "the lease was released");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_point_is_read_from_its_text_and_a_bad_one_is_named() {
        let check = |text: &str, expect: Result<CrashPoint, &str>| match expect {
            Ok(point) => {
                assert_eq!(text.parse::<CrashPoint>(), Ok(point), "{text}");
                assert_eq!(point.to_string(), text);
            }
            Err(why) => {
                let error = text.parse::<CrashPoint>().unwrap_err().to_string();
                assert!(error.contains(why), "{text}: {error}");
            }
        };
        check("after_save:3", Ok(CrashPoint::AfterSave(3)));
        check(
            "after_command:update_service",
            Ok(CrashPoint::AfterCommand(CrashCommand::UpdateService)),
        );
        check(
            "after_command:register_task_definition",
            Ok(CrashPoint::AfterCommand(
                CrashCommand::RegisterTaskDefinition,
            )),
        );
        check("after_save:0", Err("a count of 1 or more"));
        check("after_save:x", Err("a count of 1 or more"));
        check(
            "after_command:observe",
            Err("unknown command; use one of acquire_lock"),
        );
        check("later", Err("use after_save:N or after_command:NAME"));
    }
}
