"""Warm start for scheduled refits: chains start from the previous artifact's end state, run a
short warmup, and converge as well as a cold fit; new partitions fall back to a full warmup."""

from __future__ import annotations

import numpy as np
import pytest

from bayesfan.config import FitConfig
from flows.fit import run_fit
from models import resolve_model


@pytest.mark.slow
def test_warm_start_reaches_cold_quality_and_new_partitions_fall_back(tmp_path):
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(8), 7, 60)
    old, new = frame[frame.partition != "p0006"], frame
    old.to_parquet(tmp_path / "old.parquet", index=False)
    new.to_parquet(tmp_path / "new.parquet", index=False)
    common = dict(model="linear_regression", partition_by=("partition",), chains=4, draws=1000, batch_size=8,
                  workers=1, max_refits=0, report=False)
    cold = run_fit(FitConfig(data=str(tmp_path / "old.parquet"), out=str(tmp_path / "cold"), warmup=500, **common))
    warm = run_fit(FitConfig(data=str(tmp_path / "new.parquet"), out=str(tmp_path / "warm"), warmup=500, seed=1,
                             warm_start=str(tmp_path / "cold"), warm_warmup=150, **common))

    manifest = warm.manifest
    assert manifest["warm_started"] == 6 and manifest["batches_total"] == 2
    warm_batch = manifest["partitions"]["p0000"]["batch"]
    assert manifest["partitions"]["p0006"]["batch"] != warm_batch  # the new partition ran cold
    summary = warm.summary
    assert summary["r_hat"].max() <= 1.01
    assert summary["ess_bulk"].min() >= 400
    both = summary.merge(cold.summary, on=["partition", "parameter"], suffixes=("_warm", "_cold"))
    assert np.all(np.abs(both["mean_warm"] - both["mean_cold"]) < 0.2 * both["sd_cold"])
    step_cold = cold.posterior["adaptation"]["step_size"].sel(partition="p0000").values
    step_warm = warm.posterior["adaptation"]["step_size"].sel(partition="p0000").values
    np.testing.assert_allclose(step_warm, step_cold, rtol=0.5)
