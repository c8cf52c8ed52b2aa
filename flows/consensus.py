"""``fit-consensus``: load -> shard the rows -> sample every shard -> check -> combine -> write.

A shard batch is a partition batch of ``ShardModel`` (the model with prior^(1/S)), so
shards are sampled by the same engine, task, retries and resume (``done.json``) as
partition mode; shards of one shape form one vmapped batch. The artifact:

* ``posterior.zarr``: ``posterior`` (combined draws, ``(chain, draw, ...)``),
  ``subposteriors``, ``sample_stats`` and ``adaptation`` (with a ``shard`` dim);
  with ``combine="full"`` one NUTS run on all rows and no ``subposteriors``;
* ``summary.parquet``: one row per parameter, partition ``"all"``;
* ``manifest.json`` last: partition mode's fields plus ``shards``,
  ``improper_fractionated_priors``, ``disagreement``, ``non_gaussian`` and ``warnings``.

A combination is refused (``CombinationRefused``) when a shard failed or did not converge.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import pandas as pd
import xarray as xr
from jax import random
from prefect import flow
from prefect.runtime import flow_run

import bayesfan
from bayesfan.config import FitConfig
from bayesfan.result import FitFailed, FitResult
from bayesfan.storage import Store
from flows.fanout import run_batches
from models import resolve_model
from models.base import Model, PartitionError
from tasks.artifacts import artifact_prefix, publish_artifacts
from tasks.consensus import (
    assign_shards, combine, constrained_posterior, disagreement, improper_priors, non_gaussianity,
    probe_data, unconstrained_subdraws,
)
from tasks.diagnose import SUMMARY_COLUMNS, summarize
from tasks.load import DataError, check_columns, fingerprint, read_table
from tasks.reduce import STATUSES, batch_entries, combine_trees, partition_table, write_tree
from tasks.report import build_report
from tasks.sample import finished_record, load_result
from tasks.split import BatchPlan, bucket_length, content_hash, padded_size, write_batch_input

SHARD_MODEL = "tasks.consensus:ShardModel"
ALL = "all"
#: Warn when shards disagree this strongly (p-value of Cochran's Q).
DISAGREEMENT_P = 0.001
#: Warn when an unconstrained sub-posterior is this far from Gaussian.
SKEWNESS_MAX, EXCESS_KURTOSIS_MAX = 1.0, 3.0


class CombinationRefused(FitFailed):
    """A shard failed or did not converge, so its sub-posterior is not combined."""

    def __init__(self, result: FitResult):
        self.result = result
        RuntimeError.__init__(self, f"{result.manifest['partitions'][ALL]['reason']}; see {result.path}/manifest.json")


def shard_rows(frame: pd.DataFrame, model: Model, shards: int, seed: int, shard_by: str | None) -> dict[str, pd.DataFrame]:
    """``{"shard-0000": rows, ...}``, each shard's rows checked by the model and in its order."""
    where = assign_shards(frame, shards, seed, shard_by)
    parts = {}
    for s in range(shards):
        rows = frame.loc[where == s]
        if model.order_by is not None:
            rows = rows.sort_values(model.order_by, kind="stable")
        rows = rows[list(model.columns())].reset_index(drop=True)
        try:
            model.check_rows(rows)
        except PartitionError as exc:
            raise DataError(f"shard {s}: {exc}") from None
        parts[f"shard-{s:04d}"] = rows
    return parts


def plan_shards(parts: dict[str, pd.DataFrame], batch_size: int, config_fields: dict) -> list[BatchPlan]:
    """Batches of up to ``batch_size`` shards, all padded to one length, so one compiled program fits all."""
    length = bucket_length(max(len(rows) for rows in parts.values()))
    keys = sorted(parts)
    plans = []
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        size = padded_size(len(chunk), batch_size)
        identity = json.dumps({"config": config_fields, "length": length, "size": size,
                               "shards": [[k, content_hash(parts[k])] for k in chunk]}, sort_keys=True, default=str)
        batch_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
        plans.append(BatchPlan(batch_id=batch_id, index=len(plans), partitions=chunk, length=length, size=size))
    return plans


@flow(name="fit-consensus", validate_parameters=True)
def fit_consensus(config: FitConfig) -> FitResult:
    """Fit one model to all rows of ``config.data`` by combining shard sub-posteriors."""
    started = time.time()
    model = resolve_model(config.model, config.model_options)
    frame = read_table(config.data)
    check_columns(frame, config.data, (config.shard_by,) if config.shard_by else (), model)
    shards = 1 if config.combine == "full" else config.shards
    try:
        parts = shard_rows(frame, model, shards, config.seed, config.shard_by)
    except ValueError as exc:
        raise DataError(f"{config.data}: {exc}") from None
    # Sampling does not depend on the combination method, so a rerun with another reuses the shards.
    plans = plan_shards(parts, config.batch_size, config.fingerprint_fields() | {"combine": None, "shards": shards})
    store = Store(config.out)
    for plan in plans:
        write_batch_input(store, plan, parts)
    split_done = time.time()

    reused = {p.batch_id: r for p in plans if (r := finished_record(store, p)) is not None}
    shard_config = config.model_copy(update={"model": SHARD_MODEL, "model_options": {"base": model, "shards": shards}})
    records, failures = run_batches(shard_config, [p for p in plans if p.batch_id not in reused])
    records = sorted(list(reused.values()) + records, key=lambda r: r["index"])
    sample_done = time.time()

    first = parts[min(parts)]
    improper = improper_priors(model.model, probe_data(model, first), shards)
    data_fingerprint = fingerprint(frame)
    header = {
        "run_id": config.run_id(data_fingerprint),
        "bayesfan_version": bayesfan.__version__,
        "prefect_flow_run_id": str(flow_run.id),
        "model": model.name,
        "mode": "consensus",
        "combine": config.combine,
        "config": config.model_dump(mode="json"),
        "input": {"url": config.data, "fingerprint": data_fingerprint, "rows": len(frame)},
        "batches_total": len(plans),
        "batches_reused": len(reused),
        "batches": batch_entries(records),
        "failed_batches": failures,
        "improper_fractionated_priors": improper,
        "warnings": [f"prior of {p['site']} ({p['distribution']}) is improper when fractionated: "
                     f"its sub-posteriors are proper only through each shard's likelihood" for p in improper],
    }
    sub = _rename(combine_trees([load_result(store, r["batch_id"]) for r in records])) if records else None
    table = partition_table(records, failures, {})
    if sub is not None:  # verdicts under this run's thresholds, also for reused shards
        _, verdicts = summarize(_rename(sub, back=True), config.rhat_max, config.ess_min)
        for key, verdict in verdicts.items():
            table[key].update(verdict)
    for key, rows in parts.items():
        table[key]["rows"] = len(rows)
    header["shards"] = table
    bad = [k for k, v in table.items() if v["status"] == "failed" or (shards > 1 and v["status"] != "ok")]
    if bad:
        reason = f"combination refused: shard(s) {', '.join(bad)} " + (
            "failed" if any(table[k]["status"] == "failed" for k in bad) else "did not converge")
        manifest = _write(store, sub, None, None, header | {"timings": _timings(started, split_done, sample_done)},
                          {"status": "failed", "reason": reason})
        raise CombinationRefused(FitResult(config.out, manifest))

    if shards == 1:
        posterior = sub["posterior"].to_dataset().isel(shard=0, drop=True)
        ngauss = {}
    else:
        data = probe_data(model, first)
        flat, labels, unravel = unconstrained_subdraws(sub["posterior"].to_dataset(), model.model, data)
        key = random.fold_in(random.PRNGKey(config.seed), shards)
        combined = combine(flat, config.combine, key, config.chains)
        posterior = constrained_posterior(model.model, model, first, unravel, combined, config.chains)
        moments = non_gaussianity(flat)
        ngauss = {label: {"skewness": float(moments["skewness"][j]), "excess_kurtosis": float(moments["excess_kurtosis"][j])}
                  for j, label in enumerate(labels)}
    header["timings"] = _timings(started, split_done, sample_done)
    manifest = _write(store, sub, posterior, ngauss, header, None, config)
    if config.report:
        build_report(config.out)
    publish_artifacts(manifest, artifact_prefix(config.model))
    return FitResult(config.out, manifest)


def _write(store: Store, sub, posterior, ngauss, header: dict, refused: dict | None, config: FitConfig | None = None) -> dict:
    """Write posterior.zarr, summary.parquet, then manifest.json; return the manifest."""
    store.remove("manifest.json")  # an old manifest must not vouch for half-replaced files
    shard_dim = sub is not None and sub["posterior"].sizes["shard"] > 1
    groups = {}
    if sub is not None:
        for group in ("sample_stats", "adaptation"):
            ds = sub[group].to_dataset()
            groups[group] = ds if shard_dim else ds.isel(shard=0, drop=True)
        if shard_dim:
            groups["subposteriors"] = sub["posterior"].to_dataset()
    warnings = list(header.pop("warnings"))
    disagree = {}
    if posterior is None:
        summary = pd.DataFrame({c: [] for c in SUMMARY_COLUMNS})
        verdict = refused | {"r_hat_max": None, "ess_bulk_min": None, "divergences": None}
    else:
        groups["posterior"] = posterior
        diverging = sub["sample_stats"]["diverging"].to_dataset().sum("shard")
        tree = xr.DataTree.from_dict({"posterior": posterior.expand_dims(partition=[ALL]),
                                      "sample_stats": diverging.expand_dims(partition=[ALL])})
        summary, verdicts = summarize(tree, config.rhat_max, config.ess_min)
        verdict = verdicts[ALL]
        if shard_dim:
            frame = disagreement(groups["subposteriors"])
            disagree = {r.parameter: {"statistic": r.statistic, "p_value": r.p_value} for r in frame.itertuples()}
            warnings += [f"shards disagree on {r.parameter}: Q/(S-1) = {r.statistic:.2f} (p = {r.p_value:.2g})"
                         for r in frame.itertuples() if r.p_value < DISAGREEMENT_P]
            warnings += [f"sub-posteriors of {k} (unconstrained) are far from Gaussian: |skewness| "
                         f"{v['skewness']:.2f}, |excess kurtosis| {v['excess_kurtosis']:.2f}"
                         for k, v in ngauss.items()
                         if v["skewness"] > SKEWNESS_MAX or v["excess_kurtosis"] > EXCESS_KURTOSIS_MAX]
    if groups:
        write_tree(store, xr.DataTree.from_dict(groups))
    else:
        store.remove("posterior.zarr")
    buffer = io.BytesIO()
    summary.to_parquet(buffer, index=False)
    store.write_bytes(buffer.getvalue(), "summary.parquet")
    partitions = {ALL: {**verdict, "attempts": max((r["attempt"] for r in header["batches"].values()), default=0),
                        "batch": None}}
    manifest = {
        **header,
        "artifact": {"posterior": "posterior.zarr" if groups else None, "summary": "summary.parquet",
                     "combined": posterior is not None},
        "counts": {s: int(verdict["status"] == s) for s in STATUSES} | {"total": 1},
        "worst_r_hat": verdict["r_hat_max"],
        "min_ess_bulk": verdict["ess_bulk_min"],
        "partitions": partitions,
        "disagreement": disagree,
        "non_gaussian": ngauss or {},
        "warnings": warnings,
    }
    store.write_json(manifest, "manifest.json")
    return manifest


def _rename(tree: xr.DataTree, back: bool = False) -> xr.DataTree:
    """``partition`` <-> ``shard`` in every group."""
    old, new = ("shard", "partition") if back else ("partition", "shard")
    return xr.DataTree.from_dict({g: tree[g].to_dataset().rename({old: new}) for g in tree.children})


def _timings(started: float, split_done: float, sample_done: float) -> dict:
    return {"split_s": split_done - started, "sample_s": sample_done - split_done,
            "combine_s": time.time() - sample_done}
