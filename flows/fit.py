"""``fit-partitions``: load -> split -> sample every batch (fanned out, retried) -> refit the
unconverged -> reduce.

Call it from Python like any function (Prefect 3): ``fit_partitions(FitConfig(...))``
returns a ``FitResult``. When fewer than ``min_success_ratio`` of the partitions
are ok or unconverged it raises ``FitFailed`` (carrying the result), so the flow
run ends Failed, after the artifact of what succeeded has been written.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.runtime import flow_run

import bayesfan
from bayesfan.config import FitConfig
from bayesfan.result import FitFailed, FitResult
from bayesfan.storage import Store
from flows.fanout import Runners, run_batches
from flows.progress import Progress
from models import resolve_model
from tasks.load import check_columns, fingerprint, read_table
from tasks.artifacts import artifact_prefix, publish_artifacts
from tasks.reduce import reduce_batches
from tasks.report import build_report
from tasks.sample import finished_record
from tasks.split import plan_batches, split_partitions, write_batch_input
from tasks.warm import load_previous, warm_hashes, write_warm


@flow(name="fit-partitions", flow_run_name="fit {config.model} -> {config.out}", validate_parameters=True)
def fit_partitions(config: FitConfig) -> FitResult:
    """Fit one model per partition of ``config.data`` and write the artifact to ``config.out``."""
    started = time.time()
    model = resolve_model(config.model, config.model_options)
    frame = read_table(config.data)
    check_columns(frame, config.data, config.partition_by, model)
    parts, quarantined = split_partitions(frame, config.partition_by, model)
    store = Store(config.out)
    data_fingerprint = fingerprint(frame)
    run_id = config.run_id(data_fingerprint)
    tags = (f"model:{model.name}", f"run:{run_id}")
    split_done = time.time()

    warm = load_previous(config.warm_start, sorted(parts), config.chains) if config.warm_start else None
    prefix = artifact_prefix(config.model)
    with Runners(config) as runners:
        records, failures, reused, total = sample_round(store, config, parts, warm, tags, prefix, runners)
        for round_ in range(1, config.max_refits + 1):
            unconverged = {k: parts[k] for r in records for k, v in r["partitions"].items()
                           if v["status"] == "unconverged"}
            if not unconverged:
                break
            more, more_failures, more_reused, more_total = sample_round(
                store, config.refit(round_), unconverged, None, tags, prefix, runners
            )
            records, failures = records + more, failures | more_failures
            reused, total = reused + more_reused, total + more_total
    sample_done = time.time()

    header = {
        "run_id": run_id,
        "bayesfan_version": bayesfan.__version__,
        "prefect_flow_run_id": str(flow_run.id),
        "model": model.name,
        "config": config.model_dump(mode="json"),
        "input": {"url": config.data, "fingerprint": data_fingerprint, "rows": len(frame)},
        "batches_total": total,
        "batches_reused": reused,
        "warm_started": 0 if warm is None else len(warm_hashes(warm)),
        "timings": {"split_s": split_done - started, "sample_s": sample_done - split_done},
    }
    manifest = reduce_batches(store, records, failures, quarantined, header)
    if config.report:
        build_report(config.out)
    publish_artifacts(manifest, prefix)
    result = FitResult(config.out, manifest)
    counts = manifest["counts"]
    if counts["total"] and (counts["ok"] + counts["unconverged"]) / counts["total"] < config.min_success_ratio:
        raise FitFailed(result)
    return result


def sample_round(
    store: Store, config: FitConfig, parts: dict, warm, tags, prefix: str, runners: Runners
) -> tuple[list, dict, int, int]:
    """Plan ``parts`` into batches, write their inputs, reuse finished ones and run the rest."""
    hashes = warm_hashes(warm) if warm is not None else {}
    plans = plan_batches(parts, config.batch_size, config.fingerprint_fields(), hashes)
    for plan in plans:
        write_batch_input(store, plan, parts)
        if plan.warm:
            write_warm(store, plan.batch_id, warm, plan.partitions)
    reused = [r for p in plans if (r := finished_record(store, p)) is not None]
    done = {r["batch_id"] for r in reused}
    tracker = Progress(prefix, plans, done)
    records, failures = run_batches(config, [p for p in plans if p.batch_id not in done], tags, tracker.settled,
                                    runners)
    by_id = {r["batch_id"]: r for r in reused + records}
    return [by_id[p.batch_id] for p in plans if p.batch_id in by_id], failures, len(reused), len(plans)


def run_fit(config: FitConfig) -> FitResult:
    """Run the flow of ``config.mode``: ``fit-partitions`` or ``fit-consensus`` (the CLI's entry point)."""
    if config.mode == "consensus":
        from flows.consensus import fit_consensus

        return fit_consensus(config)
    return fit_partitions(config)
