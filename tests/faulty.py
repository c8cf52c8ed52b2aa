"""Test models that fail on purpose, to exercise retries and failure bookkeeping.

``boom`` column set: ``arrays`` always raises (the batch fails after its retries).
``flaky`` column set: ``arrays`` raises on the first attempt only, counted by a
file in ``$FLAKY_DIR`` (shared by the worker processes).
"""

from __future__ import annotations

import os
from pathlib import Path

from models.linear_regression import LinearRegression


class FaultyRegression(LinearRegression):
    name = "faulty_regression"

    def columns(self) -> dict[str, str]:
        return super().columns() | {"boom": "float", "flaky": "float"}

    def arrays(self, rows):
        if rows["boom"].any():
            raise RuntimeError("injected failure")
        if rows["flaky"].any():
            marker = Path(os.environ["FLAKY_DIR"]) / "attempted"
            if not marker.exists():
                marker.touch()
                raise RuntimeError("injected first-attempt failure")
        return super().arrays(rows)
