"""Security: bandit finds nothing of high severity; credentials never reach output, logs or
artifacts; artifacts hold only zarr, Parquet and JSON (plus the report's HTML and PNGs),
and reading them unpickles nothing."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bayesfan.result import FitResult
from bayesfan.storage import Store, unpack_tree
from loopback_s3 import KEY_ID, SMALL, aws_env, moto_server, run_cli, s3_client, s3_filesystem, s3_in_this_process
from models import resolve_model

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bayesfan-security"
SECRET = "bayesfanSECRET0123456789abcdefSECRETxyz"
CODECS = {"bytes", "zstd", "blosc", "gzip", "crc32c", "transpose", "vlen-utf8", "vlen-bytes", "sharding_indexed"}
CHUNK = re.compile(r"([^/]+/)*(zarr\.json|c(/\d+)+)")
REPORT_PNG = re.compile(r"report/[a-z]+(-\d+)?\.png")


def test_bandit_finds_no_high_severity_issue():
    done = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", "bayesfan", "flows", "tasks", "models",
                           "-lll", "-f", "json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    report = json.loads(done.stdout)
    assert report["results"] == [], json.dumps(report["results"], indent=1)
    assert not report["errors"], report["errors"]


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as url, s3_in_this_process(url):
        s3_client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture(scope="module")
def secret_fit(endpoint, tmp_path_factory):
    """A fit on S3 with ``--debug`` (Prefect's logs shown) and a known secret key; one partition quarantined."""
    frame, _ = resolve_model("linear_regression").simulate(np.random.default_rng(5), 2, 30)
    frame.loc[frame["partition"] == "p0001", "y"] = np.nan
    local = tmp_path_factory.mktemp("security") / "in.parquet"
    frame.to_parquet(local, index=False)
    s3_client(endpoint).upload_file(str(local), BUCKET, "in.parquet")
    out = f"s3://{BUCKET}/run"
    done = run_cli("fit", "--data", f"s3://{BUCKET}/in.parquet", "--model", "linear_regression",
                   "--partition-by", "partition", "--out", out, "--debug", *SMALL, "--report",
                   env=aws_env(endpoint, SECRET))
    assert done.returncode == 1, done.stderr
    return out, done


def test_credentials_never_appear_in_output_logs_or_artifacts(endpoint, secret_fit):
    out, done = secret_fit
    assert "quarantined: p0001" in done.stdout and "INFO" in done.stdout + done.stderr  # Prefect's logs were on
    texts = [done.stdout, done.stderr]
    fs = s3_filesystem(endpoint)
    texts += [fs.cat_file(path).decode() for path in fs.find(f"{BUCKET}/run") if path.endswith(".json")]
    for args in (["--out", f"s3://{BUCKET}-missing/run"], ["--out", f"s3://{BUCKET}-missing/run", "--debug"]):
        failed = run_cli("fit", "--data", f"s3://{BUCKET}/in.parquet", "--model", "linear_regression",
                         "--partition-by", "partition", *args, env=aws_env(endpoint, SECRET))
        assert failed.returncode != 0 and "cannot write there" in failed.stderr
        texts += [failed.stdout, failed.stderr]
    for text in texts:
        assert SECRET not in text and KEY_ID not in text
    for path in Path(os.environ["PREFECT_HOME"]).rglob("*"):  # Prefect's database: run parameters and logs
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_artifact_holds_only_zarr_parquet_and_json(endpoint, secret_fit):
    fs = s3_filesystem(endpoint)
    prefix = f"{BUCKET}/run/"
    files = [path.removeprefix(prefix) for path in fs.find(prefix)]
    assert "manifest.json" in files and "posterior.zarr/zarr.json" in files
    for name in files:
        if name.endswith(".zarr.zip"):
            with zipfile.ZipFile(io.BytesIO(fs.cat_file(prefix + name))) as archive:
                for member in archive.namelist():
                    assert CHUNK.fullmatch(member), member
                    if member.endswith("zarr.json"):
                        assert_safe_zarr_metadata(archive.read(member))
        elif ".zarr/" in name:
            assert CHUNK.fullmatch(name.split(".zarr/", 1)[1]), name
            if name.endswith("zarr.json"):
                assert_safe_zarr_metadata(fs.cat_file(prefix + name))
        elif name == "report.html":  # the human-readable page: pictures inline, no script
            assert "<script" not in fs.cat_file(prefix + name).decode().lower()
        else:
            assert name.endswith((".json", ".parquet")) or REPORT_PNG.fullmatch(name), name


def assert_safe_zarr_metadata(raw: bytes) -> None:
    meta = json.loads(raw)
    if meta.get("node_type") == "array":
        assert {codec["name"] for codec in meta["codecs"]} <= CODECS, meta["codecs"]
        assert "object" not in json.dumps(meta["data_type"]), meta["data_type"]


def test_reading_an_artifact_unpickles_nothing(secret_fit, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while reading an artifact")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    out, _ = secret_fit
    result = FitResult(out)
    assert result.manifest["counts"]["quarantined"] == 1
    assert len(result.summary) > 0
    result.posterior.load()
    store = Store(out)
    for batch_id in result.manifest["batches"]:
        unpack_tree(store.read_bytes("batches", batch_id, "result.zarr.zip"))
