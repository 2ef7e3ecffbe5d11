//! The vocabulary of AWS operations: every SDK operation the adapters call, its API family
//! (which client and which rate limit), its IAM action, whether it mutates — and, for each port
//! method, the SDK calls it makes against AWS ([`PortCall::sdk_calls`]).
//!
//! One table, read by everyone who names an operation: the AWS adapters' spans and metrics, the
//! rate limiter's weights, the benchmark's counts, the simulation's faults and audit, and the
//! IAM policy test. A new operation is a new variant here, or nothing compiles.

use std::fmt;

/// An AWS API family: a client, a client-side rate limit, an IAM prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiFamily {
    /// SSM Parameter Store.
    Ssm,
    /// ECS.
    Ecs,
    /// `CloudFormation`.
    CloudFormation,
    /// DynamoDB (the state table).
    DynamoDb,
    /// SQS (the change events' queue).
    Sqs,
}

impl ApiFamily {
    /// Every family, in the order of the configuration's rate limits.
    pub const ALL: [ApiFamily; 5] = [
        ApiFamily::Ssm,
        ApiFamily::Ecs,
        ApiFamily::CloudFormation,
        ApiFamily::DynamoDb,
        ApiFamily::Sqs,
    ];

    /// The family's name as AWS writes it (`SSM`, `ECS`, `CloudFormation`, `DynamoDB`, `SQS`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ApiFamily::Ssm => "SSM",
            ApiFamily::Ecs => "ECS",
            ApiFamily::CloudFormation => "CloudFormation",
            ApiFamily::DynamoDb => "DynamoDB",
            ApiFamily::Sqs => "SQS",
        }
    }

    /// The IAM service prefix (`ssm`, `ecs`, `cloudformation`, `dynamodb`, `sqs`).
    #[must_use]
    pub fn iam_prefix(self) -> &'static str {
        match self {
            ApiFamily::Ssm => "ssm",
            ApiFamily::Ecs => "ecs",
            ApiFamily::CloudFormation => "cloudformation",
            ApiFamily::DynamoDb => "dynamodb",
            ApiFamily::Sqs => "sqs",
        }
    }
}

impl fmt::Display for ApiFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! aws_ops {
    ($($(#[$doc:meta])* $op:ident: $family:ident, $mutates:literal;)*) => {
        /// An AWS API operation the adapters call.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AwsOp {
            $($(#[$doc])* $op,)*
        }

        impl AwsOp {
            /// Every operation.
            pub const ALL: &'static [AwsOp] = &[$(AwsOp::$op,)*];

            /// The operation's name as AWS writes it (`UpdateService`).
            #[must_use]
            pub fn name(self) -> &'static str {
                match self {
                    $(AwsOp::$op => stringify!($op),)*
                }
            }

            /// Its API family.
            #[must_use]
            pub fn family(self) -> ApiFamily {
                match self {
                    $(AwsOp::$op => ApiFamily::$family,)*
                }
            }

            /// Whether it changes something in AWS (the simulation loses the answers of
            /// these, after their effect).
            #[must_use]
            pub fn mutates(self) -> bool {
                match self {
                    $(AwsOp::$op => $mutates,)*
                }
            }
        }
    };
}

aws_ops! {
    /// `ssm:GetParametersByPath`, one page of ten.
    GetParametersByPath: Ssm, false;
    /// `ssm:GetParameter`.
    GetParameter: Ssm, false;
    /// `ssm:PutParameter`.
    PutParameter: Ssm, true;
    /// `ssm:DeleteParameter`.
    DeleteParameter: Ssm, true;
    /// `ecs:DescribeServices`, up to ten services.
    DescribeServices: Ecs, false;
    /// `ecs:ListTasks`, one page.
    ListTasks: Ecs, false;
    /// `ecs:DescribeTasks`, up to a hundred tasks.
    DescribeTasks: Ecs, false;
    /// `ecs:DescribeTaskDefinition`.
    DescribeTaskDefinition: Ecs, false;
    /// `ecs:ListTaskDefinitions`, one page.
    ListTaskDefinitions: Ecs, false;
    /// `ecs:RegisterTaskDefinition`.
    RegisterTaskDefinition: Ecs, true;
    /// `ecs:UpdateService`.
    UpdateService: Ecs, true;
    /// `ecs:DescribeServiceDeployments`, up to twenty service deployments.
    DescribeServiceDeployments: Ecs, false;
    /// `ecs:StopServiceDeployment` (stop type `ROLLBACK`).
    StopServiceDeployment: Ecs, true;
    /// `cloudformation:DescribeStacks`.
    DescribeStacks: CloudFormation, false;
    /// `cloudformation:GetTemplateSummary`.
    GetTemplateSummary: CloudFormation, false;
    /// `cloudformation:CreateChangeSet`.
    CreateChangeSet: CloudFormation, true;
    /// `cloudformation:DescribeChangeSet`.
    DescribeChangeSet: CloudFormation, false;
    /// `cloudformation:ExecuteChangeSet`.
    ExecuteChangeSet: CloudFormation, true;
    /// `cloudformation:DeleteChangeSet`.
    DeleteChangeSet: CloudFormation, true;
    /// `cloudformation:DescribeStackEvents`, a page (`stack_events` reads pages back to the
    /// attempt's start; one, usually).
    DescribeStackEvents: CloudFormation, false;
    /// `dynamodb:GetItem` (strongly consistent).
    GetItem: DynamoDb, false;
    /// `dynamodb:UpdateItem`, conditional.
    UpdateItem: DynamoDb, true;
    /// `dynamodb:Scan`, one page.
    Scan: DynamoDb, false;
    /// `sqs:ReceiveMessage`, up to ten messages (a long poll).
    ReceiveMessage: Sqs, false;
    /// `sqs:DeleteMessage`.
    DeleteMessage: Sqs, true;
    /// `sqs:GetQueueAttributes`.
    GetQueueAttributes: Sqs, false;
}

impl AwsOp {
    /// The IAM action that authorises it (`ecs:UpdateService`).
    #[must_use]
    pub fn iam_action(self) -> String {
        format!("{}:{}", self.family().iam_prefix(), self.name())
    }

    /// The operation named `name` as AWS writes it, if the adapters call it.
    #[must_use]
    pub fn from_name(name: &str) -> Option<AwsOp> {
        AwsOp::ALL.iter().copied().find(|op| op.name() == name)
    }
}

impl fmt::Display for AwsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A port method called, as the decorators around the ports (rate limits, the benchmark's
/// counts, the simulation's audit) see it: which method, with what it is sized by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortCall {
    /// `ParameterStore::get_page`.
    GetPage,
    /// `ParameterStore::get`.
    Get,
    /// `ParameterStore::put`.
    Put,
    /// `ParameterStore::delete`.
    Delete,
    /// `Ecs::describe_service` (with its tasks).
    DescribeService,
    /// `Ecs::describe_service_without_tasks`.
    DescribeServiceWithoutTasks,
    /// `Ecs::list_service_tasks`.
    ListServiceTasks,
    /// `Ecs::describe_services_without_tasks`, for this many services.
    DescribeServicesWithoutTasks {
        /// Services asked for.
        services: usize,
    },
    /// `Ecs::describe_task_definition`.
    DescribeTaskDefinition,
    /// `Ecs::list_task_definitions`.
    ListTaskDefinitions,
    /// `Ecs::register_clone`: reads the base revision, then registers the clone.
    RegisterClone,
    /// `Ecs::update_service` (forward or rollback): reads the service's deployment
    /// configuration, then updates it.
    UpdateService,
    /// `Ecs::describe_service_deployments`, for this many service deployments.
    DescribeServiceDeployments {
        /// Service deployments asked for.
        deployments: usize,
    },
    /// `Ecs::stop_service_deployment`.
    StopServiceDeployment,
    /// `CloudFormation::describe_stack`.
    DescribeStack,
    /// `CloudFormation::template_summary`.
    TemplateSummary,
    /// `CloudFormation::create_change_set`.
    CreateChangeSet,
    /// `CloudFormation::describe_change_set`.
    DescribeChangeSet,
    /// `CloudFormation::execute_change_set`.
    ExecuteChangeSet,
    /// `CloudFormation::delete_change_set`.
    DeleteChangeSet,
    /// `CloudFormation::stack_events`.
    StackEvents,
    /// `StateTable::get`.
    TableGet,
    /// `StateTable::write_lease`.
    TableWriteLease,
    /// `StateTable::write_record`.
    TableWriteRecord,
    /// `StateTable::scan_page`.
    TableScanPage,
}

/// The services one `DescribeServices` call describes at most (an AWS limit).
const SERVICES_PER_CALL: usize = 10;

/// The service deployments one `DescribeServiceDeployments` call describes at most (an AWS
/// limit).
const SERVICE_DEPLOYMENTS_PER_CALL: usize = 20;

impl PortCall {
    /// The SDK calls this port call makes against AWS, with how many of each, as the AWS
    /// adapters make them (no allocation: it is asked on every call). A call whose size
    /// depends on the answer counts its usual size: `describe_service`'s one page of running
    /// and one of stopped tasks and one `DescribeTasks`; `describe_change_set`'s and
    /// `stack_events`' first page.
    pub fn sdk_calls(self) -> impl Iterator<Item = (AwsOp, u32)> + Clone {
        const ONE: u32 = 1;
        let fixed: &'static [(AwsOp, u32)] = match self {
            PortCall::GetPage => &[(AwsOp::GetParametersByPath, ONE)],
            PortCall::Get => &[(AwsOp::GetParameter, ONE)],
            PortCall::Put => &[(AwsOp::PutParameter, ONE)],
            PortCall::Delete => &[(AwsOp::DeleteParameter, ONE)],
            PortCall::DescribeService => &[
                (AwsOp::DescribeServices, ONE),
                (AwsOp::ListTasks, 2),
                (AwsOp::DescribeTasks, ONE),
            ],
            PortCall::DescribeServiceWithoutTasks => &[(AwsOp::DescribeServices, ONE)],
            PortCall::ListServiceTasks => &[(AwsOp::ListTasks, 2), (AwsOp::DescribeTasks, ONE)],
            PortCall::DescribeServicesWithoutTasks { .. }
            | PortCall::DescribeServiceDeployments { .. } => &[],
            PortCall::StopServiceDeployment => &[(AwsOp::StopServiceDeployment, ONE)],
            PortCall::DescribeTaskDefinition => &[(AwsOp::DescribeTaskDefinition, ONE)],
            PortCall::ListTaskDefinitions => &[(AwsOp::ListTaskDefinitions, ONE)],
            PortCall::RegisterClone => &[
                (AwsOp::DescribeTaskDefinition, ONE),
                (AwsOp::RegisterTaskDefinition, ONE),
            ],
            // The adapter reads the service's deployment configuration first, to keep it.
            PortCall::UpdateService => {
                &[(AwsOp::DescribeServices, ONE), (AwsOp::UpdateService, ONE)]
            }
            PortCall::DescribeStack => &[(AwsOp::DescribeStacks, ONE)],
            PortCall::TemplateSummary => &[(AwsOp::GetTemplateSummary, ONE)],
            PortCall::CreateChangeSet => &[(AwsOp::CreateChangeSet, ONE)],
            PortCall::DescribeChangeSet => &[(AwsOp::DescribeChangeSet, ONE)],
            PortCall::ExecuteChangeSet => &[(AwsOp::ExecuteChangeSet, ONE)],
            PortCall::DeleteChangeSet => &[(AwsOp::DeleteChangeSet, ONE)],
            PortCall::StackEvents => &[(AwsOp::DescribeStackEvents, ONE)],
            PortCall::TableGet => &[(AwsOp::GetItem, ONE)],
            PortCall::TableWriteLease | PortCall::TableWriteRecord => &[(AwsOp::UpdateItem, ONE)],
            PortCall::TableScanPage => &[(AwsOp::Scan, ONE)],
        };
        // A batch of services: one call per ten, none for an empty batch (the adapter makes none).
        let batches = match self {
            PortCall::DescribeServicesWithoutTasks { services } => Some((
                AwsOp::DescribeServices,
                u32::try_from(services.div_ceil(SERVICES_PER_CALL)).unwrap_or(u32::MAX),
            ))
            .filter(|(_, calls)| *calls > 0),
            PortCall::DescribeServiceDeployments { deployments } => Some((
                AwsOp::DescribeServiceDeployments,
                u32::try_from(deployments.div_ceil(SERVICE_DEPLOYMENTS_PER_CALL))
                    .unwrap_or(u32::MAX),
            ))
            .filter(|(_, calls)| *calls > 0),
            _ => None,
        };
        fixed.iter().copied().chain(batches)
    }

    /// The API family of its calls (every port call stays within one).
    #[must_use]
    pub fn family(self) -> ApiFamily {
        match self {
            PortCall::GetPage | PortCall::Get | PortCall::Put | PortCall::Delete => ApiFamily::Ssm,
            PortCall::DescribeService
            | PortCall::DescribeServiceWithoutTasks
            | PortCall::ListServiceTasks
            | PortCall::DescribeServicesWithoutTasks { .. }
            | PortCall::DescribeTaskDefinition
            | PortCall::ListTaskDefinitions
            | PortCall::RegisterClone
            | PortCall::UpdateService
            | PortCall::DescribeServiceDeployments { .. }
            | PortCall::StopServiceDeployment => ApiFamily::Ecs,
            PortCall::DescribeStack
            | PortCall::TemplateSummary
            | PortCall::CreateChangeSet
            | PortCall::DescribeChangeSet
            | PortCall::ExecuteChangeSet
            | PortCall::DeleteChangeSet
            | PortCall::StackEvents => ApiFamily::CloudFormation,
            PortCall::TableGet
            | PortCall::TableWriteLease
            | PortCall::TableWriteRecord
            | PortCall::TableScanPage => ApiFamily::DynamoDb,
        }
    }

    /// Its calls against AWS, all operations together: what it weighs in its family's rate
    /// limit.
    #[must_use]
    pub fn weight(self) -> u32 {
        self.sdk_calls().map(|(_, n)| n).sum()
    }

    /// The operation it is named by in faults, slowness and the audit: the one that does what
    /// the method is for (`describe_service`: `DescribeServices`, its task reads aside;
    /// `register_clone`: `RegisterTaskDefinition`, its read of the base aside).
    #[must_use]
    pub fn op(self) -> AwsOp {
        match self {
            PortCall::DescribeService
            | PortCall::DescribeServiceWithoutTasks
            | PortCall::DescribeServicesWithoutTasks { .. } => AwsOp::DescribeServices,
            PortCall::RegisterClone => AwsOp::RegisterTaskDefinition,
            PortCall::UpdateService => AwsOp::UpdateService,
            PortCall::DescribeServiceDeployments { .. } => AwsOp::DescribeServiceDeployments,
            other => other
                .sdk_calls()
                .next()
                .map_or(AwsOp::GetParameter, |(op, _)| op),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_one_name_one_family_and_one_iam_action() {
        let mut names: Vec<&str> = AwsOp::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AwsOp::ALL.len());
        for op in AwsOp::ALL {
            assert_eq!(AwsOp::from_name(op.name()), Some(*op));
            assert!(op.iam_action().starts_with(op.family().iam_prefix()));
        }
        assert_eq!(AwsOp::UpdateService.iam_action(), "ecs:UpdateService");
        assert_eq!(AwsOp::from_name("RunTask"), None);
    }

    #[test]
    fn a_port_call_weighs_the_sdk_calls_it_makes_within_one_family() {
        let check = |call: PortCall, weight: u32, op: AwsOp| {
            assert_eq!(call.weight(), weight, "{call:?}");
            assert_eq!(call.op(), op, "{call:?}");
            assert!(
                call.sdk_calls().all(|(o, _)| o.family() == call.family()),
                "{call:?}"
            );
        };
        check(PortCall::RegisterClone, 2, AwsOp::RegisterTaskDefinition);
        check(PortCall::UpdateService, 2, AwsOp::UpdateService);
        check(PortCall::DescribeService, 4, AwsOp::DescribeServices);
        check(PortCall::ListServiceTasks, 3, AwsOp::ListTasks);
        // An empty batch makes no call (the adapter asks nothing) and weighs nothing.
        check(
            PortCall::DescribeServicesWithoutTasks { services: 0 },
            0,
            AwsOp::DescribeServices,
        );
        check(
            PortCall::DescribeServicesWithoutTasks { services: 10 },
            1,
            AwsOp::DescribeServices,
        );
        check(
            PortCall::DescribeServicesWithoutTasks { services: 21 },
            3,
            AwsOp::DescribeServices,
        );
        check(
            PortCall::DescribeServiceDeployments { deployments: 20 },
            1,
            AwsOp::DescribeServiceDeployments,
        );
        check(
            PortCall::DescribeServiceDeployments { deployments: 21 },
            2,
            AwsOp::DescribeServiceDeployments,
        );
        check(
            PortCall::StopServiceDeployment,
            1,
            AwsOp::StopServiceDeployment,
        );
        check(PortCall::GetPage, 1, AwsOp::GetParametersByPath);
        check(PortCall::StackEvents, 1, AwsOp::DescribeStackEvents);
    }

    /// Every port call (the match makes a new one a compile error here until it is listed).
    fn every_port_call() -> Vec<PortCall> {
        let all = vec![
            PortCall::GetPage,
            PortCall::Get,
            PortCall::Put,
            PortCall::Delete,
            PortCall::DescribeService,
            PortCall::DescribeServiceWithoutTasks,
            PortCall::ListServiceTasks,
            PortCall::DescribeServicesWithoutTasks { services: 11 },
            PortCall::DescribeTaskDefinition,
            PortCall::ListTaskDefinitions,
            PortCall::RegisterClone,
            PortCall::UpdateService,
            PortCall::DescribeServiceDeployments { deployments: 21 },
            PortCall::StopServiceDeployment,
            PortCall::DescribeStack,
            PortCall::TemplateSummary,
            PortCall::CreateChangeSet,
            PortCall::DescribeChangeSet,
            PortCall::ExecuteChangeSet,
            PortCall::DeleteChangeSet,
            PortCall::StackEvents,
            PortCall::TableGet,
            PortCall::TableWriteLease,
            PortCall::TableWriteRecord,
            PortCall::TableScanPage,
        ];
        for call in &all {
            match call {
                PortCall::GetPage
                | PortCall::Get
                | PortCall::Put
                | PortCall::Delete
                | PortCall::DescribeService
                | PortCall::DescribeServiceWithoutTasks
                | PortCall::ListServiceTasks
                | PortCall::DescribeServicesWithoutTasks { .. }
                | PortCall::DescribeTaskDefinition
                | PortCall::ListTaskDefinitions
                | PortCall::RegisterClone
                | PortCall::UpdateService
                | PortCall::DescribeServiceDeployments { .. }
                | PortCall::StopServiceDeployment
                | PortCall::DescribeStack
                | PortCall::TemplateSummary
                | PortCall::CreateChangeSet
                | PortCall::DescribeChangeSet
                | PortCall::ExecuteChangeSet
                | PortCall::DeleteChangeSet
                | PortCall::StackEvents
                | PortCall::TableGet
                | PortCall::TableWriteLease
                | PortCall::TableWriteRecord
                | PortCall::TableScanPage => {}
            }
        }
        all
    }

    #[test]
    fn every_port_call_makes_calls_of_its_own_family_only_and_is_named_by_one_of_them() {
        for call in every_port_call() {
            let calls: Vec<(AwsOp, u32)> = call.sdk_calls().collect();
            assert!(!calls.is_empty(), "{call:?}");
            assert!(
                calls
                    .iter()
                    .all(|(op, n)| op.family() == call.family() && *n > 0),
                "{call:?}: {calls:?}"
            );
            assert!(
                calls.iter().any(|(op, _)| *op == call.op()),
                "{call:?} is named by a call it makes"
            );
        }
    }
}
