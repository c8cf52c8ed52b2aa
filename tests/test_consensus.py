"""Consensus mode: shards, fractionated priors, combination methods on known answers, refusal."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
import xarray as xr
from jax import random
from numpyro.distributions import constraints
from numpyro.infer.util import potential_energy

from tasks.consensus import (
    ShardModel, assign_shards, combine, disagreement, fractionate, improper_priors, to_constrained, to_unconstrained,
)


@pytest.fixture(autouse=True)
def _prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", os.environ.get("PREFECT_HOME") or str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def test_assign_shards_balanced_and_seeded():
    frame = pd.DataFrame({"g": np.repeat(np.arange(20), np.arange(1, 21)), "x": 0.0})
    a = assign_shards(frame, 4, seed=3)
    assert np.array_equal(a, assign_shards(frame, 4, seed=3)) and not np.array_equal(a, assign_shards(frame, 4, seed=4))
    assert sorted(np.bincount(a)) == [52, 52, 53, 53]
    b = assign_shards(frame, 4, seed=3, shard_by="g")
    assert all(len(set(b[frame.g == g])) == 1 for g in range(20))
    assert np.bincount(b).max() - np.bincount(b).min() <= 20
    with pytest.raises(ValueError, match="fewer than 40 shards"):
        assign_shards(frame, 40, seed=0, shard_by="g")


def _regression(mask, x, y):
    mu = numpyro.sample("mu", dist.Normal(1.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(3.0))
    with numpyro.handlers.mask(mask=mask):
        numpyro.sample("y", dist.Normal(mu + x, sigma), obs=y)


def test_fractionate_scales_prior_and_jacobian_only():
    data = {"mask": jnp.ones(5, bool), "x": jnp.arange(5.0), "y": jnp.arange(5.0) + 0.3}
    u = {"mu": jnp.array(0.4), "sigma": jnp.array(-0.2)}  # sigma = exp(u)
    sigma = jnp.exp(u["sigma"])
    prior = dist.Normal(1.0, 2.0).log_prob(0.4) + dist.HalfNormal(3.0).log_prob(sigma) + u["sigma"]
    lik = dist.Normal(0.4 + data["x"], sigma).log_prob(data["y"]).sum()
    for shards in (1, 4):
        pe = potential_energy(fractionate(_regression, shards), (), data, u)
        assert np.isclose(-pe, prior / shards + lik, rtol=1e-5)


def test_shard_model_is_hashable_and_delegates():
    from models.linear_regression import LinearRegression

    a, b = ShardModel(base=LinearRegression(), shards=4), ShardModel(base=LinearRegression(), shards=4)
    assert hash(a) == hash(b) and a == b and a.columns() == LinearRegression().columns()


def _priors(mask, y):
    numpyro.sample("flat", dist.ImproperUniform(constraints.real, (), (2,)))
    numpyro.sample("scale", dist.HalfCauchy(2.5))
    numpyro.sample("t3", dist.StudentT(3.0, 0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("t4", dist.StudentT(4.0, 0.0, 1.0))
    numpyro.sample("normal", dist.Normal(0.0, 1.0))
    with numpyro.handlers.mask(mask=mask):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def test_improper_fractionated_priors_flagged():
    data = {"mask": jnp.ones(3, bool), "y": jnp.zeros(3)}
    assert {p["site"] for p in improper_priors(_priors, data, 4)} == {"flat", "scale", "t3"}
    assert {p["site"] for p in improper_priors(_priors, data, 2)} == {"flat", "scale"}
    assert improper_priors(_priors, data, 1) == []


def test_unconstrained_round_trip():
    data = {"mask": jnp.ones(2, bool), "x": jnp.zeros(2), "y": jnp.zeros(2)}
    draws = {"mu": jnp.array([0.5, -1.0]), "sigma": jnp.array([0.3, 2.0])}
    z = to_unconstrained(_regression, data, draws)
    assert np.allclose(z["sigma"], np.log(draws["sigma"]))
    back = to_constrained(_regression, data, z)
    assert np.allclose(back["sigma"], draws["sigma"], rtol=1e-6) and np.allclose(back["mu"], draws["mu"])


def _gaussian_shards(rng, shards=4, n=4000, p=3):
    """Gaussian sub-posteriors with different means and correlated covariances, and their exact product."""
    means, covs = rng.normal(0, 0.5, (shards, p)), []
    for _ in range(shards):
        a = rng.normal(size=(p, p))
        covs.append(a @ a.T / p + 0.5 * np.eye(p))
    draws = np.stack([rng.multivariate_normal(m, c, n) for m, c in zip(means, covs)]).astype(np.float32)
    precs = [np.linalg.inv(c) for c in covs]
    cov = np.linalg.inv(sum(precs))
    mean = cov @ sum(q @ m for q, m in zip(precs, means))
    return draws, mean, cov


@pytest.mark.parametrize("method", ["consensus", "parametric", "semiparametric"])
def test_combination_of_gaussians_is_their_product(method):
    draws, mean, cov = _gaussian_shards(np.random.default_rng(1))
    out = combine(draws, method, random.PRNGKey(0), chains=4)
    assert out.shape == draws.shape[1:]
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(out.mean(0) - mean) / sd < 0.1)
    assert np.allclose(np.cov(out.T), cov, atol=0.15 * sd[:, None] * sd[None, :])


def test_consensus_diag_exact_for_independent_coordinates():
    rng = np.random.default_rng(2)
    means, sds = rng.normal(size=(3, 2)), rng.uniform(0.5, 2.0, (3, 2))
    draws = (means[:, None] + sds[:, None] * rng.normal(size=(3, 4000, 2))).astype(np.float32)
    prec = (1 / sds**2).sum(0)
    out = combine(draws, "consensus-diag", random.PRNGKey(0))
    assert np.allclose(out.mean(0), (means / sds**2).sum(0) / prec, atol=0.05 / np.sqrt(prec))
    assert np.allclose(out.var(0), 1 / prec, rtol=0.1)


def test_full_takes_one_shard_only():
    draws = np.zeros((1, 10, 2), np.float32)
    assert combine(draws, "full", random.PRNGKey(0)) is not None
    with pytest.raises(ValueError, match="one shard"):
        combine(np.zeros((2, 10, 2)), "full", random.PRNGKey(0))


def test_disagreement_statistic():
    rng = np.random.default_rng(3)
    agree = rng.normal(size=(4, 2, 500))
    apart = agree + np.array([0.0, 0.0, 0.0, 5.0])[:, None, None]
    sub = xr.Dataset({"a": (("shard", "chain", "draw"), agree), "b": (("shard", "chain", "draw"), apart)})
    frame = disagreement(sub).set_index("parameter")
    assert frame.loc["a", "statistic"] < 0.1 and frame.loc["a", "p_value"] > 0.5  # same distribution: no spread
    assert frame.loc["b", "statistic"] > 1.5 and frame.loc["b", "p_value"] < 0.001


@pytest.mark.slow
def test_unconverged_shard_refuses_combination(tmp_path):
    from bayesfan.config import FitConfig
    from flows.consensus import CombinationRefused, fit_consensus

    frame, _ = __import__("models").resolve_model("linear_regression").simulate(np.random.default_rng(0), 1, 80)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    config = FitConfig(data=str(tmp_path / "d.parquet"), model="linear_regression", mode="consensus", shards=2,
                       out=str(tmp_path / "out"), chains=2, warmup=100, draws=100, ess_min=1e6, workers=1)
    with pytest.raises(CombinationRefused, match="did not converge") as info:
        fit_consensus(config)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest == info.value.result.manifest
    assert manifest["counts"]["failed"] == 1 and manifest["artifact"]["combined"] is False
    assert set(manifest["shards"]) == {"shard-0000", "shard-0001"}
    assert all(s["status"] == "unconverged" and s["rows"] == 40 for s in manifest["shards"].values())
    tree = xr.open_datatree(str(tmp_path / "out" / "posterior.zarr"), engine="zarr")
    assert "posterior" not in tree.children and tree["subposteriors"]["alpha"].dims == ("shard", "chain", "draw")


@pytest.mark.slow
def test_full_is_one_unfractionated_run(tmp_path):
    from bayesfan.config import FitConfig
    from flows.consensus import fit_consensus

    frame, _ = __import__("models").resolve_model("linear_regression").simulate(np.random.default_rng(0), 1, 80)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    result = fit_consensus(FitConfig(data=str(tmp_path / "d.parquet"), model="linear_regression", mode="consensus",
                                     combine="full", out=str(tmp_path / "out"), chains=2, warmup=100, draws=100,
                                     ess_min=0, workers=1))
    manifest = result.manifest
    assert manifest["counts"]["total"] == 1 and manifest["partitions"]["all"]["status"] in ("ok", "unconverged")
    assert {k: v["rows"] for k, v in manifest["shards"].items()} == {"shard-0000": 80}
    assert manifest["improper_fractionated_priors"] == [] and manifest["disagreement"] == {}
    tree = xr.open_datatree(str(tmp_path / "out" / "posterior.zarr"), engine="zarr")
    assert set(tree.children) == {"posterior", "sample_stats", "adaptation"}
    assert tree["posterior"]["beta"].dims == ("chain", "draw", "beta_dim_0")
    assert tree["sample_stats"]["diverging"].dims == ("chain", "draw")
    assert set(result.summary["partition"]) == {"all"} and len(result.summary) == 4
