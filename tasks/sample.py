"""Sample one batch: pad and stack its partitions, fit them in one compiled program,
write the result to storage, and return a small record (paths and diagnostics).

Files of a finished batch, under ``<out>/batches/<batch_id>/``:
``input.parquet`` (written by split; ``warm.zarr.zip`` too for a warm-started
batch), ``result.zarr.zip`` (a DataTree with groups
``posterior``, ``sample_stats`` and ``adaptation``), ``summary.parquet``, and
``done.json`` last, which holds the others' sha256 and makes the batch count as done.
``started-<n>.json`` records that submission n of the batch reached a worker.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import xarray as xr

from bayesfan.config import FitConfig
from bayesfan.engine import ChainOutput, enable_compilation_cache, fit_batch, partition_keys
from bayesfan.storage import Store, pack_tree, sha256, unpack_tree
from models import resolve_model
from models.base import Model
from tasks.diagnose import summarize
from tasks.split import BatchPlan, read_batch_input
from tasks.warm import read_warm

RESULT = "result.zarr.zip"
SUMMARY = "summary.parquet"
DONE = "done.json"


def stack_partitions(model: Model, parts: list[pd.DataFrame], length: int, size: int) -> dict[str, np.ndarray]:
    """Arrays with leading ``(size, length)`` axes plus a ``mask``; padding repeats real values."""
    arrays = [model.arrays(rows) for rows in parts]
    padded = {
        name: np.stack([_pad_rows(a[name], length) for a in arrays]) for name in arrays[0]
    }
    padded["mask"] = np.stack([np.arange(length) < len(rows) for rows in parts])
    return {name: _pad_partitions(a, size) for name, a in padded.items()}


def _pad_rows(a: np.ndarray, length: int) -> np.ndarray:
    widths = [(0, length - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, widths, mode="edge")


def _pad_partitions(a: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([a, np.repeat(a[:1], size - a.shape[0], axis=0)]) if a.shape[0] < size else a


def to_datatree(out: ChainOutput, partitions: list[str]) -> xr.DataTree:
    """Engine output -> DataTree with dims ``(partition, chain, draw, ...)``; padding dropped."""
    n = len(partitions)
    coords = {"partition": np.asarray(partitions, dtype=str)}

    def dataset(arrays: dict, lead: tuple[str, ...]) -> xr.Dataset:
        variables = {}
        for name, value in arrays.items():
            value = np.asarray(value)[:n]
            extra = tuple(f"{name}_dim_{i}" for i in range(value.ndim - len(lead)))
            variables[name] = (lead + extra, value)
        return xr.Dataset(variables, coords=coords)

    stats = dict(out.stats)
    stats["step_size"] = np.broadcast_to(out.step_size[..., None], out.stats["lp"].shape)
    adaptation = {"step_size": out.step_size, "inverse_mass_matrix": out.inverse_mass_matrix,
                  "shift": out.shift, "scale": out.scale}
    return xr.DataTree.from_dict(
        {
            "posterior": dataset(out.samples, ("partition", "chain", "draw")),
            "sample_stats": dataset(stats, ("partition", "chain", "draw")),
            "adaptation": dataset(adaptation, ("partition", "chain")),
        }
    )


def mark_started(store: Store, plan: BatchPlan, submission: int) -> None:
    """Record that submission ``submission`` of ``plan`` reached a worker."""
    store.write_json({"submission": submission}, "batches", plan.batch_id, f"started-{submission}.json")


def was_started(store: Store, plan: BatchPlan, submission: int) -> bool:
    return store.exists("batches", plan.batch_id, f"started-{submission}.json")


def sample_batch(config: FitConfig, plan: BatchPlan, attempt: int = 1) -> dict:
    """Fit every partition of ``plan`` under ``config`` and write its result; return the batch record.

    A warm-started batch runs the short ``warm_warmup``.
    """
    enable_compilation_cache()
    model = resolve_model(config.model, config.model_options)
    sampler = config.sampler._replace(warmup=config.warm_warmup) if plan.warm else config.sampler
    store = Store(config.out)
    rows = read_batch_input(store, plan)
    parts = [rows[key] for key in plan.partitions]
    data = stack_partitions(model, parts, plan.length, plan.size)
    padded_keys = plan.partitions + [plan.partitions[0]] * (plan.size - len(plan.partitions))
    keys = partition_keys(config.seed, padded_keys, sampler.chains)
    start = time.perf_counter()
    warm = read_warm(store, plan.batch_id, plan.size) if plan.warm else None
    output = fit_batch(model, sampler, keys, data, warm)
    sampled = time.perf_counter()
    tree = to_datatree(output, plan.partitions)
    summary, verdicts = summarize(tree, config.rhat_max, config.ess_min, config.max_divergence_rate)
    diagnosed = time.perf_counter()
    result_bytes, summary_bytes = pack_tree(tree), _parquet_bytes(summary)
    store.write_bytes(result_bytes, "batches", plan.batch_id, RESULT)
    store.write_bytes(summary_bytes, "batches", plan.batch_id, SUMMARY)
    record = {
        "batch_id": plan.batch_id,
        "index": plan.index,
        "attempt": attempt,
        "sample_seconds": sampled - start,
        "diagnose_seconds": diagnosed - sampled,
        "write_seconds": time.perf_counter() - diagnosed,
        "partitions": verdicts,
        "sha256": {RESULT: sha256(result_bytes), SUMMARY: sha256(summary_bytes)},
    }
    store.write_json(record, "batches", plan.batch_id, DONE)
    return record


def finished_record(store: Store, plan: BatchPlan) -> dict | None:
    """The batch's record if it is done and its files match their checksums, else None."""
    if not store.exists("batches", plan.batch_id, DONE):
        return None
    try:
        record = store.read_json("batches", plan.batch_id, DONE)
        for name, digest in record["sha256"].items():
            if sha256(store.read_bytes("batches", plan.batch_id, name)) != digest:
                return None
    except (OSError, ValueError, KeyError):
        return None
    if sorted(record["partitions"]) != sorted(plan.partitions):
        return None
    return record


def load_result(store: Store, batch_id: str) -> xr.DataTree:
    """A finished batch's DataTree, read fully into memory."""
    return unpack_tree(store.read_bytes("batches", batch_id, RESULT))


def load_summary(store: Store, batch_id: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(store.read_bytes("batches", batch_id, SUMMARY)))


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
