"""Fan batches out to a backend and bring every one back: done, or failed with a reason.

Storage is the source of truth: a batch is done when its ``done.json`` verifies
(``tasks.sample.finished_record``), whatever a backend reported. Two budgets, as
Nextflow's ``maxRetries``/``maxSpotAttempts``:

* application errors (the batch raised) are retried by Prefect task retries,
  ``config.max_retries`` times with exponential backoff;
* crashes and interruptions (a killed worker process, a broken pool, a Spot
  reclaim), which Prefect never retries, are resubmitted here, up to
  ``config.max_interruptions`` times. A worker's death breaks a process pool and
  crashes every batch not yet done, so only the batches that had reached a worker
  (``tasks.sample.was_started``) are charged; the others go again for free, unless
  none of the crashed batches had started (a runner that runs nothing).
"""

from __future__ import annotations

import contextlib
from collections import Counter

from prefect import task
from prefect.client.orchestration import get_client
from prefect.runtime import task_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner
from prefect.tasks import exponential_backoff

from bayesfan.config import FitConfig
from bayesfan.storage import Store
from tasks.sample import finished_record, mark_started, sample_batch, was_started
from tasks.split import BatchPlan


def _batch_run_name() -> str:
    plan = task_run.parameters["plan"]
    return f"fit-batch {plan.index:04d} ({len(plan.partitions)} partitions)"


@task(name="fit-batch", task_run_name=_batch_run_name)
def fit_batch_task(config: FitConfig, plan: BatchPlan, submission: int = 0) -> dict:
    """One batch as a Prefect task; the flow sets its retries."""
    mark_started(Store(config.out), plan, submission)
    return sample_batch(config, plan, attempt=max(1, task_run.run_count))


@contextlib.contextmanager
def task_runner(config: FitConfig):
    """The task runner of the ``local`` or ``dask`` backend, its workers on this process's API.

    Worker processes inherit the Prefect settings that are set. Without an API URL
    (ephemeral mode) each worker would start a Prefect server of its own (seconds
    per worker), so the URL of the server this flow talks to is set for them.
    """
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    with temporary_settings({PREFECT_API_URL: api_url}), _runner(config) as runner:
        yield runner


def _runner(config: FitConfig):
    if config.backend == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        workers = config.workers or 2
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    return ProcessPoolTaskRunner(max_workers=config.workers) if config.workers else ProcessPoolTaskRunner()


class Runners:
    """The ``local`` or ``dask`` task runner, kept open across a flow's rounds (fits, refits).

    Starting one costs seconds (worker processes, imports), so rounds share it. A crash
    breaks a process pool, so after one the next ``current()`` starts a fresh runner.
    """

    def __init__(self, config: FitConfig):
        self._config, self._open, self._runner = config, contextlib.ExitStack(), None

    def current(self):
        if self._runner is None:
            self._runner = self._open.enter_context(task_runner(self._config))
        return self._runner

    def discard(self) -> None:
        self._open.close()
        self._runner = None

    def __enter__(self) -> "Runners":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def run_batches(
    config: FitConfig, plans: list[BatchPlan], tags: tuple[str, ...] = (), on_settled=lambda plan, ok: None,
    runners: Runners | None = None,
) -> tuple[list[dict], dict]:
    """Run every batch on ``config.backend``; return (records in plan order, failures by batch id).

    ``on_settled(plan, ok)`` is called as each batch finishes for good (done, or failed).
    ``runners`` (local and dask backends) is the flow's open task runner, if it keeps one.
    """
    if config.backend == "pool":
        from flows.pool import run_on_pool

        return run_on_pool(config, plans, on_settled)
    if config.backend == "batch":
        from flows.awsbatch import run_on_aws_batch

        return run_on_aws_batch(config, plans)
    if runners is None:
        with Runners(config) as runners:
            return run_on_task_runner(config, plans, runners, tags, on_settled)
    return run_on_task_runner(config, plans, runners, tags, on_settled)


def run_on_task_runner(
    config: FitConfig, plans: list[BatchPlan], runners: Runners, tags: tuple[str, ...] = (),
    on_settled=lambda plan, ok: None,
) -> tuple[list[dict], dict]:
    """Submit every plan; after a crash, the unfinished batches go again to a fresh runner."""
    store = Store(config.out)
    retrying = fit_batch_task.with_options(
        retries=config.max_retries, tags=list(tags),
        retry_delay_seconds=exponential_backoff(backoff_factor=config.retry_delay) if config.max_retries else 0,
    )
    records, failures, crashes = {}, {}, Counter()
    todo, submission = list(plans), 0
    while todo:
        runner = runners.current()
        futures = [(plan, runner.submit(retrying, {"config": config, "plan": plan, "submission": submission}))
                   for plan in todo]
        todo, crashed = [], {}
        for plan, future in futures:
            outcome, value = _settle(future)
            if outcome == "crashed" and (record := finished_record(store, plan)) is not None:
                outcome, value = "completed", record
            if outcome == "completed":
                records[plan.batch_id] = value | {"interruptions": crashes[plan.batch_id]}
            elif outcome == "failed":
                failures[plan.batch_id] = failure(plan, config.max_retries + 1, value)
            else:
                crashed[plan.batch_id] = (plan, value)
                continue
            on_settled(plan, plan.batch_id in records)
        charged = {k for k, (plan, _) in crashed.items() if was_started(store, plan, submission)} or set(crashed)
        for key, (plan, reason) in crashed.items():
            if key not in charged:
                todo.append(plan)
            elif crashes[key] < config.max_interruptions:
                crashes[key] += 1
                todo.append(plan)
            else:
                failures[key] = failure(plan, config.max_retries + 1, f"interrupted {crashes[key] + 1} times; last: {reason}")
                on_settled(plan, False)
        if crashed:
            runners.discard()  # a crash breaks a process pool: the next pass starts a fresh one
        submission += 1
    return [records[p.batch_id] for p in plans if p.batch_id in records], failures


def _settle(future) -> tuple[str, object]:
    """Wait for a task future: ("completed", record) | ("failed", reason) | ("crashed", reason)."""
    try:
        value = future.result(raise_on_failure=False)
    except BaseException as exc:  # noqa: BLE001 - a broken pool or killed worker surfaces here
        return "crashed", one_line(exc)
    state = future.state
    if state.is_completed():
        return "completed", value
    if state.is_crashed() or not isinstance(value, Exception):
        return "crashed", one_line(value, state.message)
    return "failed", one_line(value, state.message)


def failure(plan: BatchPlan, attempts: int, reason: str) -> dict:
    return {"index": plan.index, "partitions": plan.partitions, "attempts": attempts, "reason": reason}


def one_line(outcome, message: str | None = None) -> str:
    if isinstance(outcome, BaseException):
        text = f"{type(outcome).__name__}: {outcome}"
    else:
        text = message or "batch did not complete"
    return " ".join(text.split())[:500]
