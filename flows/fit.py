"""``fit-partitions``: load -> split -> sample every batch (fanned out, retried) -> reduce.

Call it from Python like any function (Prefect 3): ``fit_partitions(FitConfig(...))``
returns a ``FitResult``; it raises ``FitFailed`` (which carries the result) when
any partition failed or was quarantined, after the artifact has been written.
"""

from __future__ import annotations

import time

from prefect import flow, task
from prefect.futures import wait
from prefect.runtime import task_run
from prefect.task_runners import ProcessPoolTaskRunner
from prefect.tasks import exponential_backoff

import bayesfan
from bayesfan.config import FitConfig
from bayesfan.result import FitFailed, FitResult
from bayesfan.storage import Store
from models import resolve_model
from tasks.load import check_columns, fingerprint, read_table
from tasks.reduce import reduce_batches
from tasks.sample import finished_record, sample_batch
from tasks.split import BatchPlan, plan_batches, split_partitions, write_batch_input


def _batch_run_name() -> str:
    plan = task_run.parameters["plan"]
    return f"fit-batch {plan.index:04d} ({len(plan.partitions)} partitions)"


@task(name="fit-batch", task_run_name=_batch_run_name)
def fit_batch_task(config: FitConfig, plan: BatchPlan) -> dict:
    """Fit one batch; retried with backoff by the options the flow sets."""
    model = resolve_model(config.model, config.model_options)
    return sample_batch(
        config.out, plan, model, config.sampler, config.seed,
        config.rhat_max, config.ess_min, attempt=max(1, task_run.run_count),
    )


def run_batches(config: FitConfig, plans: list[BatchPlan]) -> tuple[list[dict], dict[str, dict]]:
    """Submit every batch, wait for all; a failed batch never fails the others."""
    retrying = fit_batch_task.with_options(
        retries=config.max_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=config.retry_delay) if config.max_retries else 0,
    )
    futures = [retrying.submit(config, plan) for plan in plans]
    wait(futures)
    records, failures = [], {}
    for plan, future in zip(plans, futures):
        outcome = future.result(raise_on_failure=False)
        if future.state.is_completed():
            records.append(outcome)
        else:
            failures[plan.batch_id] = {
                "index": plan.index,
                "partitions": plan.partitions,
                "attempts": config.max_retries + 1,
                "reason": _one_line(outcome, future.state.message),
            }
    return records, failures


@flow(name="fit-partitions", task_runner=ProcessPoolTaskRunner(), validate_parameters=True)
def fit_partitions(config: FitConfig) -> FitResult:
    """Fit one model per partition of ``config.data`` and write the artifact to ``config.out``."""
    started = time.time()
    model = resolve_model(config.model, config.model_options)
    frame = read_table(config.data)
    check_columns(frame, config.data, config.partition_by, model)
    parts, quarantined = split_partitions(frame, config.partition_by, model)
    plans = plan_batches(parts, config.batch_size, config.fingerprint_fields())
    store = Store(config.out)
    for plan in plans:
        write_batch_input(store, plan, parts)
    split_done = time.time()

    reused = {p.batch_id: r for p in plans if (r := finished_record(store, p)) is not None}
    records, failures = run_batches(config, [p for p in plans if p.batch_id not in reused])
    sample_done = time.time()

    header = {
        "run_id": config.run_id(fingerprint(frame)),
        "bayesfan_version": bayesfan.__version__,
        "model": model.name,
        "config": config.model_dump(mode="json"),
        "input": {"url": config.data, "fingerprint": fingerprint(frame), "rows": len(frame)},
        "batches_total": len(plans),
        "batches_reused": len(reused),
        "timings": {"split_s": split_done - started, "sample_s": sample_done - split_done},
    }
    manifest = reduce_batches(store, list(reused.values()) + records, failures, quarantined, header)
    result = FitResult(config.out, manifest)
    if manifest["counts"]["failed"] or manifest["counts"]["quarantined"]:
        raise FitFailed(result)
    return result


def run_fit(config: FitConfig) -> FitResult:
    """Run the flow with ``config.workers`` worker processes (the CLI's entry point)."""
    runner = ProcessPoolTaskRunner(max_workers=config.workers) if config.workers else ProcessPoolTaskRunner()
    return fit_partitions.with_options(task_runner=runner)(config)


def _one_line(outcome, message: str | None) -> str:
    if isinstance(outcome, BaseException):
        text = f"{type(outcome).__name__}: {outcome}"
    else:
        text = message or "batch did not complete"
    return " ".join(text.split())[:500]
