"""moto server, plus the ECS rollout behaviour moto lacks.

EVERYTHING IN THIS FILE IS OURS (runner-updater's test harness); everything else is moto's.
moto 5.2.1 (pinned in requirements.txt; this file refuses any other version) registers
task definitions and updates services, but never runs a rollout: UpdateService only changes
`service.taskDefinition` and the single PRIMARY deployment keeps the old task definition forever
(see shared/EMULATOR.md). This harness adds, on top of moto's own ECS backend:

* UpdateService with a new task definition creates a new PRIMARY deployment (IN_PROGRESS) and
  turns the previous PRIMARY into ACTIVE, as ECS does.
* DescribeServices first advances every harness deployment by wall-clock time, by the image
  tag of the task definition's containers:
    - default:            COMPLETED after HARNESS_ROLLOUT_SECONDS, running = desired, others drained;
    - tag contains -crash: one failed task every HARNESS_ROLLOUT_SECONDS / 2; at
                           HARNESS_BREAKER_THRESHOLD failures the circuit breaker fails the
                           deployment and rolls back to the last completed task definition
                           (a new PRIMARY deployment whose reason says so).
* HARNESS_ROLLOUT_READS=N (> 0): rollouts advance by reads of the service instead of by the wall
  clock: a deployment completes at its N-th read (DescribeServices), a crashing one fails a task
  every read; tests that count calls use it, so that counts do not depend on the machine's load.
* With HARNESS_LOG set, every UpdateService call that names a task definition, and every
  StopServiceDeployment that rolls a deployment back (as the task definition it goes back to), is
  appended to that file (tests count side effects with it, repeated calls included).
* Service deployments (moto 5.2.1 has none of the APIs): every deployment UpdateService creates
  belongs to a service deployment (the service's currentServiceDeployment). ListServiceDeployments,
  DescribeServiceDeployments (up to 20 ARNs, unknown ones in `failures`; a read advances the
  rollouts like DescribeServices) and StopServiceDeployment(ROLLBACK) behave as ECS documents them,
  consistently with the rollouts above: IN_PROGRESS, then SUCCESSFUL; STOPPED when a newer update
  replaces it while in progress; ROLLBACK_IN_PROGRESS when the circuit breaker (TRIGGERED, its
  failureCount and threshold) or a stop rolls it back (a new PRIMARY deployment of the last
  completed task definition), then ROLLBACK_SUCCESSFUL once that completes. A stop of a deployment
  already stopping or rolling back is a no-op; of one that ended, ConflictException; of an unknown
  ARN, ServiceDeploymentNotFoundException.
* Services are created COMPLETED (moto's own MOTO_ECS_SERVICE_RUNNING knob, set below).
* ListTaskDefinitions as AWS answers it (moto matches familyPrefix exactly and ignores sort,
  maxResults and nextToken): a family prefix, sorted by family then revision (DESC reversed),
  in pages of maxResults (at most 100) with a nextToken.

Task health is not simulated here (moto starts no tasks for services): tests on moto use task
definitions without health checks; health is covered on the in-process simulated AWS.

CloudFormation (UPDATE change sets only; CreateStack and CREATE change sets stay moto's). moto
5.2.1 answers CreateChangeSet/ExecuteChangeSet with a happy path that ignores tags, ClientToken,
ClientRequestToken, capabilities and failures (see shared/EMULATOR.md and check_cfn.py). This
harness replaces, on top of moto's own CloudFormation backend:

* CreateChangeSet(UPDATE): TemplateBody, TemplateURL or UsePreviousTemplate=true; parameters
  resolved as AWS does (ParameterValue, UsePreviousValue=true, else the template Default, else
  "Parameters: [X] must have values"; undeclared keys and UsePreviousValue on a key the stack
  lacks are ValidationErrors, not 500s). Tags absent = the stack's tags. Capabilities are
  enforced (InsufficientCapabilitiesException "Requires capabilities : [CAPABILITY_IAM]", or
  CAPABILITY_NAMED_IAM when an IAM resource sets its name). Changes: Add / Modify / Remove
  (Modify also when only a referenced parameter changed; Replacement "False", or the value of
  the resource's Metadata "HarnessReplacement"). A change set that differs only in Tags is
  CREATE_COMPLETE with no Changes; one with no difference at all is FAILED / UNAVAILABLE with
  AWS's "didn't contain changes" StatusReason. A second change set of the same name on the stack
  is AlreadyExistsException, unless it repeats the same ClientToken and template (then the same Id).
  Stacks not in *_COMPLETE (other than ROLLBACK_COMPLETE) refuse it with AWS's "can not be updated".
* Change sets are looked up per stack (moto searches every stack by name). DescribeChangeSet of a
  missing one is ChangeSetNotFound (404); DeleteChangeSet of a missing one is a 200 no-op.
* GetTemplateSummary returns Capabilities and CapabilitiesReason.
* ExecuteChangeSet(ClientRequestToken): stack UPDATE_IN_PROGRESS, the stack's other change sets
  deleted, LastUpdatedTime = now; then
    - default: UPDATE_COMPLETE with the change set's template, parameters, tags and outputs;
      change set ExecutionStatus EXECUTE_COMPLETE (still describable);
    - a resource of the new template has Metadata {"HarnessFail": "<reason>"}: that resource is
      UPDATE_FAILED (CREATE_FAILED if the change set adds it) with <reason>, the stack goes
      UPDATE_ROLLBACK_IN_PROGRESS, then UPDATE_ROLLBACK_COMPLETE with its previous template,
      parameters and tags; change set EXECUTE_FAILED;
    - Metadata {"HarnessRollbackFail": "<reason>"}: the same, but the rollback of that resource
      fails with <reason> and the stack ends UPDATE_ROLLBACK_FAILED (StackStatusReason "The
      following resource(s) failed to update: [ID]."), keeping the new template, parameters, tags.
  Every event of the execution (stack and resource events) carries its ClientRequestToken.
  Executing again with the same ClientRequestToken is a 200 no-op; otherwise a non-AVAILABLE
  change set gives InvalidChangeSetStatus (400). ExecuteChangeSet returns 200 in every case above.
* HARNESS_CFN_SECONDS (default 0 = immediate): the stack stays UPDATE_IN_PROGRESS that many
  wall-clock seconds, and a failing one UPDATE_ROLLBACK_IN_PROGRESS that many more; resolved
  lazily when the stack or the change set is read (DescribeStacks, DescribeStackEvents, ...).
* With HARNESS_LOG set, every ExecuteChangeSet call appends `cfn-execute STACK CHANGESET TOKEN`
  (the request's values, `-` when absent; retries included).

Lost answers (every mutating call: RegisterTaskDefinition, UpdateService, CreateChangeSet,
ExecuteChangeSet, DeleteChangeSet, PutParameter, DeleteParameter), for the fault "the call takes
effect at AWS, then its answer is lost", which moto cannot produce:

* POST /harness/lose-answer {"operation": OP, "match": "s" | ["s", ...], "count": 1,
  "mode": "reset" | "delay", "delay_seconds": 30}: the next `count` requests of OP whose body
  (raw or URL-decoded) contains every match string and that moto answers 2xx are applied, then
  `reset`: the connection is closed without a response; `delay`: the response is sent only after
  delay_seconds (past the client's timeout). GET /harness/lose-answer lists the rules, each with
  `lost` (answers lost so far); POST /moto-api/reset clears them.
* With HARNESS_LOG set, every mutating call appends `api OP STATUS SUBJECT` (SUBJECT: the
  parameter name, the family, the service and task definition, or the stack and change set), a
  lost answer `lost-answer OP MODE SUBJECT`, CreateChangeSet(UPDATE) `cfn-create STACK NAME
  new|repeat` (repeat: the same ClientToken got the existing change set back) and the start of
  an execution `cfn-begin STACK NAME TOKEN`: tests count effects, not requests.
* GET /harness/ready answers 200 once the server serves.
* GET /harness/requests: every AWS request served so far, in order, as {"op", "body"} (the body
  cut at 16 KB): tests count calls at the wire with it. DELETE /harness/requests clears it.

Usage: python server.py [PORT] [--port-file PATH]   (binds 127.0.0.1; PORT 0, the default, takes
any free port; once serving, the port is written to PATH through a temporary file and a rename)
"""

import argparse
import io
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qs, unquote_plus

import moto

if moto.__version__ != "5.2.1":
    sys.exit(f"the harness is written against moto 5.2.1, found {moto.__version__}")

os.environ.setdefault("MOTO_ECS_SERVICE_RUNNING", "1")

from moto.ecs import models as ecs  # noqa: E402
from moto.ecs import responses as ecs_responses  # noqa: E402
from moto.moto_api._internal import mock_random  # noqa: E402
from moto.core.utils import utcnow  # noqa: E402
from moto.core.responses import ActionResult, EmptyResult  # noqa: E402
from moto.ecs.exceptions import ECSException  # noqa: E402
from moto.cloudformation import models as cfn  # noqa: E402
from moto.cloudformation import responses as cfn_responses  # noqa: E402
from moto.cloudformation.exceptions import CloudFormationError, ValidationError  # noqa: E402

ROLLOUT_SECONDS = float(os.environ.get("HARNESS_ROLLOUT_SECONDS", "1"))
# When set (> 0), rollouts advance by reads of the service instead of wall-clock time: a
# deployment completes at its N-th read (a crashing one fails a task every read), so that what a
# test counts does not depend on the machine's load.
ROLLOUT_READS = int(os.environ.get("HARNESS_ROLLOUT_READS", "0"))
# The circuit breaker's threshold: ECS's current rule, clamp(ceil(desired / 2), 3, 200), unless set.
BREAKER_THRESHOLD = int(os.environ.get("HARNESS_BREAKER_THRESHOLD", "0"))


def _threshold(service):
    return BREAKER_THRESHOLD or max(3, min(200, -(-service.desired_count // 2)))

_original_update = ecs.EC2ContainerServiceBackend.update_service
_original_describe = ecs.EC2ContainerServiceBackend.describe_services


_sd_lock = threading.RLock()
_service_deployments = {}  # ARN -> the service deployment (a dict of the API's fields, "_..." ours)


def _new_service_deployment(service, deployment):
    """A service deployment for a deployment of `service` (the service's current one)."""
    suffix = deployment["id"].split("/")[-1]
    arn = f"arn:aws:ecs:{service.region_name}:{service._account_id}:service-deployment/{service.cluster_name}/{service.name}/{suffix}"
    _service_deployments[arn] = {
        "serviceDeploymentArn": arn,
        "serviceArn": service.arn,
        "clusterArn": service.cluster_arn,
        "createdAt": utcnow(),
        "startedAt": utcnow(),
        "status": "IN_PROGRESS",
        "_deployment": deployment["id"],
        "_revision": f"arn:aws:ecs:{service.region_name}:{service._account_id}:service-revision/{service.cluster_name}/{service.name}/{suffix}",
        "_requested": service.desired_count,
        "_running": 0,
        "_failures": 0,
        "_threshold": _threshold(service),
        "_triggered": False,
    }
    deployment["_harness_sd"] = arn
    service.current_service_deployment = arn
    return arn


def _end_service_deployment(arn, status, reason=None):
    record = _service_deployments.get(arn)
    if record is not None:
        record["status"] = status
        record["updatedAt"] = utcnow()
        if status in ("SUCCESSFUL", "ROLLBACK_SUCCESSFUL", "STOPPED"):
            record["finishedAt"] = utcnow()
        if reason:
            record["statusReason"] = reason


def _roll_back(service, primary, reason, why):
    """The failing PRIMARY deployment rolled back: a new PRIMARY deployment of the last
    completed task definition, the service deployment ROLLBACK_IN_PROGRESS."""
    primary["rolloutState"] = "FAILED"
    primary["rolloutStateReason"] = reason
    primary["status"] = "ACTIVE"
    target = service._harness_last_completed
    rollback = _deployment(service, target, f"ECS deployment circuit breaker: rolling back to deploymentId {primary['id']}")
    rollback["_harness_sd"] = primary.get("_harness_sd")
    rollback["_harness_rollback"] = True
    service.task_definition = target
    service.deployments.insert(0, rollback)
    record = _service_deployments.get(primary.get("_harness_sd"))
    if record is not None:
        record["status"] = "ROLLBACK_IN_PROGRESS"
        record["rollback"] = {"reason": why, "startedAt": utcnow(), "serviceRevisionArn": record["_revision"]}


def _deployment(service, task_definition, reason):
    return {
        "createdAt": utcnow(),
        "updatedAt": utcnow(),
        "desiredCount": service.desired_count,
        "failedTasks": 0,
        "id": f"ecs-svc/{mock_random.randint(0, 32**12)}",
        "launchType": service.launch_type,
        "pendingCount": service.desired_count,
        "runningCount": 0,
        "rolloutState": "IN_PROGRESS",
        "rolloutStateReason": reason,
        "status": "PRIMARY",
        "taskDefinition": task_definition,
        "_harness_started": time.monotonic(),
    }


def update_service(self, properties):
    new_task_definition = properties.get("task_definition")
    log = os.environ.get("HARNESS_LOG")
    if log and new_task_definition:  # every UpdateService with a task definition: tests count them
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{properties.get('service', '').split('/')[-1]} {new_task_definition}\n")
    service = _original_update(self, dict(properties))
    if not new_task_definition or not service.deployments:
        return service
    primary = service.deployments[0]
    if primary.get("taskDefinition") == new_task_definition and "_harness_started" in primary:
        return service
    if not hasattr(service, "_harness_last_completed"):
        service._harness_last_completed = primary.get("taskDefinition")
    with _sd_lock:
        for deployment in service.deployments:
            if deployment["status"] == "PRIMARY":
                deployment["status"] = "ACTIVE"
                # A deployment still rolling out (or back) is stopped by the new one.
                if deployment.get("rolloutState") == "IN_PROGRESS" and deployment.get("_harness_sd"):
                    _end_service_deployment(deployment["_harness_sd"], "STOPPED", "a newer service deployment replaced it")
        new = _deployment(service, new_task_definition, "ECS deployment in progress.")
        service.deployments.insert(0, new)
        _new_service_deployment(service, new)
    return service


def _image_tags(backend, task_definition):
    try:
        definition = backend.describe_task_definition(task_definition)
    except Exception:  # noqa: BLE001 - a missing definition behaves as healthy
        return ""
    return " ".join(c.get("image", "") for c in definition.container_definitions)


def _advance(backend, service):
    if not service.deployments or "_harness_started" not in service.deployments[0]:
        return
    primary = service.deployments[0]
    if primary["rolloutState"] != "IN_PROGRESS":
        return
    if ROLLOUT_READS > 0:
        primary["_harness_reads"] = primary.get("_harness_reads", 0) + 1
        # In units of a rollout: complete at the N-th read, a failed task every read.
        elapsed = primary["_harness_reads"] * ROLLOUT_SECONDS / ROLLOUT_READS
        crash_step = ROLLOUT_SECONDS / ROLLOUT_READS
    else:
        elapsed = time.monotonic() - primary["_harness_started"]
        crash_step = ROLLOUT_SECONDS / 2
    images = _image_tags(backend, primary["taskDefinition"])
    record = _service_deployments.get(primary.get("_harness_sd"))
    if "-crash" in images and not primary.get("_harness_rollback"):
        primary["failedTasks"] = int(elapsed / crash_step)
        if record is not None:
            record["_failures"] = primary["failedTasks"]
        if primary["failedTasks"] >= _threshold(service):
            if record is not None:
                record["_triggered"] = True
            _roll_back(service, primary, "ECS deployment circuit breaker: tasks failed to start.", "tasks failed to start")
        return
    if elapsed >= ROLLOUT_SECONDS:
        primary["rolloutState"] = "COMPLETED"
        primary["rolloutStateReason"] = f"ECS deployment {primary['id']} completed."
        primary["runningCount"] = service.desired_count
        primary["pendingCount"] = 0
        primary["updatedAt"] = utcnow()
        service.deployments[:] = [primary]
        service._harness_last_completed = primary["taskDefinition"]
        service.running_count = service.desired_count
        service.pending_count = 0
        if record is not None:
            if primary.get("_harness_rollback"):
                _end_service_deployment(primary["_harness_sd"], "ROLLBACK_SUCCESSFUL")
            else:
                record["_running"] = service.desired_count
                _end_service_deployment(primary["_harness_sd"], "SUCCESSFUL")


def describe_services(self, cluster, names):
    services, failures = _original_describe(self, cluster, names)
    with _sd_lock:
        for service in services:
            _advance(self, service)
    return services, failures


class ServiceDeploymentNotFound(ECSException):
    def __init__(self, arn):
        super().__init__("ServiceDeploymentNotFoundException", f"The service deployment {arn} does not exist.")


class EcsConflict(ECSException):
    def __init__(self, message):
        super().__init__("ConflictException", message)


def _service_of(backend, record):
    cluster = record["clusterArn"].split("/")[-1]
    name = record["serviceArn"].split("/")[-1]
    try:
        services, _ = _original_describe(backend, cluster, [name])
    except Exception:  # noqa: BLE001 - a deleted cluster or service: nothing to advance
        return None
    return services[0] if services else None


def _described(record):
    """A service deployment as DescribeServiceDeployments answers it."""
    answer = {k: v for k, v in record.items() if not k.startswith("_")}
    answer["targetServiceRevision"] = {
        "arn": record["_revision"],
        "requestedTaskCount": record["_requested"],
        "runningTaskCount": record["_running"],
        "pendingTaskCount": max(0, record["_requested"] - record["_running"]),
    }
    answer["deploymentCircuitBreaker"] = {
        "status": "TRIGGERED" if record["_triggered"] else ("MONITORING_COMPLETE" if record["status"] == "SUCCESSFUL" else "MONITORING"),
        "failureCount": record["_failures"],
        "threshold": record["_threshold"],
    }
    return answer


def describe_service_deployments(self):
    arns = self._get_param("serviceDeploymentArns", [])
    found, failures = [], []
    with _sd_lock:
        for arn in arns:
            record = _service_deployments.get(arn)
            if record is None:
                failures.append({"arn": arn, "reason": "MISSING", "detail": "The service deployment does not exist."})
                continue
            service = _service_of(self.ecs_backend, record)
            if service is not None:
                _advance(self.ecs_backend, service)
            found.append(_described(record))
    return ActionResult({"serviceDeployments": found, "failures": failures})


def list_service_deployments(self):
    cluster = (self._get_param("cluster") or "default").split("/")[-1]
    service = self._get_param("service").split("/")[-1]
    statuses = self._get_param("status") or []
    with _sd_lock:
        listed = [
            {
                "serviceDeploymentArn": r["serviceDeploymentArn"],
                "serviceArn": r["serviceArn"],
                "clusterArn": r["clusterArn"],
                "createdAt": r["createdAt"],
                "startedAt": r["startedAt"],
                "status": r["status"],
                "targetServiceRevisionArn": r["_revision"],
            }
            for r in _service_deployments.values()
            if r["clusterArn"].split("/")[-1] == cluster
            and r["serviceArn"].split("/")[-1] == service
            and (not statuses or r["status"] in statuses)
        ]
    listed.sort(key=lambda r: r["createdAt"], reverse=True)
    return ActionResult({"serviceDeployments": listed})


def stop_service_deployment(self):
    arn = self._get_param("serviceDeploymentArn")
    with _sd_lock:
        record = _service_deployments.get(arn)
        if record is None:
            raise ServiceDeploymentNotFound(arn)
        service = _service_of(self.ecs_backend, record)
        if service is not None:
            _advance(self.ecs_backend, service)
        status = record["status"]
        if status in ("STOP_REQUESTED", "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS"):
            return ActionResult({"serviceDeploymentArn": arn})
        if status not in ("PENDING", "IN_PROGRESS"):
            raise EcsConflict(f"The service deployment is {status} and cannot be stopped.")
        primary = service.deployments[0] if service is not None and service.deployments else None
        if primary is None or primary.get("_harness_sd") != arn or primary["taskDefinition"] == service._harness_last_completed:
            raise EcsConflict("The service deployment has no earlier service revision to roll back to.")
        _roll_back(service, primary, "ECS deployment stopped: rolling back", "rollback requested (StopServiceDeployment)")
        log = os.environ.get("HARNESS_LOG")
        if log:  # the rollback is a change of the service's task definition: tests count them
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{service.name} {service.task_definition}\n")
    return ActionResult({"serviceDeploymentArn": arn})


ecs_responses.EC2ContainerServiceResponse.describe_service_deployments = describe_service_deployments
ecs_responses.EC2ContainerServiceResponse.list_service_deployments = list_service_deployments
ecs_responses.EC2ContainerServiceResponse.stop_service_deployment = stop_service_deployment


ecs.EC2ContainerServiceBackend.update_service = update_service
ecs.EC2ContainerServiceBackend.describe_services = describe_services


def list_task_definitions(self):
    """ListTaskDefinitions as AWS answers it: familyPrefix is a prefix (moto: an exact family),
    sort ASC/DESC by family then revision, maxResults (1..100, default 100) and nextToken."""
    prefix = self._get_param("familyPrefix") or ""
    status = self._get_param("status", "ACTIVE")
    descending = self._get_param("sort", "ASC") == "DESC"
    limit = max(1, min(int(self._get_param("maxResults") or 100), 100))
    start = int(self._get_param("nextToken") or 0)
    listed = [
        (definition.family, definition.revision, definition.arn)
        for revisions in self.ecs_backend.task_definitions.values()
        for definition in revisions.values()
        if definition.family.startswith(prefix) and definition.status == status
    ]
    listed.sort(reverse=descending)
    page = listed[start:start + limit]
    result = {"taskDefinitionArns": [arn for _, _, arn in page]}
    if start + limit < len(listed):
        result["nextToken"] = str(start + limit)
    return ActionResult(result)


ecs_responses.EC2ContainerServiceResponse.list_task_definitions = list_task_definitions


# --- CloudFormation ------------------------------------------------------------------------------

CFN_SECONDS = float(os.environ.get("HARNESS_CFN_SECONDS", "0"))
NO_CHANGES = "The submitted information didn't contain changes. Submit different information to create a change set."
UPDATABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE", "IMPORT_ROLLBACK_COMPLETE"}
# IAM resource types that need a capability, with the property that makes them "named".
IAM_TYPES = {
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::User": "UserName",
    "AWS::IAM::Group": "GroupName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::IAM::InstanceProfile": "InstanceProfileName",
    "AWS::IAM::Policy": None,
    "AWS::IAM::AccessKey": None,
    "AWS::IAM::UserToGroupAddition": None,
}
_cfn_lock = threading.RLock()  # ThreadedMotoServer serves requests concurrently

_original_get_stack = cfn.CloudFormationBackend.get_stack
_original_describe_stacks = cfn.CloudFormationBackend.describe_stacks
_original_create_change_set = cfn_responses.CloudFormationResponse.create_change_set
_original_execute_change_set = cfn_responses.CloudFormationResponse.execute_change_set
_original_get_template_summary = cfn_responses.CloudFormationResponse.get_template_summary


class ChangeSetNotFound(CloudFormationError):
    code = "ChangeSetNotFound"  # 404 from the botocore model

    def __init__(self, name):
        super().__init__(f"ChangeSet [{name}] does not exist")


class InvalidChangeSetStatus(CloudFormationError):
    code = "InvalidChangeSetStatus"


class ChangeSetAlreadyExists(CloudFormationError):
    code = "AlreadyExistsException"


class InsufficientCapabilities(CloudFormationError):
    code = "InsufficientCapabilitiesException"


def _log(line):
    log = os.environ.get("HARNESS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _truthy(value):
    return value is True or str(value).lower() == "true"


def _text(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _references(node):
    """Parameter/resource names a template fragment refers to (Ref and ${Name} in Fn::Sub)."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) and value else value
                if isinstance(text, str):
                    found.update(n for n in re.findall(r"\$\{([^}!.]+)\}", text))
                found |= _references(value[1:] if isinstance(value, list) else None)
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _previous_parameters(stack):
    """The stack's parameter values as a caller sees them (input or template default), as text."""
    previous = {}
    inputs = stack.resource_map.input_parameters
    for key, spec in (stack.template_dict.get("Parameters") or {}).items():
        if key in inputs:
            previous[key] = _text(inputs[key])
        elif spec.get("Default") is not None:
            previous[key] = _text(spec["Default"])
    return previous


def _resolve_parameters(stack, template_dict, incoming):
    declared = template_dict.get("Parameters") or {}
    previous = _previous_parameters(stack)
    given = {}
    for parameter in incoming:
        key = parameter["ParameterKey"]
        if _truthy(parameter.get("UsePreviousValue", False)):
            if parameter.get("ParameterValue") not in (None, ""):
                raise ValidationError(
                    message=f"Invalid input for parameter key {key}. Cannot specify usePreviousValue as true "
                    "and non empty value for a parameter"
                )
            if key not in previous:
                raise ValidationError(
                    message=f"Invalid input for parameter key {key}. Cannot specify usePreviousValue as true "
                    "for a parameter key not in the previous template"
                )
            given[key] = previous[key]
        else:
            given[key] = _text(parameter.get("ParameterValue", ""))
    undeclared = [key for key in given if key not in declared]
    if undeclared:
        raise ValidationError(message=f"Parameters: [{', '.join(undeclared)}] do not exist in the template")
    resolved, missing = {}, []
    for key, spec in declared.items():
        if key in given:
            resolved[key] = given[key]
        elif spec.get("Default") is not None:
            resolved[key] = _text(spec["Default"])
        else:
            missing.append(key)
    if missing:
        raise ValidationError(message=f"Parameters: [{', '.join(missing)}] must have values")
    return resolved


def _required_capabilities(template_dict):
    types, named = [], False
    for resource in (template_dict.get("Resources") or {}).values():
        kind = resource.get("Type")
        if kind in IAM_TYPES:
            types.append(kind)
            name_property = IAM_TYPES[kind]
            named = named or bool(name_property and name_property in (resource.get("Properties") or {}))
    if not types:
        return [], []
    return (["CAPABILITY_NAMED_IAM"] if named else ["CAPABILITY_IAM"]), sorted(set(types))


def _check_capabilities(template_dict, given):
    required, _ = _required_capabilities(template_dict)
    if required == ["CAPABILITY_IAM"] and ({"CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"} & set(given)):
        return
    if required == ["CAPABILITY_NAMED_IAM"] and "CAPABILITY_NAMED_IAM" in given:
        return
    if required:
        raise InsufficientCapabilities(f"Requires capabilities : [{required[0]}]")


def _check_updatable(stack):
    if stack.status not in UPDATABLE:
        raise ValidationError(message=f"Stack:{stack.stack_id} is in {stack.status} state and can not be updated.")


def _changes(stack, template_dict, old_parameters, new_parameters):
    old = stack.template_dict.get("Resources") or {}
    new = template_dict.get("Resources") or {}
    changed = {k for k in set(old_parameters) | set(new_parameters) if old_parameters.get(k) != new_parameters.get(k)}
    changes = []
    for name, resource in new.items():
        if name not in old:
            changes.append(cfn.Change("Add", name, resource.get("Type")))
        elif resource != old[name] or changed & _references(resource):
            change = cfn.Change("Modify", name, resource.get("Type"))
            change.replacement = str((resource.get("Metadata") or {}).get("HarnessReplacement", "False"))
            changes.append(change)
    for name, resource in old.items():
        if name not in new:
            changes.append(cfn.Change("Remove", name, resource.get("Type")))
    return changes


def _failure(template_dict):
    """(logical id, type, forward reason, rollback reason or None) of the first marked resource."""
    for name, resource in (template_dict.get("Resources") or {}).items():
        metadata = resource.get("Metadata") or {}
        if isinstance(metadata, dict) and ("HarnessFail" in metadata or "HarnessRollbackFail" in metadata):
            rollback = metadata.get("HarnessRollbackFail")
            forward = metadata.get("HarnessFail", rollback)
            return name, resource.get("Type"), str(forward), (None if rollback is None else str(rollback))
    return None


def _stack_change_sets(backend, stack):
    return [cs for cs in backend.change_sets.values() if cs.stack_id == stack.stack_id]


def _lookup_change_set(backend, stack_name, change_set_name):
    if change_set_name and change_set_name.startswith("arn:"):
        change_set = backend.change_sets.get(change_set_name)
        if change_set is None:
            raise ChangeSetNotFound(change_set_name)
        return change_set
    if not stack_name:
        raise ValidationError(message="StackName must be specified if ChangeSetName is not specified as an ARN.")
    stack = backend.get_stack(stack_name)
    for change_set in _stack_change_sets(backend, stack):
        if change_set.change_set_name == change_set_name:
            return change_set
    raise ChangeSetNotFound(change_set_name)


def _event(stack, token, when, logical_id, status, reason=None, resource_type=None):
    if logical_id is None:
        logical_id, physical_id, resource_type = stack.name, stack.stack_id, "AWS::CloudFormation::Stack"
    else:
        resource = stack.resource_map._parsed_resources.get(logical_id)
        physical_id = getattr(resource, "physical_resource_id", "") or ""
    event = cfn.Event(stack.stack_id, stack.name, logical_id, physical_id, resource_type, status, reason, None)
    event.client_request_token = token
    if stack.events and when <= stack.events[-1].timestamp:  # keep timestamps strictly increasing
        when = stack.events[-1].timestamp + timedelta(milliseconds=1)
    event.timestamp = when
    stack.events.append(event)


_VERBS = {"Add": "CREATE", "Modify": "UPDATE", "Remove": "DELETE"}


def _begin(backend, stack, change_set, token):
    now = utcnow()
    for other in _stack_change_sets(backend, stack):  # AWS deletes the stack's other change sets
        if other is not change_set:
            del backend.change_sets[other.change_set_id]
    _log(f"cfn-begin {stack.name} {change_set.change_set_name} {token or '-'}")
    change_set.execution_status = "EXECUTE_IN_PROGRESS"
    change_set._harness_exec_token = token
    stack.status = "UPDATE_IN_PROGRESS"
    stack.stack_status_reason = "User Initiated"
    stack.last_updated_time = now
    failure = _failure(change_set.template_dict)
    _event(stack, token, now, None, "UPDATE_IN_PROGRESS", "User Initiated")
    touched = [(c.logical_resource_id, c.resource_type, _VERBS[c.action]) for c in change_set.changes if c.action != "Remove"]
    if failure and failure[0] not in [t[0] for t in touched]:
        touched.append((failure[0], failure[1], "UPDATE"))
    for logical_id, resource_type, verb in touched:
        _event(stack, token, now, logical_id, f"{verb}_IN_PROGRESS", resource_type=resource_type)
    stack._harness_op = {
        "change_set": change_set,
        "token": token,
        "started": time.monotonic(),
        "wall": now,
        "phase": "update",
        "failure": failure,
        "touched": touched,
    }


def _apply(stack, change_set):
    change_set.apply()  # moto's own resource update
    stack.template = change_set.template
    stack._parse_template()
    stack.description = stack.template_dict.get("Description")
    stack.parameters = dict(change_set.parameters)
    stack.output_map = stack._create_output_map()
    stack.tags = dict(change_set.tags or {})


def _settle(stack):
    """Advance a harness execution of this stack by wall-clock time (HARNESS_CFN_SECONDS)."""
    op = getattr(stack, "_harness_op", None)
    while op is not None:
        elapsed = time.monotonic() - op["started"]
        change_set, token, failure = op["change_set"], op["token"], op["failure"]
        if op["phase"] == "update":
            if elapsed < CFN_SECONDS:
                return
            when = op["wall"] + timedelta(seconds=CFN_SECONDS)
            for logical_id, resource_type, verb in op["touched"]:
                if not failure or logical_id != failure[0]:
                    _event(stack, token, when, logical_id, f"{verb}_COMPLETE", resource_type=resource_type)
            if failure is None:
                _apply(stack, change_set)
                _event(stack, token, when, None, "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
                for change in change_set.changes:
                    if change.action == "Remove":
                        _event(stack, token, when, change.logical_resource_id, "DELETE_IN_PROGRESS", resource_type=change.resource_type)
                        _event(stack, token, when, change.logical_resource_id, "DELETE_COMPLETE", resource_type=change.resource_type)
                _event(stack, token, when, None, "UPDATE_COMPLETE")
                stack.status, stack.stack_status_reason = "UPDATE_COMPLETE", None
                change_set.execution_status = "EXECUTE_COMPLETE"
                stack._harness_op = op = None
                continue
            verb = dict((t[0], t[2]) for t in op["touched"])[failure[0]]
            _event(stack, token, when, failure[0], f"{verb}_FAILED", failure[2], failure[1])
            reason = f"The following resource(s) failed to {verb.lower()}: [{failure[0]}]. "
            _event(stack, token, when, None, "UPDATE_ROLLBACK_IN_PROGRESS", reason)
            stack.status, stack.stack_status_reason = "UPDATE_ROLLBACK_IN_PROGRESS", reason
            op["phase"] = "rollback"
        else:
            if elapsed < 2 * CFN_SECONDS:
                return
            when = op["wall"] + timedelta(seconds=2 * CFN_SECONDS)
            if failure[3] is not None:  # HarnessRollbackFail: the rollback of that resource fails
                _event(stack, token, when, failure[0], "UPDATE_IN_PROGRESS", resource_type=failure[1])
                _event(stack, token, when, failure[0], "UPDATE_FAILED", failure[3], failure[1])
                reason = f"The following resource(s) failed to update: [{failure[0]}]."
                _apply(stack, change_set)  # nothing restored
                _event(stack, token, when, None, "UPDATE_ROLLBACK_FAILED", reason)
                stack.status, stack.stack_status_reason = "UPDATE_ROLLBACK_FAILED", reason
            else:  # the previous template, parameters and tags stay (moto never applied the change set)
                for logical_id, resource_type, verb in op["touched"]:
                    if verb == "UPDATE":
                        _event(stack, token, when, logical_id, "UPDATE_IN_PROGRESS", resource_type=resource_type)
                        _event(stack, token, when, logical_id, "UPDATE_COMPLETE", resource_type=resource_type)
                _event(stack, token, when, None, "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS")
                for logical_id, resource_type, verb in op["touched"]:
                    if verb == "CREATE":
                        _event(stack, token, when, logical_id, "DELETE_IN_PROGRESS", resource_type=resource_type)
                        _event(stack, token, when, logical_id, "DELETE_COMPLETE", resource_type=resource_type)
                _event(stack, token, when, None, "UPDATE_ROLLBACK_COMPLETE")
                stack.status, stack.stack_status_reason = "UPDATE_ROLLBACK_COMPLETE", None
            change_set.execution_status = "EXECUTE_FAILED"
            stack._harness_op = op = None


def get_stack(self, name_or_stack_id):
    with _cfn_lock:
        stack = _original_get_stack(self, name_or_stack_id)
        _settle(stack)
        return stack


def describe_stacks(self, name_or_stack_id):
    with _cfn_lock:
        stacks = _original_describe_stacks(self, name_or_stack_id)
        for stack in stacks:
            _settle(stack)
        return stacks


def create_change_set(self):
    if self._get_param("ChangeSetType", "CREATE") != "UPDATE":
        return _original_create_change_set(self)
    with _cfn_lock:
        backend = self.cloudformation_backend
        stack = backend.get_stack(self._get_param("StackName"))
        self.validate_template_and_stack_body()
        _check_updatable(stack)
        if self._get_bool_param("UsePreviousTemplate", False):
            body = stack.template
        elif self._get_param("TemplateURL"):
            body = self._get_stack_from_s3_url(self._get_param("TemplateURL"))
        else:
            body = self._get_param("TemplateBody")
        template_dict = cfn.Stack.parse_template(body)
        parameters = _resolve_parameters(stack, template_dict, self._get_param("Parameters", []))
        capabilities = self._get_param("Capabilities", [])
        _check_capabilities(template_dict, capabilities)
        tags = {t["Key"]: t["Value"] for t in self._get_param("Tags", [])} or dict(stack.tags)
        name, token = self._get_param("ChangeSetName"), self._get_param("ClientToken")
        for existing in _stack_change_sets(backend, stack):
            if existing.change_set_name != name:
                continue
            if not token or token != getattr(existing, "_harness_client_token", None):
                raise ChangeSetAlreadyExists(f"ChangeSet {name} cannot be created due to a mismatch with existing attribute ClientToken")
            if existing.template_dict != template_dict:
                raise ChangeSetAlreadyExists(f"ChangeSet {name} cannot be created due to a mismatch with existing attribute Template")
            _log(f"cfn-create {stack.name} {name} repeat")
            return ActionResult({"Id": existing.change_set_id, "StackId": stack.stack_id})
        _log(f"cfn-create {stack.name} {name} new")
        change_set_id, stack_id = backend.create_change_set(
            stack_name=stack.name,
            change_set_name=name,
            template=body,
            parameters=parameters,
            description=self._get_param("Description"),
            change_set_type="UPDATE",
            notification_arns=self._get_param("NotificationARNs", []),
            tags=tags,
            role_arn=self._get_param("RoleARN"),
        )
        change_set = backend.change_sets[change_set_id]
        change_set.stack = stack  # moto matches by name only; make sure it is this stack
        change_set.capabilities = capabilities or None
        change_set._harness_client_token = token
        previous = _previous_parameters(stack)
        change_set.changes = _changes(stack, template_dict, previous, parameters)
        if template_dict == stack.template_dict and parameters == previous and tags == stack.tags:
            change_set.status, change_set.execution_status = "FAILED", "UNAVAILABLE"
            change_set.status_reason = NO_CHANGES
        else:
            change_set.status, change_set.execution_status, change_set.status_reason = "CREATE_COMPLETE", "AVAILABLE", None
        return ActionResult({"Id": change_set_id, "StackId": stack_id})


def describe_change_set(self):
    with _cfn_lock:
        backend = self.cloudformation_backend
        change_set = _lookup_change_set(backend, self._get_param("StackName"), self._get_param("ChangeSetName"))
        _settle(change_set.stack)
        return ActionResult(change_set)


def delete_change_set(self):
    with _cfn_lock:
        backend = self.cloudformation_backend
        try:
            change_set = _lookup_change_set(backend, self._get_param("StackName"), self._get_param("ChangeSetName"))
        except ChangeSetNotFound:
            return EmptyResult()  # AWS answers 200 for a missing change set of an existing stack
        _settle(change_set.stack)
        if change_set.execution_status == "EXECUTE_IN_PROGRESS":
            raise InvalidChangeSetStatus(
                "An operation on this ChangeSet is currently in progress.  Please attempt this operation again later."
            )
        del backend.change_sets[change_set.change_set_id]
        return EmptyResult()


def execute_change_set(self):
    stack_name, name = self._get_param("StackName"), self._get_param("ChangeSetName")
    token = self._get_param("ClientRequestToken")
    _log(f"cfn-execute {stack_name or '-'} {name or '-'} {token or '-'}")
    with _cfn_lock:
        backend = self.cloudformation_backend
        change_set = _lookup_change_set(backend, stack_name, name)
        if change_set.change_set_type != "UPDATE":
            return _original_execute_change_set(self)
        stack = change_set.stack
        _settle(stack)
        if (
            token
            and token == getattr(change_set, "_harness_exec_token", None)
            and change_set.execution_status in ("EXECUTE_IN_PROGRESS", "EXECUTE_COMPLETE", "EXECUTE_FAILED")
        ):
            return EmptyResult()  # an idempotent retry of the same execution
        if change_set.status != "CREATE_COMPLETE":
            raise InvalidChangeSetStatus(
                f"ChangeSet [{change_set.change_set_id}] cannot be executed in its current status of [{change_set.status}]"
            )
        if change_set.execution_status != "AVAILABLE":
            raise InvalidChangeSetStatus(
                f"ChangeSet [{change_set.change_set_id}] cannot be executed in its current execution status of "
                f"[{change_set.execution_status}]"
            )
        _check_updatable(stack)
        _begin(backend, stack, change_set, token)
        _settle(stack)
        return EmptyResult()


def get_template_summary(self):
    with _cfn_lock:
        result = _original_get_template_summary(self)
    summary = result.result
    capabilities, types = _required_capabilities(summary)
    if capabilities:
        summary["Capabilities"] = capabilities
        summary["CapabilitiesReason"] = f"The following resource(s) require capabilities: [{', '.join(types)}]"
    if isinstance(summary.get("Metadata"), dict):
        summary["Metadata"] = json.dumps(summary["Metadata"])
    return result


cfn.CloudFormationBackend.get_stack = get_stack
cfn.CloudFormationBackend.describe_stacks = describe_stacks
cfn_responses.CloudFormationResponse.create_change_set = create_change_set
cfn_responses.CloudFormationResponse.describe_change_set = describe_change_set
cfn_responses.CloudFormationResponse.delete_change_set = delete_change_set
cfn_responses.CloudFormationResponse.execute_change_set = execute_change_set
cfn_responses.CloudFormationResponse.get_template_summary = get_template_summary
cfn_responses.CloudFormationResponse.RESPONSE_KEY_PATH_TO_TRANSFORMER["DescribeChangeSetOutput.Tags"] = (
    lambda tags: cfn_responses.transform_dict(tags or {})
)


# --- Lost answers: the call takes effect, then its answer is lost --------------------------------

MUTATING = {
    "RegisterTaskDefinition",
    "UpdateService",
    "StopServiceDeployment",
    "CreateChangeSet",
    "ExecuteChangeSet",
    "DeleteChangeSet",
    "PutParameter",
    "DeleteParameter",
}
LOSE_MODES = ("reset", "delay")
_journal_lock = threading.Lock()
_journal = []  # every AWS request served, in order: {"op": OPERATION, "body": TEXT (at most 16 KB)}
JOURNAL_MAX = 100_000
_rules_lock = threading.Lock()
_rules = []  # dicts: id, operation, match (list of substrings), count (left), mode, delay, lost


def _operation(environ, body):
    """The API operation of a request: X-Amz-Target (JSON protocols: SSM, ECS), else the
    query protocol's Action (CloudFormation, in the body or the query string)."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1]
    for text in (body.decode("utf-8", "replace"), environ.get("QUERY_STRING", "")):
        action = parse_qs(text).get("Action")
        if action:
            return action[0]
    return None


def _subject(operation, body):
    """What a mutating call acts on, for the log: parameter, family, service and task
    definition, or stack and change set."""
    text = body.decode("utf-8", "replace")
    try:
        fields = json.loads(text) if text.startswith("{") else {k: v[0] for k, v in parse_qs(text).items()}
    except ValueError:
        return "-"
    keys = {
        "PutParameter": ["Name"],
        "DeleteParameter": ["Name"],
        "RegisterTaskDefinition": ["family"],
        "UpdateService": ["service", "taskDefinition"],
        "StopServiceDeployment": ["serviceDeploymentArn"],
    }.get(operation, ["StackName", "ChangeSetName"])
    return " ".join(str(fields.get(k) or "-").split("/")[-1] if k == "service" else str(fields.get(k) or "-") for k in keys)


def _take_rule(operation, body):
    """The first armed rule matching this request, its count taken; None if none."""
    if not _rules:
        return None
    texts = (body.decode("utf-8", "replace"), unquote_plus(body.decode("utf-8", "replace")))
    with _rules_lock:
        for rule in _rules:
            if rule["count"] <= 0 or rule["operation"] != operation:
                continue
            if all(any(m in t for t in texts) for m in rule["match"]):
                rule["count"] -= 1
                rule["lost"] += 1
                return dict(rule)
    return None


def _json_response(start_response, status, payload):
    data = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _control(environ, start_response):
    """/harness/...: arm a lost answer, list the rules, answer a readiness probe."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
    if path == "/harness/ready":
        return _json_response(start_response, "200 OK", {"ready": True, "moto": moto.__version__})
    if path == "/harness/requests" and method == "GET":
        with _journal_lock:
            return _json_response(start_response, "200 OK", list(_journal))
    if path == "/harness/requests" and method == "DELETE":
        with _journal_lock:
            _journal.clear()
            return _json_response(start_response, "200 OK", [])
    if path == "/harness/lose-answer" and method == "GET":
        with _rules_lock:
            return _json_response(start_response, "200 OK", [dict(r) for r in _rules])
    if path == "/harness/lose-answer" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            spec = json.loads(environ["wsgi.input"].read(length) or b"{}")
            operation = spec["operation"]
            match = spec.get("match") or []
            match = [match] if isinstance(match, str) else list(match)
            mode = spec.get("mode", "reset")
            count = int(spec.get("count", 1))
            delay = float(spec.get("delay_seconds", 30))
            if operation not in MUTATING or mode not in LOSE_MODES or count < 1:
                raise ValueError(f"operation one of {sorted(MUTATING)}, mode one of {LOSE_MODES}, count >= 1")
        except (KeyError, TypeError, ValueError) as error:
            return _json_response(start_response, "400 Bad Request", {"error": f"{type(error).__name__}: {error}"})
        with _rules_lock:
            rule = {"id": len(_rules) + 1, "operation": operation, "match": match, "count": count,
                    "mode": mode, "delay_seconds": delay, "lost": 0}
            _rules.append(rule)
            return _json_response(start_response, "200 OK", dict(rule))
    return _json_response(start_response, "404 Not Found", {"error": f"no harness endpoint {method} {path}"})


class Harness:
    """WSGI middleware around moto's application: the control endpoints, the log of mutating
    calls, and lost answers (the call is applied by moto, then the client gets no answer)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/harness/"):
            return _control(environ, start_response)
        if path == "/moto-api/reset":
            with _rules_lock:
                _rules.clear()
        length = environ.get("CONTENT_LENGTH")
        if length:
            body = environ["wsgi.input"].read(int(length))
        elif environ.get("wsgi.input_terminated"):  # chunked: werkzeug ends the stream itself
            body = environ["wsgi.input"].read()
        else:
            body = b""
        environ["wsgi.input"] = io.BytesIO(body)
        operation = _operation(environ, body)
        if operation is not None:
            with _journal_lock:
                if len(_journal) < JOURNAL_MAX:
                    _journal.append({"op": operation, "body": body[:16384].decode("utf-8", "replace")})
        if operation not in MUTATING:
            return self.app(environ, start_response)
        answer = {}

        def keep(status, headers, exc_info=None):
            answer["status"], answer["headers"] = status, headers
            return lambda data: answer.setdefault("early", []).append(data)

        chunks = self.app(environ, keep)
        try:
            data = b"".join(answer.get("early", [])) + b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status = answer["status"]
        subject = _subject(operation, body)
        _log(f"api {operation} {status.split()[0]} {subject}")
        rule = _take_rule(operation, body) if status.startswith("2") else None
        if rule is not None:
            _log(f"lost-answer {operation} {rule['mode']} {subject}")
            if rule["mode"] == "delay":
                time.sleep(rule["delay_seconds"])  # the client has timed out: this answer goes nowhere
            else:
                connection = environ.get("werkzeug.socket")
                # No answer at all: FIN at once, then RST (linger 0) when werkzeug closes it.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.shutdown(socket.SHUT_RDWR)
                raise ConnectionResetError(f"harness: the answer of {operation} is lost")
        start_response(status, answer["headers"])
        return [data]


def main():
    parser = argparse.ArgumentParser(description="moto 5.2.1 + runner-updater's harness on 127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--port-file", help="once serving, write the bound port here (temp file + rename)")
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", args.port, Harness(DomainDispatcherApplication(create_backend_app)), threaded=True)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    if args.port_file:
        temporary = f"{args.port_file}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
        os.replace(temporary, args.port_file)
    print(f"harness: moto {moto.__version__} + runner-updater ECS rollouts and CloudFormation on 127.0.0.1:{port}", flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
