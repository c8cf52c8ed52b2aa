"""Five posteriordb posteriors fitted by our engine (the code path of ``sample_batch``) against gold-standard draws.

For every parameter: |mean - reference mean| <= 0.1 reference sd, and sd within 10%.
``pytest -s tests/test_reference.py`` prints the worst deviations per posterior.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesfan.engine import SamplerConfig, fit_batch, partition_keys
from benchmarks.consensus import posteriordb_rows, zero_based
from models.reference import REFERENCE_MODELS
from tasks.diagnose import summarize
from tasks.sample import stack_partitions, to_datatree

DATA = Path(__file__).parent / "data" / "reference"
MOMENTS = json.loads((DATA / "moments.json").read_text())
SAMPLER = SamplerConfig(chains=4, warmup=500, draws=1000)
SAMPLERS = {"eight_schools-eight_schools_noncentered": SAMPLER._replace(target_accept=0.95)}


def fit_summary(posterior: str) -> pd.DataFrame:
    model = REFERENCE_MODELS[posterior]()
    rows = posteriordb_rows(posterior)
    rows = rows.sort_values(model.order_by) if model.order_by else rows
    rows = rows[list(model.columns())].reset_index(drop=True)
    model.check_rows(rows)
    sampler = SAMPLERS.get(posterior, SAMPLER)
    data = stack_partitions(model, [rows], len(rows), 1)
    out = fit_batch(model.model, sampler, partition_keys(0, [posterior], sampler.chains), data)
    summary, _ = summarize(to_datatree(out, [posterior]), rhat_max=1.01, ess_min=400)
    return summary.set_index("parameter")


def deviations(summary: pd.DataFrame, posterior: str) -> pd.DataFrame:
    """Per reference parameter: |Δmean| / reference sd and sd / reference sd."""
    ref = pd.DataFrame(MOMENTS[posterior]).T
    ref.index = [zero_based(name) for name in ref.index]
    ours = summary.loc[ref.index]
    return pd.DataFrame(
        {"dmean_sd": (ours["mean"] - ref["mean"]).abs() / ref["sd"], "sd_ratio": ours["sd"] / ref["sd"],
         "r_hat": ours["r_hat"], "ess_bulk": ours["ess_bulk"]}
    )


@pytest.mark.slow
@pytest.mark.parametrize("posterior", list(REFERENCE_MODELS))
def test_matches_reference_draws(posterior):
    dev = deviations(fit_summary(posterior), posterior)
    worst_mean, worst_sd = dev["dmean_sd"].idxmax(), (dev["sd_ratio"] - 1).abs().idxmax()
    print(
        f"\n{posterior}: worst |Δmean|/sd = {dev.at[worst_mean, 'dmean_sd']:.3f} ({worst_mean}), "
        f"worst sd ratio = {dev.at[worst_sd, 'sd_ratio']:.3f} ({worst_sd}), "
        f"max r_hat = {dev['r_hat'].max():.3f}, min ess_bulk = {dev['ess_bulk'].min():.0f}"
    )
    assert dev["dmean_sd"].max() <= 0.1, dev
    assert ((dev["sd_ratio"] - 1).abs() <= 0.1).all(), dev
