"""Engine behaviour across processes: the persistent compilation cache, and device sharding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "fit_small_batch.py"
HITS = '''
import jax.monitoring, runpy, sys
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("cache_hits", hits.count("/jax/compilation_cache/cache_hits"))
'''


def run(out: Path, cache: Path, devices: int = 1) -> str:
    env = {**os.environ, "BAYESFAN_CPU_DEVICES": str(devices)}
    done = subprocess.run([sys.executable, "-c", HITS, str(SCRIPT), str(out), str(cache)],  # noqa: S603
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, str]:
    """One fit in a fresh process with an empty cache directory: (its cache, its stdout)."""
    root = tmp_path_factory.mktemp("engine")
    return root, run(root / "first.npz", root / "cache")


def test_second_process_hits_the_persistent_compilation_cache(first, tmp_path):
    root, stdout = first
    second = run(tmp_path / "second.npz", root / "cache")
    assert "cache_hits 0" in stdout
    assert "cache_hits 0" not in second
    a, b = np.load(root / "first.npz"), np.load(tmp_path / "second.npz")
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])


def test_sharded_and_unsharded_batches_give_the_same_draws(first, tmp_path):
    root, _ = first
    run(tmp_path / "two.npz", tmp_path / "cache2", devices=2)
    one, two = np.load(root / "first.npz"), np.load(tmp_path / "two.npz")
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)
