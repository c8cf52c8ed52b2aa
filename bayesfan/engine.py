"""Batched NUTS: one compiled JAX program fits every partition of a batch.

The core is pure functions over arrays, in the style of ``numpyro.infer.hmc``:

* ``start_partition(model, cfg, keys, data, potential, warm=None)`` places every chain of one
  partition. A cold fit first finds the posterior mode by damped Newton from each
  chain's random start (``find_mode``) and samples in coordinates u that whiten the
  Laplace approximation there, z = mode + S u with S Sᵀ = H⁻¹ (``laplace_scale``), so
  NUTS meets a posterior near N(0, I) from its first iteration instead of spending
  warmup at the depth cap on scales that differ by orders of magnitude.
* ``fit_batch_program(model, cfg, keys, data, warm=None)`` starts every partition, then
  runs NUTS (``bayesfan.nuts``) on all chains of the batch at once: stepwise, one
  leapfrog step per chain per pass, so no chain waits for another's trajectory, or in
  lockstep, a whole transition per pass (``choose_kernel``). ``keys`` has shape
  ``(partitions, chains, 2)`` and every leaf of ``data`` a leading ``partitions`` axis.
  Padded rows are switched off by ``data["mask"]``, which the model applies with
  ``numpyro.handlers.mask``. ``warm`` (leading axes ``(partitions, chains)``) starts
  each chain from a previous fit's values, sampling coordinates, step size and diagonal
  mass matrix; then only the step size adapts during the (short) warmup.
* ``fit_batch`` runs it, jitted (``compiled_fit``), from the program cache.

The program is built once per (model, sampler config, shapes), so every batch of
a shape bucket reuses it. New worker processes neither trace it (``bayesfan.programs``
stores the traced program with ``jax.export``) nor compile it
(``enable_compilation_cache`` turns on JAX's persistent compilation cache).

With ``BAYESFAN_CPU_DEVICES=n`` (n > 1) the process exposes n CPU devices and a
batch's partitions are split across them (the same program on each); by default
bayesfan uses every core through worker processes instead, each computing on one XLA
thread (``one_compute_thread``): in the ``small`` benchmark one process per core fitted
the same batches 1.08x faster than one process with one device per core
(benchmarks/README.md).
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import os
import zlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform, init_to_value
from numpyro.infer.util import initialize_model

from bayesfan import nuts, programs


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``) unless ``MALLOC_ARENA_MAX`` is set.

    XLA's CPU threads allocate a compiled loop's temporaries from per-thread arenas that
    glibc does not return; a long NUTS program grew by about 40 MB a minute (21 GB in
    2 hours) with the default cap of 8 arenas per core, and not at all with two.
    Called at import, before JAX starts its threads; a no-op off glibc.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def one_compute_thread() -> None:
    """Start JAX's CPU backend with one XLA compute thread, unless ``BAYESFAN_XLA_THREADS=all``.

    XLA sizes its thread pool by the cores the process may use. A NUTS loop is a long
    chain of small kernels, so a second thread finds little to do in parallel and spins
    handing work back and forth: one process on the 2-core box used 1.65x the CPU for
    the same wall time (benchmarks/README.md). bayesfan runs one process per core, so each
    gets one thread: the backend starts while the process may use one core only, then
    every thread gets the cores back. Called at import; a no-op once a backend exists.
    """
    from jax._src import xla_bridge

    if (os.environ.get("BAYESFAN_XLA_THREADS") == "all" or not hasattr(os, "sched_setaffinity")
            or xla_bridge.backends_are_initialized()):
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        jax.devices("cpu")
    finally:
        for thread in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(thread), allowed)
            except OSError:  # a thread that has exited
                pass


limit_malloc_arenas()

if int(os.environ.get("BAYESFAN_CPU_DEVICES", "1")) > 1:
    jax.config.update("jax_num_cpu_devices", int(os.environ["BAYESFAN_CPU_DEVICES"]))
else:
    one_compute_thread()


class SamplerConfig(NamedTuple):
    """Static NUTS settings; hashable, so it keys the compiled-program cache.

    ``laplace``: start a cold fit at the posterior mode and sample in the coordinates
    that whiten the Laplace approximation there (``start_partition``).
    ``kernel``: how a batch's chains advance (``choose_kernel``): ``"stepwise"``, one
    leapfrog step per chain per pass, each chain on its own trajectory; ``"lockstep"``,
    one whole transition per pass, every chain waiting for the batch's longest
    trajectory; ``"auto"`` picks by a gradient's cost and the batch's size.
    """

    chains: int = 4
    warmup: int = 500
    draws: int = 500
    target_accept: float = 0.8
    max_tree_depth: int = 10
    laplace: bool = True
    kernel: str = "auto"


class WarmStart(NamedTuple):
    """A previous fit's end state per chain: constrained latent values, the sampling coordinates
    ``z = shift + scale @ u``, and in them the step size and diagonal inverse mass."""

    values: dict
    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    shift: jax.Array
    scale: jax.Array


class ChainOutput(NamedTuple):
    """What each chain returns: constrained draws, per-draw stats, final adaptation and coordinates."""

    samples: dict
    stats: dict
    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    shift: jax.Array
    scale: jax.Array


for _type in (WarmStart, ChainOutput):
    jax.export.register_namedtuple_serialization(_type, serialized_name=f"bayesfan.{_type.__name__}")

#: Damped Newton iterations of the mode search; a 16-parameter HMM converges in about 10-20.
NEWTON_STEPS = 40


def find_mode(potential_fn: Callable, z: jax.Array, steps: int = NEWTON_STEPS) -> tuple[jax.Array, jax.Array]:
    """Minimise ``potential_fn`` from ``z`` by damped Newton (Levenberg-Marquardt); return (z, potential).

    With the Hessian scaled to unit diagonal, H = D⁻¹ Hs D⁻¹ (``_scaled_hessian``), each
    step is z - D (Hs + λI)⁻¹ D g. It is kept only if the potential does not rise (a
    Hessian that is not positive definite gives NaN, which is not kept); the damping λ
    falls tenfold after a kept step and rises tenfold after a rejected one, so starts far
    from the mode take short gradient-like steps.
    """
    gradient = jax.grad(potential_fn)

    def body(_, carry):
        z, value, damping = carry
        grad = gradient(z)
        d, hs = _scaled_hessian(potential_fn, z)
        chol = _cholesky(hs + damping * jnp.eye(z.shape[0], dtype=z.dtype))
        proposal = z - d * _solve_upper(chol.T, _solve_lower(chol, d * grad))
        new = potential_fn(proposal)
        keep = new <= value  # False for NaN
        return jnp.where(keep, proposal, z), jnp.where(keep, new, value), jnp.where(keep, damping / 10, damping * 10)

    z, value, _ = lax.fori_loop(0, steps, body, (z, potential_fn(z), jnp.ones((), z.dtype)))
    return z, value


def laplace_scale(potential_fn: Callable, mode: jax.Array) -> jax.Array:
    """Upper-triangular S with S Sᵀ = H⁻¹ (the Laplace covariance at ``mode``), so u = S⁻¹(z - mode) ≈ N(0, I).

    S = D L⁻ᵀ with Hs = L Lᵀ (``_scaled_hessian``). Where Hs is not positive definite
    (no mode was found), S = D: the scales of the Hessian's diagonal alone.
    """
    d, hs = _scaled_hessian(potential_fn, mode)
    chol = _cholesky(hs)
    eye = jnp.eye(mode.shape[0], dtype=mode.dtype)
    inverse_t = jax.vmap(lambda e: _solve_upper(chol.T, e), out_axes=1)(eye)
    return d[:, None] * jnp.where(jnp.all(jnp.isfinite(chol)), inverse_t, eye)


def _scaled_hessian(potential_fn: Callable, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(d, Hs): Hs = D H D has unit diagonal, H the Hessian at z and D = diag(d) = diag(|H_ii|^(-1/2)).

    Scaling first keeps float32's relative accuracy when the posterior's scales differ by
    orders of magnitude (log mu 0.003 and xi up to 100 in the HMM).
    """
    hess = jax.hessian(potential_fn)(z)
    d = lax.rsqrt(jnp.maximum(jnp.abs(jnp.diag(hess)), 1e-12))
    scaled = d[:, None] * hess * d[None, :]
    return d, (scaled + scaled.T) / 2


# Small dense linear algebra written out in jnp: LAPACK's results depend on where a matrix
# lies in the batch's buffer, and a partition's draws must not depend on its batch companions
# (``fit_batch_program`` says where they may).


def _cholesky(a: jax.Array) -> jax.Array:
    """Lower-triangular L with L Lᵀ = a, column by column; NaN where a is not positive definite."""
    n = a.shape[0]
    index = jnp.arange(n)

    def column(j, low):
        s = a[:, j] - _matvec(low, low[j])  # low's columns >= j are still zero
        diagonal = jnp.sqrt(s[j])
        return low.at[:, j].set(jnp.where(index > j, s / diagonal, jnp.where(index == j, diagonal, 0.0)))

    return lax.fori_loop(0, n, column, jnp.zeros_like(a))


def _solve_lower(low: jax.Array, b: jax.Array) -> jax.Array:
    """x with low @ x = b (forward substitution)."""
    return lax.fori_loop(0, b.shape[0], lambda i, x: x.at[i].set((b[i] - (low[i] * x).sum()) / low[i, i]),
                         jnp.zeros_like(b))


def _solve_upper(up: jax.Array, b: jax.Array) -> jax.Array:
    """x with up @ x = b (back substitution)."""
    n = b.shape[0]

    def row(k, x):
        i = n - 1 - k
        return x.at[i].set((b[i] - (up[i] * x).sum()) / up[i, i])

    return lax.fori_loop(0, n, row, jnp.zeros_like(b))


def _matvec(a: jax.Array, x: jax.Array) -> jax.Array:
    """a @ x as a multiply and a row sum."""
    return (a * x[None, :]).sum(axis=1)


#: ``kernel="auto"`` runs lockstep for batches of at most LOCKSTEP_MAX_PARTITIONS partitions
#: whose gradient costs under LOCKSTEP_MAX_FLOPS (XLA's estimate), stepwise otherwise
#: (measured crossovers, benchmarks/README.md).
LOCKSTEP_MAX_FLOPS = 5_000
LOCKSTEP_MAX_PARTITIONS = 32


def choose_kernel(kernel: str, gradient_flops: float, partitions: int) -> str:
    """``"stepwise"`` or ``"lockstep"`` for a batch of ``partitions`` whose gradient costs ``gradient_flops``.

    Stepwise NUTS (``nuts.run``) lets no chain wait for another's trajectory, but does a
    transition's bookkeeping (merges, adaptation, momentum, keys) on every leapfrog
    step; lockstep NUTS (``nuts.run_lockstep``) does it once per transition, and each
    transition costs the batch's longest trajectory. Lockstep wins when a gradient is
    cheap and the batch small enough that its longest trajectory is close to the typical
    one; ``"auto"`` decides on those two sizes.
    """
    if kernel not in ("auto", "stepwise", "lockstep"):
        raise ValueError(f"unknown kernel {kernel!r}: auto, stepwise or lockstep")
    if kernel != "auto":
        return kernel
    cheap = gradient_flops < LOCKSTEP_MAX_FLOPS and partitions <= LOCKSTEP_MAX_PARTITIONS
    return "lockstep" if cheap else "stepwise"


def gradient_flops(potential_fn: Callable, data: dict, size: int, dtype) -> float:
    """XLA's estimate of the flops of one gradient of ``potential_fn(**partition_data)`` at a
    flat z of ``size``, loops counted in full; ``data`` has a leading partition axis."""
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), data)
    grad = jax.jit(lambda data, z: jax.grad(potential_fn(data))(z))
    cost = grad.lower(one, jax.ShapeDtypeStruct((size,), dtype)).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))


def fit_batch_program(model: Callable, cfg: SamplerConfig, keys: jax.Array, data: dict,
                      warm: WarmStart | None = None) -> ChainOutput:
    """Every chain of every partition of a batch, as one program (``compiled_fit`` jits it).

    Each partition starts on its own (``start_partition``); then NUTS runs every chain of
    the batch at once, stepwise or in lockstep (``choose_kernel``). Both split keys and
    do arithmetic as NumPyro's ``sample_kernel``, so a chain's draws do not depend on the
    kernel beyond rounding.

    A partition's draws are a function of its data, key and config alone, whatever
    shares its batch, in lockstep and, stepwise, as long as the batch has fewer than
    ``nuts.SHRINK * nuts.MIN_BATCH`` partitions. In larger stepwise batches the
    partitions still running when the others are done finish in a smaller batch, whose
    arithmetic XLA rounds differently at some positions: their draws are then
    reproducible for the same batch (a rerun, a resume) but differ, as another valid
    chain would, in another batch.
    """
    settings = nuts.Settings(cfg.warmup, cfg.draws, cfg.max_tree_depth, cfg.target_accept,
                             adapt_mass_matrix=warm is None)
    info = initialize_model(keys[0, 0], model, model_kwargs=jax.tree.map(lambda a: a[0], data), dynamic_args=True)
    unravel = ravel_pytree(info.param_info.z)[1]

    def flat_potential(data):
        """The potential of partition ``data`` at flat unconstrained z."""
        return lambda z: info.potential_fn(**data)(unravel(z))

    def potential_of(data):
        """The potential of partition ``data`` in the sampling coordinates z = shift + scale @ u."""
        potential = flat_potential(data)
        return lambda shift, scale, u: potential(shift + _matvec(scale, u))

    def start(keys, data, warm):
        shift, scale, u0 = start_partition(model, cfg, keys, data, flat_potential(data), warm)
        potential = potential_of(data)
        resume = (None, None) if warm is None else (warm.step_size, warm.inverse_mass_matrix)
        states = jax.vmap(lambda key, shift, scale, u, *resume: nuts.init_state(
            functools.partial(potential, shift, scale), settings, key, u, *resume))(
            _split_keys(keys)[2], shift, scale, u0, *resume)
        return shift, scale, states

    def on_chains(advance):
        """``advance(potential, chain)`` over the chains of one partition with context (data, shift, scale)."""
        def partition(context, chains):
            data, shift, scale = context
            potential = potential_of(data)
            return jax.vmap(lambda shift, scale, chain: advance(functools.partial(potential, shift, scale), chain))(
                shift, scale, chains)
        return partition

    shift, scale, states = jax.vmap(start)(keys, data, warm)
    context = (data, shift, scale)
    flops = 0.0 if cfg.kernel != "auto" else gradient_flops(flat_potential, data, *shift.shape[-1:], shift.dtype)
    if choose_kernel(cfg.kernel, flops, keys.shape[0]) == "lockstep":
        transition = jax.vmap(on_chains(lambda potential, state: nuts.transition(potential, settings, state)))
        states, draws, stats = nuts.run_lockstep(functools.partial(transition, context), settings, states)
    else:
        chains = jax.vmap(jax.vmap(functools.partial(nuts.begin, settings)))(states)
        chains = nuts.run(on_chains(lambda potential, chain: nuts.step(potential, settings, chain)), settings,
                          chains, context)
        states, draws, stats = chains.hmc, chains.draws, chains.stats

    def constrain(data, shift, scale, u):
        return info.postprocess_fn(**data)(unravel(shift + _matvec(scale, u)))

    per_draw = jax.vmap(constrain, in_axes=(None, None, None, 0))
    samples = jax.vmap(jax.vmap(per_draw, in_axes=(None, 0, 0, 0)))(data, shift, scale, draws)
    adapt = states.adapt_state
    return ChainOutput(samples, stats, adapt.step_size, adapt.inverse_mass_matrix, shift, scale)


def start_partition(model: Callable, cfg: SamplerConfig, keys: jax.Array, data: dict, potential: Callable,
                    warm: WarmStart | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each chain's sampling coordinates z = shift + scale @ u and start u0 for one partition,
    whose potential at flat unconstrained z is ``potential``.

    A cold fit with ``cfg.laplace`` runs ``find_mode`` from every chain's random start,
    takes the lowest potential among them as the mode, and sets shift = mode, scale =
    ``laplace_scale`` (so the posterior is near N(0, I) in u); each chain starts at an
    independent N(0, I) draw in u, and adapts a diagonal mass matrix in u. Without
    ``laplace`` the coordinates are z itself and chains start at random (``init_to_uniform``).
    A warm start reuses the previous run's coordinates and starts at its last draws.
    """
    k_init, k_start, _ = _split_keys(keys)

    def start(key, values):
        strategy = init_to_uniform if values is None else init_to_value(values=values)
        info = initialize_model(key, model, model_kwargs=data, init_strategy=strategy, dynamic_args=False)
        return ravel_pytree(info.param_info.z)[0]

    z0 = jax.vmap(start)(k_init, None if warm is None else warm.values)
    chains, size = z0.shape
    if warm is not None:
        return warm.shift, warm.scale, jax.vmap(_solve_upper)(warm.scale, z0 - warm.shift)
    if cfg.laplace:
        modes, values = jax.vmap(functools.partial(find_mode, potential))(z0)
        mode = modes[jnp.argmin(jnp.where(jnp.isnan(values), jnp.inf, values))]
        shift = jnp.broadcast_to(mode, z0.shape)
        scale = jnp.broadcast_to(laplace_scale(potential, mode), (chains, size, size))
        return shift, scale, jax.vmap(lambda k: random.normal(k, (size,), z0.dtype))(k_start)
    return jnp.zeros_like(z0), jnp.broadcast_to(jnp.eye(size, dtype=z0.dtype), (chains, size, size)), z0


def _split_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each chain's key split three ways: (initial values, start in u, NUTS)."""
    return jnp.moveaxis(jax.vmap(lambda k: random.split(k, 3))(keys), 1, 0)


@functools.lru_cache(maxsize=32)
def compiled_fit(model: Callable, cfg: SamplerConfig) -> Callable:
    """``fit_batch_program`` for ``(keys, data, warm)``, jitted and cached per model and config."""
    return jax.jit(functools.partial(fit_batch_program, model, cfg))


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
_SOURCE = inspect.getsource(nuts) + f"{LOCKSTEP_MAX_FLOPS},{LOCKSTEP_MAX_PARTITIONS}" + "".join(
    inspect.getsource(f) for f in (find_mode, laplace_scale, _scaled_hessian, _cholesky, _solve_lower, _solve_upper,
                                   _matvec, choose_kernel, gradient_flops, fit_batch_program, start_partition,
                                   _split_keys, compiled_fit))


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

    Each slice runs the same compiled program on its own device. A partition's draws
    are the same however many devices share the batch while no slice is large enough
    for ``nuts.run`` to shrink it (see ``fit_batch_program``).
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

