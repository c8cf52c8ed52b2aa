"""``bayesfan bench``: every suite runs end to end at --quick size and writes the keys the issue names.

Figures are checked for presence and sign only; speed is the benchmark's business, never a test's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.consensus import compare
from benchmarks.measure import batch_efficiency, lockstep_efficiency, measure
from benchmarks.report import headline, markdown

BAYESFAN = [sys.executable, "-m", "bayesfan.cli"]


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"}
    return subprocess.run([*BAYESFAN, "bench", *args], capture_output=True, text=True, env=env, timeout=1200)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def run_quick(suite: str, tmp_path) -> dict:
    path = tmp_path / "results.json"
    done = bench(suite, "--quick", "--json", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(path.read_text())
    assert results["quick"] is True and results["environment"]["cpus"] >= 1
    assert "| key | value | target |" in markdown(results)
    return results


@pytest.mark.slow
def test_small_quick_writes_ratios_and_per_system_figures(tmp_path):
    small = run_quick("small", tmp_path)["small"]
    assert positive(small["speedup_vs_numpyro_loop"]) and positive(small["pipeline_over_kernel"])
    pymc = small["systems"]["pymc_loop"]
    assert positive(small["speedup_vs_pymc"]) or ("skipped" in pymc and small["speedup_vs_pymc"] is None)
    assert positive(small["cores"]["devices_over_processes"]) and positive(small["fit_over_kernel"])
    assert small["systems"]["kernel_devices"]["partitions_timed"] == small["size"]["partitions"]
    for name in ("fit", "pipeline", "kernel", "kernel_processes", "kernel_devices", "numpyro_loop"):
        system = small["systems"][name]
        for key in ("partitions_per_s", "cpu_s_per_partition", "ess_bulk_per_cpu_s"):
            assert positive(system[key]), (name, key)


@pytest.mark.slow
def test_hmm_quick_writes_ampersand_comparison_and_warm_start(tmp_path):
    hmm = run_quick("hmm", tmp_path)["hmm"]
    for key in ("cpu_s_per_chain", "speedup_vs_ampersand", "ess_bulk_min", "warm_start_speedup",
                "us_per_series_gradient", "warm_ess_kept"):
        assert positive(hmm[key]), key
    assert positive(hmm["projection"]["cpu_hours"]) and positive(hmm["projection"]["usd"])
    assert hmm["warm"]["warmup"] < hmm["size"]["sampler"]["warmup"]


@pytest.mark.slow
def test_fanout_quick_counts_prefect_task_runs(tmp_path):
    (run,) = run_quick("fanout", tmp_path)["fanout"]["runs"].values()
    assert run["partitions_fitted"] == 100
    assert run["task_runs"] >= run["batches"] > 0
    assert positive(run["wall_s"]) and positive(run["client_peak_rss_mb"])


@pytest.mark.slow
def test_consensus_quick_measures_every_method_against_full_and_reference(tmp_path):
    consensus = run_quick("consensus", tmp_path)["consensus"]
    assert set(consensus["datasets"]) == {"kidiq-kidscore_momiq", "logistic_regression"}
    kidiq = consensus["datasets"]["kidiq-kidscore_momiq"]
    assert kidiq["full"]["vs_reference"]["dmean_sd"] >= 0 and positive(kidiq["full"]["wall_s"])
    for method in ("consensus", "consensus-diag", "parametric", "semiparametric"):
        m = kidiq["shards"]["2"]["methods"][method]
        assert positive(m["vs_full"]["w1_sd"]) and positive(m["vs_reference"]["w1_sd"]), method
        assert positive(m["speedup_vs_full"]) and m["speedup_one_worker"] <= m["speedup_vs_full"]
    assert consensus["datasets"]["logistic_regression"]["shards"]["2"]["methods"]["consensus"]["vs_reference"] is None
    assert consensus["consensus_dmean_sd_max"] >= 0


def test_compare_reports_mean_shift_sd_ratio_and_wasserstein_in_target_sds():
    rng = np.random.default_rng(0)
    target = {"a": rng.normal(0.0, 2.0, 20_000)}
    shifted = {"a": target["a"] + 1.0}  # half a target sd
    scaled = {"a": target["a"] * 1.5}
    assert compare(target, target) == {"dmean_sd": 0.0, "sd_ratio": [1.0, 1.0], "w1_sd": 0.0}
    assert compare(shifted, target)["dmean_sd"] == pytest.approx(0.5, rel=0.02)
    assert compare(shifted, target)["w1_sd"] == pytest.approx(0.5, rel=0.02)
    assert compare(scaled, target)["sd_ratio"][0] == pytest.approx(1.5, rel=1e-6)


def test_unknown_suite_is_a_usage_error():
    done = bench("nope", "--quick")
    assert done.returncode == 2 and "nope" in done.stderr


def test_measure_charges_child_processes():
    busy = "import time\nwhile time.process_time() < 0.3: pass"
    with measure() as cost:
        subprocess.run([sys.executable, "-c", busy], check=True)
    assert cost.cpu_s >= 0.3 and cost.wall_s > 0


def test_lockstep_efficiency_is_mean_over_per_iteration_max():
    steps = [[[1, 3]], [[3, 3]]]  # (partition, chain, draw): iteration maxima 3 and 3, mean 2.5
    assert lockstep_efficiency(steps) == pytest.approx(2.5 / 3)


def test_batch_efficiency_is_mean_over_largest_chain_total():
    steps = [[[1, 3]], [[3, 3]]]  # chain totals 4 and 6
    assert batch_efficiency(steps) == pytest.approx(5 / 6)


def test_headline_marks_targets_met_and_missed():
    small = {"speedup_vs_numpyro_loop": 60.0, "speedup_vs_pymc": None, "pipeline_over_kernel": 1.3}
    results = {"small": small}
    lines = headline(results)
    assert lines[0].endswith("met)") and "n/a" in lines[1] and lines[2].endswith("missed)")


@pytest.mark.slow
def test_forward_quick_every_variant_computes_the_shipped_likelihood(tmp_path):
    forward = run_quick("forward", tmp_path)["forward"]
    assert set(forward["us_per_series_gradient"]) == {"unrolled", "matrix", "probability", "associative", "blocked"}
    for name, diff in forward["max_abs_loglik_diff"].items():
        assert diff < 1e-2, name  # log p(y) is about -300 at T = 168
        assert all(positive(t) for t in forward["us_per_series_gradient"][name].values()), name
    assert forward["slowdown_vs_unrolled"]["unrolled"] == 1.0
