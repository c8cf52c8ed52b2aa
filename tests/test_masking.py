"""Padding is invisible: masked rows add nothing to the log density, and a partition's
draws do not depend on which other partitions share its batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpyro.infer.util import log_density

from bayesfan.engine import SamplerConfig, fit_batch, partition_keys
from models import resolve_model
from tasks.sample import stack_partitions

MODEL = resolve_model("linear_regression")
CFG = SamplerConfig(chains=2, warmup=200, draws=400)


def rows(n: int, seed: int) -> pd.DataFrame:
    frame, _ = MODEL.simulate(np.random.default_rng(seed), 1, n)
    return frame[list(MODEL.columns())]


def one(data: dict, i: int = 0) -> dict:
    return {k: v[i] for k, v in data.items()}


def test_masked_padding_leaves_log_density_unchanged():
    part = rows(50, 1)
    exact, padded = stack_partitions(MODEL, [part], 50, 1), stack_partitions(MODEL, [part], 80, 1)
    params = {"alpha": 0.3, "beta": np.array([0.5, -1.2]), "sigma": 1.7}
    lp_exact, _ = log_density(MODEL.model, (), one(exact), params)
    lp_padded, _ = log_density(MODEL.model, (), one(padded), params)
    np.testing.assert_allclose(lp_padded, lp_exact, rtol=1e-6)
    unmasked = one(padded) | {"mask": np.ones(80, bool)}
    assert abs(float(log_density(MODEL.model, (), unmasked, params)[0]) - float(lp_exact)) > 1.0


def test_padded_and_unpadded_partitions_give_the_same_posterior():
    part = rows(50, 2)
    keys = partition_keys(0, ["p"], CFG.chains)
    exact = fit_batch(MODEL, CFG, keys, stack_partitions(MODEL, [part], 50, 1)).samples
    padded = fit_batch(MODEL, CFG, keys, stack_partitions(MODEL, [part], 80, 1)).samples
    for name in exact:
        a, b = exact[name][0], padded[name][0]
        sd = a.reshape(-1, *a.shape[2:]).std(0)
        assert np.all(np.abs(a.mean((0, 1)) - b.mean((0, 1))) < 0.15 * sd), name
        np.testing.assert_allclose(b.reshape(-1, *b.shape[2:]).std(0), sd, rtol=0.15)


def test_draws_do_not_depend_on_batch_companions():
    parts = {"a": rows(60, 3), "b": rows(60, 4), "c": rows(55, 5)}
    alone = fit_batch(MODEL, CFG, partition_keys(0, ["a", "a"], CFG.chains),
                      stack_partitions(MODEL, [parts["a"]], 64, 2)).samples
    together = fit_batch(MODEL, CFG, partition_keys(0, ["c", "b", "a", "a"], CFG.chains),
                         stack_partitions(MODEL, [parts["c"], parts["b"], parts["a"]], 64, 4)).samples
    for name in alone:
        np.testing.assert_allclose(together[name][2], alone[name][0], rtol=1e-5, atol=1e-6)
