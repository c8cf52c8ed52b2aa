"""Warm start for the bare kernel: NUTS from a previous fit's last draw, step size and mass matrix.

This is ``engine.run_chain`` with a ``WarmStart`` argument, kept here until the engine
takes it (the proposed change: ``run_chain(..., warm=None)``, ``fit_batch(..., warm=None)``).
A warm chain starts at the previous run's last draw, keeps its diagonal inverse mass
matrix fixed and re-tunes only the step size, from the previous one, during a short warmup.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax import lax, random
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import initialize_model

from bayesfan.engine import ChainOutput, SamplerConfig


class WarmStart(NamedTuple):
    """Per chain: constrained parameter values, step size, diagonal inverse mass matrix."""

    params: dict
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


def from_tree(tree: xr.DataTree) -> WarmStart:
    """Warm start of every (partition, chain) from an artifact tree: last draw plus ``adaptation``."""
    last = tree["posterior"].to_dataset().isel(draw=-1)
    adaptation = tree["adaptation"].to_dataset()
    return WarmStart(
        {name: np.asarray(value) for name, value in last.data_vars.items()},
        np.asarray(adaptation["step_size"]),
        np.asarray(adaptation["inverse_mass_matrix"]),
    )


def run_chain(
    model: Callable, cfg: SamplerConfig, key: jax.Array, data: dict, warm: WarmStart
) -> ChainOutput:
    """One warm NUTS chain: ``cfg.warmup`` step-size-only adaptation steps, then ``cfg.draws`` draws."""
    key_init, key_run = random.split(key)
    info = initialize_model(key_init, model, init_strategy=init_to_value(values=warm.params),
                            model_kwargs=data, dynamic_args=False)
    init_kernel, sample_kernel = hmc(info.potential_fn, algo="NUTS")
    state = init_kernel(
        info.param_info,
        cfg.warmup,
        step_size=warm.step_size,
        inverse_mass_matrix=warm.inverse_mass_matrix,
        adapt_mass_matrix=False,
        target_accept_prob=cfg.target_accept,
        max_tree_depth=cfg.max_tree_depth,
        rng_key=key_run,
    )
    state = lax.fori_loop(0, cfg.warmup, lambda _, s: sample_kernel(s), state)

    def step(s, _):
        s = sample_kernel(s)
        stats = {
            "lp": -s.potential_energy,
            "energy": s.energy,
            "diverging": s.diverging,
            "acceptance_rate": s.accept_prob,
            "n_steps": s.num_steps,
            "tree_depth": jnp.floor(jnp.log2(s.num_steps + 1)).astype(jnp.int32),
        }
        return s, (s.z, stats)

    state, (z, stats) = lax.scan(step, state, None, length=cfg.draws)
    samples = jax.vmap(info.postprocess_fn)(z)
    adapt = state.adapt_state
    return ChainOutput(samples, stats, adapt.step_size, adapt.inverse_mass_matrix)


@functools.lru_cache(maxsize=8)
def compiled_fit(model: Callable, cfg: SamplerConfig) -> Callable:
    """``jit(vmap over partitions of vmap over chains of run_chain)``; ``warm`` leaves lead with both axes."""
    chain = functools.partial(run_chain, model, cfg)
    per_partition = jax.vmap(chain, in_axes=(0, None, 0))
    return jax.jit(jax.vmap(per_partition, in_axes=(0, 0, 0)))
