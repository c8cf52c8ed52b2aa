"""Engine behaviour across processes: the persistent compilation cache, and device sharding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_second_process_hits_the_persistent_compilation_cache(tmp_path):
    first = run(tmp_path / "a.npz", tmp_path / "cache")
    second = run(tmp_path / "b.npz", tmp_path / "cache")
    assert "cache_hits 0" in first
    assert "cache_hits 0" not in second
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])


def test_sharded_and_unsharded_batches_give_the_same_draws(tmp_path):
    run(tmp_path / "one.npz", tmp_path / "cache1", devices=1)
    run(tmp_path / "two.npz", tmp_path / "cache2", devices=2)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)
