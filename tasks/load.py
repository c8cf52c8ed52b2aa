"""Load the input table and check it against the model, with one-line errors naming file and column."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow.parquet as pq

from bayesfan.storage import open_file
from models.base import Model


class DataError(ValueError):
    """The input as a whole is unusable; the message is one line naming the file and column."""


def read_table(url: str) -> pd.DataFrame:
    """Read Parquet (``.parquet``/``.pq``) or CSV (anything else) from a path or fsspec URL."""
    is_parquet = url.lower().rstrip("/").endswith((".parquet", ".pq"))
    try:
        with open_file(url, "rb") as f:
            if is_parquet:
                return pq.read_table(f).to_pandas()
            return pd.read_csv(f, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{url}: no such file") from None
    except PermissionError as exc:
        raise DataError(f"{url}: access denied ({_first_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{url}: not UTF-8 text (byte {exc.start})") from None
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one line naming the file
        kind = "Parquet" if is_parquet else "CSV"
        raise DataError(f"{url}: cannot read as {kind}: {_first_line(exc)}") from None


def check_columns(frame: pd.DataFrame, url: str, partition_by: tuple[str, ...], model: Model) -> None:
    """Every partition column and model column exists, and model columns are numeric."""
    needed = list(partition_by) + [c for c in model.columns() if c not in partition_by]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        have = ", ".join(map(str, frame.columns[:12]))
        raise DataError(f"{url}: missing column {missing[0]!r} (model {model.name} needs {needed}; file has {have})")
    for column in model.columns():
        if not (pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column])):
            raise DataError(f"{url}: column {column!r} must be numeric, found {frame[column].dtype}")
    if frame.empty:
        raise DataError(f"{url}: no rows")


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a table (values, column names and dtypes), independent of file format."""
    digest = hashlib.sha256()
    digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
