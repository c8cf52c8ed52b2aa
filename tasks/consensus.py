"""Consensus mode's math: shards, prior fractionation, unconstrained draws, combination, diagnostics.

With the rows split into S shards, the posterior factorises as
``p(θ | y) ∝ ∏_s p(y_s | θ) p(θ)^(1/S)``: shard s samples the sub-posterior
``p_s(θ) ∝ p(y_s | θ) p(θ)^(1/S)`` and a combination method approximates ``∏_s p_s``.
NUTS samples ``u = T⁻¹(θ)``, whose density carries the log-Jacobian ``log|T'(u)|``
as one more prior term; fractionating it too makes ``∏_s p_s(u)`` the exact full
posterior of ``u``, so draws are combined in unconstrained space and mapped back.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import xarray as xr
from jax import random
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import chi2
from numpyro import handlers
from numpyro.infer.hmc_util import consensus, parametric_draws
from numpyro.infer.util import constrain_fn, initialize_model, unconstrain_fn
from numpyro.primitives import Messenger
from pydantic import Field, SerializeAsAny

from models.base import Model, scalar_names

METHODS = ("consensus", "consensus-diag", "parametric", "semiparametric", "full")
SAMPLE_DIMS = ("chain", "draw")
#: Semiparametric: Gibbs sweeps over the index tuple per kept draw.
SWEEPS = 4


# -- shards -------------------------------------------------------------------------------------

def assign_shards(frame: pd.DataFrame, shards: int, seed: int, shard_by: str | None = None) -> np.ndarray:
    """Each row's shard in ``0..shards-1``, at random under ``seed``, sizes balanced.

    Without ``shard_by`` a random permutation deals rows round-robin (sizes differ by at
    most one); with it, groups in random order go to the shard with the fewest rows so far.
    """
    rng = np.random.default_rng([seed, shards])
    if shard_by is None:
        if len(frame) < shards:
            raise ValueError(f"{len(frame)} rows cannot fill {shards} shards")
        out = np.empty(len(frame), dtype=int)
        out[rng.permutation(len(frame))] = np.arange(len(frame)) % shards
        return out
    codes, groups = pd.factorize(frame[shard_by], sort=True, use_na_sentinel=False)
    if len(groups) < shards:
        raise ValueError(f"column {shard_by!r} has {len(groups)} groups, fewer than {shards} shards")
    sizes, load = np.bincount(codes), np.zeros(shards, dtype=int)
    group_shard = np.empty(len(groups), dtype=int)
    for g in rng.permutation(len(groups)):
        group_shard[g] = np.argmin(load)
        load[group_shard[g]] += sizes[g]
    return group_shard[codes]


# -- fractionated priors ------------------------------------------------------------------------

class FractionalPrior(Messenger):
    """Multiply every prior term by ``scale``: latent sample sites and their log-Jacobian factors.

    NumPyro adds a latent ``x``'s log-Jacobian as the observed factor site ``_x_log_det``
    while substituting its unconstrained value; observed (likelihood) sites are left alone.
    """

    def __init__(self, fn=None, scale: float = 1.0):
        self.scale = scale
        self.latent: set[str] = set()
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        name = msg["name"]
        if not msg["is_observed"]:
            self.latent.add(name)
        elif not (name.startswith("_") and name.endswith("_log_det") and name[1:-8] in self.latent):
            return
        msg["scale"] = self.scale if msg["scale"] is None else self.scale * msg["scale"]


def fractionate(model_fn, shards: int):
    """``model_fn`` with prior^(1/shards) (unchanged for one shard)."""
    return model_fn if shards == 1 else FractionalPrior(model_fn, 1.0 / shards)


class ShardModel(Model):
    """``base`` fitted to one of ``shards`` shards; a hashable model, so it keys the compiled-program cache."""

    name = "shard"

    base: SerializeAsAny[Model]
    shards: int = Field(1, ge=1)

    def columns(self) -> dict[str, str]:
        return self.base.columns()

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.base.arrays(rows)

    def check_rows(self, rows: pd.DataFrame) -> None:
        self.base.check_rows(rows)

    def model(self, mask, **arrays):
        return fractionate(self.base.model, self.shards)(mask, **arrays)


def probe_data(model: Model, rows: pd.DataFrame, length: int = 1) -> dict[str, np.ndarray]:
    """The model's arrays of the first ``length`` rows, all unmasked: enough to trace its sites."""
    arrays = model.arrays(rows.iloc[:length])
    return arrays | {"mask": np.ones(length, dtype=bool)}


def latent_sites(model_fn, data: dict) -> dict[str, dict]:
    """The model's latent sample sites (name -> trace site), from a valid initial point."""
    trace = initialize_model(random.PRNGKey(0), model_fn, model_kwargs=data).model_trace
    return {n: s for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}


def tail_exponent(d: dist.Distribution) -> float:
    """``a`` of a polynomial tail ``p(x) ~ |x|^-a`` (0 for flat), ``inf`` for lighter tails."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        d = d.base_dist
    if isinstance(d, dist.ImproperUniform):
        return 0.0
    if isinstance(d, (dist.Cauchy, dist.HalfCauchy)):
        return 2.0
    if isinstance(d, dist.StudentT):
        return float(np.min(d.df)) + 1.0
    if isinstance(d, (dist.Pareto, dist.InverseGamma)):
        return float(np.min(d.alpha if isinstance(d, dist.Pareto) else d.concentration)) + 1.0
    return math.inf


def improper_priors(model_fn, data: dict, shards: int) -> list[dict]:
    """Latent sites whose prior^(1/S) is improper: tail ``|x|^-a`` with ``a/S ≤ 1``.

    So flat priors, Cauchy and half-Cauchy (a = 2) for S ≥ 2, Student-t with ν ≤ S − 1,
    Pareto and inverse-gamma with shape ≤ S − 1. Their sub-posteriors are proper only
    through the shard's likelihood.
    """
    if shards == 1:
        return []
    flagged = []
    for name, site in latent_sites(model_fn, data).items():
        a = tail_exponent(site["fn"])
        if a / shards <= 1.0:
            kind = type(site["fn"]).__name__
            flagged.append({"site": name, "distribution": kind, "tail_exponent": a,
                            "reason": f"prior^(1/{shards}) has tail |x|^-{a / shards:.3g}: improper"})
    return flagged


# -- unconstrained draws ------------------------------------------------------------------------

def to_unconstrained(model_fn, data: dict, draws: dict) -> dict:
    """Constrained draws (leading draw axis) of the latent sites -> unconstrained draws."""
    return jax.vmap(lambda p: unconstrain_fn(model_fn, (), data, p))(draws)


def to_constrained(model_fn, data: dict, z: dict) -> dict:
    """Unconstrained draws -> constrained latent sites plus the deterministic sites."""
    return jax.vmap(lambda u: constrain_fn(model_fn, (), data, u, return_deterministic=True))(z)


def row_sized_sites(model_fn, model: Model, rows: pd.DataFrame, params: dict) -> set[str]:
    """Deterministic sites whose shape follows the number of rows: they belong to one shard's rows."""
    def shapes(length):
        data = probe_data(model, rows, length)
        trace = handlers.trace(handlers.substitute(handlers.seed(model_fn, 0), data=params)).get_trace(**data)
        return {n: jnp.shape(s["value"]) for n, s in trace.items() if s["type"] == "deterministic"}
    one, two = shapes(1), shapes(2)
    return {n for n in one if one[n] != two[n]}


# -- combination ----------------------------------------------------------------------------------

def combine(subdraws: np.ndarray, method: str, rng_key: jax.Array, chains: int = 1) -> np.ndarray:
    """Combine sub-posterior draws ``(S, N, P)`` (unconstrained, flat) into ``(N, P)`` draws.

    * ``consensus``: draw n is ``(Σ_s W_s)⁻¹ Σ_s W_s u_s[n]`` with ``W_s`` the inverse sample
      covariance of shard s (Scott et al. 2016); ``consensus-diag`` uses inverse variances.
      Chain and draw order are kept, so the combined chains can be diagnosed.
    * ``parametric``: iid draws of the product of Gaussians fitted to each shard,
      ``N(μ, Σ)``, ``Σ⁻¹ = Σ_s Σ_s⁻¹``, ``μ = Σ Σ_s Σ_s⁻¹ μ_s`` (Neiswanger et al. 2014).
    * ``semiparametric``: see ``semiparametric_draws``; ``chains`` independent chains.
    * ``full``: one shard, its draws as they are.

    For Gaussian sub-posteriors the product is Gaussian, and every method is exact.
    """
    if method == "full":
        if len(subdraws) != 1:
            raise ValueError(f"method 'full' takes one shard, got {len(subdraws)}")
        return np.asarray(subdraws[0])
    if method not in METHODS:
        raise ValueError(f"unknown combination method {method!r} (one of {', '.join(METHODS)})")
    x, center, white = _whiten(np.asarray(subdraws))
    subs = [jnp.asarray(xs, jnp.float32) for xs in x]
    if method in ("consensus", "consensus-diag"):
        out = consensus(subs, diagonal=method == "consensus-diag")
    elif method == "parametric":
        out = parametric_draws(subs, x.shape[1], rng_key=rng_key)
    else:
        out = semiparametric_draws(x, chains, rng_key)
    return (np.asarray(out, np.float64) @ white.T + center).astype(np.asarray(subdraws).dtype)


def _whiten(subdraws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x = L⁻¹ (u − c)`` in float64, with ``c`` the pooled mean and ``L Lᵀ`` the mean sub-posterior
    covariance: the methods are affine-equivariant, and float32 covariances of correlated,
    differently scaled parameters are too ill-conditioned to invert."""
    s_count, n, p = subdraws.shape
    u = subdraws.astype(np.float64)
    center = u.reshape(-1, p).mean(axis=0)
    white = np.linalg.cholesky(np.mean([np.atleast_2d(np.cov(us.T)) for us in u], axis=0))
    x = np.linalg.solve(white, (u - center).reshape(-1, p).T).T.reshape(s_count, n, p)
    return x, center, white


def semiparametric_draws(subdraws: np.ndarray, chains: int, rng_key: jax.Array) -> np.ndarray:
    """Neiswanger et al. (2014) semiparametric product of whitened draws, ``(S, N, P)`` -> ``(N, P)``.

    Each sub-posterior is estimated as Hjort-Glad ``N(x|μ_s,Σ_s) Σ_t K_h(x − x_st) / N(x_st|μ_s,Σ_s)``;
    their product is the mixture over index tuples ``t = (t_1..t_S)`` of ``N(x | μ_t, Λ)`` with
    ``Λ = (S/h² I + Σ⁻¹)⁻¹``, ``μ_t = Λ (S/h² x̄_t + Σ⁻¹ μ)``, ``(μ, Σ)`` the parametric product,
    ``x̄_t`` the tuple's mean, and weights
    ``log W_t = −Σ_s |x_{s,t_s} − x̄_t|²/2h² + log N(x̄_t | μ, Σ + h²/S I) − Σ_s log N(x_{s,t_s} | μ_s, Σ_s)``.
    Tuples are drawn by independent Metropolis within Gibbs (a sweep proposes a uniform new
    index for each shard; ``SWEEPS`` sweeps per kept draw, after as many warm-up draws), then
    ``x ~ N(μ_t, Λ)``. With draws in sub-posterior sds (``_whiten``),
    ``h² = S N^(-2/(4+P))``, so the product kernel ``N(x̄_t, h²/S)`` has a single KDE's
    bandwidth in sub-posterior sds (smaller h mixes badly; for Gaussian shards any h is unbiased).
    """
    s_count, n, p = subdraws.shape
    x = subdraws
    means = x.mean(axis=1)
    precs = np.linalg.inv(np.stack([np.atleast_2d(np.cov(xs.T)) for xs in x]))
    cov = np.linalg.inv(precs.sum(axis=0))
    mean = cov @ np.einsum("sij,sj->i", precs, means)
    h2 = s_count * n ** (-2.0 / (4 + p))
    lam = np.linalg.inv(s_count / h2 * np.eye(p) + np.linalg.inv(cov))
    own = np.stack([_mvn_logpdf(x[s], means[s], np.linalg.inv(precs[s])) for s in range(s_count)])

    X, own, mean_j = jnp.asarray(x, jnp.float32), jnp.asarray(own, jnp.float32), jnp.asarray(mean, jnp.float32)
    wide_chol = jnp.asarray(np.linalg.cholesky(cov + h2 / s_count * np.eye(p)), jnp.float32)
    lam_chol = jnp.asarray(np.linalg.cholesky(lam), jnp.float32)
    shift = jnp.asarray(lam @ np.linalg.inv(cov) @ mean, jnp.float32)
    gain = jnp.asarray(lam * s_count / h2, jnp.float32)
    rows = jnp.arange(s_count)

    def log_weight(t):
        pts = X[rows, t]
        bar = pts.mean(axis=0)
        kernel = -jnp.sum((pts - bar) ** 2) / (2 * h2)
        r = jax.scipy.linalg.solve_triangular(wide_chol, bar - mean_j, lower=True)
        return kernel - 0.5 * r @ r - own[rows, t].sum()

    def sweep(state, key):
        t, lw = state
        k_idx, k_acc, k_draw = random.split(key, 3)
        proposals, accept = random.randint(k_idx, (s_count,), 0, n), random.uniform(k_acc, (s_count,))

        def gibbs(s, carry):
            t, lw = carry
            t_new = t.at[s].set(proposals[s])
            lw_new = log_weight(t_new)
            take = jnp.log(accept[s]) < lw_new - lw
            return jnp.where(take, t_new, t), jnp.where(take, lw_new, lw)

        t, lw = jax.lax.fori_loop(0, s_count, gibbs, (t, lw))
        draw = shift + gain @ X[rows, t].mean(axis=0) + lam_chol @ random.normal(k_draw, (p,))
        return (t, lw), draw

    def chain(key, length):
        k0, k1 = random.split(key)
        t0 = random.randint(k0, (s_count,), 0, n)
        _, draws = jax.lax.scan(sweep, (t0, log_weight(t0)), random.split(k1, (1 + SWEEPS) * length))
        return draws[length::SWEEPS]

    per_chain = n // chains
    out = jax.jit(jax.vmap(lambda k: chain(k, per_chain)))(random.split(rng_key, chains))
    return np.asarray(out, dtype=np.float64).reshape(-1, p)


def _mvn_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(cov)
    r = np.linalg.solve(chol, (x - mean).T)
    return -0.5 * np.sum(r**2, axis=0) - np.log(np.diag(chol)).sum() - 0.5 * len(mean) * np.log(2 * np.pi)


def unconstrained_subdraws(sub: xr.Dataset, model_fn, data: dict):
    """Sub-posteriors ``(shard, chain, draw, ...)`` -> flat unconstrained draws ``(S, N, P)``,
    the coordinates' labels, and ``unravel`` (one flat draw -> dict of unconstrained sites)."""
    names = sorted(latent_sites(model_fn, data))
    n = sub.sizes["chain"] * sub.sizes["draw"]
    flat = []
    for s in range(sub.sizes["shard"]):
        constrained = {k: jnp.asarray(sub[k].values[s].reshape(n, *sub[k].shape[3:])) for k in names}
        z = to_unconstrained(model_fn, data, constrained)
        flat.append(np.asarray(jax.vmap(lambda d: ravel_pytree(d)[0])(z)))
    one = jax.tree.map(lambda a: a[0], z)
    labels = [label for k in sorted(one) for label in scalar_names(k, jnp.shape(one[k]))]
    return np.stack(flat), labels, ravel_pytree(one)[1]


def constrained_posterior(
    model_fn, model: Model, rows: pd.DataFrame, unravel, draws: np.ndarray, chains: int
) -> xr.Dataset:
    """Combined flat unconstrained draws ``(N, P)`` -> posterior ``(chain, draw, ...)``: latent
    sites mapped back, deterministic sites recomputed, except per-row ones."""
    data = probe_data(model, rows)
    values = to_constrained(model_fn, data, jax.vmap(unravel)(jnp.asarray(draws)))
    latent = latent_sites(model_fn, data)
    first = {k: v[0] for k, v in values.items() if k in latent}
    drop = row_sized_sites(model_fn, model, rows, first) if len(rows) > 1 else set()
    variables = {}
    for name, value in values.items():
        if name in drop:
            continue
        value = np.asarray(value).reshape(chains, -1, *np.shape(value)[1:])
        variables[name] = (SAMPLE_DIMS + tuple(f"{name}_dim_{i}" for i in range(value.ndim - 2)), value)
    return xr.Dataset(variables)


# -- diagnostics -------------------------------------------------------------------------------

def disagreement(sub: xr.Dataset) -> pd.DataFrame:
    """Per scalar parameter, how far apart the shards' means are relative to their sds.

    ``statistic = Q/(S−1)`` with Cochran's ``Q = Σ_s (m_s − m̄)²/v_s`` and ``m̄`` the
    precision-weighted mean. Each shard's mean misses the truth by about one of its
    sds, so the statistic is about 1 when shards agree; ``p_value`` is from ``χ²_{S−1}``.
    """
    means, variances = sub.mean(SAMPLE_DIMS), sub.var(SAMPLE_DIMS, ddof=1)
    rows = []
    for name in sub.data_vars:
        m = means[name].transpose("shard", ...).values.reshape(sub.sizes["shard"], -1)
        v = variances[name].transpose("shard", ...).values.reshape(m.shape)
        w = 1.0 / v
        bar = (w * m).sum(axis=0) / w.sum(axis=0)
        q = (w * (m - bar) ** 2).sum(axis=0)
        dof = m.shape[0] - 1
        for label, qj in zip(scalar_names(str(name), means[name].shape[1:]), q):
            rows.append({"parameter": label, "statistic": float(qj / dof), "p_value": float(chi2.sf(qj, dof))})
    return pd.DataFrame(rows, columns=["parameter", "statistic", "p_value"])


def non_gaussianity(subdraws: np.ndarray) -> dict[str, np.ndarray]:
    """Largest |skewness| and excess kurtosis over shards, per coordinate of ``(S, N, P)`` draws."""
    x = subdraws - subdraws.mean(axis=1, keepdims=True)
    sd = x.std(axis=1)
    skew = (x**3).mean(axis=1) / sd**3
    kurt = (x**4).mean(axis=1) / sd**4 - 3.0
    return {"skewness": np.abs(skew).max(axis=0), "excess_kurtosis": np.abs(kurt).max(axis=0)}
