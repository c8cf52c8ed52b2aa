"""Reduce finished batches into the run's artifact.

``<out>/posterior.zarr`` (DataTree, dims ``(partition, chain, draw, ...)``),
``<out>/summary.parquet`` and ``<out>/manifest.json``, the manifest written last:
a reader that finds the manifest finds the complete artifact it describes.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections import Counter

import pandas as pd
import xarray as xr

from bayesfan.storage import Store
from tasks.diagnose import SUMMARY_COLUMNS
from tasks.sample import load_result, load_summary

STATUSES = ("ok", "unconverged", "failed", "quarantined")
GROUPS = ("posterior", "sample_stats", "adaptation")


def combine_trees(trees: list[xr.DataTree], keep: list[list[str]] | None = None) -> xr.DataTree:
    """Concatenate batch trees along ``partition`` (only ``keep[i]`` of tree i), sorted by key."""
    if keep is not None:
        trees = [t.sel(partition=k) for t, k in zip(trees, keep) if k]
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
        write_tree(store, combine_trees([load_result(store, r["batch_id"]) for r in records], keep))
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
        "batches": {r["batch_id"]: {"index": r["index"], "attempt": r["attempt"],
                                    "sample_seconds": r["sample_seconds"], "partitions": len(r["partitions"])}
                    for r in records},
        "failed_batches": failures,
        "partitions": partitions,
    }
    store.write_json(manifest, "manifest.json")
    return manifest


def write_tree(store: Store, tree: xr.DataTree) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "posterior.zarr")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            tree.to_zarr(local, consolidated=True)
        store.put_dir(local, "posterior.zarr")


def _worst(partitions: dict, field: str, pick):
    values = [p[field] for p in partitions.values() if p.get(field) is not None]
    return pick(values) if values else None
