//! Adapters on the AWS SDK behind the ports: SSM, ECS, CloudFormation, DynamoDB, SQS.
//!
//! **Boundary module**: SDK types never leave it. Credentials come from the standard chain;
//! `AWS_REGION` and `AWS_ENDPOINT_URL` are honoured by `aws-config`. The SDK retries its own
//! calls (standard mode, bounded attempts); the driver's own retries apply on top only to
//! errors classified transient here.

mod cfn;
mod dynamo;
mod ecs;
mod sqs;
mod ssm;

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::Instrument;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ecs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::operation::RequestId;

use runner_updater_ports::{AwsOp, ErrorKind, PortError};

/// Hears of every SDK call this crate sends: its operation and its outcome (`ok`,
/// `throttled`, `transient-error`, `permanent-error`, `not-found`, `conflict`).
pub type CallObserver = Box<dyn Fn(AwsOp, &'static str) + Send + Sync>;

static CALL_OBSERVER: OnceLock<CallObserver> = OnceLock::new();

/// Installs the process's observer of SDK calls (the product counts them in
/// `runner_updater_aws_calls_total`). The first installation wins; later ones are ignored.
pub fn observe_calls(observer: CallObserver) {
    let _ = CALL_OBSERVER.set(observer);
}

/// Sends an SDK call inside a span (`aws.operation`, `outcome`, `aws.request_id`, the id AWS
/// support asks for) under the current span, and tells the [`CallObserver`], if any.
pub(crate) trait Traced<T, E>: Future<Output = Result<T, SdkError<E>>> + Sized
where
    T: RequestId,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    fn traced(self, operation: AwsOp) -> impl Future<Output = Result<T, SdkError<E>>> {
        // A call outside any span (the reads of a pass at rest) is counted but not traced: a
        // root span per call would drown the update traces.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "aws",
                otel.name = operation.name(),
                aws.operation = operation.name(),
                outcome = tracing::field::Empty,
                aws.request_id = tracing::field::Empty,
            )
        };
        let recorded = span.clone();
        async move {
            let result = self.instrument(span).await;
            let (outcome, request_id) = match &result {
                Ok(output) => ("ok", output.request_id().map(str::to_owned)),
                Err(error) => (
                    match classify(operation, error).kind {
                        ErrorKind::Throttled => "throttled",
                        ErrorKind::Transient => "transient-error",
                        ErrorKind::Permanent => "permanent-error",
                        ErrorKind::NotFound => "not-found",
                        ErrorKind::Conflict => "conflict",
                    },
                    error.request_id().map(str::to_owned),
                ),
            };
            recorded.record("outcome", outcome);
            if let Some(id) = &request_id {
                recorded.record("aws.request_id", id.as_str());
            }
            if let Some(observer) = CALL_OBSERVER.get() {
                observer(operation, outcome);
            }
            result
        }
    }
}

impl<F, T, E> Traced<T, E> for F
where
    F: Future<Output = Result<T, SdkError<E>>>,
    T: RequestId,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
}

pub use cfn::AwsCloudFormation;
pub use dynamo::AwsTable;
pub use ecs::{AwsEcs, COPIED_FIELDS, READ_ONLY_SDK_FIELDS};
pub use sqs::AwsQueue;
pub use ssm::AwsSsm;

/// How the SDK clients are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkSettings {
    /// Attempts per call, first included (SDK standard retry mode, with jittered backoff).
    pub max_attempts: u32,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    /// Timeout of a call, retries included.
    pub operation_timeout: Duration,
}

impl Default for SdkSettings {
    fn default() -> Self {
        SdkSettings {
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// The three clients, from one shared SDK configuration.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// SSM.
    pub ssm: AwsSsm,
    /// ECS.
    pub ecs: AwsEcs,
    /// CloudFormation.
    pub cfn: AwsCloudFormation,
    /// DynamoDB (the state table: [`AwsClients::table`]).
    dynamodb: aws_sdk_dynamodb::Client,
    /// SQS (the change events' queue: [`AwsClients::queue`]), with timeouts that allow a long
    /// poll.
    sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Loads the standard configuration (environment, profile, web identity, container and
    /// instance credentials; `AWS_REGION`, `AWS_ENDPOINT_URL`).
    pub async fn from_env(settings: SdkSettings) -> Self {
        let config = aws_config::defaults(BehaviorVersion::v2026_01_12())
            // Adaptive: the SDK's own client-side rate limiting on top of standard retries,
            // so a throttled client slows down rather than retrying harder.
            .retry_config(RetryConfig::adaptive().with_max_attempts(settings.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .operation_timeout(settings.operation_timeout)
                    .build(),
            )
            .load()
            .await;
        Self::from_sdk_config(&config)
    }

    /// Clients from an explicit SDK configuration (tests point them at an emulator).
    #[must_use]
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        AwsClients {
            ssm: AwsSsm::new(aws_sdk_ssm::Client::new(config)),
            ecs: AwsEcs::new(aws_sdk_ecs::Client::new(config)),
            cfn: AwsCloudFormation::new(aws_sdk_cloudformation::Client::new(config)),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(config)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_attempt_timeout(LONG_POLL_ATTEMPT_TIMEOUT)
                            .operation_timeout(LONG_POLL_ATTEMPT_TIMEOUT * 2)
                            .build(),
                    )
                    .build(),
            ),
        }
    }

    /// The SQS queue at `url` (the change events').
    #[must_use]
    pub fn queue(&self, url: &str) -> AwsQueue {
        AwsQueue::new(self.sqs.clone(), url)
    }

    /// The state table named `table`.
    #[must_use]
    pub fn table(&self, table: &str) -> AwsTable {
        AwsTable::new(self.dynamodb.clone(), table)
    }
}

/// One attempt of an SQS call: a long poll's 20 seconds and room for the answer.
const LONG_POLL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Error codes that mean "slow down and try again".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "TooManyUpdates",
];

/// Error codes of server-side trouble.
const SERVER_CODES: &[&str] = &[
    "ServerException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "InternalError",
];

/// Error codes that mean "it does not exist".
const NOT_FOUND_CODES: &[&str] = &[
    "ParameterNotFound",
    "ServiceNotFoundException",
    "ClusterNotFoundException",
    "ChangeSetNotFound",
    "ResourceNotFoundException",
    "ServiceDeploymentNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
];

/// What an AWS error answer means to the controller, from its code, HTTP status and message:
/// throttling (any of [`THROTTLING_CODES`], or HTTP 429: the limiter slows down), a server
/// error (retried), not found, already exists (a conflict), or a refusal.
fn kind_of(code: &str, status: u16, message: &str) -> ErrorKind {
    if THROTTLING_CODES.contains(&code) || status == 429 {
        ErrorKind::Throttled
    } else if SERVER_CODES.contains(&code) || status >= 500 {
        ErrorKind::Transient
    } else if NOT_FOUND_CODES.contains(&code)
        || (code == "ValidationError" && message.contains("does not exist"))
    {
        ErrorKind::NotFound
    } else if code == "ParameterAlreadyExists"
        || code == "AlreadyExistsException"
        || code == "ConditionalCheckFailedException"
    {
        ErrorKind::Conflict
    } else {
        ErrorKind::Permanent
    }
}

/// Classifies an SDK error for the error policy, keeping the code, message and request id
/// (what AWS support asks for).
pub(crate) fn classify<E>(operation: AwsOp, error: &SdkError<E>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let request_id = error
        .request_id()
        .map(|id| format!(", request id {id}"))
        .unwrap_or_default();
    match error {
        SdkError::TimeoutError(_) => PortError::new(
            ErrorKind::Transient,
            operation,
            format!("timed out{request_id}"),
        ),
        SdkError::DispatchFailure(failure) => PortError::new(
            ErrorKind::Transient,
            operation,
            format!("could not reach AWS: {failure:?}"),
        ),
        SdkError::ResponseError(_) => PortError::new(
            ErrorKind::Transient,
            operation,
            format!("unreadable response{request_id}"),
        ),
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("Unknown");
            let message = context.err().message().unwrap_or("");
            let status = context.raw().status().as_u16();
            // ECS's `ConflictException` is a conflict where it means one: a service deployment
            // that cannot be stopped in its state. Elsewhere it is a refusal.
            let kind = if code == "ConflictException" && operation == AwsOp::StopServiceDeployment {
                ErrorKind::Conflict
            } else {
                kind_of(code, status, message)
            };
            PortError::new(
                kind,
                operation,
                // Code, status and request id first: long messages get shortened from the end.
                format!("{code} (HTTP {status}{request_id}): {message}"),
            )
        }
        other => PortError::new(ErrorKind::Permanent, operation, format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_classified_by_code_then_status() {
        use ErrorKind as K;
        let cases = [
            ("ThrottlingException", 400, "Rate exceeded", K::Throttled),
            ("TooManyUpdates", 400, "", K::Throttled),
            ("PriorRequestNotComplete", 400, "", K::Throttled),
            ("SomethingNew", 429, "", K::Throttled),
            ("ServerException", 500, "", K::Transient),
            ("Unknown", 503, "", K::Transient),
            ("ParameterNotFound", 400, "", K::NotFound),
            ("ClusterNotFoundException", 400, "", K::NotFound),
            (
                "ValidationError",
                400,
                "Stack with id s does not exist",
                K::NotFound,
            ),
            (
                "ValidationError",
                400,
                "Template format error",
                K::Permanent,
            ),
            ("ParameterAlreadyExists", 400, "", K::Conflict),
            ("AlreadyExistsException", 400, "", K::Conflict),
            ("ConditionalCheckFailedException", 400, "", K::Conflict),
            ("ResourceNotFoundException", 400, "", K::NotFound),
            ("AccessDeniedException", 400, "", K::Permanent),
            ("ClientException", 400, "", K::Permanent),
            // A message that only mentions throttling is not throttling: the code says so.
            ("ClientException", 400, "Rate exceeded", K::Permanent),
        ];
        for (code, status, message, kind) in cases {
            assert_eq!(kind_of(code, status, message), kind, "{code} {status}");
        }
        for code in THROTTLING_CODES {
            assert_eq!(kind_of(code, 400, ""), K::Throttled, "{code}");
        }
    }
}
