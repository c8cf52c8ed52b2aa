"""Reduce finished batches into the run's artifact.

``<out>/posterior.zarr`` (DataTree, dims ``(partition, chain, draw, ...)``),
``<out>/summary.parquet`` and ``<out>/manifest.json``, the manifest written last:
a reader that finds the manifest finds the complete artifact it describes.

The posterior is streamed: ``write_posterior`` pre-sizes the store and fills it
``CHUNK`` partitions at a time, in key order, so the client holds a few batches'
draws at once however many partitions the run has.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import warnings
from collections import Counter

import dask.array
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from bayesfan.storage import Store
from tasks.diagnose import SUMMARY_COLUMNS
from tasks.sample import load_result, load_summary

STATUSES = ("ok", "unconverged", "failed", "quarantined")
GROUPS = ("posterior", "sample_stats", "adaptation")
#: Partitions per zarr chunk of posterior.zarr, and per step of the streaming write.
CHUNK = 32


def combine_trees(trees: list[xr.DataTree]) -> xr.DataTree:
    """Concatenate batch trees, held in memory, along ``partition``, sorted by key."""
    groups = {}
    for group in GROUPS:
        ds = xr.concat([t[group].to_dataset() for t in trees], dim="partition")
        groups[group] = ds.sortby("partition")
    return xr.DataTree.from_dict(groups)


def partition_table(
    records: list[dict], failures: dict[str, dict], quarantined: dict[str, str]
) -> dict[str, dict]:
    """Every partition's status, attempts, reason and batch, from batch records and failures.

    Records come in run order: a partition refitted after an unconverged first fit
    takes its last record's verdict, and its attempts add up.
    """
    table = {}
    for batch_id, failure in failures.items():
        for key in failure["partitions"]:
            table[key] = {"status": "failed", "reason": failure["reason"],
                          "attempts": failure["attempts"], "batch": batch_id}
    for record in records:
        for key, verdict in record["partitions"].items():
            before = table.get(key, {}).get("attempts", 0)
            attempts = record["attempt"] + record.get("interruptions", 0)
            table[key] = {**verdict, "attempts": before + attempts, "batch": record["batch_id"]}
    for key, reason in quarantined.items():
        table[key] = {"status": "quarantined", "reason": reason, "attempts": 0, "batch": None}
    return dict(sorted(table.items()))


def reduce_batches(
    store: Store, records: list[dict], failures: dict[str, dict], quarantined: dict[str, str], header: dict
) -> dict:
    """Write posterior.zarr, summary.parquet, then manifest.json; return the manifest."""
    store.remove("manifest.json")  # an old manifest must never vouch for half-replaced files
    partitions = partition_table(records, failures, quarantined)
    keep = [[k for k in r["partitions"] if partitions[k]["batch"] == r["batch_id"]] for r in records]
    summary = (
        pd.concat([load_summary(store, r["batch_id"]).query("partition in @k") for r, k in zip(records, keep)],
                  ignore_index=True)
        if records else pd.DataFrame({c: [] for c in SUMMARY_COLUMNS})
    )
    if records:
        summary = summary.sort_values(["partition"], kind="stable").reset_index(drop=True)
        # Status can change after sampling (e.g. a refit); the table is the source of truth.
        summary["status"] = summary["partition"].map(lambda k: partitions[k]["status"])
        write_posterior(store, records, keep)
    else:
        store.remove("posterior.zarr")
    buffer = io.BytesIO()
    summary.to_parquet(buffer, index=False)
    store.write_bytes(buffer.getvalue(), "summary.parquet")
    counts = Counter(p["status"] for p in partitions.values())
    manifest = {
        **header,
        "artifact": {"posterior": "posterior.zarr" if records else None, "summary": "summary.parquet"},
        "counts": {s: counts.get(s, 0) for s in STATUSES} | {"total": len(partitions)},
        "worst_r_hat": _worst(partitions, "r_hat_max", max),
        "min_ess_bulk": _worst(partitions, "ess_bulk_min", min),
        "batches": batch_entries(records),
        "failed_batches": failures,
        "partitions": partitions,
    }
    store.write_json(manifest, "manifest.json")
    return manifest


def write_tree(store: Store, tree: xr.DataTree) -> None:
    """A DataTree held in memory as ``posterior.zarr``."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "posterior.zarr")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            tree.to_zarr(local, consolidated=True)
        store.put_dir(local, "posterior.zarr")


def write_posterior(store: Store, records: list[dict], keep: list[list[str]]) -> None:
    """``posterior.zarr`` from the kept partitions of each batch (``keep[i]`` of ``records[i]``), sorted by key.

    The store is created at full size from the first batch's layout (dask-backed, nothing
    computed), then filled one ``CHUNK`` of sorted keys at a time by region writes; batch
    results are read as chunks need them, the last few kept in memory.
    """
    where = {key: i for i, keys in enumerate(keep) for key in keys}
    order = sorted(where)
    batch = functools.lru_cache(maxsize=4)(lambda i: load_result(store, records[i]["batch_id"]))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "posterior.zarr")
        layout = batch(where[order[0]])
        for group in GROUPS:
            template = xr.Dataset(
                {name: (v.dims, dask.array.zeros((len(order), *v.shape[1:]), dtype=v.dtype,
                                                 chunks=(CHUNK, *v.shape[1:])))
                 for name, v in layout[group].to_dataset().data_vars.items()},
                coords={"partition": np.asarray(order, dtype=str)},
            )
            template.to_zarr(local, group=group, mode="a", compute=False, consolidated=False)
        for start in range(0, len(order), CHUNK):
            keys = order[start : start + CHUNK]
            sources = sorted({where[k] for k in keys})
            for group in GROUPS:
                pieces = [batch(i)[group].to_dataset().sel(partition=[k for k in keys if where[k] == i])
                          for i in sources]
                chunk = xr.concat(pieces, dim="partition").sel(partition=keys).drop_vars("partition")
                chunk.to_zarr(local, group=group, region={"partition": slice(start, start + len(keys))},
                              consolidated=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(local)
        store.put_dir(local, "posterior.zarr")


def _worst(partitions: dict, field: str, pick):
    values = [p[field] for p in partitions.values() if p.get(field) is not None]
    return pick(values) if values else None


def batch_entries(records: list[dict]) -> dict:
    """The manifest's ``batches``: per batch id its index, attempt, partition count and worker seconds
    (sampling, diagnostics, writing; a batch from before bayesfan recorded the last two has sampling only)."""
    return {r["batch_id"]: {"index": r["index"], "attempt": r["attempt"], "partitions": len(r["partitions"]),
                            **{k: r[k] for k in ("sample_seconds", "diagnose_seconds", "write_seconds") if k in r}}
            for r in records}
