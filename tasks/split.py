"""Split the table into partitions and plan batches of them.

A batch holds partitions of one *bucket length* (their row count rounded up on a
geometric grid, so padding stays under about 1/8) and a padded partition count
(a power of two up to ``batch_size``), so batches of one bucket share one
compiled program. A batch's id is a content hash of its inputs plus the model
and sampler config: the same inputs give the same id, which is what makes resume
and retry exact.
"""

from __future__ import annotations

import hashlib
import io
import json
import math

import pandas as pd
from pydantic import BaseModel

from bayesfan.storage import Store
from models.base import Model, PartitionError

PARTITION_COLUMN = "__partition__"


class BatchPlan(BaseModel):
    """One unit of work: partitions of one bucket, fitted by one compiled program."""

    batch_id: str
    index: int
    partitions: list[str]
    length: int
    size: int
    warm: bool = False


def partition_key(values) -> str:
    """``NYC|ESPN``: the partition's key values joined by ``|``."""
    values = values if isinstance(values, tuple) else (values,)
    return "|".join(str(v) for v in values)


def split_partitions(
    frame: pd.DataFrame, partition_by: tuple[str, ...], model: Model
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Rows per partition (ordered by the model's ``order_by``), and quarantined partitions with reasons."""
    parts: dict[str, pd.DataFrame] = {}
    quarantined: dict[str, str] = {}
    columns = list(model.columns())
    for values, rows in frame.groupby(list(partition_by), sort=True, dropna=False):
        key = partition_key(values)
        if key in parts or key in quarantined:
            quarantined[key] = "partition key is ambiguous: its values contain '|'"
            parts.pop(key, None)
            continue
        if model.order_by is not None:
            rows = rows.sort_values(model.order_by, kind="stable")
        rows = rows[columns].reset_index(drop=True)
        try:
            model.check_rows(rows)
        except PartitionError as exc:
            quarantined[key] = str(exc)
            continue
        parts[key] = rows
    return parts, quarantined


def bucket_length(n: int) -> int:
    """Smallest grid length >= n; the grid is multiples of 8 growing by about 1/8 per step."""
    length = 8
    while length < n:
        length = max(length + 8, math.ceil(length * 1.125 / 8) * 8)
    return length


def padded_size(count: int, batch_size: int) -> int:
    """Partition-axis size of a batch: the next power of two, at most ``batch_size``."""
    return min(batch_size, 1 << max(0, math.ceil(math.log2(count))))


def content_hash(rows: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()).hexdigest()


def plan_batches(
    parts: dict[str, pd.DataFrame], batch_size: int, config_fields: dict, warm: dict[str, str] | None = None
) -> list[BatchPlan]:
    """Group partitions by (warm start, bucket length), chunk each group into batches of ``batch_size``.

    ``warm`` maps the partitions that start from a previous run to their warm-state hash.
    """
    warm = warm or {}
    buckets: dict[tuple[bool, int], list[str]] = {}
    for key in sorted(parts):
        buckets.setdefault((key in warm, bucket_length(len(parts[key]))), []).append(key)
    plans = []
    for is_warm, length in sorted(buckets):
        keys = buckets[(is_warm, length)]
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            size = padded_size(len(chunk), batch_size)
            identity = json.dumps(
                {"config": config_fields, "length": length, "size": size,
                 "partitions": [[k, content_hash(parts[k]), warm.get(k)] for k in chunk]},
                sort_keys=True,
            )
            batch_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
            plans.append(BatchPlan(batch_id=batch_id, index=len(plans), partitions=chunk, length=length,
                                   size=size, warm=is_warm))
    return plans


def write_batch_input(store: Store, plan: BatchPlan, parts: dict[str, pd.DataFrame]) -> None:
    """Write the batch's rows (with a partition column) to ``batches/<id>/input.parquet``."""
    if store.exists("batches", plan.batch_id, "input.parquet"):
        return
    frame = pd.concat(
        [rows.assign(**{PARTITION_COLUMN: key}) for key in plan.partitions for rows in [parts[key]]],
        ignore_index=True,
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store.write_bytes(buffer.getvalue(), "batches", plan.batch_id, "input.parquet")


def read_batch_input(store: Store, plan: BatchPlan) -> dict[str, pd.DataFrame]:
    frame = pd.read_parquet(io.BytesIO(store.read_bytes("batches", plan.batch_id, "input.parquet")))
    return {
        key: rows.drop(columns=PARTITION_COLUMN).reset_index(drop=True)
        for key, rows in frame.groupby(PARTITION_COLUMN, sort=False)
    }
