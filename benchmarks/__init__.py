"""``bayesfan bench SUITE`` runs every system of a suite on one machine.

Suites: ``small`` (bayesfan against stock NumPyro and PyMC), ``hmm`` (Ampersand's
viewing HMM, cold and warm-started), ``forward`` (its forward pass, five ways),
``fanout`` (orchestration cost only),
``consensus`` (consensus mode's accuracy against full NUTS and posteriordb).
Each suite module has ``run(quick: bool) -> dict``; ratios are the results,
absolute seconds are context.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

SUITES = ("small", "hmm", "forward", "fanout", "consensus")


def run_suites(suite: str, quick: bool = False, json_path: Path | None = None) -> dict:
    """``{suite: results}`` for one suite, or every suite when ``suite == "all"``, plus the environment.

    With ``json_path``, the results so far are written there after each suite, so a
    failure late in ``all`` keeps the suites that finished.
    """
    from benchmarks.report import environment

    names = SUITES if suite == "all" else (suite,)
    if any(name not in SUITES for name in names):
        raise ValueError(f"unknown suite {suite!r} (one of: {', '.join(SUITES)}, all)")
    results = {"quick": quick, "environment": environment()}
    for name in names:
        results[name] = importlib.import_module(f"benchmarks.{name}").run(quick)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=2) + "\n")
    return results
