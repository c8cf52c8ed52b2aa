"""Infrastructure: the CloudFormation stack (cfn-lint, checkov, created in moto), the Dockerfile
(hadolint, entrypoint dispatch), the ECS work pool template (rendered by prefect-aws, accepted by a
Prefect server) and prefect.yaml (deployed to that server). Everything runs on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from cfnlint.decode import cfn_yaml

from aws_fixtures import client, moto, network, prefect_api, service_role  # noqa: F401 - fixtures
from tasks import awsbatch

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "bayesfan.yaml"
JOB_TEMPLATE = ROOT / "infra" / "ecs-base-job-template.json"
BIN = Path(sys.executable).parent
# Resource types moto's CloudFormation skips (with a warning): the stack still creates, without them.
MOTO_UNSUPPORTED = {"AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::ECS::ClusterCapacityProviderAssociations"}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)  # noqa: S603


@pytest.fixture(scope="module")
def template() -> dict:
    return cfn_yaml.load(str(TEMPLATE))


def test_template_passes_cfn_lint():
    result = run([str(BIN / "cfn-lint"), str(TEMPLATE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint():
    result = run([str(BIN / "hadolint"), "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_checkov_has_no_failed_checks_and_every_skip_has_a_reason():
    result = run(["bash", "infra/checkov.sh", "-o", "json"])
    report = json.loads(result.stdout[result.stdout.index("{"):])
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and report["summary"]["parsing_errors"] == 0, result.stdout[-3000:]
    assert report["summary"]["passed"] > 50
    for check in report["results"]["skipped_checks"]:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


def test_template_contract(template):
    resources = template["Resources"]
    policy = resources["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert (policy["Effect"], policy["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})
    scratch = resources["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]
    assert scratch["Prefix"] == {"Fn::Sub": "${DataPrefix}scratch/"} and "ExpirationInDays" in scratch
    providers = resources["ClusterCapacityProviders"]["Properties"]
    assert providers["DefaultCapacityProviderStrategy"][0]["CapacityProvider"] == "FARGATE_SPOT"
    job = resources["ChildJobDefinition"]["Properties"]
    assert job["RetryStrategy"]["EvaluateOnExit"] == [
        {"OnStatusReason": "Host EC2*", "Action": "RETRY"}, {"OnReason": "*", "Action": "EXIT"}]
    assert job["Timeout"] == {"AttemptDurationSeconds": {"Ref": "ChildTimeoutSeconds"}}
    compute = resources["BatchComputeEnvironment"]["Properties"]["ComputeResources"]
    assert (compute["Type"], compute["AllocationStrategy"]) == ("SPOT", "SPOT_PRICE_CAPACITY_OPTIMIZED")
    assert compute["MaxvCpus"] == {"Ref": "BatchMaxVcpus"}


@pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")
def test_stack_creates_in_moto_and_its_batch_queue_runs_children(moto, template):  # noqa: F811
    vpc, subnet, _ = network(moto)
    cloudformation = client("cloudformation", moto)
    parameters = {
        "VpcId": vpc, "SubnetIds": subnet, "BatchServiceRoleArn": service_role(moto, "stack-batch-service"),
        "BatchMaxVcpus": "64", "BatchInstanceTypes": "c7i,c6i",  # moto does not split a list parameter's default
    }
    cloudformation.create_stack(
        StackName="bayesfan", TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    stack = cloudformation.describe_stacks(StackName="bayesfan")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    created = {r["ResourceType"] for r in cloudformation.list_stack_resources(StackName="bayesfan")[
        "StackResourceSummaries"]}
    assert {r["Type"] for r in template["Resources"].values()} - created == MOTO_UNSUPPORTED

    batch = client("batch", moto)
    compute = batch.describe_compute_environments()["computeEnvironments"][0]["computeResources"]
    assert (compute["type"], compute["allocationStrategy"], compute["maxvCpus"]) == (
        "SPOT", "SPOT_PRICE_CAPACITY_OPTIMIZED", 64)
    definition = batch.describe_job_definitions(jobDefinitions=[outputs["ChildJobDefinitionArn"]])["jobDefinitions"][0]
    retry = definition["retryStrategy"]["evaluateOnExit"][0]
    assert (retry["onStatusReason"], retry["action"].upper()) == ("Host EC2*", "RETRY")
    assert definition["containerProperties"]["image"] == f"{outputs['RepositoryUri']}:latest"

    sqs = client("sqs", moto)  # the ECS observer finds its queue by name, like this
    queue_url = sqs.get_queue_url(QueueName=outputs["EcsEventsQueueName"])["QueueUrl"]
    redrive = json.loads(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])[
        "Attributes"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith("bayesfan-ecs-events-dlq")
    events = client("events", moto)
    rule = events.describe_rule(Name="bayesfan-ecs-task-events")
    assert json.loads(rule["EventPattern"])["detail"]["clusterArn"] == [outputs["ClusterArn"]]
    targets = events.list_targets_by_rule(Rule="bayesfan-ecs-task-events")["Targets"]
    assert targets[0]["Arn"].endswith(":bayesfan-ecs-events")

    s3 = client("s3", moto)
    encryption = s3.get_bucket_encryption(Bucket=outputs["BucketName"])["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    logs = client("logs", moto).describe_log_groups(logGroupNamePrefix=outputs["LogGroupName"])["logGroups"]
    assert logs[0]["retentionInDays"] == 30
    repository = client("ecr", moto).describe_repositories(repositoryNames=["bayesfan"])["repositories"][0]
    assert repository["imageTagMutability"] == "IMMUTABLE"

    statuses = awsbatch.run_children(
        batch, "stack", outputs["JobQueueArn"], outputs["ChildJobDefinitionArn"], 5, {}, max_array_size=2,
        poll_seconds=0,
    )
    assert statuses == dict.fromkeys(range(5), "SUCCEEDED")


def test_entrypoint_dispatches_on_its_first_argument(tmp_path):
    for tool in ("prefect", "bayesfan"):
        fake = tmp_path / tool
        fake.write_text(f'#!/bin/sh\necho {tool} "$@"\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PREFECT_WORK_POOL": "pool"}
    cases = {
        (): "prefect worker start --type ecs --pool pool",
        ("worker", "--limit", "5"): "prefect worker start --type ecs --pool pool --limit 5",
        ("flow-run", "abc"): "prefect flow-run execute abc",
        ("batch-child", "--spec", "s3://b/s.json"): "bayesfan batch-child --spec s3://b/s.json",
        ("prefect", "flow-run", "execute"): "prefect flow-run execute",
    }
    for argv, expected in cases.items():
        result = run(["sh", "infra/entrypoint.sh", *argv], env=env)
        assert result.stdout.strip() == expected, (argv, result.stderr)


def test_ecs_job_template_renders_fargate_spot_and_sigterm_reschedule():
    from prefect.utilities.templating import apply_values
    from prefect_aws.workers.ecs_worker import ECSWorker

    ours = json.loads(JOB_TEMPLATE.read_text())
    default = ECSWorker.get_default_base_job_template()
    assert set(ours["variables"]["properties"]) == set(default["variables"]["properties"])
    assert set(ours["job_configuration"]) == set(default["job_configuration"])
    defaults = {k: v["default"] for k, v in ours["variables"]["properties"].items() if "default" in v}
    rendered = apply_values(ours["job_configuration"], {**defaults, "env": {"PREFECT_API_URL": "x"}})
    assert rendered["task_run_request"]["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 1, "base": 0}]
    container = rendered["task_definition"]["containerDefinitions"][0]
    assert container["environment"] == [{"name": "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR", "value": "reschedule"}]


def test_prefect_yaml_deployments():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/bayesfan"}}]
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert deployments["fit-partitions"]["entrypoint"] == "flows/fit.py:fit_partitions"
    assert deployments["fit-batch"]["entrypoint"] == "flows/batch.py:fit_batch_flow"
    assert [s["active"] for s in deployments["fit-partitions"]["schedules"]] == [False]
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"bayesfan-ecs"}


@pytest.mark.slow
def test_work_pool_and_deployment_accepted_by_a_local_prefect_server(prefect_api, tmp_path):  # noqa: F811
    prefect = str(BIN / "prefect")
    created = run([prefect, "work-pool", "create", "bayesfan-ecs", "--type", "ecs",
                   "--base-job-template", str(JOB_TEMPLATE)], env=prefect_api)
    assert created.returncode == 0, created.stdout + created.stderr
    pool = _get(prefect_api, "/work_pools/bayesfan-ecs")
    assert pool["type"] == "ecs"
    assert pool["base_job_template"] == json.loads(JOB_TEMPLATE.read_text())

    stack_env = {
        "BAYESFAN_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/bayesfan:abc123",
        "BAYESFAN_CLUSTER_ARN": "arn:aws:ecs:us-east-1:123456789012:cluster/bayesfan",
        "BAYESFAN_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/task",
        "BAYESFAN_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/execution",
        "BAYESFAN_VPC_ID": "vpc-1", "BAYESFAN_SUBNET_ID": "subnet-1", "BAYESFAN_SECURITY_GROUP_ID": "sg-1",
        "BAYESFAN_ASSIGN_PUBLIC_IP": "DISABLED", "BAYESFAN_LOG_GROUP": "/bayesfan/bayesfan",
        "BAYESFAN_BATCH_JOB_QUEUE": "queue", "BAYESFAN_BATCH_JOB_DEFINITION": "child",
        "BAYESFAN_DATA_URL": "s3://bucket/bayesfan/",
    }
    deployed = run([prefect, "--no-prompt", "deploy", "--name", "fit-partitions"], env={**prefect_api, **stack_env})
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    deployment = _get(prefect_api, "/deployments/name/fit-partitions/fit-partitions")
    assert deployment["work_pool_name"] == "bayesfan-ecs"
    assert deployment["job_variables"]["image"] == stack_env["BAYESFAN_IMAGE"]
    assert deployment["parameters"]["config"]["out"] == "s3://bucket/bayesfan/runs/nightly"
    assert [s["active"] for s in deployment["schedules"]] == [False]


def _get(env: dict, path: str) -> dict:
    with urllib.request.urlopen(env["PREFECT_API_URL"] + path, timeout=10) as response:  # noqa: S310 - loopback
        return json.loads(response.read())
