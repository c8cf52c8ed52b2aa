"""The HTML report of real tiny fits: self-contained, every section, images also saved as PNG files."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bayesfan.cli import app
from bayesfan.config import FitConfig
from bayesfan.result import FitFailed
from flows.consensus import fit_consensus
from flows.fit import fit_partitions
from models import resolve_model
from tasks.report import build_report, sample_keys

pytestmark = pytest.mark.slow
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
IMG = re.compile(r'<img [^>]*src="([^"]*)"')


def fit(flow, config: FitConfig):
    """The flow's artifact, also when it raises ``FitFailed``."""
    try:
        return flow(config)
    except FitFailed as exc:
        return exc.result


@pytest.fixture(scope="module")
def partitions_fit(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("report")
    frame, _ = resolve_model("impressions_nb").simulate(np.random.default_rng(1), 4, 48)
    bad = frame[frame["market"] == "NYC"].assign(market="BAD", impressions=-1)
    pd.concat([frame, bad]).to_parquet(root / "data.parquet", index=False)
    config = FitConfig(data=str(root / "data.parquet"), model="impressions_nb", partition_by="market,network",
                       out=str(root / "out"), max_retries=0, max_refits=0, workers=1, chains=2, warmup=150, draws=150)
    return fit(fit_partitions, config).path


def check_page(out: str) -> str:
    page = (Path(out) / "report.html").read_text()
    sources = IMG.findall(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "<link" not in page
    pngs = sorted((Path(out) / "report").glob("*.png"))
    assert len(pngs) == len(sources)
    assert {base64.b64decode(s.split(",", 1)[1]) for s in sources} == {p.read_bytes() for p in pngs}
    return page


def test_partitions_report(partitions_fit):
    assert build_report(partitions_fit, worst=2) == f"{partitions_fit}/report.html"
    page = check_page(partitions_fit)
    for heading in ("Overview", "Forest plot: alpha", "Convergence across partitions", "Worst partitions",
                    "Posterior predictive checks", "Failed and quarantined partitions"):
        assert f"<h2>{heading}</h2>" in page
    names = {p.stem for p in (Path(partitions_fit) / "report").glob("*.png")}
    assert {"forest", "convergence", "trace-1", "rank-1", "ess-1", "trace-2", "ppc"} <= names
    assert "<td>BAD|ESPN</td><td>quarantined</td>" in page and "negative or non-integer counts" in page


def test_cli_report(partitions_fit):
    runner = CliRunner()
    done = runner.invoke(app, ["report", partitions_fit, "--parameter", "phi"])
    assert done.exit_code == 0, done.output
    assert "<h2>Forest plot: phi</h2>" in check_page(partitions_fit)
    wrong = runner.invoke(app, ["report", partitions_fit, "--parameter", "nope"])
    assert wrong.exit_code == 2 and "unknown parameter 'nope'" in wrong.output


def test_consensus_report(tmp_path):
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(2), 1, 160)
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    config = FitConfig(data=str(tmp_path / "data.parquet"), model="linear_regression", mode="consensus",
                       shards=2, out=str(tmp_path / "out"), chains=2, warmup=100, draws=100,
                       rhat_max=1.5, ess_min=10, workers=1)
    out = fit(fit_consensus, config).path
    build_report(out, parameter="beta", worst=1)
    page = check_page(out)
    assert "<h2>Sub-posteriors and the combined posterior: beta</h2>" in page
    assert "Forest plot" not in page and "<p>shard-000" in page and "for all" in page


def test_sample_keys_keeps_the_worst():
    keys = [f"p{i:04d}" for i in range(1000)]
    shown = sample_keys(keys, 40, ["p0999", "p0500"], seed=0)
    assert len(shown) == 40 and {"p0999", "p0500"} <= set(shown) and shown == sorted(shown)
    assert shown == sample_keys(keys, 40, ["p0999", "p0500"], seed=0)
    assert sample_keys(keys[:5], 40, [], seed=0) == keys[:5]
