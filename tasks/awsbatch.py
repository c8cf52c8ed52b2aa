"""AWS Batch backend: submit N children as array jobs, poll them, resubmit the lost.

Children are numbered 0..N-1 (the *global index*). A submission covers a
contiguous range of them: an array job of 2..10,000 children, or a plain job
for a range of one (Batch rejects arrays of size 1). Each submission passes
``BAYESFAN_INDEX_OFFSET`` (its first global index), so a child finds its own
index with :func:`child_index`. Every Batch call goes through
:func:`call_with_backoff`, since Batch allows about 50 calls/s per account.
No Prefect here: these are plain functions over a boto3 ``batch`` client.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from botocore.exceptions import ClientError

MAX_ARRAY_SIZE = 10_000
DESCRIBE_LIMIT = 100
OFFSET_ENV = "BAYESFAN_INDEX_OFFSET"
THROTTLING_CODES = frozenset({"TooManyRequestsException", "ThrottlingException"})
TERMINAL = frozenset({"SUCCEEDED", "FAILED"})
MISSING = "MISSING"


@dataclass(frozen=True)
class Submission:
    """One submitted job covering children ``start .. start + count - 1``."""

    job_id: str
    start: int
    count: int

    @property
    def is_array(self) -> bool:
        return self.count > 1

    def child_ids(self) -> dict[int, str]:
        """Global index -> Batch job id (``<array id>:<i>`` for array children)."""
        if not self.is_array:
            return {self.start: self.job_id}
        return {self.start + i: f"{self.job_id}:{i}" for i in range(self.count)}


def call_with_backoff(
    fn: Callable, *args, attempts: int = 8, base: float = 0.5, cap: float = 20.0,
    sleep: Callable[[float], None] = time.sleep, **kwargs,
):
    """``fn(*args, **kwargs)``, retrying throttling errors with full-jitter exponential backoff.

    Retry ``k`` (from 0) waits ``uniform(0, min(cap, base * 2**k))`` seconds. After
    ``attempts`` throttled calls the last error is raised; other errors raise at once.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in THROTTLING_CODES or attempt == attempts - 1:
                raise
            # Jitter, not cryptography.
            sleep(random.uniform(0, min(cap, base * 2**attempt)))  # nosec B311


def child_index(environ: dict[str, str] | None = None) -> int:
    """This child's global index: ``BAYESFAN_INDEX_OFFSET`` plus ``AWS_BATCH_JOB_ARRAY_INDEX``.

    A plain (non-array) job has no array index and counts as index 0 of its range.
    """
    environ = os.environ if environ is None else environ
    return int(environ.get(OFFSET_ENV, "0")) + int(environ.get("AWS_BATCH_JOB_ARRAY_INDEX", "0"))


def ranges(indices: Iterable[int], max_size: int = MAX_ARRAY_SIZE) -> list[tuple[int, int]]:
    """Sorted distinct indices as ``(start, count)`` runs of consecutive values, each at most ``max_size``."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][0] + runs[-1][1] == i and runs[-1][1] < max_size:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def submit_indices(
    client, job_name: str, queue: str, definition: str, indices: Iterable[int], env: dict[str, str],
    *, max_array_size: int = MAX_ARRAY_SIZE, tags: dict[str, str] | None = None,
) -> list[Submission]:
    """Submit the children ``indices``: one job per run of consecutive indices (split at ``max_array_size``).

    Every child gets ``env`` plus ``BAYESFAN_INDEX_OFFSET``; a run of one is a plain job.
    Job names are ``<job_name>-<start>``.
    """
    if not 2 <= max_array_size <= MAX_ARRAY_SIZE:
        raise ValueError(f"max_array_size must be in 2..{MAX_ARRAY_SIZE}, got {max_array_size}")
    submissions = []
    for start, count in ranges(indices, max_array_size):
        environment = [{"name": k, "value": v} for k, v in {**env, OFFSET_ENV: str(start)}.items()]
        request = {
            "jobName": f"{job_name}-{start}", "jobQueue": queue, "jobDefinition": definition,
            "containerOverrides": {"environment": environment},
        }
        if count > 1:
            request["arrayProperties"] = {"size": count}
        if tags:
            request["tags"] = tags
        response = call_with_backoff(client.submit_job, **request)
        submissions.append(Submission(response["jobId"], start, count))
    return submissions


def submit_arrays(
    client, job_name: str, queue: str, definition: str, n_children: int, env: dict[str, str],
    *, max_array_size: int = MAX_ARRAY_SIZE, tags: dict[str, str] | None = None,
) -> list[Submission]:
    """Submit children ``0 .. n_children - 1`` as array jobs of at most ``max_array_size``."""
    return submit_indices(
        client, job_name, queue, definition, range(n_children), env, max_array_size=max_array_size, tags=tags
    )


def poll(client, job_ids: Iterable[str]) -> dict[str, str]:
    """Job id -> Batch status, one DescribeJobs call per 100 ids; ids Batch does not return are ``MISSING``."""
    ids = list(dict.fromkeys(job_ids))
    statuses = dict.fromkeys(ids, MISSING)
    for start in range(0, len(ids), DESCRIBE_LIMIT):
        response = call_with_backoff(client.describe_jobs, jobs=ids[start : start + DESCRIBE_LIMIT])
        for job in response["jobs"]:
            if job["jobId"] in statuses:
                statuses[job["jobId"]] = job["status"]
    return statuses


def child_statuses(client, submissions: list[Submission]) -> dict[int, str]:
    """Global index -> status of every child.

    Polls the submitted jobs first; children of a SUCCEEDED array are SUCCEEDED and of
    a MISSING one MISSING, so only other arrays' children are described one by one.
    """
    parents = poll(client, [s.job_id for s in submissions])
    result: dict[int, str] = {}
    to_describe: dict[int, str] = {}
    for s in submissions:
        status = parents[s.job_id]
        if not s.is_array or status in ("SUCCEEDED", MISSING):
            result.update(dict.fromkeys(s.child_ids(), status))
        else:
            to_describe.update(s.child_ids())
    described = poll(client, to_describe.values())
    result.update({index: described[job_id] for index, job_id in to_describe.items()})
    return dict(sorted(result.items()))


def wait(
    client, submissions: list[Submission], *, poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[int, str]:
    """Poll the submitted jobs until each is SUCCEEDED, FAILED or MISSING; then return :func:`child_statuses`."""
    while True:
        statuses = poll(client, [s.job_id for s in submissions])
        if all(status in TERMINAL or status == MISSING for status in statuses.values()):
            return child_statuses(client, submissions)
        sleep(poll_seconds)


def run_children(
    client, job_name: str, queue: str, definition: str, n_children: int, env: dict[str, str],
    *, rounds: int = 2, max_array_size: int = MAX_ARRAY_SIZE, poll_seconds: float = 30.0,
    sleep: Callable[[float], None] = time.sleep, tags: dict[str, str] | None = None,
) -> dict[int, str]:
    """Submit all children, wait, and resubmit FAILED or MISSING ones, at most ``rounds`` submissions in all.

    Returns the final global index -> status. Spot reclaims are already retried inside
    Batch by the job definition's retry strategy; a resubmission is a fresh set of attempts.
    """
    pending: Iterable[int] = range(n_children)
    final: dict[int, str] = {}
    for _ in range(rounds):
        submissions = submit_indices(
            client, job_name, queue, definition, pending, env, max_array_size=max_array_size, tags=tags
        )
        final.update(wait(client, submissions, poll_seconds=poll_seconds, sleep=sleep))
        pending = [index for index, status in final.items() if status != "SUCCEEDED"]
        if not pending:
            break
    return final
