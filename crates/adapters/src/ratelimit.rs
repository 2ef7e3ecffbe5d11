//! Client-side rate limits: one token bucket per AWS API family (SSM, ECS, CloudFormation),
//! shared by every runner, in front of the SDK adapters.
//!
//! The bucket refills at the configured rate (a second's worth of burst); a call waits for its
//! tokens through the `Clock` port. When AWS throttles anyway, the rate is halved (down to a
//! sixteenth of the configured one), and it grows back by a twentieth of it per successful
//! call: the controller slows down instead of retrying harder (the SDK's adaptive retry mode
//! does the same per client).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_core::domain::infra::{ChangeSet, StackEvent};
use runner_updater_core::domain::observed::{ServiceState, StackState};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::Millis;
use runner_updater_ports::{
    walk_pages, ApiFamily, ChangeSetRequest, Clock, CloudFormation, Ecs, ErrorKind, Parameter,
    ParameterPage, ParameterStore, PortCall, PortError, TaskDefinitionPage, TemplateSummary,
};

/// Waits before a call can go this many times at most (a bound on every loop).
const WAITS_MAX: u32 = 1_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Millis,
    rate: f64,
}

/// A token bucket for one API family.
pub struct Limiter {
    family: ApiFamily,
    configured: f64,
    bucket: Mutex<Bucket>,
    clock: Arc<dyn Clock>,
}

impl Limiter {
    /// `per_sec` calls per second (at least one), a second's worth of burst.
    #[must_use]
    pub fn new(family: ApiFamily, per_sec: u32, clock: Arc<dyn Clock>) -> Self {
        let rate = f64::from(per_sec.max(1));
        Limiter {
            family,
            configured: rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                last: clock.now(),
                rate,
            }),
            clock,
        }
    }

    /// The current rate (calls per second).
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.bucket.lock().map_or(self.configured, |b| b.rate)
    }

    /// Waits until `tokens` calls may go.
    pub async fn acquire(&self, tokens: u32) {
        let needed = f64::from(tokens.max(1));
        for _ in 0..WAITS_MAX {
            let wait = {
                let Ok(mut bucket) = self.bucket.lock() else {
                    return; // a poisoned lock: let the call go rather than stall the fleet
                };
                let now = self.clock.now();
                let elapsed = now.since(bucket.last).as_secs_f64();
                bucket.last = now;
                bucket.tokens =
                    (bucket.tokens + elapsed * bucket.rate).min(bucket.rate.max(needed));
                if bucket.tokens >= needed {
                    bucket.tokens -= needed;
                    return;
                }
                Duration::from_secs_f64((needed - bucket.tokens) / bucket.rate)
            };
            self.clock.sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// AWS throttled a call: halve the rate.
    pub fn throttled(&self) {
        if let Ok(mut bucket) = self.bucket.lock() {
            bucket.rate = (bucket.rate / 2.0).max(self.configured / 16.0);
            tracing::info!(
                family = self.family.name(),
                rate = bucket.rate,
                "throttled by AWS: slowing down"
            );
        }
    }

    /// A call went through: grow the rate back towards the configured one.
    pub fn succeeded(&self) {
        if let Ok(mut bucket) = self.bucket.lock() {
            bucket.rate = (bucket.rate + self.configured / 20.0).min(self.configured);
        }
    }

    /// Sends `call` once the SDK calls `port_call` makes may go (its weight, from the one
    /// table of [`PortCall::sdk_calls`]).
    async fn call<T>(
        &self,
        port_call: PortCall,
        call: impl Future<Output = Result<T, PortError>>,
    ) -> Result<T, PortError> {
        debug_assert_eq!(port_call.family(), self.family, "{port_call:?}");
        self.acquire(port_call.weight()).await;
        let result = call.await;
        match &result {
            Err(error) if is_throttling(error) => self.throttled(),
            Err(_) => {}
            Ok(_) => self.succeeded(),
        }
        result
    }
}

/// Whether AWS refused a call for its rate (the adapters classify it: a throttling code or
/// HTTP 429 is [`ErrorKind::Throttled`]).
#[must_use]
pub fn is_throttling(error: &PortError) -> bool {
    error.kind == ErrorKind::Throttled
}

/// SSM behind its limiter.
pub struct LimitedSsm {
    /// The adapter.
    pub inner: Arc<dyn ParameterStore>,
    /// SSM's bucket.
    pub limiter: Arc<Limiter>,
}

#[async_trait]
impl ParameterStore for LimitedSsm {
    async fn get_by_path(&self, path: &str) -> Result<BTreeMap<String, String>, PortError> {
        // Page by page, each page through the bucket: a folder of 25 weighs 3.
        walk_pages(self, path).await
    }
    async fn get_page(&self, path: &str, token: Option<&str>) -> Result<ParameterPage, PortError> {
        self.limiter
            .call(PortCall::GetPage, self.inner.get_page(path, token))
            .await
    }
    async fn get(&self, name: &str) -> Result<Option<Parameter>, PortError> {
        self.limiter.call(PortCall::Get, self.inner.get(name)).await
    }
    async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError> {
        self.limiter
            .call(PortCall::Put, self.inner.put(name, value, overwrite))
            .await
    }
    async fn delete(&self, name: &str) -> Result<(), PortError> {
        self.limiter
            .call(PortCall::Delete, self.inner.delete(name))
            .await
    }
}

/// ECS behind its limiter.
pub struct LimitedEcs {
    /// The adapter.
    pub inner: Arc<dyn Ecs>,
    /// ECS's bucket.
    pub limiter: Arc<Limiter>,
}

#[async_trait]
impl Ecs for LimitedEcs {
    async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        self.limiter
            .call(
                PortCall::DescribeService,
                self.inner.describe_service(cluster, service),
            )
            .await
    }
    async fn describe_service_without_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        self.limiter
            .call(
                PortCall::DescribeServiceWithoutTasks,
                self.inner.describe_service_without_tasks(cluster, service),
            )
            .await
    }
    async fn describe_services_without_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<Result<ServiceState, PortError>>, PortError> {
        self.limiter
            .call(
                PortCall::DescribeServicesWithoutTasks {
                    services: services.len(),
                },
                self.inner
                    .describe_services_without_tasks(cluster, services),
            )
            .await
    }
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinition, PortError> {
        self.limiter
            .call(
                PortCall::DescribeTaskDefinition,
                self.inner.describe_task_definition(arn),
            )
            .await
    }
    async fn list_task_definitions(
        &self,
        family_prefix: &str,
        token: Option<&str>,
    ) -> Result<TaskDefinitionPage, PortError> {
        self.limiter
            .call(
                PortCall::ListTaskDefinitions,
                self.inner.list_task_definitions(family_prefix, token),
            )
            .await
    }
    async fn register_clone(
        &self,
        base_arn: &str,
        container: &str,
        image: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError> {
        self.limiter
            .call(
                PortCall::RegisterClone,
                self.inner.register_clone(base_arn, container, image, tags),
            )
            .await
    }
    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
    ) -> Result<String, PortError> {
        self.limiter
            .call(
                PortCall::UpdateService,
                self.inner
                    .update_service(cluster, service, task_definition_arn),
            )
            .await
    }
}

/// CloudFormation behind its limiter.
pub struct LimitedCfn {
    /// The adapter.
    pub inner: Arc<dyn CloudFormation>,
    /// CloudFormation's bucket.
    pub limiter: Arc<Limiter>,
}

#[async_trait]
impl CloudFormation for LimitedCfn {
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError> {
        self.limiter
            .call(PortCall::DescribeStack, self.inner.describe_stack(name))
            .await
    }
    async fn template_summary(
        &self,
        stack: &str,
        template_url: Option<&str>,
    ) -> Result<TemplateSummary, PortError> {
        self.limiter
            .call(
                PortCall::TemplateSummary,
                self.inner.template_summary(stack, template_url),
            )
            .await
    }
    async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError> {
        self.limiter
            .call(
                PortCall::CreateChangeSet,
                self.inner.create_change_set(request),
            )
            .await
    }
    async fn describe_change_set(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ChangeSet>, PortError> {
        self.limiter
            .call(
                PortCall::DescribeChangeSet,
                self.inner.describe_change_set(stack, name),
            )
            .await
    }
    async fn execute_change_set(
        &self,
        stack: &str,
        name: &str,
        token: &str,
    ) -> Result<(), PortError> {
        self.limiter
            .call(
                PortCall::ExecuteChangeSet,
                self.inner.execute_change_set(stack, name, token),
            )
            .await
    }
    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), PortError> {
        self.limiter
            .call(
                PortCall::DeleteChangeSet,
                self.inner.delete_change_set(stack, name),
            )
            .await
    }
    async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, PortError> {
        self.limiter
            .call(PortCall::StackEvents, self.inner.stack_events(stack))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimClock, SIM_EPOCH};
    use runner_updater_ports::AwsOp;

    #[tokio::test]
    async fn calls_wait_for_their_tokens_at_the_configured_rate() {
        let clock = SimClock::new(SIM_EPOCH);
        let limiter = Limiter::new(ApiFamily::Ecs, 10, Arc::new(clock.clone()));
        for _ in 0..30 {
            limiter.acquire(1).await;
        }
        // 10 from the burst, then 20 at 10/s.
        let waited = clock.now().since(SIM_EPOCH);
        assert!(
            (1_900..=2_100).contains(&waited.as_millis()),
            "waited {waited:?}"
        );
    }

    #[tokio::test]
    async fn throttling_halves_the_rate_and_successes_restore_it() {
        let clock = SimClock::new(SIM_EPOCH);
        let limiter = Limiter::new(ApiFamily::Ssm, 32, Arc::new(clock.clone()));
        limiter.throttled();
        limiter.throttled();
        assert!((limiter.rate() - 8.0).abs() < 1e-9);
        for _ in 0..10 {
            limiter.throttled();
        }
        assert!((limiter.rate() - 2.0).abs() < 1e-9, "floor: a sixteenth");
        for _ in 0..100 {
            limiter.succeeded();
        }
        assert!((limiter.rate() - 32.0).abs() < 1e-9, "back, and no higher");
        let throttle = PortError::new(
            ErrorKind::Throttled,
            AwsOp::GetParameter,
            "ThrottlingException: Rate exceeded",
        );
        let other = PortError::new(
            ErrorKind::Transient,
            AwsOp::GetParameter,
            "connection reset",
        );
        assert!(is_throttling(&throttle));
        assert!(!is_throttling(&other));
        let result: Result<(), PortError> =
            limiter.call(PortCall::Get, async { Err(throttle) }).await;
        assert!(result.is_err());
        assert!((limiter.rate() - 16.0).abs() < 1e-9);
    }
}
