"""The same fit on every backend gives the same draws: local process pool, Dask, and a Prefect
work pool served by real ``prefect worker`` processes against a real ``prefect server``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from aws_fixtures import _stop, prefect_api  # noqa: F401 - fixture
from models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["--chains", "2", "--warmup", "100", "--draws", "100", "--batch-size", "1", "--max-refits", "0", "--no-report"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(5), 4, 30)
    path = tmp_path_factory.mktemp("backends") / "data.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def local_fit(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    fit(data, out, dict(os.environ), "--workers", "2")
    return out


def fit(data: Path, out: Path, env: dict, *args: str) -> None:
    done = subprocess.run(  # noqa: S603 - fixed argv
        [str(BIN / "bayesfan"), "fit", "--data", str(data), "--model", "linear_regression", "--partition-by",
         "partition", "--out", str(out), *SMALL, *args],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def draws(out: Path) -> xr.Dataset:
    return xr.open_datatree(out / "posterior.zarr", engine="zarr")["posterior"].to_dataset().load()


@pytest.mark.slow
def test_pool_backend_with_real_workers_matches_local(prefect_api, data, local_fit, tmp_path):  # noqa: F811
    env = {**prefect_api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    pool = "bayesfan-test"
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],  # noqa: S603
                   env=env, check=True, capture_output=True, timeout=120)
    deployed = subprocess.run([str(BIN / "bayesfan"), "deploy", "--work-pool", pool, "--source", str(ROOT)],  # noqa: S603
                              env=env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    assert "fit-batch/fit-batch" in deployed.stdout and "fit-partitions/fit-partitions" in deployed.stdout
    workers = [
        subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],  # noqa: S603
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(2)
    ]
    try:
        out = tmp_path / "pool-out"
        fit(data, out, env, "--backend", "pool", "--work-pool", pool, "--max-in-flight", "6")
    finally:
        for worker in workers:
            _stop(worker)
    manifest_batches = len(list((out / "batches").glob("*/done.json")))
    assert manifest_batches == 4
    xr.testing.assert_equal(draws(out), draws(local_fit))


@pytest.mark.slow
def test_dask_backend_on_a_local_cluster_matches_local(data, local_fit, tmp_path):
    env = dict(os.environ)
    out = tmp_path / "dask-out"
    fit(data, out, env, "--backend", "dask", "--workers", "2")
    xr.testing.assert_equal(draws(out), draws(local_fit))
