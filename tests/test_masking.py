"""Padding is invisible: masked rows add nothing to the log density, and a partition's
draws do not depend on which other partitions share its batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import initialize_model, log_density

from bayesfan.engine import SamplerConfig, choose_kernel, fit_batch, gradient_flops, partition_keys
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


@pytest.mark.parametrize("kernel", ["lockstep", "stepwise"])
def test_draws_do_not_depend_on_batch_companions(kernel):
    cfg = CFG._replace(kernel=kernel)
    parts = {"a": rows(60, 3), "b": rows(60, 4), "c": rows(55, 5)}
    alone = fit_batch(MODEL, cfg, partition_keys(0, ["a", "a"], cfg.chains),
                      stack_partitions(MODEL, [parts["a"]], 64, 2)).samples
    together = fit_batch(MODEL, cfg, partition_keys(0, ["c", "b", "a", "a"], cfg.chains),
                         stack_partitions(MODEL, [parts["c"], parts["b"], parts["a"]], 64, 4)).samples
    for name in alone:
        np.testing.assert_allclose(together[name][2], alone[name][0], rtol=1e-5, atol=1e-6)


def test_lockstep_and_stepwise_kernels_draw_the_same_chains():
    """Both split keys and do arithmetic as NumPyro's ``sample_kernel``: the kernel changes speed only
    (here exactly; rounding may differ in other programs)."""
    part = rows(60, 6)
    keys, data = partition_keys(0, ["a"], CFG.chains), stack_partitions(MODEL, [part], 60, 1)
    lockstep = fit_batch(MODEL, CFG._replace(kernel="lockstep"), keys, data)
    stepwise = fit_batch(MODEL, CFG._replace(kernel="stepwise"), keys, data)
    np.testing.assert_array_equal(lockstep.stats["n_steps"][:, :, :50], stepwise.stats["n_steps"][:, :, :50])
    for name in lockstep.samples:
        np.testing.assert_allclose(lockstep.samples[name][:, :, :50], stepwise.samples[name][:, :, :50],
                                   rtol=1e-4, atol=1e-5)


def test_auto_kernel_goes_stepwise_when_gradients_are_dear_or_batches_large():
    def flops(model, length):
        frame, _ = model.simulate(np.random.default_rng(0), 1, length)
        data = stack_partitions(model, [frame[list(model.columns())]], length, 1)
        info = initialize_model(random.PRNGKey(0), model.model, model_kwargs=one(data), dynamic_args=True)
        flat, unravel = ravel_pytree(info.param_info.z)
        return gradient_flops(lambda d: lambda z: info.potential_fn(**d)(unravel(z)), data, flat.size, flat.dtype)

    regression, hmm = flops(MODEL, 100), flops(resolve_model("poisson_zero_hmm"), 168)
    assert choose_kernel("auto", regression, 32) == "lockstep"
    assert choose_kernel("auto", regression, 64) == "stepwise"
    assert choose_kernel("auto", hmm, 16) == "stepwise"
    assert choose_kernel("lockstep", hmm, 64) == "lockstep"
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        choose_kernel("fast", regression, 8)
