"""Suite ``forward``: the HMM forward pass, five ways, per series-gradient of ``poisson_zero_hmm``.

Each variant computes log p(y) of the two-state viewing HMM at T = 5,040 hours;
the gradient (in mu and xi) runs in a compiled loop over a batch of series, as the
sampler's ``vmap`` runs it. Shipped: ``unrolled`` (``models.hmm.log_likelihood``).
The others are the alternatives it was chosen over, kept here to be re-measured:

* ``matrix``: the same log-space scan over (K, K) arrays (``log_matmul`` per step);
* ``probability``: probability space, state axis unrolled, rescaled every step
  (the logs of the scales summed after the loop);
* ``associative``: ``lax.associative_scan`` of the step matrices under ``log_matmul``
  (log T depth, every prefix product);
* ``blocked``: products within sqrt(T) blocks (a scan over the block position, all
  blocks at once), then a scan across the blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.measure import measure
from models import hmm, resolve_model
from models.poisson_zero_hmm import hmm_terms

FULL = {"length": 5040, "batches": (64, 256), "reps": 20, "series": 4}
QUICK = {"length": 168, "batches": (8,), "reps": 2, "series": 2}
SEED = 0


def matrix(log_init, log_trans, log_emit, mask):
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)

    def step(alpha, m_t):
        return hmm.log_matmul(alpha[None, :], m_t)[0], None

    alpha, _ = lax.scan(step, alpha0, hmm.step_matrices(log_trans, log_emit, mask))
    return jax.nn.logsumexp(alpha)


def probability(log_init, log_trans, log_emit, mask):
    m = hmm.step_matrices(log_trans, log_emit, mask)
    k = m.shape[-1]
    shift = jnp.max(m, axis=(1, 2))
    p = jnp.exp(m - shift[:, None, None])
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)
    top = jnp.max(alpha0)
    a0 = jnp.exp(alpha0 - top)

    def step(a, p_t):
        new = [sum(a[j] * p_t[j][i] for j in range(k)) for i in range(k)]
        total = sum(new)
        return tuple(x / total for x in new), total

    columns = tuple(tuple(p[:, j, i] for i in range(k)) for j in range(k))
    a, scales = lax.scan(step, tuple(a0[j] for j in range(k)), columns)
    return top + jnp.sum(shift) + jnp.sum(jnp.log(scales)) + jnp.log(sum(a))


def associative(log_init, log_trans, log_emit, mask):
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)
    prefix = lax.associative_scan(hmm.log_matmul, hmm.step_matrices(log_trans, log_emit, mask))
    return jax.nn.logsumexp(hmm.log_matmul(alpha0[None, :], prefix[-1])[0])


def blocked(log_init, log_trans, log_emit, mask):
    m = hmm.step_matrices(log_trans, log_emit, mask)
    n, k = m.shape[0], m.shape[-1]
    size = max(1, math.isqrt(n))
    blocks = -(-n // size)
    pad = jnp.broadcast_to(hmm.log_identity(k, m.dtype), (blocks * size - n, k, k))
    m = jnp.concatenate([m, pad]).reshape(blocks, size, k, k).swapaxes(0, 1)
    totals, _ = lax.scan(lambda p, m_l: (hmm.log_matmul(p, m_l), None), m[0], m[1:])
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)
    alpha, _ = lax.scan(lambda a, t: (hmm.log_matmul(a[None, :], t)[0], None), alpha0, totals)
    return jax.nn.logsumexp(alpha)


VARIANTS = {"unrolled": hmm.log_likelihood, "matrix": matrix, "probability": probability,
            "associative": associative, "blocked": blocked}


def run(quick: bool = False) -> dict:
    """µs per series-gradient of each variant at each batch size, and its ratio to ``unrolled``."""
    size = QUICK if quick else FULL
    model = resolve_model("poisson_zero_hmm")
    frame, truth = model.simulate(np.random.default_rng(SEED), size["series"], size["length"])
    rows = [frame[frame["partition"] == key] for key in sorted(frame["partition"].unique())]
    x = jnp.stack([jnp.asarray(model.design(r)) for r in rows])
    y = jnp.stack([jnp.asarray(r["y"].to_numpy(np.int32)) for r in rows])
    mask = jnp.ones(size["length"], bool)
    mu = jnp.asarray(truth.loc[truth["parameter"] == "mu", "value"].to_numpy(np.float32))
    xi = jnp.asarray(np.stack([_xi(truth, key) for key in sorted(frame["partition"].unique())]), jnp.float32)

    def loglik(variant, mu, xi, x, y):
        return VARIANTS[variant](*hmm_terms(mu, xi, jnp.array([0.5, 0.5]), x, y), mask)

    exact = jax.vmap(lambda *a: loglik("unrolled", *a))(mu, xi, x, y)
    out = {"length": size["length"], "us_per_series_gradient": {}, "max_abs_loglik_diff": {}}
    for variant in VARIANTS:
        values = jax.vmap(lambda *a: loglik(variant, *a))(mu, xi, x, y)
        out["max_abs_loglik_diff"][variant] = float(jnp.max(jnp.abs(values - exact)))
        out["us_per_series_gradient"][variant] = {
            str(b): gradient_us(lambda *a: loglik(variant, *a), _tile((mu, xi, x, y), b), size["reps"])
            for b in size["batches"]}
    first = str(size["batches"][0])
    times = out["us_per_series_gradient"]
    out["slowdown_vs_unrolled"] = {v: times[v][first] / times["unrolled"][first] for v in VARIANTS}
    out["ratio_batch"] = int(first)
    return out


def gradient_us(loglik, args: tuple, reps: int) -> float:
    """CPU µs per series of ``reps`` gradients of ``loglik`` in (mu, xi), vmapped over the batch, in one loop."""
    mu, xi, x, y = args
    grad = jax.vmap(jax.grad(loglik, argnums=(0, 1)))

    def step(_, point):
        g_mu, g_xi = grad(*point, x, y)
        return point[0] + 1e-12 * g_mu, point[1] + 1e-12 * g_xi

    loop = jax.jit(lambda point, n: lax.fori_loop(0, n, step, point))
    jax.block_until_ready(loop((mu, xi), 1))
    with measure() as cost:
        jax.block_until_ready(loop((mu, xi), reps))
    return cost.cpu_s / (reps * mu.shape[0]) * 1e6


def _tile(arrays: tuple, batch: int) -> tuple:
    return tuple(jnp.asarray(np.resize(np.asarray(a), (batch, *a.shape[1:]))) for a in arrays)


def _xi(truth, key: str) -> np.ndarray:
    rows = truth[(truth["partition"] == key) & truth["parameter"].str.startswith("xi")]
    return rows["value"].to_numpy().reshape(2, -1)
