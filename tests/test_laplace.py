"""The Laplace start: Newton finds the mode, the scale whitens the curvature there, and the
small linear algebra behind them agrees with LAPACK."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bayesfan import engine
from bayesfan.engine import SamplerConfig, fit_batch, partition_keys
from models import resolve_model
from tasks.sample import stack_partitions

# A correlated Gaussian whose scales differ by four orders of magnitude (like the HMM's log mu and xi).
SD = np.array([0.003, 1.0, 30.0])
CORR = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.5], [-0.3, 0.5, 1.0]])
COV = CORR * np.outer(SD, SD)
MEAN = np.array([3.9, -1.0, 12.0])


def gaussian(z):
    r = z - MEAN
    return 0.5 * r @ jnp.asarray(np.linalg.inv(COV), jnp.float32) @ r


def test_find_mode_reaches_the_mode_of_a_badly_scaled_gaussian_from_far_away():
    mode, value = jax.jit(lambda z: engine.find_mode(gaussian, z))(jnp.array([0.0, 5.0, -40.0]))
    np.testing.assert_allclose(mode / SD, MEAN / SD, atol=1e-2)
    assert float(value) < 1e-3


def test_find_mode_walks_out_of_a_region_of_negative_curvature():
    double_well = lambda z: (z[0] ** 2 - 1.0) ** 2 + 0.5 * z[1] ** 2  # noqa: E731 - Hessian < 0 at z[0] = 0
    mode, _ = engine.find_mode(double_well, jnp.array([0.1, 2.0]))
    np.testing.assert_allclose(np.abs(np.asarray(mode)), [1.0, 0.0], atol=1e-3)


def test_laplace_scale_whitens_the_curvature():
    scale = np.asarray(engine.laplace_scale(gaussian, jnp.asarray(MEAN, jnp.float32)), float)
    np.testing.assert_allclose(scale @ scale.T / np.outer(SD, SD), CORR, atol=1e-3)
    np.testing.assert_array_equal(np.tril(scale, -1), 0.0)  # upper triangular: warm starts back-substitute


def test_laplace_scale_without_a_mode_falls_back_to_the_diagonal():
    saddle = lambda z: z[0] ** 2 - 4.0 * z[1] ** 2  # noqa: E731
    scale = np.asarray(engine.laplace_scale(saddle, jnp.zeros(2)))
    np.testing.assert_allclose(scale, np.diag([0.5 ** 0.5, 8.0 ** -0.5]), rtol=1e-6)


def test_small_linear_algebra_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    spd = (a @ a.T + 5 * np.eye(5)).astype(np.float32)
    b = jnp.asarray(rng.normal(size=5), jnp.float32)
    low = np.asarray(engine._cholesky(jnp.asarray(spd)))
    np.testing.assert_allclose(low, np.linalg.cholesky(spd), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(low @ np.asarray(engine._solve_lower(jnp.asarray(low), b)), b, atol=1e-4)
    np.testing.assert_allclose(low.T @ np.asarray(engine._solve_upper(jnp.asarray(low.T), b)), b, atol=1e-4)
    assert np.isnan(np.asarray(engine._cholesky(jnp.asarray(-spd)))).any()


def test_laplace_and_plain_starts_agree_on_the_posterior():
    model = resolve_model("linear_regression")
    frame, _ = model.simulate(np.random.default_rng(7), 1, 80)
    data = stack_partitions(model, [frame[list(model.columns())]], 80, 1)
    keys = partition_keys(0, ["p"], 2)
    cfg = SamplerConfig(chains=2, warmup=300, draws=600)
    laplace = fit_batch(model, cfg, keys, data).samples
    plain = fit_batch(model, cfg._replace(laplace=False), keys, data).samples
    for name in laplace:
        a = laplace[name][0].reshape(-1, *laplace[name].shape[3:])
        b = plain[name][0].reshape(-1, *plain[name].shape[3:])
        np.testing.assert_array_less(np.abs(a.mean(0) - b.mean(0)), 0.2 * b.std(0))
        np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.2)
