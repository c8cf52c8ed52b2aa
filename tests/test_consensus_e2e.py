"""Consensus mode end to end on kidiq (flat beta, half-Cauchy sigma): 2 shards of 217 rows, combined
draws land within 0.1 reference sd of the posteriordb posterior; other methods reuse the shards.

Two shards, not four: every method's Gaussian treatment of a shard biases the combined mean by
O(S/√n) posterior sds; at S = 4 (108 rows a shard) sigma lands 0.08-0.12 sd low.
"""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest
import xarray as xr

from bayesfan.config import FitConfig
from flows.consensus import fit_consensus
from tasks.diagnose import SUMMARY_COLUMNS
from test_reference import MOMENTS, posteriordb_rows, zero_based

POSTERIOR = "kidiq-kidscore_momiq"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kidiq(tmp_path_factory):
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    path = tmp_path_factory.mktemp("data") / "kidiq.parquet"
    posteriordb_rows(POSTERIOR).to_parquet(path, index=False)
    return FitConfig(data=str(path), model="models.reference:KidscoreMomiq", mode="consensus", shards=2,
                     out=str(tmp_path_factory.mktemp("fit") / "artifact"), chains=4, warmup=500, draws=1000,
                     ess_min=400, workers=1)


def worst_deviation(summary: pd.DataFrame) -> float:
    ref = pd.DataFrame(MOMENTS[POSTERIOR]).T
    ref.index = [zero_based(name) for name in ref.index]
    ours = summary.set_index("parameter").loc[ref.index]
    deviation = (ours["mean"] - ref["mean"]).abs() / ref["sd"]
    print(f"\n{summary.attrs.get('method')}: |Δmean|/sd {deviation.round(3).to_dict()}, "
          f"sd ratio {(ours['sd'] / ref['sd']).round(3).to_dict()}")
    return float(deviation.max())


@pytest.fixture(scope="module")
def consensus_fit(kidiq):
    start = time.perf_counter()
    result = fit_consensus(kidiq)
    print(f"\nconsensus fit: {time.perf_counter() - start:.1f}s")
    return result


def test_artifact_contract(consensus_fit):
    manifest = consensus_fit.manifest
    assert manifest["mode"] == "consensus" and manifest["combine"] == "consensus"
    assert manifest["counts"] == {"ok": 1, "unconverged": 0, "failed": 0, "quarantined": 0, "total": 1}
    assert manifest["batches_total"] == 1 and manifest["artifact"]["combined"] is True
    assert sorted(manifest["shards"]) == [f"shard-{s:04d}" for s in range(2)]
    assert sorted(s["rows"] for s in manifest["shards"].values()) == [217, 217]
    assert all(s["status"] == "ok" for s in manifest["shards"].values())
    assert {p["site"] for p in manifest["improper_fractionated_priors"]} == {"beta", "sigma"}
    assert any("beta" in w and "improper" in w for w in manifest["warnings"])
    assert set(manifest["disagreement"]) == {"beta[0]", "beta[1]", "sigma"}
    assert set(manifest["non_gaussian"]) == {"beta[0]", "beta[1]", "sigma"}

    tree = xr.open_datatree(f"{consensus_fit.path}/posterior.zarr", engine="zarr")
    assert set(tree.children) == {"posterior", "subposteriors", "sample_stats", "adaptation"}
    assert tree["posterior"]["beta"].dims == ("chain", "draw", "beta_dim_0")
    assert tree["posterior"]["sigma"].shape == (4, 1000)
    assert tree["subposteriors"]["sigma"].dims == ("shard", "chain", "draw")
    assert tree["sample_stats"]["diverging"].dims == ("shard", "chain", "draw")

    summary = consensus_fit.summary
    assert list(summary.columns) == SUMMARY_COLUMNS and set(summary["partition"]) == {"all"}
    assert sorted(summary["parameter"]) == ["beta[0]", "beta[1]", "sigma"]


def test_consensus_matches_reference(consensus_fit):
    summary = consensus_fit.summary
    summary.attrs["method"] = "consensus"
    assert worst_deviation(summary) <= 0.1


@pytest.mark.parametrize("method", ["parametric", "semiparametric", "consensus-diag"])
def test_other_methods_reuse_shards(consensus_fit, kidiq, method):
    result = fit_consensus(kidiq.model_copy(update={"combine": method}))
    assert result.manifest["batches_reused"] == 1 and result.manifest["combine"] == method
    summary = result.summary
    summary.attrs["method"] = method
    assert worst_deviation(summary) <= TOLERANCE[method]


# |Δmean|/sd against the reference at S = 2. The semiparametric product is the noisiest
# (its Gibbs sampler over shard-draw indices; `bench consensus`: W1/sd up to 0.10 at S = 2
# and 0.14 at S = 4 on kidiq), and moves by about 0.1 between seeds.
TOLERANCE = {"parametric": 0.1, "semiparametric": 0.15, "consensus-diag": 0.3}
