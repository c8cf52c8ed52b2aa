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


def run_batch(chains, settings=SETTINGS):
    """``nuts.run`` on chains with one leading batch axis, each a partition of one chain on ``potential``."""
    step = jax.vmap(lambda c: nuts.step(potential, settings, c))
    size = chains.hmc.i.shape[0]
    out = jax.jit(lambda c: nuts.run(lambda _, c: step(c), settings, c, jnp.zeros(size)))(
        jax.tree.map(lambda a: a[:, None], chains))
    return jax.tree.map(lambda a: a[:, 0], out)


def run_alone(key, z0, settings=SETTINGS, **given):
    chain = nuts.init(potential, settings, key, z0, **given)
    return jax.tree.map(lambda a: a[0], run_batch(jax.tree.map(lambda a: a[None], chain), settings))


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


def test_lockstep_transitions_give_numpyros_draws_and_adaptation():
    key, z0 = random.PRNGKey(3), jnp.array([0.5, -1.0, 0.2])
    state, draws, steps = numpyro_draws(key, z0)
    ours = nuts.init_state(potential, SETTINGS, key, z0)
    ours, lockstep_draws, stats = jax.jit(lambda s: nuts.run_lockstep(
        lambda s: nuts.transition(potential, SETTINGS, s), SETTINGS, s))(ours)
    np.testing.assert_array_equal(np.asarray(lockstep_draws), draws)
    np.testing.assert_array_equal(np.asarray(stats["n_steps"]), steps)
    assert ours.adapt_state.step_size == state.adapt_state.step_size


def correlated(rho, z):
    """A standard Gaussian in z[1:] and z[0] - rho z[1]: near rho = 1 a diagonal mass matrix cannot help,
    and trajectories are long."""
    return 0.5 * ((z[0] - rho * z[1]) ** 2 / (1 - rho**2) + z[1] ** 2 + z[2] ** 2)


def correlated_batch(partitions: int):
    """``partitions`` partitions of two chains on ``correlated``, the slow ones (rho near 1) spread out."""
    rho = jnp.array([0.0, 0.5, 0.99, 0.999] * 4)[jnp.argsort(jnp.arange(16) % 3)][:partitions]
    keys = random.split(random.PRNGKey(11), 32).reshape(16, 2, -1)[:partitions]
    starts = random.normal(random.PRNGKey(12), (16, 2, 3))[:partitions]
    chains = jax.vmap(jax.vmap(lambda k, z, r: nuts.init(lambda z: correlated(r, z), SETTINGS, k, z),
                               in_axes=(0, 0, None)))(keys, starts, rho)
    step = jax.vmap(lambda r, c: nuts.step(lambda z: correlated(r, z), SETTINGS, c), in_axes=(None, 0))
    return chains, rho, jax.jit(lambda c, rho: nuts.run(step, SETTINGS, c, rho))


def test_partitions_of_a_batch_step_independently():
    """Below ``nuts.run``'s first shrink (fewer than SHRINK x MIN_BATCH partitions), each partition's
    draws are its draws alone, beside companions whose trajectories differ."""
    chains, rho, run = correlated_batch(nuts.SHRINK * nuts.MIN_BATCH - 1)
    batch = run(chains, rho)
    steps = np.asarray(batch.stats["n_steps"]).sum(axis=-1).max(axis=1)
    assert steps.max() > 4 * np.median(steps)  # companions of very different lengths
    for i in range(len(rho)):
        alone = run(jax.tree.map(lambda a: a[i:i + 1], chains), rho[i:i + 1])
        np.testing.assert_array_equal(np.asarray(batch.draws[i]), np.asarray(alone.draws[0]))
        assert (np.asarray(batch.hmc.i[i]) == SETTINGS.warmup + SETTINGS.draws).all()  # finished chains stopped


def test_the_slowest_partitions_finish_in_a_smaller_batch():
    """16 partitions: once 4 are left running they go on as a batch of 4. Partitions done before that
    keep their draws alone; every chain ends with all its draws; the run is reproducible."""
    chains, rho, run = correlated_batch(16)
    batch = run(chains, rho)
    steps = np.asarray(batch.stats["n_steps"]).sum(axis=-1).max(axis=1)
    early = np.argsort(steps)[:-nuts.MIN_BATCH]  # done in the first phase (by draw-phase steps, a proxy)
    for i in early[:4]:
        alone = run(jax.tree.map(lambda a: a[i:i + 1], chains), rho[i:i + 1])
        np.testing.assert_array_equal(np.asarray(batch.draws[i]), np.asarray(alone.draws[0]))
    assert (np.asarray(batch.hmc.i) == SETTINGS.warmup + SETTINGS.draws).all()
    assert np.isfinite(np.asarray(batch.draws)).all() and (np.asarray(batch.stats["n_steps"]) > 0).all()
    again = run(chains, rho)
    np.testing.assert_array_equal(np.asarray(again.draws), np.asarray(batch.draws))


def test_draws_are_from_the_target():
    chains = jax.vmap(lambda k: nuts.init(potential, SETTINGS._replace(draws=1000), k, jnp.zeros(3)))(
        random.split(random.PRNGKey(0), 4))
    settings = SETTINGS._replace(draws=1000)
    out = run_batch(chains, settings)
    draws = np.asarray(out.draws).reshape(-1, 3)
    precision = np.diag(1 / np.asarray(SCALES) ** 2) + 0.03 * np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(draws.std(0), np.sqrt(np.diag(np.linalg.inv(precision))), rtol=0.15)
    assert not np.asarray(out.stats["diverging"]).any()
