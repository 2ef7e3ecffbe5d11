//! The end-to-end world on moto: the harness, a cluster with runners, the controller's
//! configuration, and controller processes (the product's binary, or the dev tools' for the
//! crash hook), killed when dropped.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runner_updater_adapters::dynamo::DynamoStore;
use runner_updater_adapters::store::SsmStore;
use runner_updater_core::record::Record;
use runner_updater_ports::{StateStore, StateTable};

use super::Moto;

pub const PREFIX: &str = "/e2e";
pub const WAIT: Duration = Duration::from_secs(90);
/// The controller's SDK timeout per attempt and per call: short, so that a short lease covers
/// a late renewal (the configuration refuses `lease_secs` below active poll interval + 2 x
/// this + a pass: 6 s here, with rate limits out of the way) and a delayed answer is given up
/// on quickly.
pub const ATTEMPT_TIMEOUT_SECS: u32 = 2;
/// The lease of the tests that take a runner over after a crash or a freeze: the shortest the
/// configuration accepts with the timeouts above, for one runner (a world of more runners gets
/// the floor of its size: see `lease_floor`).
pub const LEASE_SECS: u32 = 6;

/// The shortest lease the configuration accepts in a world of `runners` runners: the active
/// interval (1 s), two timed-out calls, and a pass at `max_concurrent_runners` (16) with one
/// registration each at AWS's pace of one a second (the rate limits are out of the way).
pub fn lease_floor(runners: usize) -> u32 {
    1 + 2 * ATTEMPT_TIMEOUT_SECS + u32::try_from(runners.clamp(1, 16)).unwrap()
}

pub struct World {
    pub moto: Moto,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub updates_log: PathBuf,
    /// The controller binary the world starts: the product's (`runner-updater`) in the
    /// product's tests; the dev tools' tests set theirs (`runner-updater-dev`, for its crash
    /// hook), and a world with none refuses to start a controller.
    pub binary: PathBuf,
    /// The DynamoDB state table the controllers keep their state in (`None`: SSM).
    pub table: Option<String>,
}

/// The state table of the worlds on the DynamoDB backend.
pub const STATE_TABLE: &str = "e2e-state";

impl World {
    pub async fn new(runners: &[&str]) -> World {
        Self::with_timing(runners, 1, 1).await
    }

    /// `rollout_secs`: how long the harness takes to complete a rollout; `soak_secs`: the soak.
    pub async fn with_timing(runners: &[&str], rollout_secs: u32, soak_secs: u32) -> World {
        Self::custom(runners, rollout_secs, soak_secs, LEASE_SECS, 1, &[], |_| {
            String::new()
        })
        .await
    }

    /// As [`World::with_timing`], with the lease, the consistency window, the harness's
    /// environment and extra keys for each runner's `[[runners]]` table (`stacks`, ...).
    #[allow(clippy::too_many_arguments)]
    pub async fn custom(
        runners: &[&str],
        rollout_secs: u32,
        soak_secs: u32,
        lease_secs: u32,
        consistency_window_secs: u32,
        harness_env: &[(&str, &str)],
        runner_keys: impl Fn(&str) -> String,
    ) -> World {
        let lease_secs = lease_secs.max(lease_floor(runners.len()));
        let dir = tempfile::tempdir().unwrap();
        let updates_log = dir.path().join("updates.log");
        let rollout = rollout_secs.to_string();
        let mut env = vec![
            ("HARNESS_LOG", updates_log.to_str().unwrap()),
            ("HARNESS_ROLLOUT_SECONDS", &rollout),
            // The worlds tell the fail-fast gate's story (two failed tasks), not the breaker's:
            // a crashing rollout fails a task every half rollout, and ECS's current threshold
            // (3 at one task) would race the gate's read by half a rollout.
            ("HARNESS_BREAKER_THRESHOLD", "10"),
        ];
        env.extend_from_slice(harness_env);
        let moto = Moto::start_with(&env);
        let sdk = moto.sdk_config().await;
        let ecs = aws_sdk_ecs::Client::new(&sdk);
        ecs.create_cluster()
            .cluster_name("runners")
            .send()
            .await
            .unwrap();
        let mut config = format!(
            "prefix = \"{PREFIX}\"\npoll_interval_secs = 1\nactive_poll_interval_secs = 1\nlease_secs = {lease_secs}\nconsistency_window_secs = {consistency_window_secs}\nsettle_secs = 1\n\
             [aws]\nattempt_timeout_secs = {ATTEMPT_TIMEOUT_SECS}\noperation_timeout_secs = {ATTEMPT_TIMEOUT_SECS}\n\
             [rate_limits]\nssm_per_sec = 1000\necs_per_sec = 1000\ncloudformation_per_sec = 1000\n\
             [state_store]\nbackend = \"ssm\"\n[health]\nfail_fast_tasks = 2\nrollout_timeout_secs = 60\nsoak_secs = {soak_secs}\nrollback_timeout_secs = 60\n"
        );
        for runner in runners {
            let container = aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("runner")
                .image("registry.example/runner:2.13.0")
                .memory(512)
                .build();
            let td = ecs
                .register_task_definition()
                .family(*runner)
                .container_definitions(container)
                .send()
                .await
                .unwrap();
            let arn = td
                .task_definition()
                .unwrap()
                .task_definition_arn()
                .unwrap()
                .to_owned();
            ecs.create_service()
                .cluster("runners")
                .service_name(*runner)
                .task_definition(arn)
                .desired_count(1)
                .send()
                .await
                .unwrap();
            let _ = write!(
                config,
                "[[runners]]\nname = \"{runner}\"\ncluster = \"runners\"\nservice = \"{runner}\"\nimage_repository = \"registry.example/runner\"\n{}",
                runner_keys(runner)
            );
        }
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        World {
            moto,
            dir,
            config: path,
            updates_log,
            binary: PathBuf::from(
                option_env!("CARGO_BIN_EXE_runner-updater").unwrap_or("runner-updater"),
            ),
            table: None,
        }
    }

    /// As [`World::with_timing`], the controllers keeping their records and leases in a
    /// DynamoDB state table (created here, as the set-up would).
    pub async fn on_state_table(runners: &[&str], rollout_secs: u32, soak_secs: u32) -> World {
        Self::with_timing(runners, rollout_secs, soak_secs)
            .await
            .into_state_table()
            .await
    }

    /// This world with its controllers on a DynamoDB state table (created here).
    pub async fn into_state_table(self) -> World {
        let mut world = self;
        world.moto.create_table(STATE_TABLE, "runner").await;
        let config = std::fs::read_to_string(&world.config).unwrap().replace(
            "[state_store]\nbackend = \"ssm\"\n",
            &format!("[state_store]\nbackend = \"dynamodb\"\ntable = \"{STATE_TABLE}\"\n"),
        );
        assert!(config.contains("dynamodb"), "{config}");
        std::fs::write(&world.config, config).unwrap();
        world.table = Some(STATE_TABLE.to_owned());
        world
    }

    /// The holder of the runner's current lease (SSM's highest epoch, or the table's item).
    pub async fn lease_holder(&self, runner: &str) -> Option<String> {
        let clients = self.moto.clients().await;
        if let Some(table) = &self.table {
            return clients
                .table(table)
                .get(runner)
                .await
                .unwrap()?
                .lease
                .map(|lease| lease.holder);
        }
        let leases = runner_updater_ports::ParameterStore::get_by_path(
            &clients.ssm,
            &format!("{PREFIX}/{runner}/lock/"),
        )
        .await
        .unwrap();
        let (_, value) = leases.iter().next_back()?;
        let value: serde_json::Value = serde_json::from_str(value).ok()?;
        Some(value["holder"].as_str()?.to_owned())
    }

    /// The product's command line with this world's configuration, against the emulator
    /// (`status`, `approve`, `setup`, `migrate-state`, …).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(self.moto.env())
            .output()
            .unwrap()
    }

    /// Ops: the real AWS CLI against the emulator.
    pub fn put(&self, runner: &str, key: &str, value: &str) {
        let status = Command::new(super::venv_bin().join("aws"))
            .args([
                "ssm",
                "put-parameter",
                "--overwrite",
                "--type",
                "String",
                "--name",
            ])
            .arg(format!("{PREFIX}/{runner}/desired/{key}"))
            .args(["--value", value, "--endpoint-url", &self.moto.url])
            .envs(self.moto.env())
            // AWS CLI v1 would fetch an https:// value instead of storing it (template URLs).
            .env("AWS_CONFIG_FILE", self.cli_config())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "aws ssm put-parameter failed");
    }

    /// Ops: the whole desired state in one command (`<prefix>/<runner>/release`), with the real
    /// AWS CLI, as the README shows it.
    pub fn put_release(&self, runner: &str, document: &str) {
        let status = Command::new(super::venv_bin().join("aws"))
            .args(["ssm", "put-parameter", "--overwrite", "--type", "String"])
            .args(["--name", &format!("{PREFIX}/{runner}/release")])
            .args(["--value", document, "--endpoint-url", &self.moto.url])
            .envs(self.moto.env())
            .env("AWS_CONFIG_FILE", self.cli_config())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "aws ssm put-parameter failed");
    }

    /// An AWS CLI configuration that stores URL values as they are.
    pub fn cli_config(&self) -> PathBuf {
        let path = self.dir.path().join("aws-cli-config");
        if !path.exists() {
            std::fs::write(&path, "[default]\ncli_follow_urlparam = false\n").unwrap();
        }
        path
    }

    /// Runs `script` (Python, with boto3 against this world's moto, `kw` its client
    /// arguments) and returns what it printed.
    pub fn boto(&self, script: &str) -> String {
        let output = Command::new(super::python())
            .arg("-c")
            .arg(format!(
                "import boto3, json, sys, time\nkw = dict(endpoint_url={:?}, region_name='eu-west-1')\n{script}",
                self.moto.url
            ))
            .envs(self.moto.env())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Ops write the parameter `name`; AWS then publishes SSM's "Parameter Store Change"
    /// event (moto's SSM publishes none: this does, on `EventBridge`, right after). Returns
    /// when the parameter was written (ms).
    pub fn put_announced(&self, name: &str, value: &str) -> u64 {
        self.boto(&format!(
            "boto3.client('ssm', **kw).put_parameter(Name={name:?}, Value={value:?}, Type='String', Overwrite=True)\n\
             written = int(time.time() * 1000)\n\
             detail = json.dumps({{'operation': 'Update', 'name': {name:?}, 'type': 'String'}})\n\
             boto3.client('events', **kw).put_events(Entries=[{{'Source': 'aws.ssm', 'DetailType': 'Parameter Store Change', 'Detail': detail, 'Resources': ['arn:aws:ssm:eu-west-1:123456789012:parameter' + {name:?}]}}])\n\
             print(written)"
        ))
        .parse()
        .unwrap()
    }

    /// `runner-updater setup --stack ru --events` on this world: the template's change events'
    /// rules and queue (and a state table). Returns the queue's URL.
    pub fn setup_events(&self) -> String {
        let setup = self.cli(&["setup", "--stack", "ru", "--events", "--poll-secs", "1"]);
        let printed = String::from_utf8_lossy(&setup.stdout).into_owned();
        assert!(
            setup.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&setup.stderr)
        );
        // moto does not refresh a stack's outputs after a change set: setup then names the queue.
        if let Some(rest) = printed.split("events.queue_url = \"").nth(1) {
            rest.split('"').next().unwrap().to_owned()
        } else {
            assert!(printed.contains("the queue is ru-events"), "{printed}");
            self.boto(
                "print(boto3.client('sqs', **kw).get_queue_url(QueueName='ru-events')['QueueUrl'])",
            )
        }
    }

    /// A controller serving `/metrics` on a port of its own choosing: the process and the port.
    pub fn controller_serving(&self, name: &str) -> (Proc, u16) {
        let port_file = self.dir.path().join(format!("{name}.port"));
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .args(["--listen", "127.0.0.1:0", "--listen-port-file"])
            .arg(&port_file)
            .envs(self.moto.env())
            .env("HOSTNAME", name)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let port = super::reported_port(
            &mut child,
            &port_file,
            "runner-updater run",
            Some(&log_path),
        );
        (Proc(child), port)
    }

    pub fn controller(&self, name: &str, crash: Option<&str>) -> Proc {
        self.controller_with(name, crash, &[])
    }

    pub fn controller_with(&self, name: &str, crash: Option<&str>, env: &[(&str, &str)]) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        assert!(
            !self.binary.as_os_str().is_empty(),
            "no controller binary: outside the product's tests, set World::binary"
        );
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .args(["--listen", "off"])
            .envs(self.moto.env())
            .env("HOSTNAME", name)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(crash) = crash {
            command.env("RUNNER_UPDATER_TEST_CRASH", crash);
        }
        Proc(command.spawn().unwrap())
    }

    pub async fn record(&self, runner: &str) -> Option<Record> {
        let clients = self.moto.clients().await;
        if let Some(table) = &self.table {
            let store = DynamoStore::new(
                std::sync::Arc::new(clients.table(table)),
                "e2e-reader",
                std::sync::Arc::new(runner_updater_adapters::clock::SystemClock),
            );
            return store.load(runner).await.unwrap();
        }
        let store = SsmStore::new(std::sync::Arc::new(clients.ssm), PREFIX);
        store.load(runner).await.unwrap()
    }

    /// Waits (bounded) for the runner's record in `phase`; on a timeout, panics with the
    /// record and the last lines of every log (the controllers', the harness's).
    #[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
    pub async fn wait_for_phase(&self, runner: &str, phase: &str, attempt_min: u64) -> Record {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let record = self.record(runner).await;
            if let Some(record) = record
                .as_ref()
                .filter(|r| r.phase == phase && r.attempts_started >= attempt_min)
            {
                return record.clone();
            }
            if std::time::Instant::now() > deadline {
                let logs = self.logs();
                let lines: Vec<&str> = logs.lines().collect();
                panic!(
                    "timed out after {WAIT:?} waiting for {runner} in {phase} (attempt {attempt_min}); record: {record:#?}\nlast log lines:\n{}",
                    lines[lines.len().saturating_sub(80)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn updates(&self, runner: &str) -> Vec<String> {
        std::fs::read_to_string(&self.updates_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{runner} ")).map(str::to_owned))
            .collect()
    }

    pub async fn revisions(&self, runner: &str) -> usize {
        let ecs = aws_sdk_ecs::Client::new(&self.moto.sdk_config().await);
        ecs.list_task_definitions()
            .family_prefix(runner)
            .send()
            .await
            .unwrap()
            .task_definition_arns()
            .len()
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }
}

/// A controller process, killed (and reaped) when dropped: a failing test leaves none behind.
pub struct Proc(pub Child);

impl Proc {
    /// SIGTERM, then wait (bounded) for a clean exit.
    #[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the controller did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn kill(process: Proc) {
    drop(process);
}
