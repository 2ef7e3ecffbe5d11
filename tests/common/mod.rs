//! The moto harness for tests: started per test on 127.0.0.1 (it binds port 0 itself and
//! reports the port it got), killed on drop; and the helpers to learn a server's port and
//! poll it until it answers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// shared by several test binaries
// These helpers wait on real processes (moto, the controller) in wall-clock time, with deadlines.
#![allow(clippy::disallowed_methods)]

pub mod world;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use runner_updater_aws::AwsClients;

/// How long a server may take to start and answer.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// A running harness (moto + our ECS rollouts).
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The port.
    pub port: u16,
    /// Holds the port file and the harness's own output (`harness.log`).
    dir: tempfile::TempDir,
}

/// One HTTP/1.1 request on 127.0.0.1:`port` (`body` sent as JSON when given):
/// `Some((status, body))` if an HTTP answer came, `None` otherwise.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(START_LIMIT)).ok()?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response
        .strip_prefix("HTTP/1.")?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits (bounded) until `child` has written the port it bound to `port_file` (a server that
/// binds port 0 itself and reports it: no other process can take the port in between).
/// Panics with `output` (the server's own log, if any) when it exits first.
pub fn reported_port(
    child: &mut Child,
    port_file: &Path,
    what: &str,
    output: Option<&Path>,
) -> u16 {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(port_file) {
            if let Ok(port) = text.trim().parse() {
                return port;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = output
                .and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default();
            panic!("{what} exited at start-up ({status}):\n{log}");
        }
        if Instant::now() >= deadline {
            // No process outlives its test, even one that never started properly.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} reported no port in {} within {START_LIMIT:?}",
                port_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `GET path` on `port` until an HTTP answer with `status` comes (a real request, not
/// just a TCP connect), or panics after [`START_LIMIT`].
pub fn wait_until_answers(port: u16, path: &str, status: u16, what: &str) {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        match http(port, "GET", path, None) {
            Some((got, _)) if got == status => return,
            answer => assert!(
                Instant::now() < deadline,
                "{what} did not answer GET {path} with {status} within {START_LIMIT:?} (last: {answer:?})"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The virtualenv's python, installed by `tests/run`.
pub fn python() -> String {
    std::env::var("RUNNER_UPDATER_PYTHON")
        .expect("RUNNER_UPDATER_PYTHON is not set: run the suite with tests/run (it installs moto into .venv)")
}

/// The repository's root: the workspace's top, where `tests/` is (these helpers are shared
/// by the product's tests and the dev tools' crate's).
pub fn repository_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/moto_harness/server.py").is_file())
        .expect("the repository root, with tests/moto_harness")
        .to_path_buf()
}

/// The virtualenv's bin directory (the AWS CLI is there).
pub fn venv_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(python())
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Moto {
    /// Starts the harness and waits (bounded) until it answers.
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// Starts the harness with extra environment (e.g. `HARNESS_LOG`). It binds port 0 itself
    /// and writes the port it got to a file; it is ready once `GET /harness/ready` answers.
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("harness.port");
        let output_path = dir.path().join("harness.log");
        let output = std::fs::File::create(&output_path).unwrap();
        let script = repository_root().join("tests/moto_harness/server.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg("--port-file")
            .arg(&port_file)
            .env("HARNESS_ROLLOUT_SECONDS", "1")
            .envs(env.iter().copied())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .expect("starting the moto harness");
        let port = reported_port(
            &mut child,
            &port_file,
            "the moto harness",
            Some(&output_path),
        );
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir,
        };
        wait_until_answers(port, "/harness/ready", 200, "the moto harness");
        moto
    }

    /// Arms the harness's lost answer: the next `count` requests of `operation` whose body
    /// contains every string of `matching` are applied by moto, then answered by a dropped
    /// connection (`mode` `reset`) or only after `delay_seconds` (`delay`). Returns the rule.
    pub fn lose_answer(&self, rule: &serde_json::Value) -> serde_json::Value {
        let (status, body) = http(
            self.port,
            "POST",
            "/harness/lose-answer",
            Some(&rule.to_string()),
        )
        .expect("the harness answers /harness/lose-answer");
        assert_eq!(status, 200, "arming {rule}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The rules armed so far, each with the answers it has lost (`lost`).
    pub fn lost_answers(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(self.port, "GET", "/harness/lose-answer", None)
            .expect("the harness answers /harness/lose-answer");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every AWS request the harness served so far, in order: `(operation, body)` (the body at
    /// most 16 KB). Tests count calls at the wire with it.
    pub fn requests(&self) -> Vec<(String, String)> {
        let (status, body) = http(self.port, "GET", "/harness/requests", None)
            .expect("the harness answers /harness/requests");
        assert_eq!(status, 200, "{body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        list.into_iter()
            .map(|r| {
                (
                    r["op"].as_str().unwrap_or_default().to_owned(),
                    r["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// SDK configuration pointing at this server with static test credentials.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::v2026_01_12())
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
            .load()
            .await
    }

    /// The adapters on this server.
    pub async fn clients(&self) -> AwsClients {
        AwsClients::from_sdk_config(&self.sdk_config().await)
    }

    /// Environment for processes (the controller, the AWS CLI) that talk to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_REGION", "eu-west-1".to_owned()),
            ("AWS_DEFAULT_REGION", "eu-west-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }
}

impl Moto {
    /// Uploads `body` to moto's S3 and returns its `https://BUCKET.s3.amazonaws.com/KEY` URL
    /// (the form moto's CloudFormation resolves to its own S3), through the AWS CLI.
    pub fn put_template(&self, bucket: &str, key: &str, body: &str) -> String {
        let aws = venv_bin().join("aws");
        let run = |args: &[&str]| {
            let output = Command::new(&aws)
                .args(args)
                .envs(self.env())
                .output()
                .expect("running the AWS CLI");
            output
        };
        // Creating an existing bucket fails harmlessly; the upload below must succeed.
        let _ = run(&[
            "s3api",
            "create-bucket",
            "--bucket",
            bucket,
            "--create-bucket-configuration",
            "LocationConstraint=eu-west-1",
        ]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        let output = run(&[
            "s3api",
            "put-object",
            "--bucket",
            bucket,
            "--key",
            key,
            "--body",
            file.path().to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "put-object: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("https://{bucket}.s3.amazonaws.com/{key}")
    }
}

impl Moto {
    /// Uploads several templates with one AWS CLI call (`aws s3 cp --recursive`); returns
    /// their URLs, in order.
    pub fn put_templates(&self, bucket: &str, templates: &[(&str, String)]) -> Vec<String> {
        let aws = venv_bin().join("aws");
        let folder = tempfile::tempdir().unwrap();
        for (key, body) in templates {
            std::fs::write(folder.path().join(key), body).unwrap();
        }
        // Creating an existing bucket fails harmlessly; the upload below must succeed.
        let _ = Command::new(&aws)
            .args(["s3api", "create-bucket", "--bucket", bucket])
            .args([
                "--create-bucket-configuration",
                "LocationConstraint=eu-west-1",
            ])
            .envs(self.env())
            .output()
            .expect("running the AWS CLI");
        let output = Command::new(&aws)
            .args(["s3", "cp", "--recursive"])
            .arg(folder.path())
            .arg(format!("s3://{bucket}/"))
            .envs(self.env())
            .output()
            .expect("running the AWS CLI");
        assert!(
            output.status.success(),
            "aws s3 cp: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        templates
            .iter()
            .map(|(key, _)| format!("https://{bucket}.s3.amazonaws.com/{key}"))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Creates an on-demand DynamoDB table on the emulator whose hash key is `key`, a string
    /// (`runner` for a state table; another key to test a wrong schema).
    pub async fn create_table(&self, name: &str, key: &str) {
        let sdk = self.sdk_config().await;
        aws_sdk_dynamodb::Client::new(&sdk)
            .create_table()
            .table_name(name)
            .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
            .attribute_definitions(
                aws_sdk_dynamodb::types::AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                aws_sdk_dynamodb::types::KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
