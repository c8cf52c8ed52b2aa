"""Suite ``small``: many small linear regressions, bayesfan against the ways users write it by hand.

Systems, all on the same simulated data and NUTS settings:

* ``fit``: bayesfan's full pipeline (``run_fit``: Prefect ephemeral API, process pool,
  artifact, diagnostics, refits of unconverged partitions, ``report.html``), on the
  ``FitConfig`` defaults;
* ``pipeline``: the issue's pipeline, split -> sample -> reduce, on the same batches as the
  kernels (``run_fit`` with ``max_refits=0``, ``report=False``);
* ``kernel``: the same batches through ``engine.fit_batch`` in this process (one core), no Prefect;
* ``kernel_processes`` / ``kernel_devices``: the bare kernel on every core, as one process
  per core (each fits its share of the batches) or as one process with one JAX CPU device
  per core (``BAYESFAN_CPU_DEVICES``: each batch split across the devices); each pays
  interpreter start, imports and loading the program, as a pipeline worker does;
* ``numpyro_loop``: one ``MCMC(NUTS(model)).run`` per partition (timed on a subset, scaled), in a
  fresh process on JAX's defaults; ``numpyro_loop_tuned`` the same with JAX's persistent
  compilation cache and one XLA thread (``benchmarks.numpyro_loop``);
* ``pymc_loop``: one ``pm.Model`` and default ``pm.sample`` per partition (subset, scaled).

Programs start in bayesfan's program cache and JAX's compilation cache (a scheduled
refit: an untimed ``fit`` of the same table runs first, so the refit round's programs
are there too), so the bayesfan systems load them instead of tracing and compiling;
``one_off`` reports the seconds a first run spends tracing and compiling the main
round's program. Speedups are ratios of CPU seconds per partition;
``pipeline_over_kernel`` is a ratio of wall times (``pipeline`` over ``kernel_processes``,
both on every core). ESS is each partition's smallest bulk ESS, and ``ess_bulk_median``
the median over partitions.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from bayesfan.config import FitConfig
from bayesfan.engine import (
    SamplerConfig, batch_program, clear_programs, compiled_fit, enable_compilation_cache, fit_batch, partition_keys,
)
from benchmarks.measure import Cost, batch_efficiency, ess_bulk_min, measure
from models import resolve_model
from tasks.sample import stack_partitions
from tasks.split import plan_batches, split_partitions

FULL = {"partitions": 1000, "rows": 100, "sampler": SamplerConfig(4, 500, 500), "numpyro": 20, "pymc": 10}
QUICK = {"partitions": 8, "rows": 100, "sampler": SamplerConfig(2, 100, 100), "numpyro": 2, "pymc": 1}
SEED = 0


def run(quick: bool = False) -> dict:
    """Every system on one simulated table; per-system figures and the ratios."""
    size = QUICK if quick else FULL
    model = resolve_model("linear_regression")
    frame, _ = model.simulate(np.random.default_rng(SEED), size["partitions"], size["rows"])
    parts, _ = split_partitions(frame, ("partition",), model)
    sampler, batch_size = size["sampler"], FitConfig.model_fields["batch_size"].default
    one_off = warm_compilation_cache(model, parts, sampler, batch_size)
    plans, cores = plan_batches(parts, batch_size, {}), os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.parquet"
        frame.to_parquet(data, index=False)
        bayesfan_fit(data, Path(tmp) / "yesterday", sampler)  # untimed: leaves the refit round's programs cached too
        systems = {
            "fit": bayesfan_fit(data, Path(tmp) / "fit", sampler),
            "pipeline": bayesfan_fit(data, Path(tmp) / "pipeline", sampler, max_refits=0, report=False),
            "kernel": bayesfan_kernel(model, parts, sampler, plans),
            "kernel_processes": kernel_on_cores(data, sampler, batch_size, processes=min(cores, len(plans)), devices=1),
            "kernel_devices": kernel_on_cores(data, sampler, batch_size, processes=1, devices=cores),
            "numpyro_loop": numpyro_loop(data, sampler, size["numpyro"]),
            "numpyro_loop_tuned": numpyro_loop(data, sampler, size["numpyro"], tuned=True),
            "pymc_loop": pymc_loop(model, parts, sampler, size["pymc"]),
        }
    fit, by_processes, by_devices = systems["fit"], systems["kernel_processes"], systems["kernel_devices"]
    return {
        "size": {k: (v._asdict() if k == "sampler" else v) for k, v in size.items()},
        "one_off": one_off,
        "systems": systems,
        "speedup_vs_numpyro_loop": _ratio(systems["numpyro_loop"], fit),
        "speedup_vs_numpyro_loop_tuned": _ratio(systems["numpyro_loop_tuned"], fit),
        "speedup_vs_pymc": _ratio(systems["pymc_loop"], fit),
        "pipeline_over_kernel": systems["pipeline"]["wall_s"] / by_processes["wall_s"],
        "fit_over_kernel": fit["wall_s"] / by_processes["wall_s"],
        "cores": {"cores": cores, "processes_wall_s": by_processes["wall_s"], "devices_wall_s": by_devices["wall_s"],
                  "devices_over_processes": by_devices["wall_s"] / by_processes["wall_s"]},
        "ess_per_cpu_s_vs_numpyro_loop": _ess_ratio(fit, systems["numpyro_loop"]),
        "ess_per_cpu_s_vs_pymc": _ess_ratio(fit, systems["pymc_loop"]),
    }


def figures(cost: Cost, partitions: int, ess: np.ndarray, **extra) -> dict:
    """Throughput, cost and efficiency of one system; ESS is each partition's smallest bulk ESS."""
    cpu = cost.cpu_s / partitions
    median_ess = float(np.median(ess))
    return {
        "partitions_timed": partitions,
        "wall_s": cost.wall_s,
        "cpu_s": cost.cpu_s,
        "partitions_per_s": partitions / cost.wall_s,
        "cpu_s_per_partition": cpu,
        "ess_bulk_median": median_ess,
        "ess_bulk_per_cpu_s": median_ess / cpu,
        **extra,
    }


def warm_compilation_cache(model, parts: dict, sampler: SamplerConfig, batch_size: int) -> dict:
    """Trace and compile every batch shape once (seconds spent on each), and leave the program
    in the program and compilation caches, where every system's processes find it."""
    enable_compilation_cache()
    seconds = {"trace_s": 0.0, "compile_s": 0.0}
    for length, size in {(p.length, p.size) for p in plan_batches(parts, batch_size, {})}:
        keys = partition_keys(SEED, ["warm"] * size, sampler.chains)
        data = stack_partitions(model, list(parts.values())[:1], length, size)
        with measure() as trace:
            lowered = compiled_fit(model.model, sampler).lower(keys, data, None)
        with measure() as compile_:
            lowered.compile()
        seconds["trace_s"] += trace.wall_s
        seconds["compile_s"] += compile_.wall_s
        batch_program(model.model, sampler, (keys, data, None)).lower(keys, data, None).compile()
    clear_programs()
    jax.clear_caches()
    return seconds


def bayesfan_fit(data: Path, out: Path, sampler: SamplerConfig, **options) -> dict:
    """(a) ``run_fit`` end to end: read, split, fan out, sample, diagnose, write the artifact."""
    from flows.fit import run_fit

    config = FitConfig(data=str(data), model="linear_regression", partition_by="partition",
                       out=str(out), seed=SEED, **sampler._asdict(), **options)
    with measure() as cost:
        result = run_fit(config)
    partitions = result.manifest["partitions"]
    ess = np.array([p["ess_bulk_min"] for p in partitions.values()], dtype=float)
    return figures(cost, len(partitions), ess, batches=result.manifest["batches_total"],
                   workers=config.workers or os.cpu_count(), profile=profile(result.manifest, cost))


def profile(manifest: dict, cost: Cost) -> dict:
    """Where the pipeline's wall time goes: split, the sampling phase (and inside it, the workers'
    seconds in ``fit_batch``, tracing included, in the batches' diagnostics and in writing their
    results), and the rest (API start, flow run, reduce, report)."""
    timings, batches = manifest["timings"], manifest["batches"].values()
    return {
        "split_s": timings["split_s"],
        "sample_phase_s": timings["sample_s"],
        "fit_batch_s_all_workers": sum(b["sample_seconds"] for b in batches),
        "diagnose_s_all_workers": sum(b["diagnose_seconds"] for b in batches),
        "write_s_all_workers": sum(b["write_seconds"] for b in batches),
        "other_s": cost.wall_s - timings["split_s"] - timings["sample_s"],
    }


def bayesfan_kernel(model, parts: dict, sampler: SamplerConfig, plans: list) -> dict:
    """(b) The batches ``plans`` through ``fit_batch`` in this process: stacking, keys and sampling only."""
    cost, ess, efficiency = run_kernel(model, parts, sampler, plans)
    return figures(cost, len(ess), ess, batches=len(plans), batch_efficiency=efficiency)


def run_kernel(model, parts: dict, sampler: SamplerConfig, plans: list) -> tuple[Cost, np.ndarray, float]:
    """Cost, per-partition smallest bulk ESS and mean batch efficiency of ``plans`` through ``fit_batch``."""
    ess, efficiency = [], []
    with measure() as cost:
        outputs = []
        for plan in plans:
            data = stack_partitions(model, [parts[k] for k in plan.partitions], plan.length, plan.size)
            padded = plan.partitions + [plan.partitions[0]] * (plan.size - len(plan.partitions))
            keys = partition_keys(SEED, padded, sampler.chains)
            outputs.append((len(plan.partitions), fit_batch(model.model, sampler, keys, data)))
    for n, out in outputs:
        ess.extend(ess_bulk_min({k: v[:n] for k, v in out.samples.items()}, ("partition", "chain", "draw")))
        efficiency.append(batch_efficiency(out.stats["n_steps"]))
    return cost, np.asarray(ess), float(np.mean(efficiency))


def kernel_on_cores(data: Path, sampler: SamplerConfig, batch_size: int, processes: int, devices: int) -> dict:
    """The bare kernel in ``processes`` fresh processes at once (each fits every ``processes``-th
    batch), each with ``devices`` JAX CPU devices; wall time from launch until the last exits."""
    env = {**os.environ, "BAYESFAN_CPU_DEVICES": str(devices)}
    with tempfile.TemporaryDirectory() as tmp, measure() as cost:
        outs = [Path(tmp) / f"{i}.json" for i in range(processes)]
        children = [subprocess.Popen([sys.executable, "-m", "benchmarks.small", str(data), str(i), str(processes),  # noqa: S603
                                      json.dumps(sampler._asdict()), str(batch_size), str(out)], env=env)
                    for i, out in enumerate(outs)]
        if any(child.wait() != 0 for child in children):
            raise RuntimeError(f"a kernel process failed ({processes} processes x {devices} devices)")
        ess = np.concatenate([json.loads(out.read_text())["ess"] for out in outs])
    return figures(cost, len(ess), ess, processes=processes, devices=devices)


def kernel_share(data: Path, share: int, shares: int, sampler: SamplerConfig, batch_size: int) -> dict:
    """What one ``kernel_on_cores`` process does: every ``shares``-th batch from ``share``."""
    enable_compilation_cache()
    model = resolve_model("linear_regression")
    parts, _ = split_partitions(pd.read_parquet(data), ("partition",), model)
    _, ess, _ = run_kernel(model, parts, sampler, plan_batches(parts, batch_size, {})[share::shares])
    return {"ess": ess.tolist()}


def numpyro_loop(data: Path, sampler: SamplerConfig, count: int, tuned: bool = False) -> dict:
    """(c) Stock NumPyro as a user first writes it, a new ``MCMC`` and ``run`` per partition, in a
    fresh process (``benchmarks.numpyro_loop``); ``tuned``: with a warm compilation cache and one
    XLA thread, as bayesfan's processes run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
        subprocess.run([sys.executable, "-m", "benchmarks.numpyro_loop", str(data), str(count),  # noqa: S603
                        json.dumps(sampler._asdict()), str(out), *(["--tuned"] if tuned else [])],
                       env=env, check=True)
        result = json.loads(out.read_text())
    return figures(Cost(result["wall_s"], result["cpu_s"]), count, np.asarray(result["ess"]))


def pymc_loop(model, parts: dict, sampler: SamplerConfig, count: int) -> dict:
    """(d) PyMC's default ``pm.sample`` per partition; skipped with a note when PyMC is absent."""
    try:
        import pymc as pm
    except ImportError:
        return {"skipped": "pymc is not installed (pip install -r requirements-bench.lock)"}
    logging.getLogger("pymc").setLevel(logging.CRITICAL)  # its convergence warnings
    ess = []
    with warnings.catch_warnings(), measure() as cost:
        warnings.simplefilter("ignore")
        for i, rows in enumerate(list(parts.values())[:count]):
            arrays = model.arrays(rows)
            with pm.Model():
                alpha = pm.Normal("alpha", 0.0, 10.0)
                beta = pm.Normal("beta", 0.0, 5.0, shape=arrays["x"].shape[1])
                sigma = pm.HalfNormal("sigma", 5.0)
                pm.Normal("y", alpha + pm.math.dot(arrays["x"], beta), sigma, observed=arrays["y"])
                tree = pm.sample(sampler.draws, tune=sampler.warmup, chains=sampler.chains, random_seed=i,
                                 target_accept=sampler.target_accept, progressbar=False)
            posterior = tree["posterior"].to_dataset()
            ess.append(ess_bulk_min({k: v.values for k, v in posterior.data_vars.items()}))
    return figures(cost, count, np.asarray(ess), version=pm.__version__)


def _ratio(baseline: dict, fit: dict) -> float | None:
    """How many times fewer CPU seconds per partition ``fit`` needs than ``baseline``."""
    return None if "skipped" in baseline else baseline["cpu_s_per_partition"] / fit["cpu_s_per_partition"]


def _ess_ratio(fit: dict, baseline: dict) -> float | None:
    return None if "skipped" in baseline else fit["ess_bulk_per_cpu_s"] / baseline["ess_bulk_per_cpu_s"]


if __name__ == "__main__":  # one process of ``kernel_on_cores``
    data, share, shares, sampler, batch_size, out = sys.argv[1:]
    result = kernel_share(Path(data), int(share), int(shares), SamplerConfig(**json.loads(sampler)), int(batch_size))
    Path(out).write_text(json.dumps(result))
