//! Contract tests: one suite of port-level checks, run against the simulated AWS and against the
//! AWS adapters on moto (plus our harness), so the simulation cannot drift into a toy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecs::types::{
    ContainerCondition, ContainerDefinition, ContainerDependency, CpuArchitecture,
    EphemeralStorage, HealthCheck, KeyValuePair, LinuxParameters, LogConfiguration, LogDriver,
    NetworkMode, OsFamily, ProxyConfiguration, RuntimePlatform, Secret,
    TaskDefinitionPlacementConstraint, TaskDefinitionPlacementConstraintType, Ulimit, UlimitName,
    Volume,
};
use runner_updater_adapters::dynamo::{DynamoLease, DynamoStore};
use runner_updater_adapters::lease::SsmLease;
use runner_updater_adapters::sim::{
    initial_template, SimAws, SimResource, SimRunnerSpec, SimSsm, SimTable,
};
use runner_updater_adapters::store::{FileStore, MemoryStore, SsmStore};
use runner_updater_core::domain::code::Code;
use runner_updater_core::domain::infra::{self, Creation, Execution, StackProgress, StackStatus};
use runner_updater_core::domain::observed::{
    DeploymentStatus, ServiceDeploymentStatus, StackState, ATTEMPT_TAG, INFRA_VERSION_TAG,
};
use runner_updater_core::domain::revision_search::{family_revision, RevisionSearch, SearchStep};
use runner_updater_core::domain::Millis;
use runner_updater_ports::StoreError;
use runner_updater_ports::{
    ChangeSetRequest, Clock, CloudFormation, Decorated, Ecs, ErrorKind, Fence, LeaseCondition,
    LeaseFields, Lock, LockOutcome, ParameterStore, RecordCondition, StateItem, StateStore,
    StateTable, TASK_DEFINITIONS_PAGE_MAX,
};

/// Checks, call by call, that a port method makes the SDK calls the one table says
/// (`PortCall::sdk_calls`: what the limiter weighs and the benchmark counts): the operations
/// the AWS adapters send are heard through the SDK call observer, per test thread (each
/// `#[tokio::test]` runs on a current-thread runtime of its own, and nothing here calls two
/// ports at once).
mod table_check {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, Once};

    use async_trait::async_trait;
    use runner_updater_ports::{AwsOp, Call, Hooks, PortCall, PortError};

    thread_local! {
        static HEARD: RefCell<Vec<AwsOp>> = const { RefCell::new(Vec::new()) };
    }

    #[derive(Default)]
    pub struct TableCheck {
        checked: Mutex<usize>,
        mismatches: Mutex<Vec<String>>,
    }

    impl TableCheck {
        pub fn new() -> Arc<TableCheck> {
            static INSTALL: Once = Once::new();
            INSTALL.call_once(|| {
                runner_updater_aws::observe_calls(Box::new(|operation, _outcome| {
                    HEARD.with(|heard| heard.borrow_mut().push(operation));
                }));
            });
            Arc::new(TableCheck::default())
        }

        /// Every call checked agreed with the table; returns how many were checked.
        pub fn assert_agreed(&self, who: &str) -> usize {
            let mismatches = self.mismatches.lock().unwrap();
            assert!(mismatches.is_empty(), "{who}: {mismatches:#?}");
            *self.checked.lock().unwrap()
        }
    }

    fn counts(calls: impl Iterator<Item = (AwsOp, u32)>) -> BTreeMap<AwsOp, u32> {
        let mut counts = BTreeMap::new();
        for (operation, times) in calls {
            *counts.entry(operation).or_default() += times;
        }
        counts
    }

    #[async_trait]
    impl Hooks for TableCheck {
        async fn before(&self, _call: &Call<'_>) {
            HEARD.with(|heard| heard.borrow_mut().clear());
        }

        async fn after(&self, call: &Call<'_>, failed: Option<&PortError>) {
            let heard = counts(
                HEARD
                    .with(|heard| std::mem::take(&mut *heard.borrow_mut()))
                    .into_iter()
                    .map(|operation| (operation, 1)),
            );
            let table = counts(call.port.sdk_calls());
            // Sized by the answer (task pages, change and event pages): the table's
            // operations, the first at least once. A failed call may stop early: no more than
            // the table. Any other call: exactly the table.
            let sized = matches!(
                call.port,
                PortCall::DescribeService
                    | PortCall::ListServiceTasks
                    | PortCall::DescribeChangeSet
                    | PortCall::StackEvents
            );
            let agrees = if failed.is_some() {
                heard.iter().all(|(op, n)| {
                    table.get(op).is_some_and(|t| n <= t) || sized && table.contains_key(op)
                })
            } else if sized {
                heard.keys().all(|op| table.contains_key(op)) && heard.contains_key(&call.port.op())
            } else {
                heard == table
            };
            *self.checked.lock().unwrap() += 1;
            if !agrees {
                self.mismatches.lock().unwrap().push(format!(
                    "{:?} ({}): the adapter made {heard:?}, the table says {table:?}",
                    call.port,
                    failed.map_or("ok".to_owned(), ToString::to_string)
                ));
            }
        }
    }
}

async fn parameter_store_contract(ssm: Arc<dyn ParameterStore>, who: &str) {
    assert_eq!(
        ssm.put("/c/a/x", "1", false).await.unwrap(),
        1,
        "{who}: first version"
    );
    let conflict = ssm.put("/c/a/x", "2", false).await.unwrap_err();
    assert_eq!(
        conflict.kind,
        ErrorKind::Conflict,
        "{who}: atomic create refuses an existing name"
    );
    assert_eq!(
        ssm.put("/c/a/x", "3", true).await.unwrap(),
        2,
        "{who}: overwrite bumps the version"
    );
    assert_eq!(ssm.get("/c/a/x").await.unwrap().unwrap().value, "3");
    assert_eq!(
        ssm.get("/c/a/absent").await.unwrap(),
        None,
        "{who}: a missing parameter is None"
    );
    for i in 0..23 {
        ssm.put(&format!("/c/a/deep/p{i:02}"), "v", true)
            .await
            .unwrap();
    }
    ssm.put("/c/b/other", "v", true).await.unwrap();
    let under = ssm.get_by_path("/c/a/").await.unwrap();
    assert_eq!(under.len(), 24, "{who}: recursive and paged beyond 10");
    assert!(!under.contains_key("/c/b/other"));
    // Page by page, as the fleet read walks them: at most ten a page, every one exactly once.
    let mut paged = BTreeMap::new();
    let mut token: Option<String> = None;
    let mut page_count = 0;
    loop {
        let page = ssm.get_page("/c/a", token.as_deref()).await.unwrap();
        page_count += 1;
        assert!(
            page.parameters.len() <= 10,
            "{who}: {} in a page",
            page.parameters.len()
        );
        for (name, value) in page.parameters {
            assert!(
                paged.insert(name, value).is_none(),
                "{who}: a parameter twice"
            );
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
        assert!(page_count < 10, "{who}: the pages do not end");
    }
    assert_eq!(
        paged, under,
        "{who}: the pages hold what the whole read holds"
    );
    assert!(
        page_count >= 3,
        "{who}: 24 parameters in {page_count} pages"
    );
    ssm.delete("/c/a/x").await.unwrap();
    ssm.delete("/c/a/x").await.unwrap();
    assert_eq!(
        ssm.get("/c/a/x").await.unwrap(),
        None,
        "{who}: deleted, and deleting twice is fine"
    );
}

async fn lease_contract(ssm: Arc<dyn ParameterStore>, who: &str) {
    let lease = SsmLease::new(ssm.clone(), "/lease");
    any_lease_contract(&lease, who, true).await;
}

/// What every lease does (SSM's and the state table's): one holder, epochs that fence,
/// expiry past the skew tolerance, release, a late renewal of one's own, a race won by one.
async fn any_lease_contract(lease: &dyn Lock, who: &str, atomic_creates: bool) {
    let ttl = Duration::from_secs(30);
    assert_eq!(
        lease.acquire("r", "c1", Millis(0), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 1 },
        "{who}"
    );
    assert!(
        matches!(
            lease.acquire("r", "c2", Millis(1_000), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ),
        "{who}"
    );
    assert_eq!(
        lease.holder("r", Millis(1_000)).await.unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(
        lease.acquire("r", "c2", Millis(60_000), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 2 },
        "{who}"
    );
    assert!(
        !lease.check("r", "c1", 1, Millis(60_001)).await.unwrap(),
        "{who}: stale token fenced"
    );
    assert!(lease.check("r", "c2", 2, Millis(60_001)).await.unwrap());
    lease.release("r", "c1", 1).await.unwrap();
    assert!(
        lease.check("r", "c2", 2, Millis(60_001)).await.unwrap(),
        "{who}: a stale release changes nothing"
    );
    lease.release("r", "c2", 2).await.unwrap();
    assert_eq!(
        lease.holder("r", Millis(60_002)).await.unwrap(),
        None,
        "{who}: released"
    );
    // Released: taken at once by another, with the next epoch.
    assert_eq!(
        lease.acquire("r", "c3", Millis(60_003), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 3 },
        "{who}"
    );
    // Expired, but within the skew tolerance: still busy for others; its holder, late,
    // takes the next epoch (never busy with itself).
    let late = Millis(60_003 + 30_000 + 2_000);
    assert!(
        matches!(
            lease.acquire("r", "c4", late, ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ),
        "{who}"
    );
    assert_eq!(
        lease.acquire("r", "c3", late, ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 4 },
        "{who}"
    );
    assert!(!lease.check("r", "c3", 3, late).await.unwrap(), "{who}");
    // A race after expiry: exactly one of five controllers takes the lease.
    let after = late.after(ttl + Duration::from_secs(6));
    let holders = ["d1", "d2", "d3", "d4", "d5"];
    let outcomes = futures_util::future::join_all(
        holders
            .iter()
            .map(|holder| lease.acquire("race", holder, after, ttl)),
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{who}: {outcomes:?}");
    let won: Vec<(&str, u64)> = holders
        .iter()
        .zip(&outcomes)
        .filter_map(|(holder, o)| match o {
            Ok(LockOutcome::Acquired { epoch }) => Some((*holder, *epoch)),
            _ => None,
        })
        .collect();
    // Whatever the store: of those who believe they won, exactly one passes the fence.
    let mut fenced_in = 0;
    for (holder, epoch) in &won {
        if lease.check("race", holder, *epoch, after).await.unwrap() {
            fenced_in += 1;
        }
    }
    assert_eq!(fenced_in, 1, "{who}: {outcomes:?}");
    // Where creates are atomic, exactly one believes it won. moto's DynamoDB does not
    // serialise concurrent conditional writes to one item (seen: two of five racing first
    // takes both answered OK); DynamoDB does.
    if atomic_creates {
        assert_eq!(won.len(), 1, "{who}: {outcomes:?}");
    }
    renewal_contract(lease, who).await;
}

/// `renew` answers as a take would: the same epoch while live, the next one when its own ran
/// out, busy when another took it over (the state table: one conditional write, a read only
/// when it is refused).
async fn renewal_contract(lease: &dyn Lock, who: &str) {
    let ttl = Duration::from_secs(30);
    let at = |s: u64| Millis(1_000_000 + s * 1_000);
    assert_eq!(
        lease.acquire("renew", "c1", at(0), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 1 },
        "{who}"
    );
    assert_eq!(
        lease.renew("renew", "c1", 1, at(20), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 1 },
        "{who}: a live lease renewed in place"
    );
    assert!(
        matches!(
            lease.acquire("renew", "c2", at(45), ttl).await.unwrap(),
            LockOutcome::Busy { .. }
        ),
        "{who}: the renewal moved the end (20 + 30 s)"
    );
    assert_eq!(
        lease.renew("renew", "c1", 1, at(60), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 2 },
        "{who}: its own, ran out: the next epoch"
    );
    assert_eq!(
        lease.acquire("renew", "c2", at(200), ttl).await.unwrap(),
        LockOutcome::Acquired { epoch: 3 },
        "{who}"
    );
    assert!(
        matches!(
            lease.renew("renew", "c1", 2, at(201), ttl).await.unwrap(),
            LockOutcome::Busy { holder, .. } if holder == "c2"
        ),
        "{who}: taken over: busy"
    );
    assert!(
        lease.check("renew", "c2", 3, at(201)).await.unwrap(),
        "{who}"
    );
}

async fn store_contract(ssm: Arc<dyn ParameterStore>, who: &str) {
    let s = runner_updater_interface::scenario::Scenario::new(1).unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(
        &mut driver,
        runner_updater_core::machine::phase::Phase::Done,
        200,
    )
    .await
    .unwrap();
    let record = s.store.load("runner-a").await.unwrap().unwrap();
    let store = SsmStore::new(ssm.clone(), "/store");
    store.save(&record).await.unwrap();
    assert_eq!(
        store.load("runner-a").await.unwrap(),
        Some(record.clone()),
        "{who}: round trip"
    );
    assert_eq!(store.list().await.unwrap(), vec!["runner-a"], "{who}");
    // A record copied to another runner's path is that runner's `record-invalid`, and stays.
    let copied = record.encode().unwrap();
    ssm.put("/store/runner-b/status", &copied, true)
        .await
        .unwrap();
    let refused = store.load("runner-b").await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Record(e) if e.code() == Code::RecordInvalid),
        "{who}: {refused}"
    );
    every_store_refuses_a_record_of_another_runner(&record).await;
}

/// The file and memory stores decode through the same check as the SSM store.
async fn every_store_refuses_a_record_of_another_runner(
    record: &runner_updater_core::record::Record,
) {
    let directory = tempfile::tempdir().unwrap();
    let file = FileStore::new(directory.path().to_path_buf());
    file.save(record).await.unwrap();
    std::fs::copy(
        directory.path().join("runner-a.json"),
        directory.path().join("runner-b.json"),
    )
    .unwrap();
    let memory = MemoryStore::default();
    memory.save(record).await.unwrap();
    memory.put_raw("runner-b", &record.encode().unwrap());
    for (store, who) in [(&file as &dyn StateStore, "file"), (&memory, "memory")] {
        assert!(store.load("runner-a").await.unwrap().is_some(), "{who}");
        let refused = store.load("runner-b").await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Record(e) if e.code() == Code::RecordInvalid),
            "{who}: {refused}"
        );
    }
}

#[tokio::test]
async fn ssm_lease_and_store_behave_alike_on_the_simulation_and_on_moto() {
    let moto = common::Moto::start();
    let clients = moto.clients().await;
    let check = table_check::TableCheck::new();
    let on_moto: Arc<dyn ParameterStore> = Arc::new(Decorated::new(
        Arc::new(clients.ssm.clone()) as Arc<dyn ParameterStore>,
        check.clone(),
    ));
    let targets: [(Arc<dyn ParameterStore>, &str); 2] = [
        (Arc::new(SimSsm::default()), "simulation"),
        (on_moto, "moto"),
    ];
    for (ssm, who) in targets {
        parameter_store_contract(ssm.clone(), who).await;
        lease_contract(ssm.clone(), who).await;
        store_contract(ssm, who).await;
    }
    let checked = check.assert_agreed("SSM on moto");
    assert!(checked > 50, "only {checked} calls checked");
}

/// The state table's lease and store: the lease contract, then compare-and-set on the record
/// — a stale writer refused, a fenced controller writing nothing, at rest no write over a live
/// lease of another — on any `StateTable`.
async fn state_table_contract(table: Arc<dyn StateTable>, who: &str, atomic_creates: bool) {
    any_lease_contract(&DynamoLease::new(table.clone()), who, atomic_creates).await;

    let s = runner_updater_interface::scenario::Scenario::new(1).unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(
        &mut driver,
        runner_updater_core::machine::phase::Phase::AwaitingRollout,
        200,
    )
    .await
    .unwrap();
    let mut in_attempt = s.store.load("runner-a").await.unwrap().unwrap();
    in_attempt.lock_epoch = Some(1);
    let clock = runner_updater_adapters::sim::SimClock::new(Millis(1_000_000));
    let lease = DynamoLease::new(table.clone());
    let one = DynamoStore::new(table.clone(), "c1", Arc::new(clock.clone()));
    let two = DynamoStore::new(table.clone(), "c2", Arc::new(clock.clone()));
    let refused = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Refused(_)));

    // The lease first (taken at the clock's now), then the attempt's record under it.
    let ttl = Duration::from_secs(30);
    assert_eq!(
        lease
            .acquire("runner-a", "c1", clock.now(), ttl)
            .await
            .unwrap(),
        LockOutcome::Acquired { epoch: 1 },
        "{who}"
    );
    assert_eq!(one.load("runner-a").await.unwrap(), None, "{who}");
    one.save(&in_attempt).await.unwrap();
    assert_eq!(
        two.load("runner-a").await.unwrap(),
        Some(in_attempt.clone()),
        "{who}: round trip"
    );
    assert_eq!(one.list().await.unwrap(), ["runner-a"], "{who}: listed");
    // Another controller at rest may not write over a live lease of the holder.
    let mut at_rest = in_attempt.clone();
    at_rest.phase = "idle".to_owned();
    at_rest.lock_epoch = None;
    at_rest.attempt = None;
    at_rest.baseline = None;
    at_rest.new_task_definition_arn = None;
    at_rest.deployment_id = None;
    at_rest.deadline = None;
    assert!(
        refused(two.save(&at_rest).await),
        "{who}: a live lease of another"
    );
    // A controller that never read the record does not write it blind.
    let three = DynamoStore::new(table.clone(), "c3", Arc::new(clock.clone()));
    assert!(refused(three.save(&at_rest).await), "{who}: never read");
    // The holder writes on; a writer that read before that write is stale — the version alone
    // refuses it, even under the holder's own id and lease.
    let also_c1 = DynamoStore::new(table.clone(), "c1", Arc::new(clock.clone()));
    also_c1.load("runner-a").await.unwrap();
    two.load("runner-a").await.unwrap();
    one.save(&in_attempt).await.unwrap();
    assert!(
        refused(also_c1.save(&in_attempt).await),
        "{who}: stale version"
    );
    assert!(
        refused(two.save(&in_attempt).await),
        "{who}: stale version, not the holder"
    );
    // The lease ends; another controller takes it; the old holder is fenced and writes nothing.
    clock.advance(ttl + Duration::from_secs(6));
    assert_eq!(
        lease
            .acquire("runner-a", "c2", clock.now(), ttl)
            .await
            .unwrap(),
        LockOutcome::Acquired { epoch: 2 },
        "{who}"
    );
    let before = two.load("runner-a").await.unwrap();
    let mut stale = in_attempt.clone();
    stale.since += 1;
    assert!(refused(one.save(&stale).await), "{who}: fenced");
    assert_eq!(
        two.load("runner-a").await.unwrap(),
        before,
        "{who}: nothing written"
    );
    // The new holder adopts the attempt under its epoch.
    let mut adopted = in_attempt.clone();
    adopted.lock_epoch = Some(2);
    two.save(&adopted).await.unwrap();
    // Leaving the attempt (Done keeps the epoch) under the lease, then released: at rest.
    let mut done = adopted.clone();
    done.phase = "done".to_owned();
    two.save(&done).await.unwrap();
    lease.release("runner-a", "c2", 2).await.unwrap();
    let mut idle = at_rest.clone();
    idle.since += 5;
    one.load("runner-a").await.unwrap();
    one.save(&idle).await.unwrap();
    assert_eq!(
        two.load("runner-a").await.unwrap(),
        Some(idle),
        "{who}: at rest, free: written"
    );
    free_lease_contract(table.as_ref(), who).await;
}

/// A free lease is taken in one write, the table counting the epoch on; a lease that is not
/// free is left as it is.
async fn free_lease_contract(table: &dyn StateTable, who: &str) {
    let lease_of = |item: Option<StateItem>| item.and_then(|i| i.lease);
    // Never taken: epoch 1 (the item created).
    assert_eq!(
        table
            .take_free_lease("free", "c1", Millis(100), Millis(50))
            .await
            .unwrap(),
        Some(1),
        "{who}"
    );
    let taken = LeaseFields {
        holder: "c1".to_owned(),
        epoch: 1,
        expires_at: Millis(100),
    };
    assert_eq!(
        lease_of(table.get("free").await.unwrap()),
        Some(taken.clone()),
        "{who}"
    );
    // Ends at 100: not free before 101.
    assert_eq!(
        table
            .take_free_lease("free", "c2", Millis(200), Millis(100))
            .await
            .unwrap(),
        None,
        "{who}: not yet ended"
    );
    assert_eq!(
        lease_of(table.get("free").await.unwrap()),
        Some(taken),
        "{who}: nothing written"
    );
    assert_eq!(
        table
            .take_free_lease("free", "c2", Millis(300), Millis(101))
            .await
            .unwrap(),
        Some(2),
        "{who}: ended"
    );
    // Released (0): free whatever the time; the record is left as it is.
    table
        .write_record(
            "free",
            "{}",
            &RecordCondition {
                version: None,
                fence: Fence::FreeOrOwn {
                    holder: "c2".to_owned(),
                    free_before: Millis(0),
                },
            },
        )
        .await
        .unwrap();
    table
        .write_lease(
            "free",
            &LeaseFields {
                holder: "c2".to_owned(),
                epoch: 2,
                expires_at: Millis(0),
            },
            &LeaseCondition::HeldBy {
                holder: "c2".to_owned(),
                epoch: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        table
            .take_free_lease("free", "c3", Millis(400), Millis(1))
            .await
            .unwrap(),
        Some(3),
        "{who}: released"
    );
    let item = table.get("free").await.unwrap().unwrap();
    assert_eq!(
        item.record.map(|r| r.version),
        Some(1),
        "{who}: the record kept"
    );
    assert_eq!(item.lease.map(|l| l.holder), Some("c3".to_owned()), "{who}");
}

#[tokio::test]
async fn the_state_table_lease_and_store_hold_on_the_simulation_and_on_moto() {
    Box::pin(state_table_contract(
        Arc::new(SimTable::default()),
        "simulation",
        true,
    ))
    .await;

    let moto = common::Moto::start();
    moto.create_table("runner-updater-state", "runner").await;
    let check = table_check::TableCheck::new();
    let on_moto: Arc<dyn StateTable> = Arc::new(Decorated::new(
        Arc::new(moto.clients().await.table("runner-updater-state")) as Arc<dyn StateTable>,
        check.clone(),
    ));
    Box::pin(state_table_contract(on_moto, "moto", false)).await;
    let checked = check.assert_agreed("DynamoDB on moto");
    assert!(checked > 20, "only {checked} calls checked");
}

/// Creates, on moto, a cluster, a rich task definition and a service running it.
async fn moto_runner(sdk: &aws_config::SdkConfig) -> String {
    let ecs = aws_sdk_ecs::Client::new(sdk);
    ecs.create_cluster()
        .cluster_name("runners")
        .send()
        .await
        .unwrap();
    let runner = rich_container();
    let sidecar = ContainerDefinition::builder()
        .name("log-router")
        .image("fluent-bit:stable")
        .memory(128)
        .build();
    let registered = ecs
        .register_task_definition()
        .family("runner-a")
        .task_role_arn("arn:aws:iam::123456789012:role/task")
        .execution_role_arn("arn:aws:iam::123456789012:role/exec")
        .network_mode(NetworkMode::Bridge)
        .cpu("512")
        .memory("2048")
        .volumes(Volume::builder().name("work").build())
        .placement_constraints(
            TaskDefinitionPlacementConstraint::builder()
                .r#type(TaskDefinitionPlacementConstraintType::MemberOf)
                .expression("attribute:ecs.availability-zone in [eu-west-1a]")
                .build(),
        )
        .runtime_platform(
            RuntimePlatform::builder()
                .cpu_architecture(CpuArchitecture::Arm64)
                .operating_system_family(OsFamily::Linux)
                .build(),
        )
        .ephemeral_storage(EphemeralStorage::builder().size_in_gib(40).build())
        .proxy_configuration(
            ProxyConfiguration::builder()
                .container_name("log-router")
                .properties(
                    KeyValuePair::builder()
                        .name("AppPorts")
                        .value("8080")
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .container_definitions(runner)
        .container_definitions(sidecar)
        .tags(
            aws_sdk_ecs::types::Tag::builder()
                .key("team")
                .value("ci")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let arn = registered
        .task_definition()
        .unwrap()
        .task_definition_arn()
        .unwrap()
        .to_owned();
    ecs.create_service()
        .cluster("runners")
        .service_name("runner-a")
        .task_definition(&arn)
        .desired_count(1)
        .send()
        .await
        .unwrap();
    arn
}

/// The runner's container with every kind of field a clone must keep.
fn rich_container() -> ContainerDefinition {
    ContainerDefinition::builder()
        .name("runner")
        .image("registry.example/runner:2.13.0")
        .memory(1024)
        .essential(true)
        .environment(
            KeyValuePair::builder()
                .name("MODE")
                .value("production")
                .build(),
        )
        .secrets(
            Secret::builder()
                .name("TOKEN")
                .value_from("arn:aws:ssm:eu-west-1:123456789012:parameter/token")
                .build()
                .unwrap(),
        )
        .log_configuration(
            LogConfiguration::builder()
                .log_driver(LogDriver::Awslogs)
                .options("awslogs-group", "/runner")
                .build()
                .unwrap(),
        )
        .ulimits(
            Ulimit::builder()
                .name(UlimitName::Nofile)
                .soft_limit(65536)
                .hard_limit(65536)
                .build()
                .unwrap(),
        )
        .health_check(
            HealthCheck::builder()
                .command("CMD-SHELL")
                .command("curl -f http://localhost/health")
                .interval(10)
                .build()
                .unwrap(),
        )
        .depends_on(
            ContainerDependency::builder()
                .container_name("log-router")
                .condition(ContainerCondition::Start)
                .build()
                .unwrap(),
        )
        .linux_parameters(
            LinuxParameters::builder()
                .init_process_enabled(true)
                .build(),
        )
        .build()
}

/// Debug of a described task definition with what legitimately differs blanked out.
fn normalised(definition: &aws_sdk_ecs::types::TaskDefinition) -> String {
    let mut d = definition.clone();
    d.task_definition_arn = None;
    d.revision = 0;
    d.registered_at = None;
    d.registered_by = None;
    for c in d.container_definitions.iter_mut().flatten() {
        if c.name() == Some("runner") {
            c.image = None;
        }
    }
    format!("{d:?}")
}

#[tokio::test]
async fn the_task_definition_clone_keeps_every_field_on_moto() {
    let moto = common::Moto::start();
    let sdk = moto.sdk_config().await;
    let base = moto_runner(&sdk).await;
    let clients = moto.clients().await;
    let tags = BTreeMap::from([(ATTEMPT_TAG.to_owned(), "runner-a-1-x".to_owned())]);
    let clone = clients
        .ecs
        .register_clone(&base, "runner", "registry.example/runner:2.14.0", tags)
        .await
        .unwrap();
    let raw = aws_sdk_ecs::Client::new(&sdk);
    let describe = |arn: String| {
        let raw = raw.clone();
        async move {
            raw.describe_task_definition()
                .task_definition(arn)
                .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
                .send()
                .await
                .unwrap()
        }
    };
    let (before, after) = (describe(base.clone()).await, describe(clone.clone()).await);
    assert_eq!(
        normalised(before.task_definition().unwrap()),
        normalised(after.task_definition().unwrap())
    );
    let echoed = format!("{:?}", after.task_definition().unwrap());
    for field in [
        "health_check: Some",
        "secrets: Some",
        "execution_role_arn: Some",
        "ulimits: Some",
        "log_configuration: Some",
        "depends_on: Some",
    ] {
        assert!(
            echoed.contains(field),
            "the clone lost {field} (or moto no longer echoes it): {echoed}"
        );
    }
    let image = after
        .task_definition()
        .unwrap()
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some("runner"))
        .unwrap()
        .image();
    assert_eq!(image, Some("registry.example/runner:2.14.0"));
    let tag_keys: Vec<_> = after.tags().iter().filter_map(|t| t.key()).collect();
    assert!(
        tag_keys.contains(&"team") && tag_keys.contains(&ATTEMPT_TAG),
        "base tags kept, ours added: {tag_keys:?}"
    );
}

/// A service update only over the deployments the caller saw: one it did not see refuses it (a
/// foreign writer), nothing changed. Returns the deployments there are.
async fn only_over_contract(ecs: &dyn Ecs, base: &str, new: &str, who: &str) -> Vec<String> {
    // Only over the baseline: a deployment the caller did not see refuses the update (a
    // foreign writer), nothing changed; over the deployments there are, it is made.
    let seen: Vec<String> = ecs
        .describe_service_without_tasks("runners", "runner-a")
        .await
        .unwrap()
        .deployments
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let refused = ecs
        .update_service(
            "runners",
            "runner-a",
            new,
            Some(&["ecs-svc/other".to_owned()]),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Conflict, "{who}: {refused}");
    assert_eq!(
        ecs.describe_service_without_tasks("runners", "runner-a")
            .await
            .unwrap()
            .task_definition_arn,
        base,
        "{who}: nothing changed"
    );
    seen
}

async fn ecs_contract(ecs: &dyn Ecs, base: &str, pace: &Pace, who: &str) {
    let service = ecs.describe_service("runners", "runner-a").await.unwrap();
    assert_eq!(service.task_definition_arn, base, "{who}");
    assert_eq!(
        service.deployments.len(),
        1,
        "{who}: a settled service has one deployment"
    );
    let at_rest = ecs
        .describe_service_without_tasks("runners", "runner-a")
        .await
        .unwrap();
    assert_eq!(at_rest.deployments, service.deployments, "{who}");
    assert_eq!(
        at_rest.task_definition_arn, service.task_definition_arn,
        "{who}"
    );
    assert!(at_rest.tasks.is_none(), "{who}: no task list at rest");
    // The tasks on their own are what the full read has.
    let tasks = ecs.list_service_tasks("runners", "runner-a").await.unwrap();
    assert_eq!(Some(tasks), service.tasks, "{who}");
    assert!(
        service.tasks.is_some(),
        "{who}: the full read has its tasks"
    );
    // Batched as the fleet read asks: eleven names (over one call's ten), in order, the missing
    // ones not found one by one.
    let mut names = vec!["runner-a".to_owned()];
    names.extend((0..10).map(|i| format!("absent-{i}")));
    let batch = ecs
        .describe_services_without_tasks("runners", &names)
        .await
        .unwrap();
    assert_eq!(batch.len(), names.len(), "{who}");
    let first = batch[0].as_ref().unwrap();
    assert_eq!(first.service, "runner-a", "{who}");
    assert_eq!(first.deployments, service.deployments, "{who}");
    assert!(first.tasks.is_none(), "{who}");
    for result in &batch[1..] {
        assert_eq!(
            result.as_ref().unwrap_err().kind,
            ErrorKind::NotFound,
            "{who}: {result:?}"
        );
    }
    let missing = ecs.describe_service("runners", "absent").await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
    let missing = ecs
        .describe_service_without_tasks("runners", "absent")
        .await
        .unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
    let missing = ecs
        .list_service_tasks("runners", "absent")
        .await
        .map(|tasks| tasks.len());
    // AWS answers ListTasks for a service that does not exist with ServiceNotFoundException;
    // moto lists nothing. Either way no task of another service comes back.
    assert!(
        matches!(&missing, Ok(0)) || matches!(&missing, Err(e) if e.kind == ErrorKind::NotFound),
        "{who}: {missing:?}"
    );
    let td = ecs.describe_task_definition(base).await.unwrap();
    assert!(td.container("runner").is_some(), "{who}");
    let tags = BTreeMap::from([(ATTEMPT_TAG.to_owned(), format!("{who}-attempt"))]);
    let new = ecs
        .register_clone(base, "runner", "registry.example/runner:2.14.0", tags)
        .await
        .unwrap();
    let refused = ecs
        .register_clone(
            base,
            "absent",
            "registry.example/runner:2.14.0",
            BTreeMap::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Permanent, "{who}: {refused}");
    let seen = only_over_contract(ecs, base, &new, who).await;
    let deployment = ecs
        .update_service("runners", "runner-a", &new, Some(&seen))
        .await
        .unwrap();
    let service = ecs.describe_service("runners", "runner-a").await.unwrap();
    assert_eq!(service.task_definition_arn, new, "{who}");
    let primary = service.primary().unwrap();
    assert_eq!(
        (primary.id.as_str(), primary.task_definition_arn.as_str()),
        (deployment.deployment_id.as_str(), new.as_str()),
        "{who}"
    );
    assert!(
        service
            .deployments
            .iter()
            .any(|d| d.status == DeploymentStatus::Active && d.task_definition_arn == base),
        "{who}"
    );
    listing_contract(ecs, base, &new, who).await;
    service_deployment_contract(ecs, base, &new, &deployment, pace, who).await;
}

/// The service deployment an update made, as the health gate reads it and the rollback stops
/// it: described by ARN (twenty a call; an unknown one is an inner `NotFound`), `IN_PROGRESS`
/// then `SUCCESSFUL` with its counts; a stop of one that succeeded is a conflict; a stop of one
/// rolling out rolls the service back to the revision before it (again: a no-op).
async fn service_deployment_contract(
    ecs: &dyn Ecs,
    base: &str,
    new: &str,
    made: &runner_updater_ports::ServiceUpdate,
    pace: &Pace,
    who: &str,
) {
    let arn = made
        .service_deployment
        .clone()
        .unwrap_or_else(|| panic!("{who}: the update reports its service deployment"));
    let service = ecs
        .describe_service_without_tasks("runners", "runner-a")
        .await
        .unwrap();
    assert_eq!(
        service.current_service_deployment.as_deref(),
        Some(arn.as_str()),
        "{who}"
    );
    let unknown = arn.replace("runner-a/", "runner-a/unknown-");
    let read = ecs
        .describe_service_deployments(&[arn.clone(), unknown])
        .await
        .unwrap();
    assert_eq!(read.len(), 2, "{who}");
    let first = read[0].as_ref().unwrap();
    assert_eq!(
        (first.arn.as_str(), first.requested),
        (arn.as_str(), 1),
        "{who}"
    );
    assert!(
        matches!(
            first.status,
            ServiceDeploymentStatus::InProgress | ServiceDeploymentStatus::Successful
        ),
        "{who}: {first:?}"
    );
    assert_eq!(
        read[1].as_ref().unwrap_err().kind,
        ErrorKind::NotFound,
        "{who}"
    );
    // It completes (the gate reads it as the service).
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let done = loop {
        let read = ecs
            .describe_service_deployments(std::slice::from_ref(&arn))
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        if read.status == ServiceDeploymentStatus::Successful {
            break read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who}: still {read:?}"
        );
        pace.step().await;
    };
    assert_eq!((done.requested, done.running), (1, 1), "{who}: {done:?}");
    let breaker = done.breaker.unwrap();
    assert!(
        !breaker.triggered && breaker.threshold >= 3,
        "{who}: {breaker:?}"
    );
    stop_contract(ecs, base, new, &arn, who).await;
}

/// `StopServiceDeployment(ROLLBACK)`: refused once the deployment succeeded; a rollout in
/// progress rolled back to the revision before it; again a no-op; an unknown one not found.
async fn stop_contract(ecs: &dyn Ecs, base: &str, new: &str, arn: &str, who: &str) {
    let ended = ecs
        .stop_service_deployment("runners", "runner-a", arn)
        .await
        .unwrap_err();
    assert_eq!(ended.kind, ErrorKind::Conflict, "{who}: {ended}");
    // A rollout in progress (its tasks crash: on moto the breaker takes seconds) is stopped
    // with a rollback to the revision before it.
    let crashing = ecs
        .register_clone(
            base,
            "runner",
            "registry.example/runner:2.15.0-crash",
            BTreeMap::new(),
        )
        .await
        .unwrap();
    let second = ecs
        .update_service("runners", "runner-a", &crashing, None)
        .await
        .unwrap();
    let second_arn = second.service_deployment.unwrap();
    assert_ne!(second_arn, arn, "{who}");
    ecs.stop_service_deployment("runners", "runner-a", &second_arn)
        .await
        .unwrap();
    let service = ecs
        .describe_service_without_tasks("runners", "runner-a")
        .await
        .unwrap();
    assert_eq!(
        service.task_definition_arn, new,
        "{who}: back to the revision before"
    );
    let read = ecs
        .describe_service_deployments(std::slice::from_ref(&second_arn))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert!(read.status.rolling_back(), "{who}: {read:?}");
    // Again, while it rolls back: a no-op.
    if read.status != ServiceDeploymentStatus::RollbackSuccessful {
        ecs.stop_service_deployment("runners", "runner-a", &second_arn)
            .await
            .unwrap();
    }
    let missing = ecs
        .stop_service_deployment(
            "runners",
            "runner-a",
            &second_arn.replace("runner-a/", "runner-a/x"),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
}

/// `ListTaskDefinitions` as the registration search walks it: a family prefix, newest first,
/// in pages of at most 100 with a token; and the search finds the attempt's revision behind
/// more foreign revisions than a page holds.
async fn listing_contract(ecs: &dyn Ecs, base: &str, ours: &str, who: &str) {
    // A busy family: 104 more revisions by another tool, after ours.
    for _ in 0..104 {
        ecs.register_clone(
            base,
            "runner",
            "registry.example/runner:ci",
            BTreeMap::new(),
        )
        .await
        .unwrap();
    }
    let first = ecs.list_task_definitions("runner-a", None).await.unwrap();
    assert_eq!(first.arns.len(), TASK_DEFINITIONS_PAGE_MAX, "{who}");
    let revisions: Vec<u64> = first
        .arns
        .iter()
        .map(|arn| family_revision(arn).unwrap().1)
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] > w[1]),
        "{who}: newest first: {revisions:?}"
    );
    let token = first.next.clone().expect("a second page");
    let second = ecs
        .list_task_definitions("runner-a", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        first.arns.len() + second.arns.len(),
        106,
        "{who}: base, ours and 104 others"
    );
    assert!(second.next.is_none(), "{who}");
    assert!(second.arns.iter().any(|arn| arn == ours), "{who}");
    // The shared search, on this ECS, from the baseline's revision.
    let floor = family_revision(base).unwrap().1;
    let mut search = RevisionSearch::new("runner-a", &format!("{who}-attempt"), floor);
    let found = loop {
        match search.step() {
            SearchStep::List { token } => {
                let page = ecs
                    .list_task_definitions("runner-a", token.as_deref())
                    .await
                    .unwrap();
                search.listed(&page.arns, page.next);
            }
            SearchStep::Describe { arn } => {
                search.described(&arn, &ecs.describe_task_definition(&arn).await.unwrap());
            }
            answer => break answer,
        }
    };
    assert_eq!(
        found,
        SearchStep::Found {
            arn: ours.to_owned()
        },
        "{who}"
    );
}

#[tokio::test]
async fn ecs_behaves_alike_on_the_simulation_and_on_moto_with_the_harness() {
    let moto = common::Moto::start();
    let base = moto_runner(&moto.sdk_config().await).await;
    let clients = moto.clients().await;
    let check = table_check::TableCheck::new();
    let on_moto = Decorated::new(Arc::new(clients.ecs.clone()) as Arc<dyn Ecs>, check.clone());
    ecs_contract(&on_moto, &base, &Pace::Wall, "moto").await;
    let checked = check.assert_agreed("ECS on moto");
    assert!(checked > 10, "only {checked} calls checked");

    let sim = SimAws::new(3);
    sim.create_runner(&SimRunnerSpec {
        cluster: "runners".to_owned(),
        service: "runner-a".to_owned(),
        container: "runner".to_owned(),
        family: "runner-a".to_owned(),
        image: "registry.example/runner:2.13.0".to_owned(),
        version: "2.13.0".to_owned(),
        desired_count: 1,
        health_check: false,
        stacks: vec![],
    })
    .unwrap();
    ecs_contract(
        &sim.ecs,
        "arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-a:1",
        &Pace::Sim(sim.clock.clone()),
        "simulation",
    )
    .await;
}

/// How a contract waits for the backend to move on: simulated time, or wall-clock polling.
enum Pace {
    Sim(runner_updater_adapters::sim::SimClock),
    Wall,
}

impl Pace {
    async fn step(&self) {
        match self {
            Pace::Sim(clock) => clock.advance(Duration::from_secs(5)),
            Pace::Wall => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Template URLs of a contract run: the v2 template (adds a topic and an IAM role, reads Size
/// in the queue) and a v3 whose new queue `Broken` fails with "quota exceeded".
struct Templates {
    v2: String,
    v3_failing: String,
}

async fn change_set_status(
    cfn: &dyn CloudFormation,
    pace: &Pace,
    name: &str,
) -> runner_updater_core::domain::infra::ChangeSet {
    for _ in 0..100 {
        let set = cfn.describe_change_set(STACK, name).await.unwrap().unwrap();
        if set.creation() != Creation::Pending {
            return set;
        }
        pace.step().await;
    }
    panic!("change set {name} still pending");
}

async fn settled(cfn: &dyn CloudFormation, pace: &Pace) -> StackState {
    for _ in 0..200 {
        let stack = cfn.describe_stack(STACK).await.unwrap();
        if stack.status.progress() != StackProgress::InProgress {
            return stack;
        }
        pace.step().await;
    }
    panic!("stack {STACK} still in progress");
}

const STACK: &str = "runner-a-main";

fn request(
    name: &str,
    url: Option<&str>,
    size: Option<&str>,
    version: &str,
    capabilities: &[String],
) -> ChangeSetRequest {
    let mut keep = vec!["Owner".to_owned()];
    let mut parameters = BTreeMap::new();
    match size {
        Some(size) => {
            parameters.insert("Size".to_owned(), size.to_owned());
        }
        None => keep.push("Size".to_owned()),
    }
    ChangeSetRequest {
        stack: STACK.to_owned(),
        name: name.to_owned(),
        kind: runner_updater_ports::ChangeSetKind::Update,
        template_url: url.map(str::to_owned),
        template_body: None,
        parameters,
        keep_parameters: keep,
        capabilities: capabilities.to_vec(),
        tags: BTreeMap::from([(INFRA_VERSION_TAG.to_owned(), version.to_owned())]),
        client_token: format!("{name}-token"),
        description: "contract".to_owned(),
    }
}

async fn cloudformation_contract(
    cfn: &dyn CloudFormation,
    pace: &Pace,
    urls: &Templates,
    who: &str,
) {
    let stack = cfn.describe_stack(STACK).await.unwrap();
    assert_eq!(stack.status, StackStatus::CreateComplete, "{who}");
    assert_eq!(
        infra::stack_version(&stack),
        Some("1"),
        "{who}: the version tag"
    );
    assert_eq!(stack.parameters["Size"], "2", "{who}");
    let missing = cfn.describe_stack("absent").await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
    assert_eq!(
        cfn.describe_change_set(STACK, "absent").await.unwrap(),
        None,
        "{who}"
    );
    cfn.delete_change_set(STACK, "absent").await.unwrap();

    change_sets_are_created_and_reviewed(cfn, pace, urls, &stack, who).await;
    a_change_set_is_executed_once(cfn, pace, who).await;
    an_empty_change_set_is_refused(cfn, pace, who).await;
    a_failing_resource_rolls_the_stack_back(cfn, pace, urls, who).await;
}

async fn change_sets_are_created_and_reviewed(
    cfn: &dyn CloudFormation,
    pace: &Pace,
    urls: &Templates,
    stack: &StackState,
    who: &str,
) {
    // Summary, creation, review.
    let summary = cfn.template_summary(STACK, Some(&urls.v2)).await.unwrap();
    assert!(
        summary
            .capabilities
            .iter()
            .any(|c| c.starts_with("CAPABILITY_")),
        "{who}: {summary:?}"
    );
    assert!(
        summary.parameters.contains(&"Size".to_owned()),
        "{who}: {summary:?}"
    );
    let refused = cfn
        .create_change_set(&request("no-caps", Some(&urls.v2), Some("3"), "2", &[]))
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind,
        ErrorKind::Permanent,
        "{who}: IAM needs a capability: {refused}"
    );
    let first = request(
        "cs-1",
        Some(&urls.v2),
        Some("3"),
        "2",
        &summary.capabilities,
    );
    cfn.create_change_set(&first).await.unwrap();
    let mut again = first.clone();
    again.client_token = "another-token".to_owned();
    let conflict = cfn.create_change_set(&again).await.unwrap_err();
    assert_eq!(conflict.kind, ErrorKind::Conflict, "{who}: {conflict}");
    let set = change_set_status(cfn, pace, "cs-1").await;
    assert_eq!(set.creation(), Creation::Ready, "{who}: {set:?}");
    assert_eq!(set.execution_status, Execution::Available, "{who}");
    let review = infra::review(&set, &stack.parameters);
    assert_eq!(review.added, 2, "{who}: {review:?}");
    assert!(review.iam.contains(&"Role".to_owned()), "{who}: {review:?}");
    assert!(
        review.parameters.contains(&"Size".to_owned()),
        "{who}: {review:?}"
    );
    assert!(
        set.changes
            .iter()
            .any(|c| c.logical_id == "Queue" && c.action == "Modify"),
        "{who}: {set:?}"
    );
}

async fn a_change_set_is_executed_once(cfn: &dyn CloudFormation, pace: &Pace, who: &str) {
    // Execution, idempotent by token.
    cfn.execute_change_set(STACK, "cs-1", "exec-1")
        .await
        .unwrap();
    cfn.execute_change_set(STACK, "cs-1", "exec-1")
        .await
        .unwrap();
    let stack = settled(cfn, pace).await;
    assert_eq!(stack.status, StackStatus::UpdateComplete, "{who}");
    assert_eq!(
        infra::stack_version(&stack),
        Some("2"),
        "{who}: tags applied"
    );
    assert_eq!(stack.parameters["Size"], "3", "{who}");
    assert_eq!(
        stack.parameters["Owner"], "ops",
        "{who}: previous value kept"
    );
    assert!(stack.last_updated.is_some(), "{who}");
    let executed = cfn
        .describe_change_set(STACK, "cs-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(executed.execution_status, Execution::Complete, "{who}");
    let replay = cfn
        .execute_change_set(STACK, "cs-1", "exec-other")
        .await
        .unwrap_err();
    assert_eq!(replay.kind, ErrorKind::Permanent, "{who}: {replay}");
}

async fn an_empty_change_set_is_refused(cfn: &dyn CloudFormation, pace: &Pace, who: &str) {
    // Nothing differs: "didn't contain changes".
    let current = cfn.template_summary(STACK, None).await.unwrap();
    assert!(
        current
            .capabilities
            .iter()
            .any(|c| c.starts_with("CAPABILITY_")),
        "{who}: the stack's own template has the role now: {current:?}"
    );
    cfn.create_change_set(&request("cs-2", None, None, "2", &current.capabilities))
        .await
        .unwrap();
    let empty = change_set_status(cfn, pace, "cs-2").await;
    assert_eq!(empty.creation(), Creation::NoChanges, "{who}: {empty:?}");
    cfn.delete_change_set(STACK, "cs-2").await.unwrap();
    assert_eq!(
        cfn.describe_change_set(STACK, "cs-2").await.unwrap(),
        None,
        "{who}"
    );
}

async fn a_failing_resource_rolls_the_stack_back(
    cfn: &dyn CloudFormation,
    pace: &Pace,
    urls: &Templates,
    who: &str,
) {
    // A failing resource: CloudFormation rolls every resource back.
    let summary = cfn
        .template_summary(STACK, Some(&urls.v3_failing))
        .await
        .unwrap();
    cfn.create_change_set(&request(
        "cs-3",
        Some(&urls.v3_failing),
        None,
        "3",
        &summary.capabilities,
    ))
    .await
    .unwrap();
    assert_eq!(
        change_set_status(cfn, pace, "cs-3").await.creation(),
        Creation::Ready,
        "{who}"
    );
    cfn.execute_change_set(STACK, "cs-3", "exec-3")
        .await
        .unwrap();
    let stack = settled(cfn, pace).await;
    assert_eq!(stack.status, StackStatus::UpdateRollbackComplete, "{who}");
    assert_eq!(
        infra::stack_version(&stack),
        Some("2"),
        "{who}: tags rolled back"
    );
    let events = cfn.stack_events(STACK).await.unwrap();
    let (resource, reason) = infra::first_failure(&events, STACK, "exec-3", Millis(0))
        .unwrap_or_else(|| panic!("{who}: {events:#?}"));
    assert_eq!(resource, "Broken (AWS::SQS::Queue)", "{who}");
    assert!(reason.contains("quota exceeded"), "{who}: {reason}");
    let failed = cfn
        .describe_change_set(STACK, "cs-3")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.execution_status, Execution::Failed, "{who}");
}

const TEMPLATE_V1: &str = r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Parameters": {"Size": {"Type": "String", "Default": "2"}, "Owner": {"Type": "String", "Default": "ops"}},
  "Resources": {
    "Config": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/contract/config", "Type": "String", "Value": "v1"}},
    "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Fn::Sub": "queue-${Size}"}}}
  }
}"#;

const TEMPLATE_V2_EXTRA: &str = r#"
    "Topic": {"Type": "AWS::SNS::Topic"},
    "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}}}"#;

fn moto_template(extra: &str) -> String {
    TEMPLATE_V1.replace(
        r#""Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": {"Fn::Sub": "queue-${Size}"}}}"#,
        &format!(r#""Queue": {{"Type": "AWS::SQS::Queue", "Properties": {{"QueueName": {{"Fn::Sub": "queue-${{Size}}"}}}}}},{extra}"#),
    )
}

#[tokio::test]
async fn cloudformation_behaves_alike_on_the_simulation_and_on_moto() {
    let moto = common::Moto::start();
    let sdk = moto.sdk_config().await;
    aws_sdk_cloudformation::Client::new(&sdk)
        .create_stack()
        .stack_name(STACK)
        .template_body(TEMPLATE_V1)
        .tags(
            aws_sdk_cloudformation::types::Tag::builder()
                .key(INFRA_VERSION_TAG)
                .value("1")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let urls = Templates {
        v2: moto.put_template(
            "templates",
            "main-2.json",
            &moto_template(TEMPLATE_V2_EXTRA),
        ),
        v3_failing: moto.put_template(
            "templates",
            "main-3.json",
            &moto_template(&format!(
                r#"{TEMPLATE_V2_EXTRA},
    "Broken": {{"Type": "AWS::SQS::Queue", "Metadata": {{"HarnessFail": "quota exceeded"}}}}"#
            )),
        ),
    };
    let check = table_check::TableCheck::new();
    let on_moto = Decorated::new(
        Arc::new(moto.clients().await.cfn) as Arc<dyn CloudFormation>,
        check.clone(),
    );
    cloudformation_contract(&on_moto, &Pace::Wall, &urls, "moto").await;
    let checked = check.assert_agreed("CloudFormation on moto");
    assert!(checked > 10, "only {checked} calls checked");

    let sim = SimAws::new(1);
    sim.cfn
        .create_stack(STACK, initial_template(), &[], &[(INFRA_VERSION_TAG, "1")]);
    let v2 = initial_template()
        .resource(SimResource::new("Topic", "AWS::SNS::Topic", "v2"))
        .resource(SimResource::new("Role", "AWS::IAM::Role", "v2"));
    let v3 = v2
        .clone()
        .resource(SimResource::new("Broken", "AWS::SQS::Queue", "v3").failing("quota exceeded"));
    let urls = Templates {
        v2: "https://templates.s3.amazonaws.com/main-2.json".to_owned(),
        v3_failing: "https://templates.s3.amazonaws.com/main-3.json".to_owned(),
    };
    sim.cfn.put_template(&urls.v2, v2);
    sim.cfn.put_template(&urls.v3_failing, v3);
    cloudformation_contract(&sim.cfn, &Pace::Sim(sim.clock.clone()), &urls, "simulation").await;
}
