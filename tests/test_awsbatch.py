"""AWS Batch backend: array splitting and throttling (botocore Stubber), and a run on a loopback moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from aws_fixtures import client, moto, network, service_role  # noqa: F401 - moto is a fixture
from tasks import awsbatch
from tasks.awsbatch import Submission

ENV = {"BAYESFAN_SPEC": "s3://bucket/run/spec.json"}


@pytest.fixture
def stubbed():
    batch = boto3.client("batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(batch) as stubber:
        yield batch, stubber
        stubber.assert_no_pending_responses()


def expected_submit(start: int, size: int | None) -> dict:
    params = {
        "jobName": f"fit-{start}", "jobQueue": "q", "jobDefinition": "d",
        "containerOverrides": {"environment": [
            {"name": "BAYESFAN_SPEC", "value": ENV["BAYESFAN_SPEC"]},
            {"name": "BAYESFAN_INDEX_OFFSET", "value": str(start)},
        ]},
    }
    if size is not None:
        params["arrayProperties"] = {"size": size}
    return params


def test_ranges_split_runs_and_cap_size():
    assert awsbatch.ranges([7, 0, 1, 2, 5, 8, 2]) == [(0, 3), (5, 1), (7, 2)]
    assert awsbatch.ranges(range(25_001)) == [(0, 10_000), (10_000, 10_000), (20_000, 5_001)]
    assert awsbatch.ranges([0, 1, 2], max_size=2) == [(0, 2), (2, 1)]
    assert awsbatch.ranges([]) == []


def test_submit_arrays_splits_at_10000_and_a_single_child_is_a_plain_job(stubbed):
    batch, stubber = stubbed
    for start, size in [(0, 10_000), (10_000, 10_000), (20_000, None)]:
        stubber.add_response("submit_job", {"jobName": f"fit-{start}", "jobId": f"job-{start}"},
                             expected_submit(start, size))
    submissions = awsbatch.submit_arrays(batch, "fit", "q", "d", 20_001, ENV)
    assert submissions == [Submission("job-0", 0, 10_000), Submission("job-10000", 10_000, 10_000),
                           Submission("job-20000", 20_000, 1)]
    assert submissions[2].child_ids() == {20_000: "job-20000"}
    assert submissions[1].child_ids()[10_005] == "job-10000:5"


def test_submit_rejects_array_size_outside_batch_limits(stubbed):
    batch, _ = stubbed
    for size in (1, 10_001):
        with pytest.raises(ValueError, match="max_array_size"):
            awsbatch.submit_arrays(batch, "fit", "q", "d", 5, ENV, max_array_size=size)


def test_backoff_retries_throttling_with_growing_jittered_waits(stubbed):
    batch, stubber = stubbed
    for _ in range(3):
        stubber.add_client_error("describe_jobs", "TooManyRequestsException", http_status_code=429)
    stubber.add_response("describe_jobs", {"jobs": []}, {"jobs": ["a"]})
    waits: list[float] = []
    response = awsbatch.call_with_backoff(batch.describe_jobs, jobs=["a"], sleep=waits.append, base=0.5)
    assert response["jobs"] == []
    assert len(waits) == 3
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= 0.5 * 2**attempt


def test_backoff_gives_up_after_attempts_and_never_retries_other_errors(stubbed):
    batch, stubber = stubbed
    for _ in range(2):
        stubber.add_client_error("describe_jobs", "TooManyRequestsException", http_status_code=429)
    waits: list[float] = []
    with pytest.raises(ClientError, match="TooManyRequests"):
        awsbatch.call_with_backoff(batch.describe_jobs, jobs=["a"], attempts=2, sleep=waits.append)
    assert len(waits) == 1
    stubber.add_client_error("describe_jobs", "ClientException", http_status_code=400)
    with pytest.raises(ClientError, match="ClientException"):
        awsbatch.call_with_backoff(batch.describe_jobs, jobs=["a"], sleep=waits.append)
    assert len(waits) == 1


def test_poll_describes_at_most_100_ids_per_call_and_marks_missing(stubbed):
    batch, stubber = stubbed
    ids = [f"job-{i}" for i in range(250)]
    for start in (0, 100, 200):
        chunk = ids[start : start + 100]
        jobs = [{"jobId": j, "jobName": "fit", "jobQueue": "q", "status": "RUNNING", "startedAt": 0,
                 "jobDefinition": "d"} for j in chunk if j != "job-150"]
        stubber.add_response("describe_jobs", {"jobs": jobs}, {"jobs": chunk})
    statuses = awsbatch.poll(batch, ids)
    assert len(statuses) == 250
    assert statuses["job-150"] == awsbatch.MISSING
    assert statuses["job-249"] == "RUNNING"


def test_child_index_adds_offset_and_array_index():
    assert awsbatch.child_index({"BAYESFAN_INDEX_OFFSET": "20000", "AWS_BATCH_JOB_ARRAY_INDEX": "7"}) == 20_007
    assert awsbatch.child_index({"BAYESFAN_INDEX_OFFSET": "20000"}) == 20_000
    assert awsbatch.child_index({}) == 0


# --- end to end on a moto server ------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_queue(moto):  # noqa: F811 - pytest fixture injection
    """A Spot compute environment, job queue and job definition in moto: ``(queue_arn, definition_arn)``."""
    _, subnet, group = network(moto)
    iam = client("iam", moto)
    iam.create_role(RoleName="instance", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="instance")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="instance", RoleName="instance")
    batch = client("batch", moto)
    environment = batch.create_compute_environment(
        computeEnvironmentName="spot", type="MANAGED", state="ENABLED", serviceRole=service_role(moto),
        computeResources={
            "type": "SPOT", "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED", "minvCpus": 0, "maxvCpus": 64,
            "instanceTypes": ["c6i", "m6i"], "subnets": [subnet], "securityGroupIds": [group],
            "instanceRole": profile,
        },
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName="spot", state="ENABLED", priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )["jobQueueArn"]
    definition = batch.register_job_definition(
        jobDefinitionName="child", type="container",
        containerProperties={"image": "bayesfan:test", "command": ["batch-child"], "resourceRequirements": [
            {"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]},
        retryStrategy={"attempts": 3, "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"}, {"onReason": "*", "action": "EXIT"}]},
        timeout={"attemptDurationSeconds": 600},
    )["jobDefinitionArn"]
    return queue, definition


def test_run_children_on_moto_every_child_succeeds_with_its_index(moto, batch_queue):  # noqa: F811
    queue, definition = batch_queue
    batch = client("batch", moto)
    statuses = awsbatch.run_children(batch, "fit", queue, definition, 9, ENV, max_array_size=4, poll_seconds=0)
    assert statuses == dict.fromkeys(range(9), "SUCCEEDED")
    listed = batch.list_jobs(jobQueue=queue, jobStatus="SUCCEEDED")["jobSummaryList"]
    parents = batch.describe_jobs(jobs=[j["jobId"] for j in listed if ":" not in j["jobId"]])["jobs"]
    assert sorted(j.get("arrayProperties", {}).get("size", 1) for j in parents) == [1, 4, 4]
    array = next(j for j in parents if j["jobName"] == "fit-4")
    child = batch.describe_jobs(jobs=[f"{array['jobId']}:2"])["jobs"][0]
    env = {e["name"]: e["value"] for e in child["container"]["environment"]}
    assert env["BAYESFAN_SPEC"] == ENV["BAYESFAN_SPEC"]
    assert awsbatch.child_index({**env, "AWS_BATCH_JOB_ARRAY_INDEX": "2"}) == 6


def test_run_children_on_moto_resubmits_only_the_failed_range(moto, batch_queue, monkeypatch):  # noqa: F811
    """The second array (children 4..7) fails; the next round resubmits exactly that range and it succeeds."""
    queue, definition = batch_queue
    batch = client("batch", moto)
    submitted: list[dict] = []

    def fail_second_submission(params, **_):
        submitted.append(params)
        if len(submitted) == 2:  # the in-process moto server reads this at SubmitJob time
            monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
        else:
            monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)

    batch.meta.events.register("provide-client-params.batch.SubmitJob", fail_second_submission)
    rounds: list[dict[int, str]] = []
    original_wait = awsbatch.wait
    monkeypatch.setattr(awsbatch, "wait", lambda *a, **k: rounds.append(original_wait(*a, **k)) or rounds[-1])
    statuses = awsbatch.run_children(batch, "retry", queue, definition, 9, ENV, max_array_size=4, poll_seconds=0)
    assert [rounds[0][i] for i in range(9)] == ["SUCCEEDED"] * 4 + ["FAILED"] * 4 + ["SUCCEEDED"]
    assert rounds[1] == dict.fromkeys(range(4, 8), "SUCCEEDED")
    assert statuses == dict.fromkeys(range(9), "SUCCEEDED")
    assert [(p["jobName"], p.get("arrayProperties")) for p in submitted] == [
        ("retry-0", {"size": 4}), ("retry-4", {"size": 4}), ("retry-8", None), ("retry-4", {"size": 4})]


def test_missing_jobs_are_reported_missing_and_resubmitted(moto, batch_queue):  # noqa: F811
    queue, definition = batch_queue
    batch = client("batch", moto)
    assert awsbatch.child_statuses(batch, [Submission("no-such-job", 0, 3)]) == dict.fromkeys(range(3), "MISSING")
    resubmitted = awsbatch.submit_indices(batch, "lost", queue, definition, [0, 1, 2], ENV)
    assert awsbatch.wait(batch, resubmitted, poll_seconds=0) == dict.fromkeys(range(3), "SUCCEEDED")


def test_fit_on_the_batch_backend_end_to_end(moto, batch_queue, tmp_path):  # noqa: F811
    """``bayesfan fit --backend batch`` submits arrays to moto; this test plays the compute
    environment, running ``bayesfan batch-child`` with the array index set, as Batch would."""
    import numpy as np

    from models import resolve_model

    queue, definition = batch_queue
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(2), 3, 30)
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "AWS_ENDPOINT_URL": moto}
    (tmp_path / "fit.toml").write_text("poll_seconds = 0.5\nresult_wait_seconds = 600\n")
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "out"
    parent = subprocess.Popen(  # noqa: S603 - fixed argv
        [str(bin_dir / "bayesfan"), "fit", "--data", str(tmp_path / "data.parquet"), "--model", "linear_regression",
         "--partition-by", "partition", "--out", str(out), "--backend", "batch", "--job-queue", queue,
         "--job-definition", definition, "--batch-size", "1", "--chains", "2", "--warmup", "100", "--draws", "100",
         "--max-refits", "0", "--no-report", "--json", "--config", str(tmp_path / "fit.toml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "batches").glob("spec-*.json")) and time.monotonic() < deadline:
            assert parent.poll() is None, parent.communicate()
            time.sleep(0.5)
        (spec,) = (out / "batches").glob("spec-*.json")
        for index in range(3):
            child = subprocess.run(  # noqa: S603 - fixed argv
                [str(bin_dir / "bayesfan"), "batch-child", "--spec", str(spec)],
                env={**env, "AWS_BATCH_JOB_ARRAY_INDEX": str(index), "BAYESFAN_INDEX_OFFSET": "0"},
                capture_output=True, text=True, timeout=600,
            )
            assert child.returncode == 0, child.stderr
            assert "3 partitions" not in child.stdout and "1 partitions done" in child.stdout
        stdout, stderr = parent.communicate(timeout=600)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["counts"]["total"] == 3 and summary["counts"]["failed"] == 0
