"""Parameter recovery on simulated data: 89% intervals cover the truth about 89% of the time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesfan.config import FitConfig
from flows.fit import run_fit
from models import resolve_model


@pytest.mark.slow
@pytest.mark.parametrize("model, partitions, length", [("linear_regression", 48, 50), ("impressions_nb", 16, 168)])
def test_eti89_covers_truth_at_nominal_rate(tmp_path, model, partitions, length):
    frame, truth = resolve_model(model).simulate(np.random.default_rng(11), partitions, length)
    if "partition" not in frame:
        frame["partition"] = frame["market"] + "|" + frame["network"]
    data = tmp_path / "data.parquet"
    frame.to_parquet(data, index=False)
    result = run_fit(FitConfig(data=str(data), model=model, partition_by=("partition",), out=str(tmp_path / "out"),
                               chains=2, warmup=300, draws=300, batch_size=64, workers=1, max_refits=0,
                               report=False))
    merged = result.summary.merge(truth, on=["partition", "parameter"], validate="one_to_one")
    assert len(merged) == len(truth)
    covered = ((merged["value"] >= merged["eti89_lb"]) & (merged["value"] <= merged["eti89_ub"])).mean()
    n = len(merged)
    # 89% nominal; allow 3.5 binomial standard errors (pairs within a partition are mildly dependent).
    half_width = 3.5 * np.sqrt(0.89 * 0.11 / n)
    print(f"{model}: coverage {covered:.3f} over {n} (partition, parameter) pairs")
    assert abs(covered - 0.89) < half_width
