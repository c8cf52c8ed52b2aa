"""Load the input table and check it against the model, with one-line errors naming file and column."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bayesfan.storage import first_line, open_file, retried, storage_problem
from models.base import Model

#: Rows ``preflight`` reads: enough to check columns and types without reading a large file.
HEAD_ROWS = 1000


class DataError(ValueError):
    """The input as a whole is unusable; the message is one line naming the file and column."""


def read_table(url: str, head: bool = False) -> pd.DataFrame:
    """Read Parquet (``.parquet``/``.pq``) or CSV (anything else) from a path or fsspec URL.

    With ``head``, only the first ``HEAD_ROWS`` rows (and the Parquet footer) are read.
    """
    is_parquet = url.lower().rstrip("/").endswith((".parquet", ".pq"))
    try:
        return _read(url, is_parquet, head)
    except FileNotFoundError:
        raise DataError(f"{url}: no such file") from None
    except PermissionError as exc:
        raise DataError(f"{url}: access denied ({first_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{url}: not UTF-8 text (byte {exc.start})") from None
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one line naming the file
        kind = "Parquet" if is_parquet else "CSV"
        raise DataError(f"{url}: {storage_problem(exc) or f'cannot read as {kind}: {first_line(exc)}'}") from None


@retried
def _read(url: str, is_parquet: bool, head: bool) -> pd.DataFrame:
    with open_file(url, "rb") as f:
        if not is_parquet:
            return pd.read_csv(f, encoding="utf-8", nrows=HEAD_ROWS if head else None)
        if not head:
            return pq.read_table(f).to_pandas()
        parquet = pq.ParquetFile(f)
        first = next(parquet.iter_batches(batch_size=HEAD_ROWS), None)
        table = parquet.schema_arrow.empty_table() if first is None else pa.Table.from_batches([first])
        return table.to_pandas()


def preflight(url: str, columns: tuple[str, ...], model: Model) -> None:
    """Fail fast, before any compute: the file opens, parses and has the needed columns and types."""
    check_columns(read_table(url, head=True), url, columns, model)


def check_columns(frame: pd.DataFrame, url: str, partition_by: tuple[str, ...], model: Model) -> None:
    """Every partition column and model column exists, and model columns are numeric."""
    needed = list(partition_by) + [c for c in model.columns() if c not in partition_by]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns[:12]))
        if not set(needed) & set(frame.columns) and any(_is_number(c) for c in frame.columns):
            raise DataError(f"{url}: no header row (the first line is data: {have}); needs columns {needed}")
        raise DataError(f"{url}: missing column {missing[0]!r} (model {model.name} needs {needed}; file has {have})")
    if frame.empty:
        raise DataError(f"{url}: no rows")
    for column in model.columns():
        if not (pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column])):
            raise DataError(f"{url}: column {column!r} must be numeric, found {frame[column].dtype}")


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (values, column names and dtypes), independent of file format."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _is_number(name) -> bool:
    try:
        float(name)
    except (TypeError, ValueError):
        return False
    return True
