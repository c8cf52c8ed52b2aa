"""What a fit returns: paths into the artifact, opened lazily."""

from __future__ import annotations

import io
import json
from functools import cached_property

import pandas as pd
import xarray as xr

from bayesfan.storage import Store


class FitResult:
    """The artifact at ``path``: ``.manifest`` (dict), ``.summary`` (DataFrame), ``.posterior`` (DataTree)."""

    def __init__(self, path: str, manifest: dict | None = None):
        self.path = path
        self._store = Store(path)
        if manifest is not None:
            self.__dict__["manifest"] = manifest

    @cached_property
    def manifest(self) -> dict:
        try:
            return json.loads(self._store.read_bytes("manifest.json"))
        except FileNotFoundError:
            raise IncompleteArtifact(
                f"{self.path}: no manifest.json, so no finished artifact (the run did not complete, or wrong path)"
            ) from None

    @cached_property
    def summary(self) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self._store.read_bytes("summary.parquet")))

    @cached_property
    def posterior(self) -> xr.DataTree:
        """The combined posterior; opened lazily from ``posterior.zarr``."""
        if self.manifest["artifact"]["posterior"] is None:
            raise FileNotFoundError(f"{self.path}: no partition was fitted, so there is no posterior.zarr")
        return xr.open_datatree(self._store.url("posterior.zarr"), engine="zarr", consolidated=True)

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def __repr__(self) -> str:
        return f"FitResult({self.path!r}, counts={self.counts})"


class IncompleteArtifact(FileNotFoundError):
    """``manifest.json`` is missing: the run never finished, and nothing there is to be trusted."""


class FitFailed(RuntimeError):
    """Some partitions failed or were quarantined; ``.result`` is the artifact of the rest."""

    def __init__(self, result: FitResult):
        self.result = result
        counts = result.counts
        super().__init__(
            f"{counts['failed']} partition(s) failed and {counts['quarantined']} quarantined "
            f"of {counts['total']}; see {result.path}/manifest.json"
        )
