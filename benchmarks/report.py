"""Headline lines of a benchmark run: each target key, its measured value, and whether it is met."""

from __future__ import annotations

import operator
import os
import platform
from importlib import metadata

#: Issue 4's targets: dotted JSON key -> (comparison, bound).
TARGETS = {
    "small.speedup_vs_numpyro_loop": (">=", 50.0),
    "small.speedup_vs_pymc": (">=", 10.0),
    "small.pipeline_over_kernel": ("<=", 1.15),
    "hmm.speedup_vs_ampersand": (">=", 100.0),
    "hmm.ess_bulk_min": (">=", 400.0),
    "hmm.warm_start_speedup": (">=", 2.0),
}
COMPARE = {">=": operator.ge, "<=": operator.le}
PACKAGES = ("jax", "numpyro", "prefect", "arviz", "pymc")


def environment() -> dict:
    """The machine and package versions a run was measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "versions": versions}


def headline(results: dict) -> list[str]:
    """``key = value (target >= bound: met)`` for each target key present in ``results``."""
    lines = []
    for key, (op, bound) in TARGETS.items():
        suite, name = key.split(".")
        if suite not in results:
            continue
        value = results[suite].get(name)
        if value is None:
            lines.append(f"{key} = n/a (target {op} {bound:g})")
            continue
        met = COMPARE[op](value, bound)
        if key == "hmm.warm_start_speedup":
            met = met and results[suite]["warm_equal_quality"]
        lines.append(f"{key} = {value:.3g} (target {op} {bound:g}: {'met' if met else 'missed'})")
    return lines
