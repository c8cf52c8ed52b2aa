"""Loopback S3 for CLI tests: a moto server on 127.0.0.1, AWS environments, and the CLI as a subprocess.

A subprocess gets no AWS variables from the test run's environment, only those
``aws_env`` builds: the endpoint, dummy (or no) credentials, and no instance
metadata look-ups, so nothing leaves loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import boto3
import pytest
import s3fs

from aws_fixtures import free_port

BAYESFAN = [sys.executable, "-m", "bayesfan.cli"]
SMALL = ["--chains", "2", "--warmup", "100", "--draws", "100", "--workers", "1", "--max-refits", "0", "--no-report"]
REGION = "us-east-1"
KEY_ID = "AKIABAYESFANTEST0001"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``bayesfan ARGS`` with the test run's environment, less its AWS variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL" and not k.startswith("AWS_")}
    return subprocess.run([*BAYESFAN, *args], capture_output=True, text=True, env=base | (env or {}), timeout=600)


def aws_env(endpoint: str | None, secret: str | None = "testing") -> dict:
    """S3 at ``endpoint`` with dummy credentials (none when ``secret`` is None); no config files, no IMDS."""
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_DEFAULT_REGION": REGION}
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    if secret is not None:
        env |= {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": secret}
    return env


@contextmanager
def moto_server():
    """The endpoint URL of a moto server on a free loopback port, stopped on exit."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def s3_in_this_process(endpoint: str):
    """This process's s3fs (so ``FitResult`` and xarray) reach ``endpoint`` until the block ends."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in aws_env(endpoint).items():
            mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=KEY_ID, aws_secret_access_key="testing")


def s3_filesystem(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(endpoint_url=endpoint, key=KEY_ID, secret="testing", skip_instance_cache=True)
