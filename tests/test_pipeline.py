"""The fit-partitions flow end to end: artifact contract, resume, retries and failures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesfan.config import FitConfig
from bayesfan.result import FitFailed, FitResult
from flows.fit import run_fit
from models import resolve_model
from tasks.diagnose import SUMMARY_COLUMNS


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory) -> str:
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(7), 6, 40)
    frame["market"] = frame["partition"].str[-1].map(lambda d: "NYC" if int(d) % 2 else "LA")
    path = tmp_path_factory.mktemp("data") / "regression.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def first_fit(regression_data, tmp_path_factory) -> FitResult:
    out = tmp_path_factory.mktemp("fit") / "artifact"
    config = FitConfig(data=regression_data, model="linear_regression", partition_by=("market", "partition"),
                       out=str(out), chains=2, warmup=150, draws=150, batch_size=4, workers=2, max_refits=0, report=False)
    return run_fit(config)


def test_artifact_contract(first_fit):
    manifest = first_fit.manifest
    assert manifest["model"] == "linear_regression" and manifest["bayesfan_version"]
    assert manifest["config"]["partition_by"] == ["market", "partition"]
    assert len(manifest["input"]["fingerprint"]) == 64 and manifest["input"]["rows"] == 240
    assert set(manifest["timings"]) >= {"split_s", "sample_s"}
    for batch in manifest["batches"].values():  # where each batch's worker time went
        assert min(batch[k] for k in ("sample_seconds", "diagnose_seconds", "write_seconds")) > 0
    assert manifest["counts"]["total"] == 6 and manifest["counts"]["failed"] == 0
    assert sum(manifest["counts"][s] for s in ("ok", "unconverged", "failed", "quarantined")) == 6
    for key, entry in manifest["partitions"].items():
        assert entry["status"] in ("ok", "unconverged") and entry["attempts"] == 1
        assert "|" in key

    tree = xr.open_datatree(f"{first_fit.path}/posterior.zarr", engine="zarr")
    post = tree["posterior"]
    assert set(tree.children) >= {"posterior", "sample_stats"}
    assert post["beta"].dims == ("partition", "chain", "draw", "beta_dim_0")
    assert post["alpha"].shape == (6, 2, 150)
    assert list(post["partition"].values) == sorted(manifest["partitions"])
    assert tree["sample_stats"]["diverging"].dims == ("partition", "chain", "draw")

    summary = first_fit.summary
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 6 * 4
    assert set(summary["parameter"]) == {"alpha", "beta[0]", "beta[1]", "sigma"}
    row = summary[(summary.partition == "NYC|p0001") & (summary.parameter == "alpha")].iloc[0]
    draws = post["alpha"].sel(partition="NYC|p0001").values
    assert row["mean"] == pytest.approx(draws.mean(), rel=1e-5)
    assert row["eti89_lb"] == pytest.approx(np.quantile(draws, 0.055), rel=1e-4)


def test_flow_publishes_prefect_artifacts(first_fit):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    keys = [f"fit-linear-regression-{name}" for name in ("progress", "summary", "diagnostics", "artifact", "report")]
    run_id = first_fit.manifest["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    assert {a.key for a in found} == set(keys)
    table = next(a for a in found if a.key.endswith("diagnostics"))
    assert "NYC|p0001" in str(table.data)


def test_rerun_reuses_every_batch_and_gives_identical_artifact(first_fit):
    config = FitConfig.model_validate(first_fit.manifest["config"])
    again = run_fit(config)
    assert again.manifest["batches_reused"] == again.manifest["batches_total"] == 2
    pd.testing.assert_frame_equal(again.summary, first_fit.summary)


def test_resume_recomputes_only_missing_or_corrupt_batches(first_fit, tmp_path):
    config = FitConfig.model_validate(first_fit.manifest["config"])
    first_batches = sorted(first_fit.manifest["batches"])
    (tmp_path / "unused").touch()
    # Corrupt one finished batch: its checksum no longer matches, so it is refitted.
    result_file = f"{first_fit.path}/batches/{first_batches[0]}/result.zarr.zip"
    with open(result_file, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    again = run_fit(config)
    assert again.manifest["batches_reused"] == 1
    pd.testing.assert_frame_equal(again.summary, first_fit.summary)


def test_failed_batch_is_retried_then_marked_failed_without_losing_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(3), 3, 30)
    frame["boom"] = (frame["partition"] == "p0001").astype(float)
    frame["flaky"] = (frame["partition"] == "p0002").astype(float)
    frame["die"] = 0.0
    data = tmp_path / "faulty.csv"
    frame.to_csv(data, index=False)
    config = FitConfig(data=str(data), model="faulty:FaultyRegression", partition_by=("partition",),
                       out=str(tmp_path / "out"), chains=2, warmup=100, draws=100, batch_size=1,
                       workers=2, max_retries=2, retry_delay=0.0, max_refits=0, report=False)
    with pytest.raises(FitFailed) as caught:
        run_fit(config)
    manifest = caught.value.result.manifest
    parts = manifest["partitions"]
    assert parts["p0001"]["status"] == "failed" and parts["p0001"]["attempts"] == 3
    assert "injected failure" in parts["p0001"]["reason"]
    assert parts["p0002"]["status"] in ("ok", "unconverged") and parts["p0002"]["attempts"] == 2
    assert parts["p0000"]["status"] in ("ok", "unconverged") and parts["p0000"]["attempts"] == 1
    assert manifest["counts"]["failed"] == 1
    written = FitResult(str(tmp_path / "out"))
    assert sorted(written.summary["partition"].unique()) == ["p0000", "p0002"]
    assert list(written.posterior["posterior"]["partition"].values) == ["p0000", "p0002"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["failed"] == 1


def test_unconverged_partitions_are_refit_with_longer_warmup(regression_data, tmp_path):
    # An unreachable ESS bar makes every partition unconverged, so each is refit once.
    config = FitConfig(data=regression_data, model="linear_regression", partition_by=("market", "partition"),
                       out=str(tmp_path / "out"), chains=2, warmup=100, draws=100, batch_size=8, workers=1,
                       ess_min=10_000, max_refits=1, report=False)
    manifest = run_fit(config).manifest
    assert manifest["batches_total"] == 2
    assert {p["status"] for p in manifest["partitions"].values()} == {"unconverged"}
    assert {p["attempts"] for p in manifest["partitions"].values()} == {2}
    assert all("ess_bulk" in p["reason"] for p in manifest["partitions"].values())
    refit_batch = {p["batch"] for p in manifest["partitions"].values()}
    assert len(refit_batch) == 1 and manifest["batches"][refit_batch.pop()]["index"] == 0
    tree = xr.open_datatree(f"{tmp_path}/out/posterior.zarr", engine="zarr")
    assert tree["posterior"].sizes["partition"] == 6
