"""S3 end to end through the CLI, on a moto server on 127.0.0.1.

s3fs (through botocore) honours ``AWS_ENDPOINT_URL_S3``, so the subprocess needs
no bayesfan option to reach moto. A fault-injecting proxy (tests/faultproxy.py)
in front of moto checks that a fit through 500s and SlowDowns ends with the same
summary, and that a run stopped before its manifest leaves no manifest at all.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesfan.result import FitResult, IncompleteArtifact
from faultproxy import FaultProxy
from loopback_s3 import SMALL, aws_env, moto_server, run_cli, s3_client, s3_filesystem, s3_in_this_process
from models import resolve_model

BUCKET = "bayesfan-e2e"
DATA = f"s3://{BUCKET}/in.parquet"
FIT = ["--model", "linear_regression", "--partition-by", "partition", *SMALL]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """moto with the bucket and a 3-partition table; this process reads S3 through it too."""
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(3), 3, 30)
    local = tmp_path_factory.mktemp("s3") / "in.parquet"
    frame.to_parquet(local, index=False)
    with moto_server() as url, s3_in_this_process(url):
        s3_client(url).create_bucket(Bucket=BUCKET)
        s3_client(url).upload_file(str(local), BUCKET, "in.parquet")
        yield url


@pytest.fixture(scope="module")
def first_run(endpoint):
    out = f"s3://{BUCKET}/run"
    done = run_cli("fit", "--data", DATA, "--out", out, *FIT, env=aws_env(endpoint))
    assert done.returncode == 0, done.stderr
    return out, done


def test_fit_writes_the_artifact_to_s3(endpoint, first_run):
    out, done = first_run
    assert "batches: 1 (0 reused)" in done.stdout
    result = FitResult(out)
    assert result.manifest["counts"]["total"] == 3 and result.manifest["input"]["url"] == DATA
    assert set(result.summary["partition"]) == {"p0000", "p0001", "p0002"}
    posterior = result.posterior["posterior"].to_dataset()
    assert posterior.sizes["partition"] == 3 and posterior.sizes["chain"] == 2 and posterior.sizes["draw"] == 100
    tree = xr.open_datatree(f"{out}/posterior.zarr", engine="zarr")  # plain xarray + s3fs, no bayesfan
    assert list(tree["posterior"]["partition"].values) == ["p0000", "p0001", "p0002"]


def test_rerun_reuses_every_batch(endpoint, first_run):
    out, _ = first_run
    before = FitResult(out).summary
    done = run_cli("fit", "--data", DATA, "--out", out, *FIT, env=aws_env(endpoint))
    assert done.returncode == 0, done.stderr
    assert "batches: 1 (1 reused)" in done.stdout
    pd.testing.assert_frame_equal(FitResult(out).summary, before)


def test_fit_through_storage_faults_gives_the_same_summary(endpoint, first_run):
    out = f"s3://{BUCKET}/faults"
    # No botocore retries: every fault reaches s3fs, which retries SlowDown; bayesfan's Store retries the rest.
    with FaultProxy(endpoint, fraction=0.2, seed=7) as proxy:
        done = run_cli("fit", "--data", DATA, "--out", out, *FIT, env=aws_env(proxy.url) | {"AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode == 0, done.stderr
    assert proxy.faults[500] > 0 and proxy.faults[503] > 0, proxy.faults
    pd.testing.assert_frame_equal(FitResult(out).summary, FitResult(first_run[0]).summary)


def test_a_run_stopped_before_its_manifest_leaves_none(endpoint, first_run):
    fs = s3_filesystem(endpoint)
    fs.copy(f"{BUCKET}/run", f"{BUCKET}/stopped", recursive=True)
    out = f"s3://{BUCKET}/stopped"
    assert FitResult(out).manifest["counts"]["total"] == 3  # a finished artifact, about to be rewritten
    with FaultProxy(endpoint, fail_writes=r"/stopped/posterior\.zarr") as proxy:
        done = run_cli("fit", "--data", DATA, "--out", out, *FIT, env=aws_env(proxy.url) | {"AWS_MAX_ATTEMPTS": "1"})
    assert done.returncode == 1 and proxy.faults[500] > 0
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not fs.exists(f"{BUCKET}/stopped/manifest.json")
    with pytest.raises(IncompleteArtifact, match="no manifest.json"):
        FitResult(out).manifest
    shown = run_cli("inspect", out, env=aws_env(endpoint))
    assert shown.returncode == 2 and shown.stderr.strip().splitlines() == [
        f"error: {out}: no manifest.json, so no finished artifact (the run did not complete, or wrong path)"
    ]
    assert json.loads(fs.cat_file(f"{BUCKET}/run/manifest.json"))["counts"]["total"] == 3
