"""Self-check of the harness's CloudFormation behaviour (server.py), with boto3 over 127.0.0.1 only.

Starts server.py on a port it binds itself (twice: immediate, then HARNESS_CFN_SECONDS=1), runs
every CloudFormation behaviour the controller relies on, and the lost answers (the call applied,
the answer dropped or late), asserts, stops the server. Exit status 0 = pass.

Usage: python check_cfn.py   (with the harness's virtualenv: moto 5.2.1 + boto3)
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3
import botocore.exceptions
from botocore.config import Config

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
REGION = "eu-west-1"
BUCKET = "harness-templates"
NO_CHANGES = "The submitted information didn't contain changes. Submit different information to create a change set."


class Harness:
    def __init__(self, **env):
        self.log = tempfile.NamedTemporaryFile(prefix="harness-log-", delete=False).name
        self.output = tempfile.NamedTemporaryFile(prefix="harness-output-", delete=False).name
        port_file = tempfile.NamedTemporaryFile(prefix="harness-port-", delete=False).name
        os.unlink(port_file)
        environment = dict(os.environ, HARNESS_LOG=self.log, **env)
        with open(self.output, "wb") as output:
            # Port 0: the server binds a free port itself and reports it (no race for a port).
            self.process = subprocess.Popen(
                [sys.executable, SERVER, "--port-file", port_file],
                env=environment,
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if self.process.poll() is not None:
                raise SystemExit(f"harness exited at start-up:\n{self.server_output()}")
            if time.monotonic() > deadline:
                raise SystemExit("harness reported no port within 30 s")
            time.sleep(0.02)
        with open(port_file, encoding="utf-8") as f:
            self.port = int(f.read())
        os.unlink(port_file)
        self.url = f"http://127.0.0.1:{self.port}"
        while True:  # ready: a real request answered
            try:
                with urllib.request.urlopen(f"{self.url}/harness/ready", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("harness did not answer /harness/ready within 30 s")
                time.sleep(0.02)
        kw = dict(
            endpoint_url=f"http://127.0.0.1:{self.port}",
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1}),
        )
        self.cfn = boto3.client("cloudformation", **kw)
        self.s3 = boto3.client("s3", **kw)
        self.s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for path in (self.log, self.output):
            if os.path.exists(path):
                os.unlink(path)

    def server_output(self):
        with open(self.output, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_lines(self, prefix="cfn-execute "):
        with open(self.log, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.startswith(prefix)]

    def lose_answer(self, **rule):
        request = urllib.request.Request(
            f"{self.url}/harness/lose-answer", data=json.dumps(rule).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as refused:  # 400: the rule's reason
            return json.load(refused)

    def rules(self):
        with urllib.request.urlopen(f"{self.url}/harness/lose-answer", timeout=5) as answer:
            return json.load(answer)

    def put(self, key, template):
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(template).encode())
        return f"https://{BUCKET}.s3.amazonaws.com/{key}"


def template(stack, fail=None, rollback_fail=None, queue=False, role=None, replacement=None):
    parameter = {"Type": "AWS::SSM::Parameter", "Properties": {"Name": f"/{stack}/version", "Type": "String", "Value": {"Ref": "Version"}}}
    metadata = {}
    if fail:
        metadata["HarnessFail"] = fail
    if rollback_fail:
        metadata["HarnessRollbackFail"] = rollback_fail
    if replacement:
        metadata["HarnessReplacement"] = replacement
    if metadata:
        parameter["Metadata"] = metadata
    t = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {"Version": {"Type": "String"}, "Owner": {"Type": "String", "Default": "ops"}},
        "Resources": {"Param": parameter},
        "Outputs": {"InfraVersion": {"Value": {"Ref": "Version"}}},
    }
    if queue:
        t["Resources"]["Queue"] = {"Type": "AWS::SQS::Queue", "Properties": {}}
    if role is not None:
        properties = {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": []}}
        if role:
            properties["RoleName"] = role
        t["Resources"]["Role"] = {"Type": "AWS::IAM::Role", "Properties": properties}
    return t


def error(call, **kwargs):
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} {kwargs} succeeded, expected an error")


def tags(infra, attempt, **extra):
    pairs = {"team": "runners", **extra, "runner-updater:infra-version": infra, "runner-updater:attempt": attempt}
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def as_dict(pairs, key="Key", value="Value"):
    return {p[key]: p[value] for p in pairs or []}


def stack(h, name):
    return h.cfn.describe_stacks(StackName=name)["Stacks"][0]


def events_of(h, name, token):
    return [e for e in h.cfn.describe_stack_events(StackName=name)["StackEvents"] if e.get("ClientRequestToken") == token]


def previous(*keys):
    return [{"ParameterKey": k, "UsePreviousValue": True} for k in keys]


def create_stack(h, name):
    url = h.put(f"{name}/v1.json", template(name))
    h.cfn.create_stack(
        StackName=name,
        TemplateURL=url,
        Parameters=[{"ParameterKey": "Version", "ParameterValue": "1"}],
        Tags=tags("1", "1"),
    )
    assert stack(h, name)["StackStatus"] == "CREATE_COMPLETE"
    return url


def is_subsequence(wanted, seen):
    it = iter(seen)
    return all(any(w == s for s in it) for w in wanted)


def check_immediate(h):
    cfn = h.cfn
    v1 = create_stack(h, "app")

    # GetTemplateSummary: Capabilities
    assert "Capabilities" not in cfn.get_template_summary(TemplateURL=v1)
    iam = h.put("app/iam.json", template("app", role=""))
    named = h.put("app/named.json", template("app", role="runner-role"))
    summary = cfn.get_template_summary(TemplateURL=iam)
    assert summary["Capabilities"] == ["CAPABILITY_IAM"], summary
    assert "AWS::IAM::Role" in summary["CapabilitiesReason"]
    assert cfn.get_template_summary(TemplateURL=named)["Capabilities"] == ["CAPABILITY_NAMED_IAM"]
    assert "Capabilities" not in cfn.get_template_summary(StackName="app")

    # Capabilities are enforced
    base = dict(StackName="app", ChangeSetType="UPDATE", Parameters=[{"ParameterKey": "Version", "ParameterValue": "2"}])
    code, status, message = error(cfn.create_change_set, ChangeSetName="iam-none", TemplateURL=iam, **base)
    assert (code, status, message) == ("InsufficientCapabilitiesException", 400, "Requires capabilities : [CAPABILITY_IAM]")
    code, _, message = error(cfn.create_change_set, ChangeSetName="named-iam", TemplateURL=named, Capabilities=["CAPABILITY_IAM"], **base)
    assert code == "InsufficientCapabilitiesException" and "CAPABILITY_NAMED_IAM" in message

    # UsePreviousTemplate + UsePreviousValue + a new value: a parameter-only change lists Modify
    cfn.create_change_set(
        StackName="app", ChangeSetName="params", ChangeSetType="UPDATE", UsePreviousTemplate=True,
        Parameters=[{"ParameterKey": "Version", "ParameterValue": "2"}, *previous("Owner")],
        Tags=tags("2", "1"), ClientToken="create-params",
    )
    cs = cfn.describe_change_set(StackName="app", ChangeSetName="params")
    assert (cs["Status"], cs["ExecutionStatus"]) == ("CREATE_COMPLETE", "AVAILABLE"), cs
    assert as_dict(cs["Parameters"], "ParameterKey", "ParameterValue") == {"Version": "2", "Owner": "ops"}
    assert as_dict(cs["Tags"]) == as_dict(tags("2", "1"))
    changes = [c["ResourceChange"] for c in cs["Changes"]]
    assert [(c["Action"], c["LogicalResourceId"], c["ResourceType"], c.get("Replacement")) for c in changes] == [
        ("Modify", "Param", "AWS::SSM::Parameter", "False")
    ], changes

    # Same name: AlreadyExists unless the same ClientToken repeats the same request
    again = dict(StackName="app", ChangeSetName="params", ChangeSetType="UPDATE", UsePreviousTemplate=True,
                 Parameters=[{"ParameterKey": "Version", "ParameterValue": "2"}, *previous("Owner")], Tags=tags("2", "1"))
    assert cfn.create_change_set(ClientToken="create-params", **again)["Id"] == cs["ChangeSetId"]
    assert error(cfn.create_change_set, ClientToken="other", **again)[:2] == ("AlreadyExistsException", 400)
    assert error(cfn.create_change_set, **again)[:2] == ("AlreadyExistsException", 400)

    # Parameter errors are ValidationErrors, not 500s
    with_extra = template("app")
    with_extra["Parameters"]["Extra"] = {"Type": "String"}
    extra = h.put("app/extra.json", with_extra)
    for url, parameters in (
        (v1, previous("Version", "Nope")),  # UsePreviousValue on a key the stack lacks (moto: KeyError, 500)
        (v1, [{"ParameterKey": "Nope", "ParameterValue": "x"}]),  # not declared by the template
        (extra, previous("Version", "Owner")),  # a new parameter without a default left out
    ):
        code, status, message = error(cfn.create_change_set, StackName="app", ChangeSetName="bad", ChangeSetType="UPDATE",
                                      TemplateURL=url, Parameters=parameters)
        assert (code, status) == ("ValidationError", 400), (parameters, code, status, message)

    # No difference at all: FAILED with AWS's reason (and not executable)
    cfn.create_change_set(StackName="app", ChangeSetName="same", ChangeSetType="UPDATE", TemplateURL=v1,
                          Parameters=previous("Version", "Owner"), Tags=tags("1", "1"))
    cs = cfn.describe_change_set(StackName="app", ChangeSetName="same")
    assert (cs["Status"], cs["ExecutionStatus"], cs["StatusReason"]) == ("FAILED", "UNAVAILABLE", NO_CHANGES), cs
    assert error(cfn.execute_change_set, StackName="app", ChangeSetName="same", ClientRequestToken="x")[:2] == ("InvalidChangeSetStatus", 400)
    cfn.delete_change_set(StackName="app", ChangeSetName="same")
    code, status, _ = error(cfn.describe_change_set, StackName="app", ChangeSetName="same")
    assert (code, status) == ("ChangeSetNotFound", 404)
    cfn.delete_change_set(StackName="app", ChangeSetName="never-existed")  # a 200 no-op, as on AWS

    # Tags only: CREATE_COMPLETE, no Changes; executing it applies the tags
    cfn.create_change_set(StackName="app", ChangeSetName="tags-only", ChangeSetType="UPDATE", UsePreviousTemplate=True,
                          Parameters=previous("Version", "Owner"), Tags=tags("1", "2"), ClientToken="create-tags")
    cs = cfn.describe_change_set(StackName="app", ChangeSetName="tags-only")
    assert (cs["Status"], cs["ExecutionStatus"], cs.get("Changes", [])) == ("CREATE_COMPLETE", "AVAILABLE", []), cs
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    cfn.execute_change_set(StackName="app", ChangeSetName="tags-only", ClientRequestToken="exec-tags", DisableRollback=False)
    s = stack(h, "app")
    assert s["StackStatus"] == "UPDATE_COMPLETE", s
    assert s["LastUpdatedTime"] >= before, s
    assert as_dict(s["Tags"]) == as_dict(tags("1", "2"))
    assert as_dict(s["Parameters"], "ParameterKey", "ParameterValue") == {"Version": "1", "Owner": "ops"}
    cs = cfn.describe_change_set(StackName="app", ChangeSetName="tags-only")
    assert cs["ExecutionStatus"] == "EXECUTE_COMPLETE", cs
    # the stack's other change sets are deleted on execution
    assert error(cfn.describe_change_set, StackName="app", ChangeSetName="params")[:2] == ("ChangeSetNotFound", 404)
    assert [c["ChangeSetName"] for c in cfn.list_change_sets(StackName="app")["Summaries"]] == ["tags-only"]
    evs = events_of(h, "app", "exec-tags")
    assert evs and evs[0]["ResourceStatus"] == "UPDATE_COMPLETE" and evs[0]["ResourceType"] == "AWS::CloudFormation::Stack", evs
    assert evs[-1]["ResourceStatus"] == "UPDATE_IN_PROGRESS"
    assert h.log_lines()[-1] == "cfn-execute app tags-only exec-tags", h.log_lines()

    # Retry with the same token: 200, nothing happens; another token: InvalidChangeSetStatus
    count = len(cfn.describe_stack_events(StackName="app")["StackEvents"])
    cfn.execute_change_set(StackName="app", ChangeSetName="tags-only", ClientRequestToken="exec-tags")
    assert len(cfn.describe_stack_events(StackName="app")["StackEvents"]) == count
    code, status, message = error(cfn.execute_change_set, StackName="app", ChangeSetName="tags-only", ClientRequestToken="exec-other")
    assert (code, status) == ("InvalidChangeSetStatus", 400) and "EXECUTE_COMPLETE" in message, message
    assert h.log_lines()[-3:] == [
        "cfn-execute app tags-only exec-tags",
        "cfn-execute app tags-only exec-tags",
        "cfn-execute app tags-only exec-other",
    ], h.log_lines()

    # A template change: Add listed, applied with parameters, tags and outputs
    v2 = h.put("app/v2.json", template("app", queue=True))
    cfn.create_change_set(StackName="app", ChangeSetName="v2", ChangeSetType="UPDATE", TemplateURL=v2,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "2"}, *previous("Owner")],
                          Tags=tags("2", "1"), ClientToken="create-v2")
    cs = cfn.describe_change_set(StackName="app", ChangeSetName="v2")
    actions = {(c["ResourceChange"]["Action"], c["ResourceChange"]["LogicalResourceId"]) for c in cs["Changes"]}
    assert actions == {("Modify", "Param"), ("Add", "Queue")}, actions
    cfn.execute_change_set(StackName="app", ChangeSetName="v2", ClientRequestToken="exec-v2")
    s = stack(h, "app")
    assert s["StackStatus"] == "UPDATE_COMPLETE"
    assert as_dict(s["Parameters"], "ParameterKey", "ParameterValue") == {"Version": "2", "Owner": "ops"}
    assert as_dict(s["Outputs"], "OutputKey", "OutputValue") == {"InfraVersion": "2"}
    assert as_dict(s["Tags"]) == as_dict(tags("2", "1"))
    assert ("Queue", "CREATE_COMPLETE") in [(e["LogicalResourceId"], e["ResourceStatus"]) for e in events_of(h, "app", "exec-v2")]
    v2_body = cfn.get_template(StackName="app")["TemplateBody"]

    # HarnessFail: 200, then UPDATE_ROLLBACK_COMPLETE with the previous template, parameters and tags
    v3 = h.put("app/v3.json", template("app", queue=True, fail="Resource handler returned message: boom"))
    cfn.create_change_set(StackName="app", ChangeSetName="v3", ChangeSetType="UPDATE", TemplateURL=v3,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "3"}, *previous("Owner")],
                          Tags=tags("3", "1"), ClientToken="create-v3")
    cfn.execute_change_set(StackName="app", ChangeSetName="v3", ClientRequestToken="exec-v3", DisableRollback=False)
    s = stack(h, "app")
    assert s["StackStatus"] == "UPDATE_ROLLBACK_COMPLETE", s
    assert as_dict(s["Parameters"], "ParameterKey", "ParameterValue") == {"Version": "2", "Owner": "ops"}
    assert as_dict(s["Tags"]) == as_dict(tags("2", "1"))
    assert as_dict(s["Outputs"], "OutputKey", "OutputValue") == {"InfraVersion": "2"}
    assert cfn.get_template(StackName="app")["TemplateBody"] == v2_body
    assert cfn.describe_change_set(StackName="app", ChangeSetName="v3")["ExecutionStatus"] == "EXECUTE_FAILED"
    evs = events_of(h, "app", "exec-v3")
    seen = [(e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason")) for e in evs]
    assert seen[0] == ("app", "UPDATE_ROLLBACK_COMPLETE", None), seen
    assert seen[-1] == ("app", "UPDATE_IN_PROGRESS", "User Initiated"), seen
    assert is_subsequence([
        ("app", "UPDATE_ROLLBACK_COMPLETE", None),
        ("app", "UPDATE_ROLLBACK_IN_PROGRESS", "The following resource(s) failed to update: [Param]. "),
        ("Param", "UPDATE_FAILED", "Resource handler returned message: boom"),
        ("Param", "UPDATE_IN_PROGRESS", None),
        ("app", "UPDATE_IN_PROGRESS", "User Initiated"),
    ], seen), seen
    assert len(evs) == len([e for e in cfn.describe_stack_events(StackName="app")["StackEvents"]
                            if e["Timestamp"] >= evs[-1]["Timestamp"]]), "every event of the execution carries its token"
    # the stack is updatable again after a completed rollback
    cfn.create_change_set(StackName="app", ChangeSetName="after-rollback", ChangeSetType="UPDATE", UsePreviousTemplate=True,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "4"}, *previous("Owner")], Tags=tags("4", "1"))
    assert cfn.describe_change_set(StackName="app", ChangeSetName="after-rollback")["Status"] == "CREATE_COMPLETE"

    # HarnessRollbackFail: UPDATE_ROLLBACK_FAILED, nothing restored, the stack can no longer be updated
    create_stack(h, "stuck")
    bad = h.put("stuck/bad.json", template("stuck", rollback_fail="Rollback: role in use"))
    cfn.create_change_set(StackName="stuck", ChangeSetName="bad", ChangeSetType="UPDATE", TemplateURL=bad,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "9"}, *previous("Owner")], Tags=tags("9", "1"))
    cfn.execute_change_set(StackName="stuck", ChangeSetName="bad", ClientRequestToken="exec-bad")
    s = stack(h, "stuck")
    assert s["StackStatus"] == "UPDATE_ROLLBACK_FAILED", s
    assert s["StackStatusReason"] == "The following resource(s) failed to update: [Param].", s
    body = cfn.get_template(StackName="stuck")["TemplateBody"]  # boto3 hands a JSON body back parsed
    assert json.loads(json.dumps(body)) == template("stuck", rollback_fail="Rollback: role in use"), body
    assert cfn.describe_change_set(StackName="stuck", ChangeSetName="bad")["ExecutionStatus"] == "EXECUTE_FAILED"
    seen = [(e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason")) for e in events_of(h, "stuck", "exec-bad")]
    assert seen[0] == ("stuck", "UPDATE_ROLLBACK_FAILED", "The following resource(s) failed to update: [Param]."), seen
    assert seen[1] == ("Param", "UPDATE_FAILED", "Rollback: role in use"), seen
    assert ("stuck", "UPDATE_ROLLBACK_IN_PROGRESS") in [x[:2] for x in seen]
    code, _, message = error(cfn.create_change_set, StackName="stuck", ChangeSetName="later", ChangeSetType="UPDATE",
                             UsePreviousTemplate=True, Parameters=previous("Version", "Owner"))
    assert code == "ValidationError" and "UPDATE_ROLLBACK_FAILED state and can not be updated" in message, message

    # Change sets are per stack: the same name on two stacks is two change sets
    cfn.create_change_set(StackName="app", ChangeSetName="shared", ChangeSetType="UPDATE", UsePreviousTemplate=True,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "5"}, *previous("Owner")])
    assert error(cfn.describe_change_set, StackName="stuck", ChangeSetName="shared")[:2] == ("ChangeSetNotFound", 404)

    # HarnessReplacement sets Modify's Replacement
    create_stack(h, "repl")
    url = h.put("repl/v2.json", template("repl", replacement="True"))
    cfn.create_change_set(StackName="repl", ChangeSetName="r", ChangeSetType="UPDATE", TemplateURL=url, Parameters=previous("Version", "Owner"))
    change = cfn.describe_change_set(StackName="repl", ChangeSetName="r")["Changes"][0]["ResourceChange"]
    assert (change["Action"], change["Replacement"]) == ("Modify", "True"), change


def check_delayed(h):
    cfn = h.cfn
    create_stack(h, "slow")
    url = h.put("slow/v2.json", template("slow", queue=True))
    cfn.create_change_set(StackName="slow", ChangeSetName="v2", ChangeSetType="UPDATE", TemplateURL=url,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "2"}, *previous("Owner")], Tags=tags("2", "1"))
    cfn.create_change_set(StackName="slow", ChangeSetName="other", ChangeSetType="UPDATE", UsePreviousTemplate=True,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "7"}, *previous("Owner")])
    started = time.monotonic()
    cfn.execute_change_set(StackName="slow", ChangeSetName="v2", ClientRequestToken="exec-slow")
    assert stack(h, "slow")["StackStatus"] == "UPDATE_IN_PROGRESS"
    assert cfn.describe_change_set(StackName="slow", ChangeSetName="v2")["ExecutionStatus"] == "EXECUTE_IN_PROGRESS"
    cfn.execute_change_set(StackName="slow", ChangeSetName="v2", ClientRequestToken="exec-slow")  # retry: no-op
    code, _, _ = error(cfn.create_change_set, StackName="slow", ChangeSetName="busy", ChangeSetType="UPDATE",
                       UsePreviousTemplate=True, Parameters=[{"ParameterKey": "Version", "ParameterValue": "8"}, *previous("Owner")])
    assert code == "ValidationError"
    while stack(h, "slow")["StackStatus"] == "UPDATE_IN_PROGRESS":
        assert time.monotonic() - started < 5, "still UPDATE_IN_PROGRESS after 5 s"
        time.sleep(0.1)
    assert time.monotonic() - started >= 0.9
    s = stack(h, "slow")
    assert s["StackStatus"] == "UPDATE_COMPLETE" and as_dict(s["Tags"]) == as_dict(tags("2", "1")), s
    assert cfn.describe_change_set(StackName="slow", ChangeSetName="v2")["ExecutionStatus"] == "EXECUTE_COMPLETE"

    bad = h.put("slow/bad.json", template("slow", queue=True, fail="boom"))
    cfn.create_change_set(StackName="slow", ChangeSetName="bad", ChangeSetType="UPDATE", TemplateURL=bad,
                          Parameters=[{"ParameterKey": "Version", "ParameterValue": "3"}, *previous("Owner")], Tags=tags("3", "1"))
    started = time.monotonic()
    cfn.execute_change_set(StackName="slow", ChangeSetName="bad", ClientRequestToken="exec-slow-bad")
    statuses = []
    while True:
        status = stack(h, "slow")["StackStatus"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status.endswith("_COMPLETE") or status.endswith("_FAILED"):
            break
        assert time.monotonic() - started < 8, statuses
        time.sleep(0.1)
    assert statuses == ["UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE"], statuses
    assert time.monotonic() - started >= 1.9
    assert as_dict(stack(h, "slow")["Parameters"], "ParameterKey", "ParameterValue")["Version"] == "2"
    assert h.log_lines() == [
        "cfn-execute slow v2 exec-slow",
        "cfn-execute slow v2 exec-slow",
        "cfn-execute slow bad exec-slow-bad",
    ], h.log_lines()


def check_lost_answers(h):
    """The call is applied, then its answer is lost: dropped (reset) or sent late (delay)."""
    create_stack(h, "lost")
    v2 = h.put("lost/v2.json", template("lost", queue=True))
    bad = h.lose_answer(operation="Nope")
    assert "error" in bad, bad
    rule = h.lose_answer(operation="CreateChangeSet", match=["StackName=lost", "ChangeSetName=v2"])
    assert rule["count"] == 1 and rule["mode"] == "reset", rule
    request = dict(StackName="lost", ChangeSetName="v2", ChangeSetType="UPDATE", TemplateURL=v2,
                   Parameters=[{"ParameterKey": "Version", "UsePreviousValue": True}], ClientToken="token-v2")
    once = boto3.client("cloudformation", endpoint_url=h.url, region_name=REGION, aws_access_key_id="test",
                        aws_secret_access_key="test", config=Config(retries={"total_max_attempts": 1}))
    try:
        once.create_change_set(**request)
        raise AssertionError("the answer should have been lost")
    except botocore.exceptions.ConnectionClosedError as lost:  # no response at all
        print(f"  reset: {type(lost).__name__}")
    assert h.cfn.describe_change_set(StackName="lost", ChangeSetName="v2")["Status"] == "CREATE_COMPLETE"
    # The resend with the same ClientToken gets the same change set: no second one.
    first = h.cfn.describe_change_set(StackName="lost", ChangeSetName="v2")["ChangeSetId"]
    assert h.cfn.create_change_set(**request)["Id"] == first
    assert h.log_lines("cfn-create ") == ["cfn-create lost v2 new", "cfn-create lost v2 repeat"], h.log_lines("cfn-create ")
    assert h.log_lines("lost-answer ") == ["lost-answer CreateChangeSet reset lost v2"], h.log_lines("lost-answer ")
    assert [r["lost"] for r in h.rules()] == [1], h.rules()
    # A call moto refuses is not a lost answer: the rule waits for one that succeeds.
    h.lose_answer(operation="ExecuteChangeSet", match="StackName=lost", mode="delay", delay_seconds=3)
    code, _, _ = error(h.cfn.execute_change_set, StackName="lost", ChangeSetName="missing")
    assert code == "ChangeSetNotFound", code
    late = boto3.client("cloudformation", endpoint_url=h.url, region_name=REGION, aws_access_key_id="test",
                        aws_secret_access_key="test", config=Config(retries={"total_max_attempts": 1}, read_timeout=1))
    started = time.monotonic()
    try:
        late.execute_change_set(StackName="lost", ChangeSetName="v2", ClientRequestToken="exec-v2")
        raise AssertionError("the answer should have come too late")
    except botocore.exceptions.ReadTimeoutError:
        assert time.monotonic() - started < 3
    assert stack(h, "lost")["StackStatus"] == "UPDATE_COMPLETE"
    assert h.log_lines("cfn-begin ") == ["cfn-begin lost v2 exec-v2"], h.log_lines("cfn-begin ")
    assert [r["lost"] for r in h.rules()] == [1, 1], h.rules()
    # The log counts every mutating call with its status.
    api = h.log_lines("api ")
    assert "api CreateChangeSet 200 lost v2" in api and "api ExecuteChangeSet 404 lost missing" in api, api
    # A reset clears the rules.
    urllib.request.urlopen(urllib.request.Request(f"{h.url}/moto-api/reset", method="POST"), timeout=5).close()
    assert h.rules() == []


def main():
    for env, check in (
        ({"HARNESS_CFN_SECONDS": "0"}, check_immediate),
        ({"HARNESS_CFN_SECONDS": "1"}, check_delayed),
        ({"HARNESS_CFN_SECONDS": "0"}, check_lost_answers),
    ):
        h = Harness(**env)
        try:
            check(h)
        except Exception:
            h.process.terminate()
            h.process.wait(timeout=10)
            tail = h.server_output().strip().splitlines()[-30:]
            print(f"FAILED: {check.__name__}; server output tail:\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            h.stop()
        print(f"ok: {check.__name__}")
    print("check_cfn: all CloudFormation and lost-answer harness checks passed")


if __name__ == "__main__":
    main()
