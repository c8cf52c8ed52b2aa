"""The forward algorithm against brute-force enumeration of state paths, masking, and poisson_zero_hmm."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

from models import hmm, resolve_model
from models.poisson_zero_hmm import XI_TRUTH, PoissonZeroHMM, hmm_terms


def random_hmm(rng, steps=6, k=3):
    log_init = np.log(rng.dirichlet(np.ones(k)))
    log_trans = np.log(rng.dirichlet(np.ones(k), size=(steps, k)))
    log_emit = rng.normal(size=(steps, k))
    return log_init, log_trans, log_emit


def brute_force(log_init, log_trans, log_emit):
    """log p(y) and P(S_t = k | y) by summing over all K^T state paths (float64)."""
    steps, k = log_emit.shape
    paths = np.array(list(itertools.product(range(k), repeat=steps)))
    t = np.arange(1, steps)
    logp = (
        log_init[paths[:, 0]]
        + log_emit[np.arange(steps), paths].sum(axis=1)
        + log_trans[t, paths[:, :-1], paths[:, 1:]].sum(axis=1)
    )
    total = np.logaddexp.reduce(logp)
    weights = np.exp(logp - total)
    marginals = np.stack([np.bincount(paths[:, s], weights, minlength=k) for s in range(steps)])
    return total, marginals


def as_jax(*arrays):
    return [jnp.asarray(a, dtype=jnp.float32) for a in arrays]


def test_forward_matches_enumeration():
    rng = np.random.default_rng(1)
    terms = random_hmm(rng)
    expected, marginals = brute_force(*terms)
    mask = jnp.ones(6, bool)
    assert float(hmm.log_likelihood(*as_jax(*terms), mask)) == pytest.approx(expected, abs=1e-4)
    probs = hmm.state_probabilities(*as_jax(*terms), mask)
    np.testing.assert_allclose(probs, marginals, atol=1e-5)


def test_constant_transition_matrix_broadcasts():
    rng = np.random.default_rng(2)
    log_init, log_trans, log_emit = random_hmm(rng)
    log_trans[:] = log_trans[1]
    expected, _ = brute_force(log_init, log_trans, log_emit)
    got = hmm.log_likelihood(*as_jax(log_init, log_trans[1], log_emit), jnp.ones(6, bool))
    assert float(got) == pytest.approx(expected, abs=1e-4)


def test_masked_steps_leave_the_forward_vector_unchanged():
    rng = np.random.default_rng(3)
    log_init, log_trans, log_emit = random_hmm(rng, steps=9)
    expected, marginals = brute_force(log_init, log_trans[:5], log_emit[:5])
    mask = jnp.arange(9) < 5
    terms = as_jax(log_init, log_trans, log_emit)
    assert float(hmm.log_likelihood(*terms, mask)) == pytest.approx(expected, abs=1e-4)
    alphas = hmm.forward(*terms, mask)
    np.testing.assert_array_equal(alphas[5:], np.broadcast_to(alphas[4], (4, 3)))
    np.testing.assert_allclose(hmm.state_probabilities(*terms, mask)[:5], marginals, atol=1e-5)
    grads = jax.grad(lambda e: hmm.log_likelihood(terms[0], terms[1], e, mask))(terms[2])
    assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[5:] == 0.0)


def test_poisson_zero_hmm_density_matches_enumeration():
    """The model's log density = priors + the enumerated likelihood of its emission model."""
    model = PoissonZeroHMM(mu_mean=5.0, mu_var=4.0, xi_scale=2.0)
    rows = model.simulate(np.random.default_rng(4), 1, 7)[0]
    rows["y"] = [0, 3, 4, 0, 0, 6, 0]
    arrays = model.arrays(rows)
    params = {"mu": jnp.float32(4.0), "xi": jnp.asarray(XI_TRUTH / 3, jnp.float32), "pi0": jnp.array([0.3, 0.7])}
    mask = jnp.ones(7, bool)
    got, _ = log_density(model.model, (), {"mask": mask, **arrays}, params)
    terms = [np.asarray(a, np.float64) for a in hmm_terms(*params.values(), arrays["x"], arrays["y"])]
    terms[2] = np.maximum(terms[2], -1e300)
    likelihood, _ = brute_force(*terms)
    # Gamma(shape 6.25, rate 1.25) has mean 5 and variance 4; Dirichlet(1, 1) has density 1.
    prior = jax.scipy.stats.gamma.logpdf(4.0, 6.25, scale=0.8) + jax.scipy.stats.norm.logpdf(params["xi"], 0.0, 2.0).sum()
    assert float(got) == pytest.approx(likelihood + float(prior), abs=1e-3)


def test_simulate_design_and_state_probabilities():
    model = resolve_model("poisson_zero_hmm", {"hour_of_day": True, "covariates": ["temp"]})
    frame, truth = model.simulate(np.random.default_rng(5), 2, 72)
    assert list(frame.columns) == ["partition", "hour", "weekday", "temp", "y"]
    rows = frame[frame.partition == "p0001"].reset_index(drop=True)
    model.check_rows(rows[list(model.columns())])
    x = model.design(rows)
    assert x.shape == (72, 1 + 6 + 23 + 1)
    assert len(truth[truth.partition == "p0001"]) == 1 + 2 * x.shape[1] + 2
    assert {"mu", "xi[1,6]", "pi0[0]"} <= set(truth.parameter)

    values = truth[truth.partition == "p0001"].set_index("parameter")["value"]
    draws = {
        "mu": np.full((3,), values["mu"], np.float32),
        "xi": np.broadcast_to(values[[f"xi[{r},{k}]" for r in range(2) for k in range(x.shape[1])]]
                              .to_numpy(np.float32).reshape(2, -1), (3, 2, x.shape[1])),
        "pi0": np.tile(np.float32([1e-3, 1 - 1e-3]), (3, 1)),
    }
    arrays = model.arrays(rows) | {"mask": np.ones(72, bool)}
    on = model.state_probabilities(draws, arrays)
    # A positive count reveals the on state; a zero is almost surely off when mu is about 50.
    np.testing.assert_allclose(on, (rows["y"] > 0).astype(float), atol=1e-3)
