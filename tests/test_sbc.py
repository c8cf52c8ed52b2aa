"""Simulation-based calibration (Talts et al. 2018) of poisson_zero_hmm and impressions_nb.

For n = 100 replications: draw parameters from the prior, simulate a short series,
fit all replications as one batched fit (one partition each), and take the rank of
every true scalar parameter among L = 99 thinned posterior draws (one chain). For a correct
model and sampler the ranks are uniform on 0..L; a chi-square test on 10 equal bins
checks it. A model that simulates from one likelihood and fits another must fail.
"""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from numpyro.infer import Predictive
from scipy import stats

from bayesfan.engine import SamplerConfig, fit_batch, partition_keys
from models.base import scalar_names
from models.impressions_nb import ImpressionsNB
from models.poisson_zero_hmm import PoissonZeroHMM, simulate_series
from tasks.sample import stack_partitions

REPLICATIONS = 100
DRAWS_KEPT = 99
BINS = 10
#: One chain: SBC needs near-independent draws, not between-chain diagnostics, and a batch
#: of 100 replications x 1 chain costs half the leapfrog steps of 2 chains.
SAMPLER = SamplerConfig(chains=1, warmup=150, draws=300)
THIN = 3
#: Per-parameter p-value threshold: a correct fit fails any of ~16 tests with probability about 1.6%.
P_MIN = 1e-3
#: An SBC-friendly prior (their default mu prior sits far from any data, xi ~ N(0, 100) is nearly flat).
HMM = PoissonZeroHMM(mu_mean=20.0, mu_var=100.0, xi_scale=1.0)
HMM_LENGTH = 48
NB_LENGTH = 48


def prior_draws(model, n: int, seed: int, **arrays) -> dict[str, np.ndarray]:
    """n draws of every site of ``model.model`` from the prior (observed sites simulated where obs is None)."""
    draws = Predictive(model.model, num_samples=n)(jax.random.PRNGKey(seed), **arrays)
    return {name: np.asarray(value) for name, value in draws.items()}


def scalars(values: np.ndarray, name: str, lead: int) -> dict[str, np.ndarray]:
    """``{xi[0,1]: values[..., 0, 1]}``: split a site's event dims into scalar parameters."""
    flat = values.reshape(*values.shape[:lead], -1)
    return {label: flat[..., j] for j, label in enumerate(scalar_names(name, values.shape[lead:]))}


def sbc_pvalues(model, rows: list[pd.DataFrame], truth: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Fit every replication in one batch; chi-square p-value of each scalar parameter's rank histogram."""
    keys = [f"rep{i:03d}" for i in range(len(rows))]
    data = stack_partitions(model, rows, len(rows[0]), len(rows))
    out = fit_batch(model.model, SAMPLER, partition_keys(seed, keys, SAMPLER.chains), data)
    pvalues = {}
    for name, true_values in truth.items():
        draws = out.samples[name][:, :, ::THIN]
        draws = draws.reshape(len(rows), -1, *draws.shape[3:])[:, :DRAWS_KEPT]
        posterior = scalars(draws, name, 2)
        for label, true in scalars(true_values, name, 1).items():
            ranks = (posterior[label] < true[:, None]).sum(axis=1)
            counts = np.bincount(ranks * BINS // (DRAWS_KEPT + 1), minlength=BINS)
            pvalues[label] = stats.chisquare(counts).pvalue
    return pvalues


def hmm_replications(seed: int, emission_scale: float = 1.0):
    """Prior draws of (mu, xi, pi0) and series simulated from them with Poisson(emission_scale · mu) counts."""
    hour = np.arange(HMM_LENGTH)
    base = pd.DataFrame({"hour": hour, "weekday": (hour // 24) % 7, "y": 0})
    x = HMM.design(base)
    truth = prior_draws(HMM, REPLICATIONS, seed, mask=np.ones(HMM_LENGTH, bool), x=x, y=np.zeros(HMM_LENGTH, int))
    truth = {k: truth[k] for k in ("mu", "xi", "pi0")}
    rng = np.random.default_rng(seed)
    rows = [
        base.assign(y=simulate_series(rng, x, emission_scale * truth["mu"][i], truth["xi"][i], truth["pi0"][i]))
        for i in range(REPLICATIONS)
    ]
    return rows, {k: v for k, v in truth.items() if k != "pi0"} | {"pi0": truth["pi0"][:, :1]}


def report(name: str, pvalues: dict[str, float]) -> str:
    worst = min(pvalues, key=pvalues.get)
    line = f"{name}: {len(pvalues)} parameters, smallest chi-square p = {pvalues[worst]:.2e} ({worst})"
    print("\n" + line)
    return line


@pytest.mark.slow
def test_sbc_poisson_zero_hmm():
    rows, truth = hmm_replications(seed=11)
    pvalues = sbc_pvalues(HMM, rows, truth, seed=11)
    assert min(pvalues.values()) > P_MIN, report("poisson_zero_hmm", pvalues)
    report("poisson_zero_hmm", pvalues)


@pytest.mark.slow
def test_sbc_fails_a_wrong_model():
    """Series simulated with Poisson(2 mu) counts, fitted with Poisson(mu): the check must fail."""
    rows, truth = hmm_replications(seed=12, emission_scale=2.0)
    pvalues = sbc_pvalues(HMM, rows, truth, seed=12)
    report("wrong emission model", pvalues)
    assert pvalues["mu"] < 1e-10


@pytest.mark.slow
def test_sbc_impressions_nb():
    model = ImpressionsNB()
    hour = np.arange(NB_LENGTH)
    base = pd.DataFrame({"hour": hour, "weekday": (hour // 24) % 7, "daypart": (hour % 24) * model.dayparts // 24})
    arrays = model.arrays(base.assign(impressions=0))
    draws = prior_draws(model, REPLICATIONS, 21, mask=np.ones(NB_LENGTH, bool), weekday=arrays["weekday"],
                        daypart=arrays["daypart"], impressions=None)
    rows = [base.assign(impressions=draws["impressions"][i]) for i in range(REPLICATIONS)]
    truth = {k: draws[k] for k in ("alpha", "b_weekday", "b_daypart", "phi")}
    pvalues = sbc_pvalues(model, rows, truth, seed=21)
    assert min(pvalues.values()) > P_MIN, report("impressions_nb", pvalues)
    report("impressions_nb", pvalues)
