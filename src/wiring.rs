//! The product's wiring: the ports on AWS (each API family behind its client-side rate limit),
//! the state store the configuration names, and this process's lease identity.

use std::sync::Arc;
use std::time::Duration;

use runner_updater_adapters::clock::SystemClock;
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::ratelimit::{limit_cfn, limit_ecs, limit_ssm};
use runner_updater_adapters::store::{FileStore, SsmStore};
use runner_updater_aws::{AwsClients, SdkSettings};
use runner_updater_config::{Config, StateBackend};
use runner_updater_ports::{Clock, ParameterStore, StateStore};
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
/// shared client-side rate limit, the SSM lease, the configured store.
pub async fn aws_ports(config: &Config) -> Ports {
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let limits = config.rate_limits;
    let ssm: Arc<dyn ParameterStore> = Arc::new(limit_ssm(
        Arc::new(clients.ssm),
        limits.ssm_per_sec,
        clock.clone(),
    ));
    Ports {
        ssm: ssm.clone(),
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
        lock: Arc::new(SsmLease::new(ssm.clone(), &config.prefix)),
        store: store_on(config, ssm),
        clock,
    }
}

/// The state store the configuration names, on `ssm` when it is the SSM store.
#[must_use]
pub fn store_on(config: &Config, ssm: Arc<dyn ParameterStore>) -> Arc<dyn StateStore> {
    if config.state_store.backend == StateBackend::File {
        Arc::new(FileStore::new(&config.state_store.path))
    } else {
        Arc::new(SsmStore::new(ssm, &config.prefix))
    }
}

/// What `status` reads: the configured state store and, with the SSM store, the leases (the
/// file store is read without AWS, so it works with no credentials at all).
pub async fn status_sources(config: &Config) -> (Arc<dyn StateStore>, Option<SsmLease>) {
    if config.state_store.backend == StateBackend::File {
        return (Arc::new(FileStore::new(&config.state_store.path)), None);
    }
    let clients = AwsClients::from_env(sdk_settings(config)).await;
    let ssm: Arc<dyn ParameterStore> = Arc::new(clients.ssm);
    (
        store_on(config, ssm.clone()),
        Some(SsmLease::new(ssm, &config.prefix)),
    )
}
