"""The bayesfan command line, run as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

BAYESFAN = [sys.executable, "-m", "bayesfan.cli"]
SMALL = ["--chains", "2", "--warmup", "100", "--draws", "100", "--workers", "1", "--no-report"]


def run(*args: str, cwd=None, **env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"} | env
    return subprocess.run([*BAYESFAN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "data.parquet"
    done = run("simulate", "linear_regression", "--partitions", "3", "--length", "30", "--seed", "1",
               "--out", str(path))
    assert done.returncode == 0, done.stderr
    return path


def test_help_explains_every_fit_option():
    done = run("fit", "--help")
    assert done.returncode == 0
    for option in ("--data", "--model", "--partition-by", "--out", "--chains", "--warmup", "--draws", "--seed",
                   "--batch-size", "--workers", "--max-retries"):
        assert option in done.stdout


def test_simulate_writes_data_and_truth(simulated):
    frame = pd.read_parquet(simulated)
    truth = pd.read_parquet(simulated.parent / "truth.parquet")
    assert len(frame) == 90 and set(frame.columns) == {"partition", "x1", "x2", "y"}
    assert list(truth.columns) == ["partition", "parameter", "value"]
    assert set(truth["parameter"]) == {"alpha", "beta[0]", "beta[1]", "sigma"}


def test_fit_succeeds_with_exit_0_and_inspect_reads_the_artifact(simulated, tmp_path):
    """On the ephemeral default (no ``PREFECT_API_URL``), as a first-time user runs it; settings from
    a config file, with the flags given on the command line overriding it."""
    out = tmp_path / "out"
    settings = tmp_path / "fit.yaml"
    settings.write_text("model: linear_regression\npartition_by: [partition]\ntarget_accept: 0.85\nchains: 3\n")
    done = run("fit", "--config", str(settings), "--data", str(simulated), "--out", str(out), "--json", *SMALL,
               PREFECT_API_URL="", PREFECT_LOGGING_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["model"], config["partition_by"], config["target_accept"]) == ("linear_regression", ["partition"], 0.85)
    assert config["chains"] == 2  # --chains 2 overrides the file's 3
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["counts"]["total"] == 3 and summary["counts"]["failed"] == 0
    # the batch workers (a fit round and a refit round) use the flow's server, not servers of their own
    assert done.stderr.count("Starting temporary server") == 1, done.stderr
    shown = run("inspect", str(out))
    assert shown.returncode == 0 and "partitions: 3" in shown.stdout and "worst:" in shown.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--model", "linear_regression", "--model-option", "y=target"], "missing column 'target'"),
        (["--model", "linear_regression", "--chains", "0"], "invalid chains"),
        (["--model", "linear_regression", "--model-option", "colour=red"], "option 'colour'"),
    ],
)
def test_bad_input_exits_2_with_one_line(simulated, tmp_path, args, message):
    done = run("fit", "--data", str(simulated), "--partition-by", "partition", "--out", str(tmp_path), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("fit.json", '{"chains": 0}', "fit.json: invalid chains"),
        ("fit.toml", "chains = [", "fit.toml: not valid TOML"),
        ("fit.yaml", "- a list", "fit.yaml: expected a mapping"),
        ("fit.ini", "chains=2", "fit.ini: unknown config format '.ini'"),
        ("fit.yaml", "chainz: 2", "fit.yaml: invalid chainz: Extra inputs are not permitted"),
    ],
)
def test_bad_config_file_exits_2_naming_the_file(simulated, tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    done = run("fit", "--config", str(tmp_path / name), "--data", str(simulated), "--model", "linear_regression",
               "--partition-by", "partition", "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_missing_required_setting_is_named(tmp_path):
    done = run("fit", "--model", "linear_regression", "--partition-by", "p", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "error: missing required setting 'data'" in done.stderr


def test_missing_file_exits_2_naming_the_file(tmp_path):
    missing = tmp_path / "nope.parquet"
    done = run("fit", "--data", str(missing), "--model", "linear_regression", "--partition-by", "p",
               "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and f"error: {missing}: no such file" in done.stderr


def test_quarantined_partition_exits_1_and_keeps_the_rest(simulated, tmp_path):
    frame = pd.read_parquet(simulated)
    frame.loc[frame.partition == "p0001", "y"] = np.inf
    data = tmp_path / "bad.csv"
    frame.to_csv(data, index=False)
    done = run("fit", "--data", str(data), "--model", "linear_regression", "--partition-by", "partition",
               "--out", str(tmp_path / "out"), *SMALL)
    assert done.returncode == 1
    assert "quarantined: p0001: column 'y' has NaN or infinite values" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: 0 partition(s) failed and 1 quarantined")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == {"ok": manifest["counts"]["ok"], "unconverged": manifest["counts"]["unconverged"],
                                  "failed": 0, "quarantined": 1, "total": 3}
