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
use runner_updater::domain::observed::{DeploymentStatus, ATTEMPT_TAG};
use runner_updater::domain::Millis;
use runner_updater::lease::SsmLease;
use runner_updater::ports::{Ecs, ErrorKind, Lock, LockOutcome, ParameterStore, StateStore};
use runner_updater::sim::{SimAws, SimRunnerSpec, SimSsm};
use runner_updater::store::SsmStore;

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
    lease.release("r", "c2", 2).await.unwrap();
    assert_eq!(
        lease.holder("r", Millis(60_002)).await.unwrap(),
        None,
        "{who}: released"
    );
}

async fn store_contract(ssm: Arc<dyn ParameterStore>, who: &str) {
    let s = runner_updater::sim::scenario::Scenario::new(1).unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(
        &mut driver,
        runner_updater::machine::phase::Phase::Done,
        200,
    )
    .await
    .unwrap();
    let record = s.store.load("runner-a").await.unwrap().unwrap();
    let store = SsmStore::new(ssm, "/store");
    store.save(&record).await.unwrap();
    assert_eq!(
        store.load("runner-a").await.unwrap(),
        Some(record),
        "{who}: round trip"
    );
    assert_eq!(store.list().await.unwrap(), vec!["runner-a"], "{who}");
}

#[tokio::test]
async fn ssm_lease_and_store_behave_alike_on_the_simulation_and_on_moto() {
    let moto = common::Moto::start();
    let clients = moto.clients().await;
    let targets: [(Arc<dyn ParameterStore>, &str); 2] = [
        (Arc::new(SimSsm::default()), "simulation"),
        (Arc::new(clients.ssm.clone()), "moto"),
    ];
    for (ssm, who) in targets {
        parameter_store_contract(ssm.clone(), who).await;
        lease_contract(ssm.clone(), who).await;
        store_contract(ssm, who).await;
    }
}

/// Creates, on moto, a cluster, a rich task definition and a service running it.
async fn moto_runner(sdk: &aws_config::SdkConfig) -> String {
    let ecs = aws_sdk_ecs::Client::new(sdk);
    ecs.create_cluster()
        .cluster_name("runners")
        .send()
        .await
        .unwrap();
    let runner = ContainerDefinition::builder()
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
        .build();
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
    let found = clients
        .ecs
        .find_task_definition("runner-a", "runner-a-1-x")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.arn, clone);
    assert_eq!(
        clients
            .ecs
            .find_task_definition("runner-a", "other")
            .await
            .unwrap(),
        None
    );
}

async fn ecs_contract(ecs: &dyn Ecs, base: &str, who: &str) {
    let service = ecs.describe_service("runners", "runner-a").await.unwrap();
    assert_eq!(service.task_definition_arn, base, "{who}");
    assert_eq!(
        service.deployments.len(),
        1,
        "{who}: a settled service has one deployment"
    );
    let missing = ecs.describe_service("runners", "absent").await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
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
    let deployment = ecs
        .update_service("runners", "runner-a", &new)
        .await
        .unwrap();
    let service = ecs.describe_service("runners", "runner-a").await.unwrap();
    assert_eq!(service.task_definition_arn, new, "{who}");
    let primary = service.primary().unwrap();
    assert_eq!(
        (primary.id.as_str(), primary.task_definition_arn.as_str()),
        (deployment.as_str(), new.as_str()),
        "{who}"
    );
    assert!(
        service
            .deployments
            .iter()
            .any(|d| d.status == DeploymentStatus::Active && d.task_definition_arn == base),
        "{who}"
    );
}

#[tokio::test]
async fn ecs_behaves_alike_on_the_simulation_and_on_moto_with_the_harness() {
    let moto = common::Moto::start();
    let base = moto_runner(&moto.sdk_config().await).await;
    let clients = moto.clients().await;
    ecs_contract(&clients.ecs, &base, "moto").await;

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
        "simulation",
    )
    .await;
}

async fn cloudformation_contract(cfn: &dyn runner_updater::ports::CloudFormation, who: &str) {
    let stack = cfn.describe_stack("runner-a-main").await.unwrap();
    assert_eq!(stack.status, "CREATE_COMPLETE", "{who}");
    assert_eq!(
        stack.infra_version(),
        Some("7"),
        "{who}: the infrastructure version tag"
    );
    let missing = cfn.describe_stack("absent").await.unwrap_err();
    assert_eq!(missing.kind, ErrorKind::NotFound, "{who}: {missing}");
}

#[tokio::test]
async fn cloudformation_behaves_alike_on_the_simulation_and_on_moto() {
    let moto = common::Moto::start();
    let sdk = moto.sdk_config().await;
    let template = r#"{"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}, "Outputs": {"InfrastructureVersion": {"Value": "6"}}}"#;
    aws_sdk_cloudformation::Client::new(&sdk)
        .create_stack()
        .stack_name("runner-a-main")
        .template_body(template)
        .tags(
            aws_sdk_cloudformation::types::Tag::builder()
                .key("runner-updater:infra-version")
                .value("7")
                .build(),
        )
        .send()
        .await
        .unwrap();
    cloudformation_contract(&moto.clients().await.cfn, "moto").await;

    let sim = SimAws::new(1);
    let mut template = runner_updater::sim::SimTemplate::default();
    template
        .outputs
        .insert("InfrastructureVersion".to_owned(), "6".to_owned());
    sim.cfn.create_stack(
        "runner-a-main",
        template,
        &[],
        &[("runner-updater:infra-version", "7")],
    );
    cloudformation_contract(&sim.cfn, "simulation").await;
}
