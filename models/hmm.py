"""The forward algorithm of a K-state hidden Markov model, in log space, with masked steps.

Inputs, for a series of T steps:

* ``log_init`` (K,): log P(S_0 = k) (zeros for a model with no initial-state term);
* ``log_trans`` (T, K, K) or (K, K): log P(S_t = k | S_{t-1} = j) at ``[t, j, k]``
  (row ``t = 0`` is unused);
* ``log_emit`` (T, K): log p(y_t | S_t = k);
* ``mask`` (T,): False on padded steps. A masked step leaves the forward vector
  unchanged (its transition is the identity and its emission is 1), so a padded
  series has the likelihood of its real steps.

The forward vector is alpha_0 = log_init + log_emit_0 and
alpha_t(k) = logsumexp_j(alpha_{t-1}(j) + log_trans_t(j, k)) + log_emit_t(k); the
log-likelihood is logsumexp_k alpha_{T-1}(k).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

#: log 0 as a finite number, so that gradients through masked steps stay finite.
LOG_ZERO = -1e30


def log_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """(a ⊗ b)[..., i, k] = logsumexp_j(a[..., i, j] + b[..., j, k]): matrix product in log space."""
    return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def log_identity(k: int, dtype=jnp.float32) -> jax.Array:
    """The (K, K) identity matrix in log space (0 on the diagonal, ``LOG_ZERO`` off it)."""
    return jnp.where(jnp.eye(k, dtype=bool), 0.0, LOG_ZERO).astype(dtype)


def step_matrices(log_trans: jax.Array, log_emit: jax.Array, mask: jax.Array) -> jax.Array:
    """M_t[j, k] = log_trans_t(j, k) + log_emit_t(k) for t = 1..T-1; the log identity on masked steps."""
    steps, k = log_emit.shape
    m = jnp.broadcast_to(log_trans, (steps, k, k))[1:] + log_emit[1:, None, :]
    return jnp.where(mask[1:, None, None], m, log_identity(k, m.dtype))


def log_likelihood(log_init, log_trans, log_emit, mask) -> jax.Array:
    """log p(y_0..y_{T-1}) = logsumexp_k alpha_{T-1}(k), by the forward recursion.

    A sequential ``lax.scan`` in log space whose body has the state axis unrolled
    (``_forward_step``). ``bayesfan bench forward`` measures it against the same scan
    over (K, K) arrays, a probability-space scan with per-step rescaling, an
    associative scan and a blocked scan, per series-gradient of ``poisson_zero_hmm`` at
    T = 5,040 on CPU; it was the fastest (benchmarks/README.md).
    """
    alpha, _ = lax.scan(_forward_step, _alpha0(log_init, log_emit, mask), _columns(log_trans, log_emit, mask))
    return _logsumexp(alpha)


def forward(log_init, log_trans, log_emit, mask) -> jax.Array:
    """All forward vectors alpha_t (T, K), by the same scan as ``log_likelihood``."""
    alpha0 = _alpha0(log_init, log_emit, mask)
    _, alphas = lax.scan(_forward_step, alpha0, _columns(log_trans, log_emit, mask))
    return jnp.concatenate([jnp.stack(alpha0)[None], jnp.stack(alphas, axis=-1)])


def _alpha0(log_init, log_emit, mask) -> tuple:
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)
    return tuple(alpha0[k] for k in range(alpha0.shape[0]))


def _columns(log_trans, log_emit, mask) -> tuple:
    """The step matrices as K x K series of scalars: ``[j][k]`` is M_t[j, k] over t = 1..T-1."""
    m = step_matrices(log_trans, log_emit, mask)
    k = m.shape[-1]
    return tuple(tuple(m[:, j, i] for i in range(k)) for j in range(k))


def _forward_step(alpha: tuple, m_t: tuple) -> tuple:
    """alpha_t(k) = logsumexp_j(alpha_{t-1}(j) + M_t[j, k]), one scalar per state.

    Unrolling the (small) state axis makes every operation in the loop elementwise,
    so under the sampler's ``vmap`` each one is a single vector operation over the
    batch's series instead of a reduction over tiny (K, K) blocks.
    """
    k = len(alpha)
    new = tuple(_logsumexp([alpha[j] + m_t[j][i] for j in range(k)]) for i in range(k))
    return new, new


def _logsumexp(xs) -> jax.Array:
    """log sum_i exp(xs_i) of same-shape arrays, shifted by their (constant for autodiff) maximum."""
    top = functools.reduce(jnp.maximum, xs)
    top = lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    return top + jnp.log(sum(jnp.exp(x - top) for x in xs))


def state_probabilities(log_init, log_trans, log_emit, mask) -> jax.Array:
    """Smoothed P(S_t = k | y_0..y_{T-1}) (T, K) by forward-backward; not part of the sampler's hot path.

    beta_{T-1} = 0, beta_{t-1}(j) = logsumexp_k(M_t(j, k) + beta_t(k)), and
    P(S_t = k | y) ∝ exp(alpha_t(k) + beta_t(k)). Masked steps repeat their neighbours.
    """
    alphas = forward(log_init, log_trans, log_emit, mask)
    m = step_matrices(log_trans, log_emit, mask)

    def step(beta, m_t):
        beta = log_matmul(m_t, beta[:, None])[:, 0]
        return beta, beta

    beta_last = jnp.zeros_like(alphas[-1])
    _, betas = lax.scan(step, beta_last, m, reverse=True)
    log_post = alphas + jnp.concatenate([betas, beta_last[None]])
    return jax.nn.softmax(log_post, axis=-1)
