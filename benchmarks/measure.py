"""Wall and CPU seconds of a block, children included; bulk ESS; peak memory.

CPU seconds are user + system time of this process, of its reaped children
(``RUSAGE_CHILDREN``) and of its live descendants (Prefect's worker pools and
API server, PyMC's chain processes), so a system that fans out to processes is
charged for all of them.
"""

from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass

import arviz as az
import numpy as np
import psutil
import xarray as xr


@dataclass
class Cost:
    wall_s: float = 0.0
    cpu_s: float = 0.0


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and every child, reaped or alive."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = child.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@contextlib.contextmanager
def measure():
    """``with measure() as cost:`` fills ``cost.wall_s`` and ``cost.cpu_s`` when the block ends."""
    cost = Cost()
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield cost
    finally:
        cost.wall_s = time.perf_counter() - wall
        cost.cpu_s = cpu_seconds() - cpu


def peak_rss_mb() -> float:
    """Peak resident memory of this process (the client), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ess_bulk_min(samples: dict, lead: tuple[str, ...] = ("chain", "draw")) -> np.ndarray:
    """Smallest bulk ESS over all parameters, per partition when ``lead`` starts with ``partition``."""
    ess = az.ess(_dataset(samples, lead), method="bulk")
    per_var = [ess[name].min([d for d in ess[name].dims if d != "partition"]) for name in ess.data_vars]
    return np.asarray(xr.concat(per_var, "var").min("var"))


def r_hat_max(samples: dict, lead: tuple[str, ...] = ("chain", "draw")) -> float:
    """Largest R-hat over all parameters (and partitions)."""
    rhat = az.rhat(_dataset(samples, lead))
    return float(max(rhat[name].max() for name in rhat.data_vars))


def lockstep_efficiency(n_steps: np.ndarray) -> float:
    """Mean leapfrog steps over mean per-iteration maximum, for ``(partition, chain, draw)`` steps.

    What chains stepping together would get (NumPyro's kernel under ``vmap``): each
    iteration costs the longest trajectory among them; 1.0 means no chain waited.
    """
    n_steps = np.asarray(n_steps, dtype=float)
    return float(n_steps.mean() / n_steps.max(axis=(0, 1)).mean())


def batch_efficiency(n_steps: np.ndarray) -> float:
    """Mean over chains of their total leapfrog steps, over the largest total, for ``(partition, chain, draw)`` steps.

    What ``bayesfan.nuts`` gets: each chain steps on its own, and the batch's loop runs
    until the chain with the most steps is done; 1.0 means no chain waited.
    """
    totals = np.asarray(n_steps, dtype=float).sum(axis=-1)
    return float(totals.mean() / totals.max())


def _dataset(samples: dict, lead: tuple[str, ...]) -> xr.Dataset:
    """Draws ``{name: array with leading lead axes}`` as a Dataset ArviZ reads."""
    variables = {}
    for name, value in samples.items():
        value = np.asarray(value)
        variables[name] = (lead + tuple(f"{name}_{i}" for i in range(value.ndim - len(lead))), value)
    return xr.Dataset(variables)
