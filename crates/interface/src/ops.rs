//! Ops' commands that change what the controller does: `approve` (a held change set); and the
//! live read `status` adds to a record (who holds the lease).

use crate::report::LeaseView;
use runner_updater_core::domain::Millis;
use runner_updater_ports::{Lock, ParameterStore, PortError, StateStore, StoreError};

/// What `runner-updater status` shows for `runners`: each record's view; `Unreadable` for a
/// record this controller cannot use (corrupt, truncated, from a newer controller, invalid for
/// its phase); `NoRecord` for a runner without one; each with the runner's lease when `lock`
/// is given. One bad runner never hides the others.
///
/// # Errors
/// When the store itself cannot be read.
pub async fn status_views(
    config: &runner_updater_config::Config,
    store: &dyn StateStore,
    lock: Option<&dyn Lock>,
    runners: &[String],
    now: Millis,
) -> Result<Vec<crate::report::StatusView>, StoreError> {
    use crate::report::{no_record_view, status_view, unreadable_view};
    // The whole fleet in as few reads as the store allows (the state table: a scan for the
    // records, one for the leases), not two reads per runner.
    let records = store.load_many(runners).await?;
    let mut leases = match lock {
        Some(lock) => lock.holders(runners, now).await.into_iter().collect(),
        None => std::collections::HashMap::new(),
    };
    let mut views = Vec::with_capacity(runners.len());
    for (runner, record) in records {
        let unreadable = |error: &runner_updater_core::record::RecordError| {
            unreadable_view(&runner, &config.prefix, &error.code(), &error.to_string())
        };
        let mut view = match record {
            Ok(Some(record)) => {
                let restored = config
                    .runner(&runner)
                    .map(|r| record.restore(config.settings(r)));
                match restored {
                    Some(Err(error)) => unreadable(&error),
                    _ => status_view(&record),
                }
            }
            Ok(None) => no_record_view(&runner),
            Err(StoreError::Record(error)) => unreadable(&error),
            Err(error) => return Err(error),
        };
        view.lease = match (lock, leases.remove(&runner)) {
            (None, _) => LeaseView::NotRead("file store: status does not contact AWS".to_owned()),
            (Some(_), Some(Ok(Some(holder)))) => LeaseView::Held(holder),
            (Some(_), Some(Ok(None))) => LeaseView::Free,
            (Some(_), Some(Err(error))) => LeaseView::NotRead(error.to_string()),
            (Some(_), None) => LeaseView::NotRead("not read".to_owned()),
        };
        views.push(view);
    }
    Ok(views)
}

/// Who holds the runner's lease now, for `status`.
pub async fn lease_view(lock: &dyn Lock, runner: &str, now: Millis) -> LeaseView {
    match lock.holder(runner, now).await {
        Ok(Some(holder)) => LeaseView::Held(holder),
        Ok(None) => LeaseView::Free,
        Err(error) => LeaseView::NotRead(error.to_string()),
    }
}

/// Why an approval was not written.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// The runner has no record yet.
    #[error("runner {0} has no record: the controller has not run for it yet")]
    NoRecord(String),
    /// Nothing is held.
    #[error("runner {runner} is in {phase}, not awaiting_approval: there is no held change set to approve")]
    NotAwaiting {
        /// Runner.
        runner: String,
        /// Its phase.
        phase: String,
    },
    /// The held change set is not the one named.
    #[error("runner {runner} holds change set {held}, not {named}: review it (runner-updater status) and approve it by name")]
    OtherChangeSet {
        /// Runner.
        runner: String,
        /// What is held.
        held: String,
        /// What was named.
        named: String,
    },
    /// The record could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// SSM refused the write.
    #[error("writing the approval: {0}")]
    Ssm(#[from] PortError),
}

/// What was approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The stack.
    pub stack: String,
    /// The change set.
    pub change_set: String,
    /// The name of the parameter written.
    pub parameter: String,
}

/// Approves the change set the runner holds: writes its name to
/// `<prefix>/<runner>/desired/approved-change-set`. Only that change set runs: a later attempt's
/// change sets have other names and need their own approval. With `named`, the held change set
/// must be that one (what ops reviewed).
///
/// # Errors
/// An [`ApproveError`] when nothing (or another change set) is held or the record or SSM cannot
/// be used.
pub async fn approve(
    store: &dyn StateStore,
    ssm: &dyn ParameterStore,
    prefix: &str,
    runner: &str,
    named: Option<&str>,
) -> Result<Approval, ApproveError> {
    let record = store
        .load(runner)
        .await?
        .ok_or_else(|| ApproveError::NoRecord(runner.to_owned()))?;
    let held = record
        .change_set
        .as_ref()
        .filter(|_| record.phase == "awaiting_approval");
    let Some(held) = held else {
        return Err(ApproveError::NotAwaiting {
            runner: runner.to_owned(),
            phase: record.phase.clone(),
        });
    };
    if let Some(named) = named.filter(|n| *n != held.name) {
        return Err(ApproveError::OtherChangeSet {
            runner: runner.to_owned(),
            held: held.name.clone(),
            named: named.to_owned(),
        });
    }
    let parameter = format!("{prefix}/{runner}/desired/approved-change-set");
    ssm.put(&parameter, &held.name, true).await?;
    Ok(Approval {
        stack: held.stack.clone(),
        change_set: held.name.clone(),
        parameter,
    })
}

/// What the fleet needs of Parameter Store (`run` checks it at start): one walk of the prefix
/// (a page per ten parameters, as a fleet read), the records and leases still to create
/// counted with the SSM store.
///
/// # Errors
/// A page that cannot be read, or a prefix too large to walk.
pub async fn parameter_need(
    config: &runner_updater_config::Config,
    ssm: &dyn ParameterStore,
) -> Result<runner_updater_core::domain::capacity::ParameterNeed, PortError> {
    use runner_updater_runtime::reader::FLEET_PAGES_MAX;
    let mut names: Vec<String> = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..FLEET_PAGES_MAX {
        let page = ssm.get_page(&config.prefix, token.as_deref()).await?;
        names.extend(page.parameters.into_iter().map(|(name, _)| name));
        if page.next.is_none() {
            let runners: Vec<&str> = config.runners.iter().map(|r| r.name.as_str()).collect();
            return Ok(runner_updater_core::domain::capacity::ParameterNeed::count(
                names.iter().map(String::as_str),
                &config.prefix,
                &runners,
                config.state_store.backend == runner_updater_config::StateBackend::Ssm,
                config.aws.ssm_parameters_max,
            ));
        }
        token = page.next;
    }
    Err(PortError::new(
        runner_updater_ports::ErrorKind::Permanent,
        runner_updater_ports::AwsOp::GetParametersByPath,
        format!("more than {FLEET_PAGES_MAX} pages under {}", config.prefix),
    ))
}
