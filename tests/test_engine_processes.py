"""Engine behaviour across processes: the program and compilation caches, and device sharding."""

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
from bayesfan import programs
hits, exports, export = [], [], programs.export.export
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
programs.export.export = lambda *a, **kw: exports.append(1) or export(*a, **kw)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("cache_hits", hits.count("/jax/compilation_cache/cache_hits"))
print("traced_and_exported", len(exports))
'''


def run(out: Path, cache: Path, devices: int = 1) -> str:
    """The script in a fresh process whose program and compilation caches live under ``cache``."""
    env = {**os.environ, "BAYESFAN_CPU_DEVICES": str(devices), "BAYESFAN_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", HITS, str(SCRIPT), str(out)],  # noqa: S603
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> tuple[Path, str]:
    """One fit in a fresh process with an empty cache directory: (its cache, its stdout)."""
    root = tmp_path_factory.mktemp("engine")
    return root, run(root / "first.npz", root / "cache")


def test_second_process_neither_traces_nor_compiles_and_gives_the_same_draws(first, tmp_path):
    root, stdout = first
    second = run(tmp_path / "second.npz", root / "cache")
    assert "cache_hits 0" in stdout and "traced_and_exported 1" in stdout
    assert "cache_hits 0" not in second and "traced_and_exported 0" in second
    a, b = np.load(root / "first.npz"), np.load(tmp_path / "second.npz")
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name])


def test_sharded_and_unsharded_batches_give_the_same_draws(first, tmp_path):
    root, _ = first
    run(tmp_path / "two.npz", tmp_path / "cache2", devices=2)
    one, two = np.load(root / "first.npz"), np.load(tmp_path / "two.npz")
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6)


XLA_THREADS = '''
import os
import jax.numpy as jnp
import bayesfan.engine
(jnp.ones((512, 512)) @ jnp.ones((512, 512))).block_until_ready()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
print(sum(n.startswith("tf_XLAEigen") for n in names), len(os.sched_getaffinity(0)))
'''


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux")
@pytest.mark.parametrize("setting, one_thread", [(None, True), ("all", False)])
def test_each_process_computes_on_one_xla_thread_and_keeps_every_core(setting, one_thread):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process may use one core only: XLA starts one thread either way")
    env = {k: v for k, v in os.environ.items() if k != "BAYESFAN_XLA_THREADS"}
    env |= {"BAYESFAN_XLA_THREADS": setting} if setting else {}
    done = subprocess.run([sys.executable, "-c", XLA_THREADS], env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=300)
    assert done.returncode == 0, done.stderr
    threads, cores = map(int, done.stdout.split())
    assert cores == len(os.sched_getaffinity(0))  # the process may still use every core
    assert (threads == 1) == one_thread, done.stdout
