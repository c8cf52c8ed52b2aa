"""The ``batch`` backend: batches run as AWS Batch array-job children (``bayesfan batch-child``).

The parent writes the run spec (config and plans) to ``<out>/batches/spec-<hash>.json``,
submits one child per plan (arrays of at most 10,000, via ``tasks.awsbatch``),
waits, and resubmits children that failed or went missing. A child that Batch
reports SUCCEEDED counts only once its ``done.json`` verifies in storage.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import PurePosixPath

import boto3

from bayesfan.config import FitConfig
from bayesfan.storage import Store
from flows.fanout import failure
from tasks.awsbatch import run_children
from tasks.sample import finished_record
from tasks.split import BatchPlan

#: Seconds between polls of AWS Batch unless ``FitConfig.poll_seconds`` says otherwise.
POLL_SECONDS = 30.0


def write_spec(config: FitConfig, plans: list[BatchPlan]) -> str:
    """Write the run spec the children read (named by its content hash); return its URL."""
    spec = {"config": config.model_dump(mode="json"), "plans": [p.model_dump() for p in plans]}
    blob = json.dumps(spec, sort_keys=True).encode()
    name = f"spec-{hashlib.sha256(blob).hexdigest()[:16]}.json"
    store = Store(config.out)
    store.write_bytes(blob, "batches", name)
    return store.url("batches", name)


def read_spec(url: str) -> tuple[FitConfig, list[BatchPlan]]:
    root, _, name = url.rpartition("/batches/")
    spec = Store(root).read_json("batches", name)
    return FitConfig.model_validate(spec["config"]), [BatchPlan.model_validate(p) for p in spec["plans"]]


def run_on_aws_batch(config: FitConfig, plans: list[BatchPlan]) -> tuple[list[dict], dict]:
    """Run every plan as an AWS Batch child; return (records in plan order, failures)."""
    if not (config.job_queue and config.job_definition):
        raise ValueError("the batch backend needs --job-queue and --job-definition")
    spec_url = write_spec(config, plans)
    client = boto3.client("batch")
    statuses = run_children(
        client, "bayesfan-" + PurePosixPath(spec_url).stem.removeprefix("spec-"), config.job_queue,
        config.job_definition, len(plans),
        {"BAYESFAN_SPEC": spec_url}, rounds=1 + config.max_interruptions, poll_seconds=config.poll_seconds or POLL_SECONDS,
    )
    store = Store(config.out)
    records, failures = {}, {}
    deadline = time.monotonic() + config.result_wait_seconds
    for index, plan in enumerate(plans):
        record = finished_record(store, plan)
        while record is None and statuses.get(index) == "SUCCEEDED" and time.monotonic() < deadline:
            time.sleep(1.0)
            record = finished_record(store, plan)
        if record is not None:
            records[plan.batch_id] = record
        else:
            failures[plan.batch_id] = failure(plan, 1 + config.max_interruptions,
                                              f"AWS Batch child {index} ended {statuses.get(index, 'MISSING')} "
                                              "without a verified result")
    return [records[p.batch_id] for p in plans if p.batch_id in records], failures


def run_child(spec_url: str, index: int, attempt: int = 1) -> dict:
    """What ``bayesfan batch-child`` does: fit plan ``index`` of the spec."""
    from tasks.sample import sample_batch

    config, plans = read_spec(spec_url)
    return sample_batch(config, plans[index], attempt)
