//! The product's wiring: the ports on AWS (each API family behind its client-side rate limit),
//! the state store the configuration names, and this process's lease identity.

use std::sync::Arc;
use std::time::Duration;

use runner_updater_adapters::clock::SystemClock;
use runner_updater_adapters::dynamo::{check_table, DynamoLease, DynamoStore};
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::ratelimit::{limit_cfn, limit_ecs, limit_ssm, limit_table};
use runner_updater_adapters::store::{FileStore, SsmStore};
use runner_updater_aws::{AwsClients, SdkSettings};
use runner_updater_config::{Config, StateBackend};
use runner_updater_ports::{Clock, EventQueue, Lock, ParameterStore, StateStore, StateTable};
use runner_updater_runtime::driver::Ports;

/// This host's name: `HOSTNAME` (the pod's name on Kubernetes), else the kernel's.
#[must_use]
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "controller".to_owned())
}

/// A random number drawn once per process (std's hasher keys come from the OS's randomness):
/// the part of the lease identity that tells apart two processes with the same host name and
/// pid (pid 1 in every container; a restarted container).
#[must_use]
pub fn process_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The SDK's settings from the configuration.
#[must_use]
pub fn sdk_settings(config: &Config) -> SdkSettings {
    SdkSettings {
        attempt_timeout: Duration::from_secs(config.aws.attempt_timeout_secs),
        operation_timeout: Duration::from_secs(config.aws.operation_timeout_secs),
        ..SdkSettings::default()
    }
}

/// The ports on AWS: SDK clients from the standard configuration, each API family behind its
/// shared client-side rate limit, the lease and the store of the configured backend (`holder`:
/// this controller's lease holder id, what the state table's conditional writes name).
///
/// # Errors
/// A state table that cannot be used (missing, another key schema, access denied), by name.
pub async fn aws_ports(
    config: &Config,
    holder: &str,
) -> anyhow::Result<(Ports, Option<Arc<dyn EventQueue>>)> {
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    let events = config
        .events
        .queue_url
        .as_deref()
        .map(|url| Arc::new(clients.queue(url)) as Arc<dyn EventQueue>);
    check_state_table(config, &clients).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = config.rate_limits;
    let ssm: Arc<dyn ParameterStore> = Arc::new(limit_ssm(
        Arc::new(clients.ssm.clone()),
        limits.ssm_per_sec,
        clock.clone(),
    ));
    let (lock, store) = lock_and_store(config, &clients, ssm.clone(), holder, clock.clone());
    let ports = Ports {
        ssm,
        ecs: Arc::new(limit_ecs(
            Arc::new(clients.ecs),
            limits.ecs_per_sec,
            clock.clone(),
        )),
        cfn: Arc::new(limit_cfn(
            Arc::new(clients.cfn),
            limits.cloudformation_per_sec,
            clock.clone(),
        )),
        lock,
        store,
        clock,
    };
    Ok((ports, events))
}

/// With the `dynamodb` backend, the table is checked once before it is relied on.
///
/// # Errors
/// A state table that cannot be used, by name.
pub async fn check_state_table(config: &Config, clients: &AwsClients) -> anyhow::Result<()> {
    if config.state_store.backend != StateBackend::DynamoDb {
        return Ok(());
    }
    let name = &config.state_store.table;
    check_table(&clients.table(name), name)
        .await
        .map_err(anyhow::Error::msg)
}

/// The lease and the store of the configured backend: the state table's (`dynamodb`), or the
/// SSM lease with the SSM or the file store. `holder` names the table's writes (a reader that
/// never writes the record names itself: `status`, `approve`).
pub fn lock_and_store(
    config: &Config,
    clients: &AwsClients,
    ssm: Arc<dyn ParameterStore>,
    holder: &str,
    clock: Arc<dyn Clock>,
) -> (Arc<dyn Lock>, Arc<dyn StateStore>) {
    if config.state_store.backend == StateBackend::DynamoDb {
        let table: Arc<dyn StateTable> = Arc::new(limit_table(
            Arc::new(clients.table(&config.state_store.table)),
            config.rate_limits.dynamodb_per_sec,
            clock.clone(),
        ));
        return (
            Arc::new(DynamoLease::new(table.clone())),
            Arc::new(DynamoStore::new(table, holder, clock)),
        );
    }
    (
        Arc::new(SsmLease::new(ssm.clone(), &config.prefix)),
        store_on(config, ssm),
    )
}

/// The SSM or the file store, as configured (the `dynamodb` backend's store is made with its
/// lease: [`lock_and_store`]).
#[must_use]
fn store_on(config: &Config, ssm: Arc<dyn ParameterStore>) -> Arc<dyn StateStore> {
    if config.state_store.backend == StateBackend::File {
        Arc::new(FileStore::new(&config.state_store.path))
    } else {
        Arc::new(SsmStore::new(ssm, &config.prefix))
    }
}

/// What `status` reads: the store, the lease (not with the file store), SSM (the channels'
/// releases; not with the file store).
pub type StatusSources = (
    Arc<dyn StateStore>,
    Option<Arc<dyn Lock>>,
    Option<Arc<dyn ParameterStore>>,
);

/// What `status` reads: the configured state store and, with a shared store, the leases (the
/// file store is read without AWS, so it works with no credentials at all). It never writes.
///
/// # Errors
/// A state table that cannot be used, by name.
pub async fn status_sources(config: &Config) -> anyhow::Result<StatusSources> {
    if config.state_store.backend == StateBackend::File {
        return Ok((
            Arc::new(FileStore::new(&config.state_store.path)),
            None,
            None,
        ));
    }
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    check_state_table(config, &clients).await?;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm.clone());
    let (lock, store) = lock_and_store(
        config,
        &clients,
        ssm.clone(),
        "status",
        Arc::new(SystemClock),
    );
    Ok((store, Some(lock), Some(ssm)))
}
