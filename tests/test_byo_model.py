"""Bring your own model: a package outside bayesfan, used as ``--model mypkg.module:MyModel`` by the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

PLUGINS = Path(__file__).parent / "plugins"


def bayesfan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return subprocess.run([sys.executable, "-m", "bayesfan.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_fit_a_user_model_from_its_module_path(tmp_path):
    data = tmp_path / "sales.parquet"
    done = bayesfan(tmp_path, "simulate", "mypkg.module:MyModel", "--partitions", "3", "--length", "40",
                    "--seed", "2", "--out", str(data))
    assert done.returncode == 0, done.stderr
    assert set(pd.read_parquet(data)["store"]) == {"store0", "store1", "store2"}

    out = tmp_path / "artifact"
    done = bayesfan(tmp_path, "fit", "--data", str(data), "--model", "mypkg.module:MyModel",
                    "--partition-by", "store", "--out", str(out), "--chains", "2", "--warmup", "100",
                    "--draws", "100", "--workers", "1", "--max-refits", "0", "--no-report")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "my_sales"
    assert manifest["counts"]["total"] == 3 and manifest["counts"]["ok"] + manifest["counts"]["unconverged"] == 3
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["parameter"]) == {"a", "b"} and set(summary["partition"]) == {"store0", "store1", "store2"}
    truth = pd.read_parquet(tmp_path / "truth.parquet").merge(summary, on=["partition", "parameter"])
    assert ((truth["value"] - truth["mean"]).abs() <= 4 * truth["sd"]).all(), truth
