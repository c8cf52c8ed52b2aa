"""Fit one small linear-regression batch and save its draws (run in a fresh process by tests).

Caches live under ``$BAYESFAN_CACHE_DIR``."""

import sys

import numpy as np

from bayesfan.engine import SamplerConfig, enable_compilation_cache, fit_batch, partition_keys
from models import resolve_model
from tasks.sample import stack_partitions

if __name__ == "__main__":
    out = sys.argv[1]
    enable_compilation_cache()
    model = resolve_model("linear_regression")
    frame, _ = model.simulate(np.random.default_rng(0), 4, 40)
    parts = [rows[list(model.columns())] for _, rows in frame.groupby("partition")]
    keys = partition_keys(0, sorted(frame["partition"].unique()), 2)
    result = fit_batch(model, SamplerConfig(chains=2, warmup=100, draws=100), keys, stack_partitions(model, parts, 40, 4))
    np.savez(out, **result.samples)
