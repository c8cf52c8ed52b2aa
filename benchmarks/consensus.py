"""Suite ``consensus``: how close consensus mode's combined posteriors land, and how much sooner.

For each dataset and each S, the rows are sharded as ``fit --mode consensus`` shards
them (``shard_rows``, seed 0), every shard is sampled alone by the engine with
prior^(1/S) (``ShardModel``; one worker per shard), and the sub-posteriors are combined
by each method in unconstrained space (``tasks.consensus``). Each combination is
compared, per scalar parameter, with full-data NUTS from the same run and with the
posteriordb reference draws where there are some:

* ``dmean_sd``: max over parameters of |Δmean| / target sd;
* ``sd_ratio``: [min, max] over parameters of our sd / target sd;
* ``w1_sd``: max over parameters of the 1-D Wasserstein-1 distance / target sd.

Wall times are sampling (compiled first; ``compile_s`` reports it) plus combination.
``speedup_vs_full`` assumes one worker per shard: full NUTS's wall time over the
slowest shard's plus the combination's. ``speedup_one_worker`` runs the shards one
after another instead.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import arviz as az
import jax
import numpy as np
import pandas as pd
import xarray as xr
from jax import random
from scipy.stats import wasserstein_distance

from bayesfan.engine import SamplerConfig, compiled_fit, enable_compilation_cache, partition_keys
from flows.consensus import shard_rows
from models.base import Model, scalar_names
from models.logistic_regression import LogisticRegression
from models.reference import REFERENCE_MODELS
from tasks.consensus import ShardModel, combine, constrained_posterior, probe_data, unconstrained_subdraws
from tasks.sample import stack_partitions, to_datatree
from tasks.split import bucket_length

#: posteriordb data and reference draws (see its README), shared with the tests.
DATA = Path(__file__).parents[1] / "tests" / "data" / "reference"
REAL = ("kidiq-kidscore_momiq", "earnings-logearn_height", "nes2000-nes")
METHODS = ("consensus", "consensus-diag", "parametric", "semiparametric")
LOGISTIC = "logistic_regression"
FULL = {"datasets": (*REAL, LOGISTIC), "shards": (2, 4, 8, 16), "sampler": SamplerConfig(4, 500, 1000),
        "logistic_rows": 100_000}
QUICK = {"datasets": (REAL[0], LOGISTIC), "shards": (2,), "sampler": SamplerConfig(2, 100, 100),
         "logistic_rows": 2_000}
#: Issue 5's target: consensus within this many posterior sds of the reference at S <= TARGET_MAX_S.
TARGET_DMEAN_SD, TARGET_MAX_S = 0.1, 8
SEED = 0


def run(quick: bool = False) -> dict:
    """Every dataset x S x method against full NUTS and the reference; the target's verdict."""
    size = QUICK if quick else FULL
    enable_compilation_cache()
    results = {}
    for name in size["datasets"]:
        model, frame, reference = logistic(size["logistic_rows"]) if name == LOGISTIC else posteriordb(name)
        results[name] = dataset_run(model, frame, reference, size)
    worst = max(r["methods"]["consensus"]["vs_reference"]["dmean_sd"]
                for name in REAL if name in results
                for r in results[name]["shards"].values() if r["shards"] <= TARGET_MAX_S)
    return {
        "size": {"datasets": list(size["datasets"]), "shards": list(size["shards"]),
                 "sampler": size["sampler"]._asdict(), "logistic_rows": size["logistic_rows"]},
        "datasets": results,
        "consensus_dmean_sd_max": worst,
        "target_met": bool(worst <= TARGET_DMEAN_SD),
    }


def dataset_run(model: Model, frame: pd.DataFrame, reference: dict | None, size: dict) -> dict:
    """Full NUTS, then every S: shards sampled alone, each method combined and compared."""
    sampler: SamplerConfig = size["sampler"]
    full_fit = sample_shards(model, {"all": frame[list(model.columns())]}, 1, sampler)
    full = flat_draws(full_fit["posterior"].isel(shard=0))
    out = {"rows": len(frame), "full": {
        "wall_s": full_fit["wall_s"], "compile_s": full_fit["compile_s"], "r_hat_max": full_fit["r_hat_max"],
        "vs_reference": compare(full, reference) if reference else None}, "shards": {}}
    for shards in size["shards"]:
        parts = shard_rows(frame, model, shards, SEED, None)
        fit = sample_shards(model, parts, shards, sampler)
        data = probe_data(model, parts[min(parts)])
        flat, _, unravel = unconstrained_subdraws(fit["posterior"], model.model, data)
        methods = {}
        for method in METHODS:
            start = time.perf_counter()
            combined = combine(flat, method, random.fold_in(random.PRNGKey(SEED), shards), sampler.chains)
            posterior = constrained_posterior(model.model, model, parts[min(parts)], unravel, combined, sampler.chains)
            combine_s = time.perf_counter() - start
            draws = flat_draws(posterior)
            methods[method] = {
                "vs_full": compare(draws, full),
                "vs_reference": compare(draws, reference) if reference else None,
                "combine_s": combine_s,
                "speedup_vs_full": full_fit["wall_s"] / (max(fit["shard_wall_s"]) + combine_s),
                "speedup_one_worker": full_fit["wall_s"] / (sum(fit["shard_wall_s"]) + combine_s),
            }
        out["shards"][str(shards)] = {
            "shards": shards, "rows_per_shard": len(frame) // shards, "compile_s": fit["compile_s"],
            "shard_wall_s_max": max(fit["shard_wall_s"]), "shard_r_hat_max": fit["r_hat_max"],
            "methods": methods,
        }
    return out


def sample_shards(model: Model, parts: dict[str, pd.DataFrame], shards: int, sampler: SamplerConfig) -> dict:
    """Each shard alone through one compiled program (batch of one, as one worker per shard
    runs it): sub-posteriors ``(shard, chain, draw, ...)``, per-shard wall seconds, largest R-hat."""
    shard_model = ShardModel(base=model, shards=shards)
    length = bucket_length(max(len(rows) for rows in parts.values()))
    keys = sorted(parts)
    stacked = {k: stack_partitions(shard_model, [parts[k]], length, 1) for k in keys}
    program = compiled_fit(shard_model, sampler)
    start = time.perf_counter()
    compiled = program.lower(partition_keys(SEED, keys[:1], sampler.chains), stacked[keys[0]], None).compile()
    compile_s = time.perf_counter() - start
    trees, walls = [], []
    for key in keys:
        start = time.perf_counter()
        output = jax.tree.map(np.asarray, compiled(partition_keys(SEED, [key], sampler.chains), stacked[key], None))
        walls.append(time.perf_counter() - start)
        trees.append(to_datatree(output, [key]))
    posterior = xr.concat([t["posterior"].to_dataset() for t in trees], "partition").rename(partition="shard")
    r_hat = az.rhat(posterior, sample_dims=("chain", "draw"))
    return {"posterior": posterior, "shard_wall_s": walls, "wall_s": sum(walls), "compile_s": compile_s,
            "r_hat_max": float(max(r_hat[v].max() for v in r_hat.data_vars))}


def flat_draws(posterior: xr.Dataset) -> dict[str, np.ndarray]:
    """``{scalar parameter name: all draws}`` of a ``(chain, draw, ...)`` posterior."""
    out = {}
    for name, da in posterior.data_vars.items():
        values = np.asarray(da.values).reshape(-1, *da.shape[2:])
        for j, label in enumerate(scalar_names(str(name), da.shape[2:])):
            out[label] = values.reshape(len(values), -1)[:, j]
    return out


def compare(draws: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict:
    """Worst |Δmean|/sd, sd ratio range and W1/sd over the target's parameters."""
    dmean, ratio, w1 = [], [], []
    for name, ref in target.items():
        sd = ref.std(ddof=1)
        dmean.append(abs(draws[name].mean() - ref.mean()) / sd)
        ratio.append(draws[name].std(ddof=1) / sd)
        w1.append(wasserstein_distance(draws[name], ref) / sd)
    return {"dmean_sd": float(max(dmean)), "sd_ratio": [float(min(ratio)), float(max(ratio))],
            "w1_sd": float(max(w1))}


def posteriordb(posterior: str) -> tuple[Model, pd.DataFrame, dict[str, np.ndarray]]:
    """The posteriordb model, its data as rows, and its reference draws (0-based names)."""
    with zipfile.ZipFile(DATA / f"draws-{posterior}.json.zip") as zf:
        chains = json.loads(zf.read(zf.namelist()[0]))
    reference = {zero_based(name): np.concatenate([np.asarray(c[name], float) for c in chains])
                 for name in chains[0]}
    return REFERENCE_MODELS[posterior](), posteriordb_rows(posterior), reference


def posteriordb_rows(posterior: str) -> pd.DataFrame:
    """The data of ``posterior`` as rows: every list of the longest length is a column; ``t`` indexes them."""
    with zipfile.ZipFile(DATA / f"data-{posterior.split('-')[0]}.json.zip") as zf:
        data = json.loads(zf.read(zf.namelist()[0]))
    length = max(len(v) for v in data.values() if isinstance(v, list))
    rows = pd.DataFrame({k: v for k, v in data.items() if isinstance(v, list) and len(v) == length})
    return rows.assign(t=np.arange(length))


def zero_based(stan_name: str) -> str:
    """``beta[2]`` -> ``beta[1]``: Stan's 1-based names to ours."""
    return re.sub(r"\[(\d+)\]", lambda m: f"[{int(m.group(1)) - 1}]", stan_name)


def logistic(rows: int) -> tuple[Model, pd.DataFrame, None]:
    """A simulated logistic regression: ``rows`` rows, intercept and 9 slopes; no reference draws."""
    model = LogisticRegression()
    frame, _ = model.simulate(np.random.default_rng(SEED), 1, rows)
    return model, frame.drop(columns="partition"), None
