//! `iam/policy.json` grants exactly what the AWS adapters call: every SDK operation of
//! `crates/aws/src/ssm.rs`, `ecs.rs`, `cfn.rs`, `dynamo.rs` and `sqs.rs`, plus the documented extras, and
//! nothing else; no `*` action, and a `*` resource only for actions AWS cannot scope.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use runner_updater_ports::AwsOp;
use serde_json::Value;

/// Adapter file, its IAM service prefix, and the fewest operations a working scan finds there
/// (so that a broken scan cannot pass with nothing to check).
const ADAPTERS: [(&str, &str, usize); 5] = [
    ("ssm.rs", "ssm", 4),
    ("ecs.rs", "ecs", 6),
    ("cfn.rs", "cloudformation", 6),
    ("dynamo.rs", "dynamodb", 3),
    ("sqs.rs", "sqs", 3),
];

/// Actions AWS authorizes on the controller's behalf, beyond its own SDK calls, with the reason.
const EXTRAS: [(&str, &str); 3] = [
    (
        "iam:PassRole",
        "RegisterTaskDefinition passes the clone's task and execution roles",
    ),
    (
        "ecs:TagResource",
        "RegisterTaskDefinition registers the clone with tags (tag-on-create)",
    ),
    (
        "s3:GetObject",
        "CloudFormation reads a TemplateURL with the caller's credentials",
    ),
];

/// The only actions allowed on `"Resource": "*"`: AWS offers no narrower resource for them
/// (`ecs:ListTasks` is held to the cluster by a condition instead).
const UNSCOPED: [&str; 5] = [
    "ecs:DescribeTaskDefinition",
    "ecs:ListTaskDefinitions",
    "ecs:RegisterTaskDefinition",
    "ecs:ListTasks",
    "cloudformation:GetTemplateSummary",
];

/// Methods of an SDK client that are not AWS operations.
const NOT_OPERATIONS: [&str; 2] = ["clone", "config"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `get_parameters_by_path` → `GetParametersByPath`.
fn pascal(snake: &str) -> String {
    let mut pascal = String::new();
    for word in snake.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            pascal.push(first.to_ascii_uppercase());
            pascal.push_str(chars.as_str());
        }
    }
    pascal
}

/// The SDK operations called in `source`: the `client` field (not `client_token` and the like)
/// followed, maybe on the next line, by `.operation(`.
fn operations(source: &str) -> BTreeSet<String> {
    const FIELD: &str = ".client";
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(offset) = source[from..].find(FIELD) {
        let end = from + offset + FIELD.len();
        from = end;
        let rest = &source[end..];
        if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let Some(call) = rest.trim_start().strip_prefix('.') else {
            continue;
        };
        let name_length = call
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(call.len());
        let name = &call[..name_length];
        if !name.is_empty()
            && call[name_length..].starts_with('(')
            && !NOT_OPERATIONS.contains(&name)
        {
            found.insert(name.to_owned());
        }
    }
    found
}

/// `service:Operation` for every operation the adapters call, with the file that calls it.
fn called_actions() -> BTreeMap<String, String> {
    let mut called = BTreeMap::new();
    for (file, service, at_least) in ADAPTERS {
        let path = format!("crates/aws/src/{file}");
        let found = operations(&read(&path));
        assert!(
            found.len() >= at_least,
            "the scan found only {} SDK operations in {path} ({found:?}), expected at least \
             {at_least}: has the calling pattern `.client.<operation>()` changed?",
            found.len()
        );
        for operation in found {
            called.insert(format!("{service}:{}", pascal(&operation)), path.clone());
        }
    }
    called
}

/// A string or an array of strings (`Action`, `Resource`).
fn strings(value: &Value, what: &str) -> Vec<String> {
    match value {
        Value::String(one) => vec![one.clone()],
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .unwrap_or_else(|| panic!("{what}: {item} is not a string"))
                    .to_owned()
            })
            .collect(),
        other => panic!("{what}: {other} is neither a string nor an array of strings"),
    }
}

/// The policy's statements.
fn statements() -> Vec<Value> {
    let policy: Value = serde_json::from_str(&read("iam/policy.json")).expect("iam/policy.json");
    assert_eq!(policy["Version"], "2012-10-17", "iam/policy.json: Version");
    let statements = policy["Statement"]
        .as_array()
        .expect("iam/policy.json: Statement is an array");
    assert!(!statements.is_empty(), "iam/policy.json has no statement");
    statements.clone()
}

/// Every action an `Allow` statement grants.
fn granted_actions() -> BTreeSet<String> {
    statements()
        .iter()
        .filter(|statement| statement["Effect"] == "Allow")
        .flat_map(|statement| strings(&statement["Action"], "Action"))
        .collect()
}

#[test]
fn the_scan_reads_calls_split_over_lines_and_skips_other_client_methods() {
    let source = "self.client\n    .get_parameters_by_path()\n    .path(p)\n\
                  copy(self.client.register_task_definition(), &base)\n\
                  .client_token(&t)\n.client_request_token(t)\nself.client.clone()";
    let found: Vec<String> = operations(source).into_iter().collect();
    assert_eq!(
        found,
        ["get_parameters_by_path", "register_task_definition"]
    );
    assert_eq!(pascal("describe_stack_events"), "DescribeStackEvents");
}

/// The vocabulary of operations (`runner_updater_ports::AwsOp`: spans, metrics, rate-limit
/// weights, the benchmark's counts, the simulation's faults) is what the adapters really call:
/// an operation added to one and not the other fails here.
#[test]
fn the_adapters_call_exactly_the_operations_of_the_vocabulary() {
    let called: BTreeSet<String> = called_actions().into_keys().collect();
    let vocabulary: BTreeSet<String> = AwsOp::ALL.iter().map(|op| op.iam_action()).collect();
    assert_eq!(
        called, vocabulary,
        "the SDK calls of crates/aws/src/ and AwsOp (crates/ports/src/aws_op.rs) differ"
    );
}

#[test]
fn every_sdk_operation_the_adapters_call_is_granted() {
    let granted = granted_actions();
    for (action, file) in called_actions() {
        assert!(
            granted.contains(&action),
            "iam/policy.json does not grant {action}, which {file} calls: add it to a statement \
             (scoped as narrowly as AWS allows) and to iam/README.md"
        );
    }
}

#[test]
fn the_policy_grants_nothing_the_controller_does_not_need() {
    let called = called_actions();
    let granted = granted_actions();
    for action in &granted {
        assert!(
            called.contains_key(action) || EXTRAS.iter().any(|(extra, _)| extra == action),
            "iam/policy.json grants {action}, which crates/aws/src/ never calls: remove it, or list it \
             in EXTRAS with the reason"
        );
    }
    for (extra, reason) in EXTRAS {
        assert!(
            granted.contains(extra),
            "iam/policy.json does not grant {extra} ({reason})"
        );
    }
}

#[test]
fn the_policy_has_no_wildcard_action_and_scopes_every_action_it_can() {
    let mut sids = BTreeSet::new();
    for statement in statements() {
        let sid = statement["Sid"].as_str().unwrap_or_default().to_owned();
        assert!(
            !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
            "every statement needs an alphanumeric Sid: {statement}"
        );
        assert!(sids.insert(sid.clone()), "Sid {sid} is used twice");
        assert_eq!(statement["Effect"], "Allow", "{sid}: only Allow statements");
        for key in ["NotAction", "NotResource", "NotPrincipal"] {
            assert!(statement.get(key).is_none(), "{sid}: {key} is not used");
        }
        let actions = strings(&statement["Action"], &sid);
        for action in &actions {
            let (service, operation) = action
                .split_once(':')
                .unwrap_or_else(|| panic!("{sid}: {action} is not service:Operation"));
            assert!(
                !action.contains('*')
                    && !service.is_empty()
                    && operation.starts_with(|c: char| c.is_ascii_uppercase())
                    && operation.chars().all(|c| c.is_ascii_alphanumeric()),
                "{sid}: {action} is not an exact action (no wildcard)"
            );
        }
        let resources = strings(&statement["Resource"], &sid);
        if resources.iter().any(|r| r == "*") {
            for action in &actions {
                assert!(
                    UNSCOPED.contains(&action.as_str()),
                    "{sid}: {action} is granted on every resource, but AWS can scope it"
                );
            }
        }
        if actions.iter().any(|a| a == "ecs:ListTasks") {
            assert!(
                statement["Condition"]["ArnEquals"]["ecs:cluster"].is_string(),
                "{sid}: ecs:ListTasks must be held to the cluster (condition ecs:cluster)"
            );
        }
    }
}

#[test]
fn the_readme_explains_every_statement_and_extra() {
    let readme = read("iam/README.md");
    for statement in statements() {
        let sid = statement["Sid"].as_str().unwrap_or_default();
        assert!(
            readme.contains(&format!("`{sid}`")),
            "iam/README.md does not explain statement {sid}"
        );
    }
    for (extra, _) in EXTRAS {
        assert!(
            readme.contains(extra),
            "iam/README.md does not name {extra}"
        );
    }
}

/// The CloudFormation port's methods, with the operation each makes (what `setup` may call).
const CFN_PORT: [(&str, AwsOp); 6] = [
    ("describe_stack", AwsOp::DescribeStacks),
    ("create_change_set", AwsOp::CreateChangeSet),
    ("describe_change_set", AwsOp::DescribeChangeSet),
    ("execute_change_set", AwsOp::ExecuteChangeSet),
    ("delete_change_set", AwsOp::DeleteChangeSet),
    ("stack_events", AwsOp::DescribeStackEvents),
];

/// What CloudFormation calls with the caller's credentials to create and update the template's
/// table (the `AWS::DynamoDB::Table` resource handler: create, update, read of the properties
/// the template sets, and the describes it makes for every table). The running controller
/// holds none of them.
const TABLE_HANDLER: [&str; 12] = [
    "dynamodb:CreateTable",
    "dynamodb:DescribeContinuousBackups",
    "dynamodb:DescribeContributorInsights",
    "dynamodb:DescribeKinesisStreamingDestination",
    "dynamodb:DescribeTable",
    "dynamodb:DescribeTimeToLive",
    "dynamodb:GetResourcePolicy",
    "dynamodb:ListTagsOfResource",
    "dynamodb:TagResource",
    "dynamodb:UntagResource",
    "dynamodb:UpdateContinuousBackups",
    "dynamodb:UpdateTable",
];

/// What CloudFormation calls with the caller's credentials to create, update and remove the
/// change events' path (`Events=on`): the `AWS::SQS::Queue` and `AWS::SQS::QueuePolicy`
/// handlers, and the `AWS::Events::Rule` handler (tagging included: CloudFormation gives the
/// stack's tags, which `setup` always sets, to every resource that takes tags).
const EVENTS_HANDLER: [&str; 17] = [
    "sqs:CreateQueue",
    "sqs:DeleteQueue",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ListQueueTags",
    "sqs:SetQueueAttributes",
    "sqs:TagQueue",
    "sqs:UntagQueue",
    "events:DeleteRule",
    "events:DescribeRule",
    "events:ListTagsForResource",
    "events:ListTargetsByRule",
    "events:PutRule",
    "events:PutTargets",
    "events:RemoveTargets",
    "events:TagResource",
    "events:UntagResource",
];

fn setup_statements() -> Vec<Value> {
    let policy: Value =
        serde_json::from_str(&read("iam/setup-policy.json")).expect("iam/setup-policy.json");
    assert_eq!(policy["Version"], "2012-10-17");
    policy["Statement"].as_array().expect("Statement").clone()
}

/// The actions `runner-updater setup` makes: the CloudFormation port's methods its code calls
/// (`cfn.<method>(`), and the table check (`check_table`: one `GetItem`).
fn setup_calls() -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    let source = read("crates/interface/src/setup.rs");
    let mut from = 0;
    while let Some(offset) = source[from..].find("cfn.") {
        let start = from + offset + "cfn.".len();
        let method: String = source[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        from = start;
        if source[start + method.len()..].starts_with('(') {
            let (_, op) = CFN_PORT
                .iter()
                .find(|(name, _)| *name == method)
                .unwrap_or_else(|| panic!("setup calls cfn.{method}: add it to CFN_PORT"));
            calls.insert(op.iam_action());
        }
    }
    assert!(
        calls.len() >= 5,
        "the scan of setup.rs found only {calls:?}"
    );
    if read("src/cli/setup.rs").contains("check_table(") {
        calls.insert(AwsOp::GetItem.iam_action());
    }
    calls
}

#[test]
fn the_setup_policy_grants_exactly_what_setup_and_the_table_handler_need() {
    let mut granted = BTreeSet::new();
    for statement in setup_statements() {
        let sid = statement["Sid"].as_str().unwrap_or_default().to_owned();
        assert_eq!(statement["Effect"], "Allow", "{sid}");
        for resource in strings(&statement["Resource"], &sid) {
            assert_ne!(resource, "*", "{sid}: every set-up action can be scoped");
        }
        granted.extend(strings(&statement["Action"], &sid));
    }
    let mut needed = setup_calls();
    needed.extend(TABLE_HANDLER.iter().map(|a| (*a).to_owned()));
    needed.extend(EVENTS_HANDLER.iter().map(|a| (*a).to_owned()));
    assert_eq!(
        granted, needed,
        "iam/setup-policy.json against setup's calls"
    );
}

#[test]
fn the_running_controller_cannot_manage_the_table_or_the_setup_stack() {
    let granted = granted_actions();
    for action in TABLE_HANDLER {
        if action == "dynamodb:DescribeTable" {
            continue;
        }
        assert!(
            !granted.contains(action),
            "iam/policy.json grants {action}: creating and changing the table is the set-up's"
        );
    }
    for action in EVENTS_HANDLER {
        if action == "sqs:GetQueueAttributes" {
            continue;
        }
        assert!(
            !granted.contains(action),
            "iam/policy.json grants {action}: making the events' queue and rules is the set-up's"
        );
    }
    assert!(!read("iam/policy.json").contains("${SetupStack}"));
    let readme = read("iam/README.md");
    for statement in setup_statements() {
        let sid = statement["Sid"].as_str().unwrap_or_default();
        assert!(readme.contains(&format!("`{sid}`")), "iam/README.md: {sid}");
    }
}
