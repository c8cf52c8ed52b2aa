"""Suite ``fanout``: orchestration cost only, with a trivial model (the mean of a few Normal rows).

For each partition count, a fresh client process (as ``bayesfan fit`` is) runs the
full pipeline (``run_fit``, embedded default) with 2 chains x 10 warmup x 10 draws
per partition, no refit round and no report; the suite reports its wall time, the
client's peak memory, and the Prefect task runs the run created (read back from the API).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers

from bayesfan.config import FitConfig
from benchmarks.measure import measure, peak_rss_mb
from models.base import Model, truth_rows

ROOT = Path(__file__).resolve().parent.parent
FULL = (1_000, 10_000)
QUICK = (100,)
ROWS = 8
SAMPLER = {"chains": 2, "warmup": 10, "draws": 10}
#: Orchestration only: no refit round for the (unconverged) trivial fits, no plotted report.
ORCHESTRATION_ONLY = {"max_refits": 0, "report": False}


class NormalMean(Model):
    """y_i ~ Normal(mu, 1), mu ~ Normal(0, 10): the cheapest model the pipeline can fit."""

    name = "normal_mean"

    def columns(self) -> dict[str, str]:
        return {"y": "float"}

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"y": rows["y"].to_numpy(np.float32)}

    def model(self, mask, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def simulate(self, rng, partitions, length):
        mu = rng.normal(0.0, 3.0, partitions)
        keys = [f"p{p:05d}" for p in range(partitions)]
        frame = pd.DataFrame({"partition": np.repeat(keys, length),
                              "y": np.repeat(mu, length) + rng.normal(size=partitions * length)})
        truth = [row for key, m in zip(keys, mu) for row in truth_rows(key, {"mu": m})]
        return frame, pd.DataFrame(truth)


def run(quick: bool = False) -> dict:
    """Wall time, client peak memory and Prefect task runs for each partition count."""
    return {"sampler": SAMPLER, "rows": ROWS,
            "runs": {str(n): in_fresh_client(n) for n in (QUICK if quick else FULL)}}


def in_fresh_client(partitions: int) -> dict:
    """``fanout(partitions)`` in a new Python process, so its peak memory is the run's alone."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.fanout", str(partitions)], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"fanout of {partitions} partitions failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fanout(partitions: int) -> dict:
    """One pipeline run over ``partitions`` trivial partitions, measured from inside the client."""
    from flows.fit import run_fit

    frame, _ = NormalMean().simulate(np.random.default_rng(0), partitions, ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.parquet"
        frame.to_parquet(data, index=False)
        config = FitConfig(data=str(data), model="benchmarks.fanout:NormalMean", partition_by="partition",
                           out=str(Path(tmp) / "out"), **SAMPLER, **ORCHESTRATION_ONLY)
        with measure() as cost:
            result = run_fit(config)
        manifest = result.manifest
    return {
        "wall_s": cost.wall_s,
        "cpu_s": cost.cpu_s,
        "client_peak_rss_mb": peak_rss_mb(),
        "batches": manifest["batches_total"],
        "task_runs": task_runs_of_latest_fit(),
        "partitions_fitted": manifest["counts"]["ok"] + manifest["counts"]["unconverged"],
    }


def task_runs_of_latest_fit() -> int:
    """Task runs of the newest ``fit-partitions`` flow run, counted through the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["fit-partitions"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1,
        )
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        count, page = 0, 200
        while batch := client.read_task_runs(flow_run_filter=runs, limit=page, offset=count):
            count += len(batch)
        return count


if __name__ == "__main__":
    print(json.dumps(fanout(int(sys.argv[1]))))
