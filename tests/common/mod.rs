//! The moto harness for tests: started per test on a free 127.0.0.1 port, killed on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// shared by several test binaries
// These helpers wait on real processes (moto, the controller) in wall-clock time, with deadlines.
#![allow(clippy::disallowed_methods)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner_updater::aws::AwsClients;

/// A running harness (moto + our ECS rollouts).
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

/// The virtualenv's python, installed by `tests/run`.
pub fn python() -> String {
    std::env::var("RUNNER_UPDATER_PYTHON")
        .expect("RUNNER_UPDATER_PYTHON is not set: run the suite with tests/run (it installs moto into .venv)")
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

    /// Starts the harness with extra environment (e.g. `HARNESS_LOG`).
    pub fn start_with(env: &[(&str, &str)]) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/moto_harness/server.py");
        let child = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .env("HARNESS_ROLLOUT_SECONDS", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the moto harness");
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut moto = moto;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("the moto harness exited at start-up ({status}): run it by hand: {} {script} {port}", python());
            }
            assert!(
                Instant::now() < deadline,
                "the moto harness did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
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

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
