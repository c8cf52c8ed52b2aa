"""The contract every bayesfan model meets.

A model is a frozen pydantic object: its fields are the model's options (priors,
column names), so it is hashable and keys the compiled-program cache. It says

* ``columns()``: the columns it reads and their kind (``float``, ``count`` or
  ``category:K``), checked for the whole table before anything runs;
* ``arrays(rows)``: one partition's rows -> arrays with a leading row axis,
  which the engine pads to the batch's bucket length;
* ``model(mask, **arrays)``: the NumPyro model, with every likelihood term of a
  row wrapped in ``numpyro.handlers.mask(mask=mask)`` so padded rows count zero;
* ``simulate(rng, partitions, length)``: data in the long format ``fit`` reads,
  and the true parameter values with the names ``summary.parquet`` uses.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field


class PartitionError(ValueError):
    """A partition's rows cannot be fitted; it is quarantined with this reason."""


class Model(BaseModel):
    """Base class of registered models; subclasses add option fields and the methods below."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]
    #: Column that orders a partition's rows (a time index), or None when order is irrelevant.
    order_by: ClassVar[str | None] = None
    #: Fewest rows a partition needs to be fitted.
    min_rows: ClassVar[int] = 2

    max_rows: int = Field(
        1_000_000, ge=1, description="partitions with more rows are quarantined rather than fitted (memory, time)"
    )

    @abstractmethod
    def columns(self) -> dict[str, str]:
        """See the module docstring."""

    @abstractmethod
    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """See the module docstring."""

    @abstractmethod
    def model(self, mask, **arrays) -> None:
        """See the module docstring."""

    def __call__(self, *args, **kwargs) -> None:
        """A model object is its own NumPyro model function; being hashable by value,
        it keys the compiled-program cache across equal instances."""
        return self.model(*args, **kwargs)

    def simulate(self, rng: np.random.Generator, partitions: int, length: int):
        raise NotImplementedError(f"model {self.name!r} has no simulate()")

    def check_rows(self, rows: pd.DataFrame) -> None:
        """Raise ``PartitionError`` naming the column when a partition's rows are unusable."""
        if len(rows) < self.min_rows:
            raise PartitionError(f"{len(rows)} rows, needs at least {self.min_rows}")
        if len(rows) > self.max_rows:
            raise PartitionError(f"{len(rows)} rows, more than max_rows={self.max_rows} "
                                 "(raise it with --model-option max_rows=N)")
        for column, kind in self.columns().items():
            values = rows[column].to_numpy(dtype=float, na_value=np.nan)
            if not np.all(np.isfinite(values)):
                raise PartitionError(f"column {column!r} has NaN or infinite values")
            if kind == "count" and (np.any(values < 0) or np.any(values != np.round(values))):
                raise PartitionError(f"column {column!r} has negative or non-integer counts")
            if kind.startswith("category:"):
                levels = int(kind.split(":")[1])
                if np.any(values < 0) or np.any(values >= levels) or np.any(values != np.round(values)):
                    raise PartitionError(f"column {column!r} has values outside 0..{levels - 1}")
        if self.order_by is not None and rows[self.order_by].duplicated().any():
            raise PartitionError(f"column {self.order_by!r} has duplicated values")


def scalar_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """Parameter names with 0-based indices: ``mu``, ``xi[0,1]``."""
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def truth_rows(partition: str, values: dict[str, np.ndarray]) -> list[dict]:
    """Long-format truth rows (``partition``, ``parameter``, ``value``) for one partition."""
    rows = []
    for name, value in values.items():
        value = np.asarray(value)
        for label, v in zip(scalar_names(name, value.shape), value.ravel()):
            rows.append({"partition": partition, "parameter": label, "value": float(v)})
    return rows
