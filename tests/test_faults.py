"""Faults the run survives on the local backend: a worker killed mid-batch (SIGKILL, as by the
OOM killer) or terminated (SIGTERM, as by a Spot reclaim) is resubmitted under the
interruption budget, and --min-success-ratio decides the outcome of a partial run."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from bayesfan.config import FitConfig
from bayesfan.result import FitFailed
from flows.fit import run_fit
from models import resolve_model


def faulty_data(tmp_path, die: int = 0, boom: str | None = None):
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(3), 3, 30)
    frame["boom"] = (frame["partition"] == boom).astype(float)
    frame["flaky"] = 0.0
    frame["die"] = np.where(frame["partition"] == "p0001", float(die), 0.0)
    path = tmp_path / "faulty.parquet"
    frame.to_parquet(path, index=False)
    return path


def config(tmp_path, data, **kw) -> FitConfig:
    return FitConfig(data=str(data), model="faulty:FaultyRegression", partition_by=("partition",),
                     out=str(tmp_path / "out"), chains=2, warmup=100, draws=100, batch_size=1,
                     max_retries=1, retry_delay=0.0, max_refits=0, report=False, **{"workers": 2} | kw)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_worker_is_resubmitted_and_nothing_is_lost(tmp_path, monkeypatch, sig):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    result = run_fit(config(tmp_path, faulty_data(tmp_path, die=int(sig))))
    parts = result.manifest["partitions"]
    assert (tmp_path / "died").exists()
    assert {p["status"] for p in parts.values()} <= {"ok", "unconverged"} and len(parts) == 3
    assert parts["p0001"]["attempts"] >= 2  # the killed attempt counts
    assert result.posterior["posterior"].sizes["partition"] == 3


@pytest.mark.slow
def test_a_dead_worker_charges_only_its_own_batch(tmp_path, monkeypatch):
    """One worker: the killed batch is the only one running; the queued batches its death
    crashed had not started and go again without an interruption charged."""
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    result = run_fit(config(tmp_path, faulty_data(tmp_path, die=int(signal.SIGKILL)), workers=1,
                            max_interruptions=1))
    parts = result.manifest["partitions"]
    assert (tmp_path / "died").exists()
    assert {k: p["attempts"] for k, p in parts.items()} == {"p0000": 1, "p0001": 2, "p0002": 1}


@pytest.mark.slow
def test_interruption_budget_exhausted_marks_the_batch_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    with pytest.raises(FitFailed) as caught:
        run_fit(config(tmp_path, faulty_data(tmp_path, die=int(signal.SIGKILL)), max_interruptions=0))
    failed = caught.value.result.manifest["partitions"]["p0001"]
    assert failed["status"] == "failed" and "interrupted 1 times" in failed["reason"]


@pytest.mark.slow
def test_min_success_ratio_decides_a_partial_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_DIR", str(tmp_path))
    data = faulty_data(tmp_path, boom="p0002")
    result = run_fit(config(tmp_path, data, min_success_ratio=0.5))
    assert result.manifest["counts"]["failed"] == 1 and result.manifest["counts"]["total"] == 3
    with pytest.raises(FitFailed):
        run_fit(config(tmp_path, data, min_success_ratio=0.9))
