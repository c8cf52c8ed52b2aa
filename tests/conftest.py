"""Test setup: Prefect state and JAX caches live in a per-session temp dir; nothing leaves loopback."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SESSION_HOME = Path(tempfile.mkdtemp(prefix="bayesfan-tests-"))

os.environ["PREFECT_HOME"] = str(SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.setdefault("BAYESFAN_CACHE_DIR", str(ROOT / ".cache" / "bayesfan"))
# Spawned worker processes import test-only models from tests/.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path[:0] = [str(ROOT / "tests")]


@pytest.fixture
def tiny_sampler() -> dict:
    """Fit settings small enough for tests, large enough for stable diagnostics."""
    return {"chains": 2, "warmup": 150, "draws": 150}
