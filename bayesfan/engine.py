"""Batched NUTS: one compiled JAX program fits every partition of a batch.

The core is pure functions over arrays, in the style of ``numpyro.infer.hmc``:

* ``run_chain(model, cfg, key, data)`` runs one NUTS chain (initialise, adapt
  for ``cfg.warmup`` steps, keep ``cfg.draws`` steps) on one partition's arrays.
* ``fit_batch(model, cfg, keys, data, warm=None)`` is
  ``jit(vmap_partitions(vmap_chains(run_chain)))``: ``keys`` has shape
  ``(partitions, chains, 2)`` and every leaf of ``data`` a leading ``partitions``
  axis. Padded rows are switched off by ``data["mask"]``, which the model applies
  with ``numpyro.handlers.mask``. ``warm`` (leading axes ``(partitions, chains)``)
  starts each chain from a previous fit's values, step size and diagonal mass
  matrix; then only the step size adapts during the (short) warmup.

The program is built once per (model, sampler config, shapes), so every batch of
a shape bucket reuses it. New worker processes neither trace it (``bayesfan.programs``
stores the traced program with ``jax.export``) nor compile it
(``enable_compilation_cache`` turns on JAX's persistent compilation cache).

With ``BAYESFAN_CPU_DEVICES=n`` (n > 1) the process exposes n CPU devices and a
batch's partitions are split across them (the same program on each); by default
bayesfan uses every core through worker processes instead: in the ``small`` benchmark
one process per core fitted the same batches 1.5x faster than one process with one
device per core (benchmarks/README.md).
"""

from __future__ import annotations

import functools
import inspect
import os
import zlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_uniform, init_to_value
from numpyro.infer.util import initialize_model

from bayesfan import programs

if int(os.environ.get("BAYESFAN_CPU_DEVICES", "1")) > 1:
    jax.config.update("jax_num_cpu_devices", int(os.environ["BAYESFAN_CPU_DEVICES"]))


class SamplerConfig(NamedTuple):
    """Static NUTS settings; hashable, so it keys the compiled-program cache."""

    chains: int = 4
    warmup: int = 500
    draws: int = 500
    target_accept: float = 0.8
    max_tree_depth: int = 10


class WarmStart(NamedTuple):
    """A previous fit's end state per chain: constrained latent values, step size, diagonal inverse mass."""

    values: dict
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


class ChainOutput(NamedTuple):
    """What one chain returns: constrained draws, per-draw stats, final adaptation."""

    samples: dict
    stats: dict
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


for _type in (WarmStart, ChainOutput):
    jax.export.register_namedtuple_serialization(_type, serialized_name=f"bayesfan.{_type.__name__}")


def run_chain(
    model: Callable, cfg: SamplerConfig, key: jax.Array, data: dict, warm: WarmStart | None = None
) -> ChainOutput:
    """One NUTS chain on one partition: warmup with adaptation, then ``cfg.draws`` draws."""
    key_init, key_run = random.split(key)
    strategy = init_to_uniform if warm is None else init_to_value(values=warm.values)
    info = initialize_model(key_init, model, model_kwargs=data, init_strategy=strategy, dynamic_args=False)
    init_kernel, sample_kernel = hmc(info.potential_fn, algo="NUTS")
    resume = {} if warm is None else {
        "step_size": warm.step_size,
        "inverse_mass_matrix": warm.inverse_mass_matrix,
        "adapt_mass_matrix": False,
    }
    state = init_kernel(
        info.param_info,
        cfg.warmup,
        target_accept_prob=cfg.target_accept,
        max_tree_depth=cfg.max_tree_depth,
        rng_key=key_run,
        **resume,
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


@functools.lru_cache(maxsize=32)
def compiled_fit(model: Callable, cfg: SamplerConfig) -> Callable:
    """``jit(vmap over partitions of vmap over chains of run_chain)``, cached per model and config."""
    chain = functools.partial(run_chain, model, cfg)
    per_partition = jax.vmap(chain, in_axes=(0, None, 0))
    return jax.jit(jax.vmap(per_partition, in_axes=(0, 0, 0)))


def fit_batch(
    model: Callable, cfg: SamplerConfig, keys: jax.Array, data: dict, warm: WarmStart | None = None
) -> ChainOutput:
    """Fit every partition of a batch; outputs have leading axes ``(partition, chain, ...)``.

    ``model`` is a hashable NumPyro model callable (a ``models.base.Model`` instance
    compares by value, so equal models share one compiled program).
    """
    chunks = split_across_devices(keys, data, warm)
    fn = batch_program(model, cfg, chunks[0])
    parts = [fn(*chunk) for chunk in chunks]  # dispatched asynchronously
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *parts)


_PROGRAMS: dict = {}
#: The code the program is traced from, hashed into its key (other edits of this module keep stored programs).
_SOURCE = inspect.getsource(run_chain) + inspect.getsource(compiled_fit)


def batch_program(model: Callable, cfg: SamplerConfig, args: tuple) -> Callable:
    """``compiled_fit(model, cfg)`` for arguments shaped like ``args``: built once per process,
    and loaded from the export cache when another process has traced it already."""
    signature = (model, cfg, programs.signature(args))
    if signature not in _PROGRAMS:
        key = programs.program_key(model, _SOURCE, cfg, args)
        _PROGRAMS[signature] = programs.load_or_export(
            compiled_fit(model, cfg), key, args, os.path.join(cache_root(), "programs")
        )
    return _PROGRAMS[signature]


def clear_programs() -> None:
    """Forget this process's programs, as a new process starts (the caches on disk stay)."""
    _PROGRAMS.clear()
    compiled_fit.cache_clear()


def split_across_devices(*trees) -> list:
    """Equal slices of the leading (partition) axis, one per local device when there are several.

    Each slice runs the same compiled program on its own device, so a partition's
    draws are the same however many devices share the batch.
    """
    devices = jax.local_devices()
    size = jax.tree.leaves(trees)[0].shape[0]
    if len(devices) < 2 or size % len(devices):
        return [trees]
    step = size // len(devices)
    return [
        jax.device_put(jax.tree.map(lambda a: a[i * step : (i + 1) * step], trees), device)
        for i, device in enumerate(devices)
    ]


def partition_id(key: str) -> int:
    """A stable 31-bit id of a partition key (crc32), the partition's PRNG stream."""
    return zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF


def partition_keys(seed: int, partitions: list[str], chains: int) -> jax.Array:
    """PRNG keys of shape ``(len(partitions), chains, 2)`` from ``(seed, partition id)`` alone."""
    base = random.PRNGKey(seed)
    ids = jnp.asarray([partition_id(p) for p in partitions], dtype=jnp.uint32)
    return jax.vmap(lambda i: random.split(random.fold_in(base, i), chains))(ids)


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache (``$BAYESFAN_CACHE_DIR/jax`` by default)."""
    directory = str(directory or os.path.join(cache_root(), "jax"))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def cache_root() -> str:
    return os.environ.get("BAYESFAN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "bayesfan"
    )
