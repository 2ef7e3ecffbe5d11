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
* With HARNESS_LOG set, every UpdateService call that names a task definition is appended to
  that file (tests count side effects with it, repeated calls included).
* Services are created COMPLETED (moto's own MOTO_ECS_SERVICE_RUNNING knob, set below).

Task health is not simulated here (moto starts no tasks for services): tests on moto use task
definitions without health checks; health is covered on the in-process simulated AWS.

Usage: python server.py PORT   (binds 127.0.0.1)
"""

import os
import sys
import time

import moto

if moto.__version__ != "5.2.1":
    sys.exit(f"the harness is written against moto 5.2.1, found {moto.__version__}")

os.environ.setdefault("MOTO_ECS_SERVICE_RUNNING", "1")

from moto.ecs import models as ecs  # noqa: E402
from moto.moto_api._internal import mock_random  # noqa: E402
from moto.core.utils import utcnow  # noqa: E402

ROLLOUT_SECONDS = float(os.environ.get("HARNESS_ROLLOUT_SECONDS", "1"))
BREAKER_THRESHOLD = int(os.environ.get("HARNESS_BREAKER_THRESHOLD", "10"))

_original_update = ecs.EC2ContainerServiceBackend.update_service
_original_describe = ecs.EC2ContainerServiceBackend.describe_services


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
    for deployment in service.deployments:
        if deployment["status"] == "PRIMARY":
            deployment["status"] = "ACTIVE"
    service.deployments.insert(0, _deployment(service, new_task_definition, "ECS deployment in progress."))
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
    elapsed = time.monotonic() - primary["_harness_started"]
    images = _image_tags(backend, primary["taskDefinition"])
    if "-crash" in images:
        primary["failedTasks"] = int(elapsed / (ROLLOUT_SECONDS / 2))
        if primary["failedTasks"] >= BREAKER_THRESHOLD:
            primary["rolloutState"] = "FAILED"
            primary["rolloutStateReason"] = "ECS deployment circuit breaker: tasks failed to start."
            primary["status"] = "ACTIVE"
            target = service._harness_last_completed
            rollback = _deployment(
                service, target, f"ECS deployment circuit breaker: rolling back to deploymentId {primary['id']}"
            )
            service.task_definition = target
            service.deployments.insert(0, rollback)
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


def describe_services(self, cluster, names):
    services, failures = _original_describe(self, cluster, names)
    for service in services:
        _advance(self, service)
    return services, failures


ecs.EC2ContainerServiceBackend.update_service = update_service
ecs.EC2ContainerServiceBackend.describe_services = describe_services


def main():
    port = int(sys.argv[1])
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print(f"harness: moto {moto.__version__} + runner-updater ECS rollouts on 127.0.0.1:{port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
