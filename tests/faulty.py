"""Test models that fail on purpose, to exercise retries and failure bookkeeping.

``boom`` column set: ``arrays`` always raises (the batch fails after its retries).
``flaky`` column set: ``arrays`` raises on the first attempt only, counted by a
file in ``$FLAKY_DIR`` (shared by the worker processes).
``die`` column set to a signal number: the worker process sends itself that signal
on the first attempt (a killed worker, a Spot SIGTERM), counted the same way.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from models.linear_regression import LinearRegression


class FaultyRegression(LinearRegression):
    name = "faulty_regression"

    def columns(self) -> dict[str, str]:
        return super().columns() | {"boom": "float", "flaky": "float", "die": "float"}

    def arrays(self, rows):
        if rows["boom"].any():
            raise RuntimeError("injected failure")
        if rows["flaky"].any():
            marker = Path(os.environ["FLAKY_DIR"]) / "attempted"
            if not marker.exists():
                marker.touch()
                raise RuntimeError("injected first-attempt failure")
        if rows["die"].any():
            marker = Path(os.environ["FLAKY_DIR"]) / "died"
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.Signals(int(rows["die"].max())))
        return super().arrays(rows)
