//! Client-side rate limits: one token bucket per AWS API family (SSM, ECS, CloudFormation),
//! shared by every runner, in front of the SDK adapters.
//!
//! The bucket refills at the configured rate (a second's worth of burst); a call reserves its
//! tokens at once and waits, once, through the `Clock` port, for its place: callers are served
//! in the order they asked. When AWS throttles anyway, the rate is halved (down to a
//! sixteenth of the configured one), and it grows back by a twentieth of it per successful
//! call: the controller slows down instead of retrying harder (the SDK's adaptive retry mode
//! does the same per client).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use runner_updater_core::domain::{capacity, Millis};
use runner_updater_ports::{
    ApiFamily, Call, Clock, CloudFormation, Decorated, Ecs, ErrorKind, Hooks, ParameterStore,
    PortCall, PortError, StateTable,
};

/// The ECS operations AWS limits more tightly than the family: (operation, sustained calls a
/// second, burst), from the ECS API's request-throttling quotas (per account and region). The
/// ECS limiter holds them, each in a bucket of its own taken by `Ecs::pace`, which the driver
/// asks before the fencing check of the mutation (a wait there never falls between the check
/// and the call); the call itself then takes only its family's tokens.
pub const ECS_OPERATION_LIMITS: [(runner_updater_ports::AwsOp, f64, f64); 2] = [
    (
        runner_updater_ports::AwsOp::RegisterTaskDefinition,
        capacity::REGISTER_TASK_DEFINITION_PER_SEC,
        capacity::REGISTER_TASK_DEFINITION_BURST,
    ),
    (
        runner_updater_ports::AwsOp::UpdateService,
        capacity::UPDATE_SERVICE_PER_SEC,
        capacity::UPDATE_SERVICE_BURST,
    ),
];

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Millis,
    rate: f64,
}

/// A token bucket for one API family, with one of its own for each operation AWS limits more
/// tightly ([`ECS_OPERATION_LIMITS`]).
pub struct Limiter {
    family: ApiFamily,
    configured: f64,
    bucket: Mutex<Bucket>,
    /// (operation, its bucket, its burst).
    operations: Vec<(runner_updater_ports::AwsOp, Mutex<Bucket>, f64)>,
    /// Calls of those operations whose family tokens `pace` took already, and when: the call
    /// goes without waiting for them again (a token taken is a token taken, whichever call of
    /// the operation uses it). One not used within [`PREPAID_FOR`] (its call was not made: the
    /// fencing check refused it) is dropped, its tokens with it.
    prepaid: Mutex<Vec<(runner_updater_ports::AwsOp, Millis)>>,
    clock: Arc<dyn Clock>,
}

/// How long tokens `pace` took for a call stay its.
const PREPAID_FOR: Duration = Duration::from_secs(30);

/// The port call that makes `operation` (the two AWS paces more tightly).
fn port_call_of(operation: runner_updater_ports::AwsOp) -> Option<PortCall> {
    match operation {
        runner_updater_ports::AwsOp::RegisterTaskDefinition => Some(PortCall::RegisterClone),
        runner_updater_ports::AwsOp::UpdateService => Some(PortCall::UpdateService),
        _ => None,
    }
}

/// Reserves `needed` tokens from `bucket` (holding at most `cap`) and says how long to wait
/// for them: a bucket in debt serves its callers in the order they asked (each waits once,
/// for its own place in the queue), so no caller can lose a race for tokens again and again.
fn take(bucket: &Mutex<Bucket>, needed: f64, cap: f64, now: Millis) -> Option<Duration> {
    let Ok(mut bucket) = bucket.lock() else {
        return None; // a poisoned lock: let the call go rather than stall the fleet
    };
    let elapsed = now.since(bucket.last).as_secs_f64();
    bucket.last = now;
    bucket.tokens = (bucket.tokens + elapsed * bucket.rate).min(cap.max(needed));
    bucket.tokens -= needed;
    (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / bucket.rate))
}

impl Limiter {
    /// `per_sec` calls per second (at least one), a second's worth of burst. Outside this
    /// crate a limiter is made with its port ([`limit_ssm`], [`limit_ecs`], [`limit_cfn`]), so
    /// that it cannot ration another family's calls.
    #[must_use]
    pub(crate) fn new(family: ApiFamily, per_sec: u32, clock: Arc<dyn Clock>) -> Self {
        let rate = f64::from(per_sec.max(1));
        let operations = ECS_OPERATION_LIMITS
            .iter()
            .filter(|(operation, _, _)| operation.family() == family)
            .map(|&(operation, rate, burst)| {
                let bucket = Bucket {
                    tokens: burst,
                    last: clock.now(),
                    rate,
                };
                (operation, Mutex::new(bucket), burst)
            })
            .collect();
        Limiter {
            family,
            configured: rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                last: clock.now(),
                rate,
            }),
            operations,
            prepaid: Mutex::new(Vec::new()),
            clock,
        }
    }

    /// Waits for `operation`'s own turn, when AWS limits it more tightly than the family (at
    /// once otherwise), then for the family's tokens of the call that makes it: that call then
    /// goes without waiting (no wait of this limiter falls between the caller's fencing check
    /// and the call).
    pub async fn pace(&self, operation: runner_updater_ports::AwsOp) {
        let (Some((_, bucket, burst)), Some(call)) = (
            self.operations.iter().find(|(op, _, _)| *op == operation),
            port_call_of(operation),
        ) else {
            return;
        };
        if let Some(wait) = take(bucket, 1.0, *burst, self.clock.now()) {
            self.clock.sleep(wait).await;
        }
        self.acquire(call.weight()).await;
        if let Ok(mut prepaid) = self.prepaid.lock() {
            prepaid.push((operation, self.clock.now()));
        }
    }

    /// Uses a call's prepaid tokens, if `pace` took them (lately).
    fn prepaid(&self, operation: runner_updater_ports::AwsOp) -> bool {
        let Ok(mut prepaid) = self.prepaid.lock() else {
            return false;
        };
        let now = self.clock.now();
        prepaid.retain(|(_, at)| now.since(*at) < PREPAID_FOR);
        match prepaid.iter().position(|(op, _)| *op == operation) {
            Some(index) => {
                prepaid.remove(index);
                true
            }
            None => false,
        }
    }

    /// The current rate (calls per second).
    #[must_use]
    pub fn rate(&self) -> f64 {
        self.bucket.lock().map_or(self.configured, |b| b.rate)
    }

    /// Waits until `tokens` calls may go (none: at once).
    pub async fn acquire(&self, tokens: u32) {
        if tokens == 0 {
            return;
        }
        // A second's worth of burst at the current rate.
        let cap = self.bucket.lock().map_or(self.configured, |b| b.rate);
        if let Some(wait) = take(&self.bucket, f64::from(tokens), cap, self.clock.now()) {
            self.clock.sleep(wait).await;
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
}

/// Whether AWS refused a call for its rate (the adapters classify it: a throttling code or
/// HTTP 429 is [`ErrorKind::Throttled`]).
#[must_use]
pub fn is_throttling(error: &PortError) -> bool {
    error.kind == ErrorKind::Throttled
}

/// The limiter around every call of its family's port: it waits for the call's weight (the
/// SDK calls it makes, [`PortCall::weight`]) before, slows down on throttling after.
#[async_trait]
impl Hooks for Limiter {
    async fn before(&self, call: &Call<'_>) {
        debug_assert_eq!(call.port.family(), self.family, "{call:?}");
        if port_call_of(call.port.op()) == Some(call.port) && self.prepaid(call.port.op()) {
            return;
        }
        self.acquire(call.port.weight()).await;
    }

    async fn after(&self, _call: &Call<'_>, failed: Option<&PortError>) {
        match failed {
            Some(error) if is_throttling(error) => self.throttled(),
            Some(_) => {}
            None => self.succeeded(),
        }
    }

    async fn pace(&self, op: runner_updater_ports::AwsOp) {
        Limiter::pace(self, op).await;
    }
}

/// SSM behind its limiter.
pub type LimitedSsm = Decorated<dyn ParameterStore, Arc<Limiter>>;
/// ECS behind its limiter.
pub type LimitedEcs = Decorated<dyn Ecs, Arc<Limiter>>;
/// `CloudFormation` behind its limiter.
pub type LimitedCfn = Decorated<dyn CloudFormation, Arc<Limiter>>;
/// The DynamoDB state table behind its limiter.
pub type LimitedTable = Decorated<dyn StateTable, Arc<Limiter>>;

/// SSM behind a limiter of `per_sec` SSM calls a second (the port and its family bound here,
/// once).
#[must_use]
pub fn limit_ssm(
    inner: Arc<dyn ParameterStore>,
    per_sec: u32,
    clock: Arc<dyn Clock>,
) -> LimitedSsm {
    Decorated::new(
        inner,
        Arc::new(Limiter::new(ApiFamily::Ssm, per_sec, clock)),
    )
}

/// ECS behind a limiter of `per_sec` ECS calls a second.
#[must_use]
pub fn limit_ecs(inner: Arc<dyn Ecs>, per_sec: u32, clock: Arc<dyn Clock>) -> LimitedEcs {
    Decorated::new(
        inner,
        Arc::new(Limiter::new(ApiFamily::Ecs, per_sec, clock)),
    )
}

/// `CloudFormation` behind a limiter of `per_sec` `CloudFormation` calls a second.
#[must_use]
pub fn limit_cfn(
    inner: Arc<dyn CloudFormation>,
    per_sec: u32,
    clock: Arc<dyn Clock>,
) -> LimitedCfn {
    Decorated::new(
        inner,
        Arc::new(Limiter::new(ApiFamily::CloudFormation, per_sec, clock)),
    )
}

/// The state table behind a limiter of `per_sec` DynamoDB calls a second.
#[must_use]
pub fn limit_table(
    inner: Arc<dyn StateTable>,
    per_sec: u32,
    clock: Arc<dyn Clock>,
) -> LimitedTable {
    Decorated::new(
        inner,
        Arc::new(Limiter::new(ApiFamily::DynamoDb, per_sec, clock)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimClock, SIM_EPOCH};
    use runner_updater_ports::{AwsOp, PortCall, Target};

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
    async fn an_operation_aws_limits_more_tightly_is_paced_by_a_bucket_of_its_own() {
        let clock = SimClock::new(SIM_EPOCH);
        let limiter = Limiter::new(ApiFamily::Ecs, 15, Arc::new(clock.clone()));
        // RegisterTaskDefinition: a burst of 20, then 1 a second.
        for _ in 0..30 {
            limiter.pace(AwsOp::RegisterTaskDefinition).await;
        }
        let waited = clock.now().since(SIM_EPOCH);
        assert!(
            (9_900..=10_100).contains(&waited.as_millis()),
            "waited {waited:?}"
        );
        // UpdateService: its own bucket (5, then 5 a second), the other's wait aside.
        let before = clock.now();
        for _ in 0..10 {
            limiter.pace(AwsOp::UpdateService).await;
        }
        let waited = clock.now().since(before);
        assert!(
            (900..=1_100).contains(&waited.as_millis()),
            "waited {waited:?}"
        );
        // The calls paced go without waiting again: their family tokens were taken.
        let before = clock.now();
        let call = Call {
            port: PortCall::UpdateService,
            target: Target::ServiceUpdate {
                cluster: "c",
                service: "s",
                task_definition_arn: "td:1",
            },
        };
        for _ in 0..10 {
            Hooks::before(&limiter, &call).await;
        }
        assert_eq!(clock.now(), before, "prepaid");
        // Used up: the next call waits for its own tokens (the family's bucket is in debt).
        limiter.acquire(30).await;
        let before = clock.now();
        Hooks::before(&limiter, &call).await;
        assert!(clock.now() > before, "the credits were used up");
        // Prepaid tokens not used within their time are dropped with them.
        limiter.pace(AwsOp::UpdateService).await;
        clock.advance(PREPAID_FOR);
        limiter.acquire(30).await;
        let before = clock.now();
        Hooks::before(&limiter, &call).await;
        assert!(clock.now() > before, "an old credit is not used");
        // Any other operation, and another family's limiter: no wait of its own.
        let before = clock.now();
        limiter.pace(AwsOp::DescribeServices).await;
        let ssm = Limiter::new(ApiFamily::Ssm, 1, Arc::new(clock.clone()));
        ssm.pace(AwsOp::RegisterTaskDefinition).await;
        assert_eq!(clock.now(), before);
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
        let call = Call {
            port: PortCall::Get,
            target: Target::Parameter("/p"),
        };
        limiter.before(&call).await;
        limiter.after(&call, Some(&throttle)).await;
        assert!((limiter.rate() - 16.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn each_port_is_rationed_by_its_own_family_at_the_weight_of_its_calls() {
        use crate::sim::SimAws;
        use runner_updater_ports::Ecs;
        let aws = SimAws::new(7);
        let clock: Arc<dyn Clock> = Arc::new(aws.clock.clone());
        // One ECS call a second, no burst beyond it: each `update_service` weighs 2 (it reads
        // the service, then updates it), an empty batch of services nothing.
        let ecs = limit_ecs(Arc::new(aws.ecs.clone()), 1, clock.clone());
        let start = aws.clock.now();
        for _ in 0..5 {
            let _ = ecs.describe_services_without_tasks("c", &[]).await;
        }
        assert_eq!(aws.clock.now(), start, "an empty batch waits for nothing");
        for _ in 0..3 {
            let _ = ecs.update_service("c", "missing", "td:1", None).await;
        }
        // 1 token in the bucket, then 5 more at 1/s (the first waits for its second token).
        let waited = aws.clock.now().since(start);
        assert!(
            (4_900..=5_100).contains(&waited.as_millis()),
            "waited {waited:?}"
        );
        // The SSM and CloudFormation limiters are bound to their own ports (a limiter of
        // another family would fail the check in `before`, debug builds).
        let ssm = limit_ssm(Arc::new(aws.ssm.clone()), 10, clock.clone());
        let _ = runner_updater_ports::ParameterStore::get(&ssm, "/p").await;
        let cfn = limit_cfn(Arc::new(aws.cfn.clone()), 10, clock);
        let _ = runner_updater_ports::CloudFormation::describe_stack(&cfn, "s").await;
    }
}
