"""Prefect UI artifacts: content from a manifest, then published by a real flow run and read back."""

from __future__ import annotations

import json
import os

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.runtime import flow_run

from tasks.artifacts import (
    artifact_key, cost_summary, create_batch_progress, diagnostics_table, headline_markdown, publish_artifacts,
    update_batch_progress,
)

# A loaded machine can take longer than the default 20 s to start the ephemeral server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@pytest.fixture
def manifest(tmp_path) -> dict:
    part = {"batch": "b1", "attempts": 1, "divergences": 0, "reason": None}
    return {
        "run_id": "abc123", "model": "impressions_nb", "config": {"out": str(tmp_path / "run")},
        "counts": {"ok": 2, "unconverged": 1, "failed": 1, "quarantined": 1, "total": 5},
        "worst_r_hat": 1.08, "batches_total": 2, "batches_reused": 1,
        "timings": {"split_s": 1.5, "sample_s": 60.0},
        "batches": {"b1": {"sample_seconds": 1800.0}, "b2": {"sample_seconds": 1800.0}},
        "partitions": {
            "NYC|ESPN": part | {"status": "ok", "r_hat_max": 1.002, "ess_bulk_min": 900.0},
            "LA|CNN": part | {"status": "ok", "r_hat_max": 1.005, "ess_bulk_min": 400.0},
            "CHI|FOX": part | {"status": "unconverged", "r_hat_max": 1.08, "ess_bulk_min": 50.0,
                               "divergences": 3, "reason": "r_hat 1.080 > 1.01 (alpha)"},
            "SD|ABC": {"status": "failed", "attempts": 4, "batch": "b2", "reason": "RuntimeError: boom"},
            "HOU|NBC": {"status": "quarantined", "attempts": 0, "batch": None,
                        "reason": "column 'impressions' has negative or non-integer counts"},
        },
    }


def test_table_is_worst_first(manifest):
    rows = diagnostics_table(manifest)
    assert [r["partition"] for r in rows] == ["SD|ABC", "HOU|NBC", "CHI|FOX", "LA|CNN", "NYC|ESPN"]
    assert rows[2] == {"partition": "CHI|FOX", "status": "unconverged", "r_hat": 1.08, "ess_bulk": 50.0,
                       "divergences": 3, "attempts": 1, "reason": "r_hat 1.080 > 1.01 (alpha)"}
    assert rows[0]["r_hat"] is None and rows[0]["reason"] == "RuntimeError: boom"
    assert len(diagnostics_table(manifest, limit=2)) == 2


def test_headline_and_cost(manifest):
    assert cost_summary(manifest) == {"wall_s": 61.5, "cpu_s": 3600.0, "usd": pytest.approx(0.0133)}
    text = headline_markdown(manifest)
    for needle in ("**2** ok", "**1** unconverged", "**1** failed", "**1** quarantined", "1.0800",
                   "1m 02s", "1h 00m 00s", "$0.0133", "report.html", "file://"):
        assert needle in text


def test_keys_are_sanitised():
    assert artifact_key("Fit TV/2026_01", "diagnostics") == "fit-tv-2026-01-diagnostics"
    with pytest.raises(ValueError):
        artifact_key("--", "")


@flow(name="publish-test")
def publish_flow(manifest: dict) -> str:
    publish_artifacts(manifest, "Fit TV")
    progress = create_batch_progress("Fit TV", total=4, done=1)
    update_batch_progress(progress, 4, 4)
    return flow_run.id


def test_published_on_a_flow_run(manifest):
    run_id = publish_flow(manifest)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"fit-tv-summary", "fit-tv-diagnostics", "fit-tv-artifact", "fit-tv-report",
                           "fit-tv-progress"}
    assert by_key["fit-tv-summary"].type == "markdown" and "**1** failed" in by_key["fit-tv-summary"].data
    table = json.loads(by_key["fit-tv-diagnostics"].data)
    assert table[0]["partition"] == "SD|ABC" and table[0]["r_hat"] is None and len(table) == 5
    assert by_key["fit-tv-report"].type == "markdown" and "report.html" in by_key["fit-tv-report"].data
    assert by_key["fit-tv-progress"].type == "progress" and by_key["fit-tv-progress"].data == 100.0
    assert by_key["fit-tv-progress"].description == "4/4 batches, 0 failed"
