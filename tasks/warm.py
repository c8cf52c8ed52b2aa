"""Warm start for scheduled refits: each chain starts where the previous run's chain ended.

From a previous artifact, per partition and chain: the last posterior draw
(constrained values, mapped to unconstrained space by ``init_to_value``), the
adapted step size, the diagonal inverse mass matrix and the sampling coordinates
(shift and scale; ``adaptation`` group).
Partitions missing from the previous run, failed there, or fitted with another
number of chains fall back to a full (cold) warmup.
"""

from __future__ import annotations

import hashlib

import numpy as np
import xarray as xr

from bayesfan.engine import WarmStart
from bayesfan.result import FitResult
from bayesfan.storage import Store, pack_tree, unpack_tree

WARM = "warm.zarr.zip"


def load_previous(url: str, partitions: list[str], chains: int) -> xr.Dataset:
    """End states of the previous run's chains for ``partitions`` it fitted (ok or unconverged)."""
    previous = FitResult(url)
    fitted = {k for k, p in previous.manifest["partitions"].items() if p["status"] in ("ok", "unconverged")}
    tree = previous.posterior
    keys = [k for k in partitions if k in fitted]
    if not keys or tree["posterior"].sizes["chain"] != chains:
        return xr.Dataset()
    values = tree["posterior"].to_dataset().sel(partition=keys).isel(draw=-1)
    adaptation = tree["adaptation"].to_dataset().sel(partition=keys)
    return xr.merge([values.rename({v: f"value_{v}" for v in values.data_vars}), adaptation]).load()


def warm_hashes(states: xr.Dataset) -> dict[str, str]:
    """A content hash of each partition's warm-start state (part of its batch's identity)."""
    if not states.data_vars:
        return {}
    out = {}
    for key in states["partition"].values.astype(str):
        one = states.sel(partition=key)
        digest = hashlib.sha256()
        for name in sorted(one.data_vars):
            digest.update(name.encode() + np.ascontiguousarray(one[name].values).tobytes())
        out[key] = digest.hexdigest()
    return out


def write_warm(store: Store, batch_id: str, states: xr.Dataset, partitions: list[str]) -> None:
    if not store.exists("batches", batch_id, WARM):
        tree = xr.DataTree.from_dict({"warm": states.sel(partition=partitions)})
        store.write_bytes(pack_tree(tree), "batches", batch_id, WARM)


def read_warm(store: Store, batch_id: str, size: int) -> WarmStart:
    """The batch's warm start with the partition axis padded to ``size`` (repeating the first)."""
    states = unpack_tree(store.read_bytes("batches", batch_id, WARM))["warm"].to_dataset()

    def pad(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.repeat(a[:1], size - a.shape[0], axis=0)]) if a.shape[0] < size else a

    values = {name[len("value_"):]: pad(states[name].values) for name in states.data_vars if name.startswith("value_")}
    return WarmStart(values, *(pad(a) for a in adaptation_arrays(states)))


def adaptation_arrays(adaptation: xr.Dataset) -> tuple[np.ndarray, ...]:
    """(step_size, inverse_mass_matrix, shift, scale) of an ``adaptation`` dataset, leading axes (partition, chain).

    Artifacts written before the Laplace coordinates have no shift and scale: their
    chains sampled z itself (shift 0, scale the identity).
    """
    inverse_mass = adaptation["inverse_mass_matrix"].values
    if "shift" in adaptation:
        return adaptation["step_size"].values, inverse_mass, adaptation["shift"].values, adaptation["scale"].values
    identity = np.broadcast_to(np.eye(inverse_mass.shape[-1], dtype=inverse_mass.dtype), inverse_mass.shape + inverse_mass.shape[-1:])
    return adaptation["step_size"].values, inverse_mass, np.zeros_like(inverse_mass), identity
