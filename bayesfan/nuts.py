"""NUTS as a state machine that advances a chain one leapfrog step at a time.

NumPyro's ``build_tree`` runs a transition as nested while loops: doublings, and in
each the leaves of a new subtree. Under ``vmap`` a batch of chains then moves in
lockstep: every transition waits for the longest trajectory in the batch, and a batch
with one hard partition pays that partition's tree depth on every chain.

Here the same algorithm is a per-chain state (``Chain``) and a ``step`` that takes one
leapfrog step and the bookkeeping after it: add the leaf to the subtree, and when the
subtree is done (full, turning or divergent) merge it into the trajectory; when the
trajectory is done (turning, divergent or at the depth cap) end the transition (adapt,
record the draw) and start the next (fresh momentum, first doubling). ``run`` calls
``step`` on every chain of a batch until each has its warmup and draws, so a chain
spends gradients on its own trajectories only, and once few partitions are left
running it finishes them in a smaller batch.

The arithmetic and the random streams are NumPyro's: its tree helpers, its
``warmup_adapter`` and its ``init_kernel``, with the keys split as ``sample_kernel``
splits them. A chain therefore gives NumPyro's draws (``tests/test_nuts.py``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax, random
from numpyro.infer.hmc import hmc, momentum_generator
from numpyro.infer.hmc_util import (
    IntegratorState,
    TreeInfo,
    _build_basetree,
    _combine_tree,
    _get_leaf,
    _is_iterative_turning,
    _leaf_idx_to_ckpt_idxs,
    build_tree,
    euclidean_kinetic_energy,
    velocity_verlet,
    warmup_adapter,
)

#: NumPyro's threshold on the energy error that marks a leaf divergent.
MAX_DELTA_ENERGY = 1000.0

#: A phase of ``run`` ends when no more than 1/SHRINK of its partitions still run; phases are at least MIN_BATCH wide.
SHRINK = 4
MIN_BATCH = 4


class Chain(NamedTuple):
    """One chain mid-transition.

    ``hmc`` is NumPyro's ``HMCState`` after the last finished transition (position,
    adaptation, counter ``i``, key); ``tree`` the trajectory of the transition in
    progress, started at energy ``energy``; ``subtree`` the subtree its current doubling
    is building towards ``going_right``, with the U-turn checkpoints ``r_ckpts`` and
    ``r_sum_ckpts``. ``key`` feeds the doublings, ``leaf_key`` the subtree's leaves and
    ``merge_key`` the subtree's merge into the trajectory. ``draws`` (draws, D) and
    ``stats`` (draws,) fill in as the transitions after warmup end.
    """

    hmc: tuple
    tree: TreeInfo
    subtree: TreeInfo
    energy: jax.Array
    going_right: jax.Array
    key: jax.Array
    leaf_key: jax.Array
    merge_key: jax.Array
    r_ckpts: jax.Array
    r_sum_ckpts: jax.Array
    draws: jax.Array
    stats: dict


class Settings(NamedTuple):
    """Static settings of a run: transitions of warmup and of draws, the depth cap and the adaptation's target."""

    warmup: int
    draws: int
    max_tree_depth: int
    target_accept: float
    adapt_mass_matrix: bool = True


def init_state(potential_fn: Callable, settings: Settings, key: jax.Array, z: jax.Array,
               step_size=None, inverse_mass_matrix=None):
    """NumPyro's ``HMCState`` at ``z`` (its ``init_kernel``), before the first transition.

    With ``step_size`` and ``inverse_mass_matrix`` those start the adaptation (a warm
    start passes ``Settings.adapt_mass_matrix=False`` to keep the mass matrix).
    """
    init_kernel, _ = hmc(potential_fn, algo="NUTS")
    given = {} if step_size is None else {"step_size": step_size, "inverse_mass_matrix": inverse_mass_matrix}
    return init_kernel(z, settings.warmup, target_accept_prob=settings.target_accept,
                       max_tree_depth=settings.max_tree_depth, adapt_mass_matrix=settings.adapt_mass_matrix,
                       rng_key=key, **given)


def init(potential_fn: Callable, settings: Settings, key: jax.Array, z: jax.Array,
         step_size=None, inverse_mass_matrix=None) -> Chain:
    """A chain at ``z`` about to take its first leapfrog step: ``begin(init_state(...))``."""
    return begin(settings, init_state(potential_fn, settings, key, z, step_size, inverse_mass_matrix))


def begin(settings: Settings, state) -> Chain:
    """A chain about to take the first leapfrog step of a transition from ``HMCState`` ``state``."""
    size = state.z.shape[0]
    tree, energy, (state_key, doubling_key) = _begin_transition(state)
    stats = {name: jnp.zeros(settings.draws, dtype) for name, dtype in _stat_dtypes(state.z.dtype).items()}
    return Chain(hmc=state._replace(rng_key=state_key), tree=tree, energy=energy,
                 draws=jnp.zeros((settings.draws, size), state.z.dtype), stats=stats,
                 **_begin_doubling(tree, doubling_key, jnp.zeros((settings.max_tree_depth, size), state.z.dtype)))


def step(potential_fn: Callable, settings: Settings, chain: Chain) -> Chain:
    """One leapfrog step of ``chain`` and what follows from it; a chain with all its draws stays as it is."""
    _, vv_update = velocity_verlet(potential_fn, euclidean_kinetic_energy)
    hmc_state = chain.hmc
    adapt = hmc_state.adapt_state
    inverse_mass, step_size = adapt.inverse_mass_matrix, adapt.step_size

    # the leaf, added to the subtree (NumPyro's _iterative_build_subtree, one pass of its loop)
    leaf_key, combine_key = random.split(chain.leaf_key)
    z, r, grad = _get_leaf(chain.subtree, chain.going_right)
    leaf = _build_basetree(vv_update, euclidean_kinetic_energy, z, r, grad, inverse_mass, step_size,
                           chain.going_right, chain.energy, MAX_DELTA_ENERGY)
    n = chain.subtree.num_proposals
    joined = _combine_tree(chain.subtree, leaf, inverse_mass, chain.going_right, combine_key, False)
    subtree = _where(n == 0, leaf, joined)
    low, high = _leaf_idx_to_ckpt_idxs(n)
    even = n % 2 == 0
    r_ckpts = jnp.where(even, chain.r_ckpts.at[high].set(leaf.r_right), chain.r_ckpts)
    r_sum_ckpts = jnp.where(even, chain.r_sum_ckpts.at[high].set(subtree.r_sum), chain.r_sum_ckpts)
    turning = _is_iterative_turning(inverse_mass, leaf.r_right, subtree.r_sum, r_ckpts, r_sum_ckpts, low, high)
    subtree_done = (subtree.num_proposals >= 2 ** chain.tree.depth) | turning | subtree.diverging

    # the subtree, merged into the trajectory (NumPyro's _double_tree)
    merged = _combine_tree(chain.tree, subtree._replace(depth=chain.tree.depth, turning=turning), inverse_mass,
                           chain.going_right, chain.merge_key, True)
    tree = _where(subtree_done, merged, chain.tree)
    transition_done = subtree_done & ((tree.depth >= settings.max_tree_depth) | tree.turning | tree.diverging)

    # the transition's end (NumPyro's sample_kernel after build_tree) and the next one's start
    ended, draw, stats = _end_transition(settings, hmc_state, tree)
    next_tree, next_energy, traj_key = _begin_transition(ended)
    ended = ended._replace(rng_key=traj_key[0])
    hmc_state = _where(transition_done, ended, hmc_state)
    tree = _where(transition_done, next_tree, tree)
    energy = jnp.where(transition_done, next_energy, chain.energy)
    doubling_key = jnp.where(transition_done, traj_key[1], chain.key)
    doubling = _begin_doubling(tree, doubling_key, jnp.zeros_like(r_ckpts))
    going_on = {"subtree": subtree, "going_right": chain.going_right, "key": chain.key, "leaf_key": leaf_key,
                "merge_key": chain.merge_key, "r_ckpts": r_ckpts, "r_sum_ckpts": r_sum_ckpts}
    moved = chain._replace(hmc=hmc_state, tree=tree, energy=energy, **_where(subtree_done, doubling, going_on))

    active = chain.hmc.i < settings.warmup + settings.draws
    kept = jnp.where(transition_done & active & (chain.hmc.i >= settings.warmup),
                     chain.hmc.i - settings.warmup, settings.draws)  # out of range: not written
    unbuffered = {"draws": None, "stats": None}  # the buffers are written in place, never selected
    return _where(active, moved._replace(**unbuffered), chain._replace(**unbuffered))._replace(
        draws=chain.draws.at[kept].set(draw, mode="drop"),
        stats={name: chain.stats[name].at[kept].set(stats[name], mode="drop") for name in chain.stats},
    )


def run(step_partition: Callable, settings: Settings, chains: Chain, context) -> Chain:
    """Step every chain until each has its draws.

    ``chains`` has leading axes (partition, chain) and ``context`` (the data and
    coordinates of each partition) a leading partition axis; ``step_partition(context,
    chains)`` steps the chains of one partition (``step`` mapped over them).

    The loop runs in phases: once no more than a ``SHRINK``-th of the batch's partitions
    still have a chain running, those partitions are gathered into a batch that size
    and the loop goes on there, so the last, slowest chains do not pay for a full batch
    of gradients. Each phase is a loop whose condition is over its whole batch, so a
    chain's buffers are written in place, never selected.

    A batch too small to shrink gives each partition the draws it gets alone. A moved
    partition's later arithmetic may round differently at its new position, so in a
    batch that shrinks, the draws of those that move depend on the batch (reproducibly).
    """
    total = settings.warmup + settings.draws
    stepper = jax.vmap(step_partition)
    size = chains.hmc.i.shape[0]
    index, full = jnp.arange(size), chains
    while True:
        smaller = size // SHRINK
        last = smaller < MIN_BATCH
        floor = 0 if last else smaller
        chains = lax.while_loop(lambda c: jnp.sum(jnp.any(c.hmc.i < total, axis=1)) > floor,
                                functools.partial(stepper, context), chains)
        full = jax.tree.map(lambda whole, part: whole.at[index].set(part), full, chains)
        if last:
            return full
        running_first = jnp.argsort(jnp.all(chains.hmc.i >= total, axis=1), stable=True)[:smaller]
        index, chains, context = jax.tree.map(lambda a: a[running_first], (index, chains, context))
        size = smaller


def transition(potential_fn: Callable, settings: Settings, state):
    """One whole transition from ``HMCState`` ``state`` (NumPyro's ``sample_kernel``): (state, draw, stats).

    Under ``vmap`` a batch's chains take their transitions in lockstep, each waiting for
    the batch's longest trajectory, but do the bookkeeping once per transition instead of
    once per leapfrog step as ``step`` does. The keys are split as in ``step``, so a chain
    gets the same draws either way (up to rounding).
    """
    _, vv_update = velocity_verlet(potential_fn, euclidean_kinetic_energy)
    start, _, (state_key, tree_key) = _begin_transition(state)
    adapt = state.adapt_state
    tree = build_tree(vv_update, euclidean_kinetic_energy, IntegratorState(state.z, start.r_left,
                      state.potential_energy, state.z_grad), adapt.inverse_mass_matrix, adapt.step_size,
                      tree_key, max_delta_energy=MAX_DELTA_ENERGY, max_tree_depth=settings.max_tree_depth)
    return _end_transition(settings, state._replace(rng_key=state_key), tree)


def run_lockstep(transition_all: Callable, settings: Settings, states):
    """``settings.warmup`` then ``settings.draws`` transitions of every chain; ``transition_all``
    maps ``transition`` over the batch. Returns (states, draws, stats), draws on axis -2."""
    def draw(states, _):
        states, z, stats = transition_all(states)
        return states, (z, stats)

    states = lax.fori_loop(0, settings.warmup, lambda _, s: transition_all(s)[0], states)
    states, (draws, stats) = lax.scan(draw, states, None, length=settings.draws)
    chain_axes = states.i.ndim
    draws, stats = jax.tree.map(lambda a: jnp.moveaxis(a, 0, chain_axes), (draws, stats))
    return states, draws, stats


def _begin_transition(state) -> tuple[TreeInfo, jax.Array, jax.Array]:
    """A one-leaf trajectory at ``state.z`` with fresh momentum, its energy, and keys (next state key, doubling key)."""
    rng_key, momentum_key, traj_key = random.split(state.rng_key, 3)
    adapt = state.adapt_state
    r = momentum_generator(state.z, adapt.mass_matrix_sqrt, momentum_key)
    energy = state.potential_energy + euclidean_kinetic_energy(adapt.inverse_mass_matrix, r)
    int_type = jnp.result_type(int)
    tree = TreeInfo(state.z, r, state.z_grad, state.z, r, state.z_grad, state.z, state.potential_energy,
                    state.z_grad, energy, depth=jnp.array(0, int_type), weight=jnp.zeros((), energy.dtype), r_sum=r,
                    turning=jnp.array(False), diverging=jnp.array(False),
                    sum_accept_probs=jnp.zeros((), energy.dtype), num_proposals=jnp.array(0, int_type))
    return tree, energy, jnp.stack([rng_key, traj_key])


def _begin_doubling(tree: TreeInfo, key: jax.Array, ckpts: jax.Array) -> dict:
    """The next doubling of ``tree``: a direction, an empty subtree at that edge, keys, cleared checkpoints."""
    key, direction_key, doubling_key = random.split(key, 3)
    leaf_key, merge_key = random.split(doubling_key)
    return {"subtree": tree._replace(num_proposals=jnp.zeros_like(tree.num_proposals)),
            "going_right": random.bernoulli(direction_key), "key": key, "leaf_key": leaf_key,
            "merge_key": merge_key, "r_ckpts": ckpts, "r_sum_ckpts": ckpts}


def _end_transition(settings: Settings, state, tree: TreeInfo):
    """NumPyro's sample_kernel from the finished ``tree``: the new HMCState, the draw and its stats."""
    accept_prob = tree.sum_accept_probs / tree.num_proposals
    z_info = IntegratorState(tree.z_proposal, None, tree.z_proposal_pe, tree.z_proposal_grad)
    _, update = warmup_adapter(settings.warmup, adapt_mass_matrix=settings.adapt_mass_matrix,
                               target_accept_prob=settings.target_accept)
    adapt = lax.cond(state.i < settings.warmup, lambda: update(state.i, accept_prob, z_info, state.adapt_state),
                     lambda: state.adapt_state)
    itr = state.i + 1
    count = jnp.where(state.i < settings.warmup, itr, itr - settings.warmup)
    ended = state._replace(
        i=itr, z=tree.z_proposal, z_grad=tree.z_proposal_grad, potential_energy=tree.z_proposal_pe,
        energy=tree.z_proposal_energy, num_steps=tree.num_proposals, accept_prob=accept_prob,
        mean_accept_prob=state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / count,
        diverging=tree.diverging, adapt_state=adapt,
    )
    stats = {
        "lp": -tree.z_proposal_pe,
        "energy": tree.z_proposal_energy,
        "diverging": tree.diverging,
        "acceptance_rate": accept_prob,
        "n_steps": tree.num_proposals,
        "tree_depth": jnp.floor(jnp.log2(tree.num_proposals + 1)).astype(jnp.int32),
    }
    return ended, tree.z_proposal, stats


def _stat_dtypes(float_type) -> dict:
    int_type = jnp.result_type(int)
    return {"lp": float_type, "energy": float_type, "diverging": jnp.bool_, "acceptance_rate": float_type,
            "n_steps": int_type, "tree_depth": jnp.int32}


def _where(condition, new, old):
    """``new`` where ``condition`` holds, else ``old``, leaf by leaf of matching pytrees."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)
