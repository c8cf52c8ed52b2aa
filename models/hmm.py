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

    A sequential ``lax.scan`` in log space. Measured on CPU at T = 5,040, per
    series-gradient: it beat a pairwise tree reduction of the M_t (4x slower), a
    probability-space scan with per-step rescaling and every logarithm outside the loop
    (673 against 568 µs at 64 series: the loop is not bound by its exp/log), and
    ``unroll`` = 4 to 32 (within noise, longer compiles).
    """
    return jax.nn.logsumexp(forward(log_init, log_trans, log_emit, mask)[-1])


def forward(log_init, log_trans, log_emit, mask) -> jax.Array:
    """All forward vectors alpha_t (T, K) by a sequential ``lax.scan`` (the textbook recursion)."""
    alpha0 = jnp.where(mask[0], log_init + log_emit[0], log_init)
    m = step_matrices(log_trans, log_emit, mask)

    def step(alpha, m_t):
        alpha = log_matmul(alpha[None, :], m_t)[0]
        return alpha, alpha

    _, alphas = lax.scan(step, alpha0, m)
    return jnp.concatenate([alpha0[None], alphas])


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
