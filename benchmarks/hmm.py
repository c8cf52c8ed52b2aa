"""Suite ``hmm``: Ampersand's viewing HMM (``poisson_zero_hmm``) at their size, cold and warm-started.

The partitions are fitted as one batch by the bare kernel. Times are sampling only:
each program is compiled before the clock starts (``compile_s`` reports it), as
Stan's reported sampling time excludes compilation. The warm run starts each chain
from the cold run's artifact tree (last draw, sampling coordinates, step size, diagonal mass matrix: the
engine's ``WarmStart``, as ``fit --warm-start`` does) with a short warmup that
adapts the step size only, and the same draws.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import xarray as xr
from jax import lax
from numpyro.infer.util import potential_energy, unconstrain_fn

from bayesfan.engine import SamplerConfig, WarmStart, compiled_fit, partition_keys
from benchmarks.measure import batch_efficiency, ess_bulk_min, lockstep_efficiency, measure, r_hat_max
from models import resolve_model
from tasks.sample import stack_partitions, to_datatree
from tasks.split import plan_batches, split_partitions
from tasks.warm import adaptation_arrays

# warm_warmup: FitConfig.warm_warmup's default at full size. The 16 partitions run as one batch (64 chains,
# each stepping on its own); the gradient is also measured at batches of 64-512.
FULL = {"partitions": 16, "length": 5040, "sampler": SamplerConfig(4, 1000, 1000), "warm_warmup": 150,
        "gradient_reps": 200, "gradient_batches": (64, 128, 256, 512)}
QUICK = {"partitions": 2, "length": 168, "sampler": SamplerConfig(2, 100, 100), "warm_warmup": 20,
         "gradient_reps": 20, "gradient_batches": (8, 16)}
SEED = 0
#: Ampersand's published figures: CPU seconds per chain at this size, and CPU-hours for their fleet.
AMPERSAND_CPU_S_PER_CHAIN = 1551.0
AMPERSAND_CPU_HOURS = 600_000.0
FLEET_PARTITIONS = 200_000
USD_PER_VCPU_HOUR = 0.0133  # assumed: Fargate Spot
ESS_TARGET = 400.0
RHAT_MAX = 1.01


def run(quick: bool = False) -> dict:
    """Cold fit, gradient cost, fleet projection, then the warm-started refit."""
    size = QUICK if quick else FULL
    sampler: SamplerConfig = size["sampler"]
    model = resolve_model("poisson_zero_hmm")
    frame, _ = model.simulate(np.random.default_rng(SEED), size["partitions"], size["length"])
    parts, _ = split_partitions(frame, ("partition",), model)
    (plan,) = plan_batches(parts, len(parts), {})
    data = stack_partitions(model, [parts[k] for k in plan.partitions], plan.length, plan.size)
    keys = partition_keys(SEED, plan.partitions, sampler.chains)
    chains = len(plan.partitions) * sampler.chains

    cold = timed(compiled_fit(model.model, sampler), keys, data, None)
    start = warm_start(to_datatree(cold["output"], plan.partitions))
    warm_sampler = sampler._replace(warmup=size["warm_warmup"])
    warm_keys = partition_keys(SEED + 1, plan.partitions, sampler.chains)
    hot = timed(compiled_fit(model.model, warm_sampler), warm_keys, data, start)

    cpu_s_per_chain = cold["cpu_s"] / chains
    cpu_hours = cpu_s_per_chain * sampler.chains * FLEET_PARTITIONS / 3600
    gradient_us = series_gradient_us(model.model, data, start.values, size["gradient_reps"])
    by_batch = {str(b): series_gradient_us(model.model, *tiled(data, start.values, b // sampler.chains),
                                           max(2, size["gradient_reps"] * chains // b))
                for b in size["gradient_batches"]}
    # The chain's own leapfrog steps, each one series-gradient; assumes warmup iterations cost what draws do.
    useful_gradient_s = (sampler.warmup + sampler.draws) * cold["leapfrog_steps_per_draw"] * gradient_us * 1e-6
    ess_bar = min(ESS_TARGET, cold["ess_bulk_min"])  # equal quality: the cold run's bar, at most the target
    warm_quality = hot["ess_bulk_min"] >= ess_bar and hot["r_hat_max"] <= RHAT_MAX
    return {
        "size": {"partitions": len(plan.partitions), "length": size["length"], "sampler": sampler._asdict()},
        "cold": _public(cold),
        "warm": _public(hot) | {"warmup": warm_sampler.warmup},
        "cpu_s_per_chain": cpu_s_per_chain,
        "speedup_vs_ampersand": AMPERSAND_CPU_S_PER_CHAIN / cpu_s_per_chain,
        "ess_bulk_min": cold["ess_bulk_min"],
        "r_hat_max": cold["r_hat_max"],
        "us_per_series_gradient": gradient_us,
        "us_per_series_gradient_by_batch": by_batch,
        "leapfrog_steps_per_draw": cold["leapfrog_steps_per_draw"],
        "batch_efficiency": cold["batch_efficiency"],
        "lockstep_efficiency": cold["lockstep_efficiency"],
        "useful_gradient_share": useful_gradient_s / cpu_s_per_chain,
        "projection": {
            "partitions": FLEET_PARTITIONS,
            "cpu_hours": cpu_hours,
            "usd": cpu_hours * USD_PER_VCPU_HOUR,
            "usd_per_vcpu_hour": USD_PER_VCPU_HOUR,
            "ampersand_cpu_hours": AMPERSAND_CPU_HOURS,
            "ampersand_usd": AMPERSAND_CPU_HOURS * USD_PER_VCPU_HOUR,
            "cpu_hours_ratio": AMPERSAND_CPU_HOURS / cpu_hours,
        },
        "warm_start_speedup": cold["cpu_s"] / hot["cpu_s"],
        "warmup_iterations_saved": 1 - warm_sampler.warmup / sampler.warmup,
        "warm_ess_kept": hot["ess_bulk_min"] / cold["ess_bulk_min"],
        "warm_equal_quality": bool(warm_quality),
    }


def warm_start(tree: xr.DataTree) -> WarmStart:
    """Every (partition, chain)'s warm start from an artifact tree: last draw plus ``adaptation``."""
    last = tree["posterior"].to_dataset().isel(draw=-1)
    values = {name: np.asarray(value) for name, value in last.data_vars.items()}
    return WarmStart(values, *adaptation_arrays(tree["adaptation"].to_dataset()))


def timed(program, *args) -> dict:
    """Compile ``program`` for ``args``, then run it on the clock; output and diagnostics."""
    start = time.perf_counter()
    compiled = program.lower(*args).compile()
    compile_s = time.perf_counter() - start
    with measure() as cost:
        output = jax.tree.map(np.asarray, compiled(*args))
    lead = ("partition", "chain", "draw")
    return {
        "output": output,
        "compile_s": compile_s,
        "wall_s": cost.wall_s,
        "cpu_s": cost.cpu_s,
        "ess_bulk_min": float(ess_bulk_min(output.samples, lead).min()),
        "r_hat_max": r_hat_max(output.samples, lead),
        "leapfrog_steps_per_draw": float(np.mean(output.stats["n_steps"])),
        "batch_efficiency": batch_efficiency(output.stats["n_steps"]),
        "lockstep_efficiency": lockstep_efficiency(output.stats["n_steps"]),
        "divergences": int(np.sum(output.stats["diverging"])),
    }


def series_gradient_us(model, data: dict, params: dict, reps: int) -> float:
    """CPU microseconds per gradient of one series' log density, batched as the sampler batches them.

    The gradients run in a compiled loop, as inside the sampler; each step nudges the
    point by a negligible multiple of the gradient so that no step can be hoisted out.
    """
    per_chain = jax.vmap(lambda d, p: unconstrain_fn(model, (), d, p), in_axes=(None, 0))
    z = jax.jit(jax.vmap(per_chain))(data, params)
    grad = jax.vmap(jax.vmap(jax.grad(lambda z, d: potential_energy(model, (), d, z)), in_axes=(0, None)))

    def step(_, z):
        return jax.tree.map(lambda a, g: a + 1e-12 * g, z, grad(z, data))

    loop = jax.jit(lambda z, n: lax.fori_loop(0, n, step, z))
    jax.block_until_ready(loop(z, 1))
    with measure() as cost:
        jax.block_until_ready(loop(z, reps))
    series = np.prod(jax.tree.leaves(z)[0].shape[:2])
    return cost.cpu_s / (reps * series) * 1e6


def tiled(data: dict, params: dict, partitions: int) -> tuple[dict, dict]:
    """``data`` and per-chain ``params`` repeated along the partition axis to ``partitions``."""
    def tile(a):
        a = np.asarray(a)
        return np.resize(a, (partitions, *a.shape[1:]))
    return {k: tile(v) for k, v in data.items()}, {k: tile(v) for k, v in params.items()}


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "output"}
