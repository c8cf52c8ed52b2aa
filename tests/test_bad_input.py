"""The bad-input corpus (``tests/data/bad``, expectations in ``cases.json``) through the real CLI.

Exit 2: exactly one stderr line, ``error: ...`` naming the file, column, option or
location, and no traceback. Exit 1: the named partitions are quarantined with their
reasons, the rest is fitted and the artifact written. Files of one model share an
artifact directory, so their common ``good`` partition is fitted once and reused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aws_fixtures import free_port
from loopback_s3 import SMALL, aws_env, moto_server, run_cli, s3_client

BAD = Path(__file__).resolve().parent / "data" / "bad"
CASES = json.loads((BAD / "cases.json").read_text())
BUCKET = "bayesfan-bad"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


@pytest.fixture(scope="module")
def moto_endpoint():
    with moto_server() as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        client.upload_file(str(BAD / "valid.parquet"), BUCKET, "valid.parquet")
        yield endpoint


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-input")


def case_env(case: dict, request) -> dict:
    storage = case.get("storage")
    if storage == "moto":
        return aws_env(request.getfixturevalue("moto_endpoint"))
    if storage == "closed":
        return aws_env(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    if storage == "nocreds":
        return aws_env(request.getfixturevalue("moto_endpoint"), secret=None)
    return {}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case, outs, request):
    data = case["data"] if "://" in case["data"] else str(BAD / case["data"])
    out = case.get("out") or str(outs / (case["model"] if case["exit"] == 1 else re.sub(r"\W+", "-", case["name"])))
    done = run_cli("fit", "--data", data, "--model", case["model"], "--partition-by", case["partition_by"],
                   "--out", out, *SMALL, *case.get("args", []), env=case_env(case, request))
    assert "Traceback" not in done.stderr + done.stdout
    assert done.returncode == case["exit"], done.stderr
    if case["exit"] == 2:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert case["error"].format(data=data, out=out) in lines[0], lines[0]
        return
    assert done.stderr.strip().splitlines()[-1].startswith("error: 0 partition(s) failed and 1 quarantined")
    partitions = json.loads((Path(out) / "manifest.json").read_text())["partitions"]
    quarantined = {k: p["reason"] for k, p in partitions.items() if p["status"] == "quarantined"}
    assert quarantined.keys() == case["quarantined"].keys()
    for key, reason in case["quarantined"].items():
        assert reason in quarantined[key]
    assert {k for k, p in partitions.items() if p["status"] in ("ok", "unconverged")} == set(case["fitted"])
    assert (Path(out) / "summary.parquet").is_file() and (Path(out) / "posterior.zarr").is_dir()
    assert_keys_are_no_paths(Path(out), partitions)


def assert_keys_are_no_paths(out: Path, partitions: dict) -> None:
    """Names under ``out`` are plain ASCII and none is a piece of a fitted key (``../../escape`` -> ``escape``)."""
    fitted = [k for k, p in partitions.items() if p["status"] in ("ok", "unconverged")]
    pieces = {piece for key in fitted for piece in re.split(r"[|/\\\n:]", key)} - {"", ".", ".."}
    for path in out.rglob("*"):
        assert SAFE_NAME.fullmatch(path.name) and path.name not in pieces, path
    assert not any((folder / "escape").exists() for folder in (out.parent, out.parent.parent))
