"""What a fit shows in the Prefect UI: a diagnostics table, a headline, links and batch progress.

The ``*_content`` functions are plain: manifest dict in, artifact content out.
``publish_artifacts`` and the progress helpers call Prefect and must run inside a
flow or task run. Keys are ``<prefix>-<name>`` with only lowercase letters, digits
and dashes, so a deployment's runs version the same artifacts.
"""

from __future__ import annotations

import re
from pathlib import Path
from uuid import UUID

from prefect.runtime import deployment
from prefect.artifacts import (
    create_link_artifact, create_markdown_artifact, create_progress_artifact, create_table_artifact,
    update_progress_artifact,
)

#: Fargate Spot price per vCPU-hour (us-east-1), the basis of the projected cost.
USD_PER_VCPU_HOUR = 0.0133
#: Most rows in the diagnostics table; the UI renders every row it is given.
TABLE_ROWS = 200
SEVERITY = {"failed": 0, "quarantined": 1, "unconverged": 2, "ok": 3}
STATUSES = ("ok", "unconverged", "failed", "quarantined")


def artifact_prefix(model: str) -> str:
    """Keys stable per deployment (per model outside one), so runs compare over time in the UI."""
    return f"fit-{deployment.name or model}"


def artifact_key(prefix: str, name: str) -> str:
    """``<prefix>-<name>`` lowercased, every run of other characters turned into one dash."""
    key = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{name}".lower()).strip("-")
    if not key:
        raise ValueError(f"no usable artifact key from {prefix!r} and {name!r}")
    return key


def diagnostics_table(manifest: dict, limit: int = TABLE_ROWS) -> list[dict]:
    """Per-partition rows, worst first: failed, quarantined, unconverged, ok; then by R-hat and ESS."""

    def rank(item):
        key, p = item
        r_hat, ess = p.get("r_hat_max"), p.get("ess_bulk_min")
        return (SEVERITY.get(p["status"], -1), -(r_hat if r_hat is not None else float("inf")),
                ess if ess is not None else -1.0, key)

    rows = []
    for key, p in sorted(manifest["partitions"].items(), key=rank)[:limit]:
        rows.append({
            "partition": key,
            "status": p["status"],
            "r_hat": _round(p.get("r_hat_max"), 4),
            "ess_bulk": _round(p.get("ess_bulk_min"), 0),
            "divergences": p.get("divergences"),
            "attempts": p.get("attempts"),
            "reason": p.get("reason") or "",
        })
    return rows


def cost_summary(manifest: dict) -> dict:
    """Wall seconds (the run's timings), CPU seconds (all batches' sampling) and projected USD."""
    timings = manifest.get("timings", {})
    wall = float(sum(v for k, v in timings.items() if k.endswith("_s") and k != "cpu_s"))
    cpu = float(timings.get("cpu_s", sum(b.get("sample_seconds", 0.0) for b in manifest.get("batches", {}).values())))
    return {"wall_s": wall, "cpu_s": cpu, "usd": cpu / 3600.0 * USD_PER_VCPU_HOUR}


def artifact_links(manifest: dict) -> dict[str, str]:
    """Links to the artifact directory and its report (``file://`` for local paths)."""
    out = manifest["config"]["out"].rstrip("/")
    root = out if "://" in out else Path(out).resolve().as_uri()
    return {"artifact": root, "report": f"{root}/report.html"}


def headline_markdown(manifest: dict) -> str:
    """A short markdown headline: partitions by status, time, projected cost, links."""
    counts, cost, links = manifest["counts"], cost_summary(manifest), artifact_links(manifest)
    worst = manifest.get("worst_r_hat")
    status_line = " · ".join(f"**{counts.get(s, 0)}** {s}" for s in STATUSES)
    return "\n".join([
        f"### {manifest.get('model', 'fit')}: {counts['total']} partitions",
        "",
        status_line,
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| worst R-hat | {'n/a' if worst is None else f'{worst:.4f}'} |",
        f"| batches | {manifest.get('batches_total', 0)} ({manifest.get('batches_reused', 0)} reused) |",
        f"| wall time | {_duration(cost['wall_s'])} |",
        f"| CPU time (all batches) | {_duration(cost['cpu_s'])} |",
        f"| projected cost | ${cost['usd']:.4f} at ${USD_PER_VCPU_HOUR}/vCPU-hour |",
        "",
        f"Artifact: [{links['artifact']}]({links['artifact']}) · Report: [report.html]({links['report']})",
    ])


def publish_artifacts(manifest: dict, key_prefix: str) -> dict[str, UUID]:
    """Create the diagnostics table, headline and links on the current flow or task run."""
    counts, links = manifest["counts"], artifact_links(manifest)
    shown = min(TABLE_ROWS, counts["total"])
    return {
        "summary": create_markdown_artifact(
            headline_markdown(manifest), key=artifact_key(key_prefix, "summary"),
            description="Partitions by status, time and projected cost"),
        "diagnostics": create_table_artifact(
            diagnostics_table(manifest), key=artifact_key(key_prefix, "diagnostics"),
            description=f"Worst {shown} of {counts['total']} partitions"),
        "artifact": create_link_artifact(
            links["artifact"], link_text="posterior artifact", key=artifact_key(key_prefix, "artifact"),
            description="posterior.zarr, summary.parquet and manifest.json"),
        "report": create_link_artifact(
            links["report"], link_text="HTML report", key=artifact_key(key_prefix, "report"),
            description="Forest, convergence, trace, rank and predictive-check plots"),
    }


def create_batch_progress(key_prefix: str, total: int, done: int = 0) -> UUID:
    """A progress artifact for ``done`` of ``total`` batches; returns its id for updates."""
    return create_progress_artifact(
        _percent(done, total), key=artifact_key(key_prefix, "progress"), description=f"{done}/{total} batches")


def update_batch_progress(artifact_id: UUID, done: int, total: int, failed: int = 0) -> UUID:
    """Set the progress artifact to ``done`` of ``total`` batches, ``failed`` of them failed."""
    return update_progress_artifact(
        artifact_id, _percent(done, total), description=f"{done}/{total} batches, {failed} failed")


def _percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else round(100.0 * min(done, total) / total, 2)


def _round(value, digits: int):
    return None if value is None else round(float(value), digits)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"
