"""``bayesfan.nuts``: NUTS stepped one leapfrog at a time gives NumPyro's draws, chain by chain,
whatever else is in the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.infer.hmc import hmc

from bayesfan import nuts

SETTINGS = nuts.Settings(warmup=60, draws=80, max_tree_depth=10, target_accept=0.8)
SCALES = jnp.array([1.0, 10.0, 0.1])


def potential(z):
    """A correlated Gaussian whose scales span two orders of magnitude: trajectories of many lengths."""
    return 0.5 * jnp.sum((z / SCALES) ** 2) + 0.03 * z[0] * z[1]


def numpyro_draws(key, z0, settings=SETTINGS, **given):
    """NumPyro's own kernel: ``init_kernel``, then ``sample_kernel`` warmup + draws times."""
    init_kernel, sample_kernel = hmc(potential, algo="NUTS")
    state = init_kernel(z0, settings.warmup, target_accept_prob=settings.target_accept,
                        max_tree_depth=settings.max_tree_depth, rng_key=key, **given)

    def body(state, _):
        state = sample_kernel(state)
        return state, (state.z, state.num_steps, state.diverging)

    state, (z, steps, diverging) = jax.jit(lambda s: lax.scan(body, s, None, settings.warmup + settings.draws))(state)
    return state, np.asarray(z[settings.warmup:]), np.asarray(steps[settings.warmup:])


def run_alone(key, z0, settings=SETTINGS, **given):
    chain = nuts.init(potential, settings, key, z0, **given)
    return jax.jit(lambda c: nuts.run(lambda c: nuts.step(potential, settings, c), settings, c))(chain)


def test_a_chain_gives_numpyros_draws_and_adaptation():
    key, z0 = random.PRNGKey(3), jnp.array([0.5, -1.0, 0.2])
    state, draws, steps = numpyro_draws(key, z0)
    chain = run_alone(key, z0)
    np.testing.assert_array_equal(np.asarray(chain.draws), draws)
    np.testing.assert_array_equal(np.asarray(chain.stats["n_steps"]), steps)
    assert len(set(steps.tolist())) > 1  # trajectories of several lengths were compared
    assert chain.hmc.adapt_state.step_size == state.adapt_state.step_size
    np.testing.assert_array_equal(chain.hmc.adapt_state.inverse_mass_matrix, state.adapt_state.inverse_mass_matrix)
    assert int(chain.hmc.i) == SETTINGS.warmup + SETTINGS.draws


def test_a_warm_start_keeps_the_mass_matrix_and_matches_numpyro():
    key, z0 = random.PRNGKey(5), jnp.array([0.1, 2.0, -0.05])
    settings = SETTINGS._replace(warmup=20, adapt_mass_matrix=False)
    given = {"step_size": jnp.asarray(0.3), "inverse_mass_matrix": SCALES ** 2}
    state, draws, _ = numpyro_draws(key, z0, settings, adapt_mass_matrix=False, **given)
    chain = run_alone(key, z0, settings, **given)
    np.testing.assert_array_equal(np.asarray(chain.draws), draws)
    np.testing.assert_array_equal(chain.hmc.adapt_state.inverse_mass_matrix, SCALES ** 2)


def test_chains_of_a_batch_step_independently():
    """Batched with companions whose trajectories differ, each chain's draws are its draws alone."""
    keys = random.split(random.PRNGKey(11), 3)
    starts = jnp.array([[0.5, -1.0, 0.2], [3.0, 20.0, -0.3], [-1.0, 5.0, 0.0]])
    chains = jax.vmap(lambda k, z: nuts.init(potential, SETTINGS, k, z))(keys, starts)
    batch = jax.jit(lambda c: nuts.run(jax.vmap(lambda c: nuts.step(potential, SETTINGS, c)), SETTINGS, c))(chains)
    for i in range(3):
        alone = run_alone(keys[i], starts[i])
        np.testing.assert_array_equal(np.asarray(batch.draws[i]), np.asarray(alone.draws))
        assert int(batch.hmc.i[i]) == SETTINGS.warmup + SETTINGS.draws  # a finished chain stopped


def test_draws_are_from_the_target():
    chains = jax.vmap(lambda k: nuts.init(potential, SETTINGS._replace(draws=1000), k, jnp.zeros(3)))(
        random.split(random.PRNGKey(0), 4))
    settings = SETTINGS._replace(draws=1000)
    out = jax.jit(lambda c: nuts.run(jax.vmap(lambda c: nuts.step(potential, settings, c)), settings, c))(chains)
    draws = np.asarray(out.draws).reshape(-1, 3)
    precision = np.diag(1 / np.asarray(SCALES) ** 2) + 0.03 * np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(draws.std(0), np.sqrt(np.diag(np.linalg.inv(precision))), rtol=0.15)
    assert not np.asarray(out.stats["diverging"]).any()
