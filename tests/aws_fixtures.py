"""Loopback-only AWS and Prefect servers for the infra and Batch tests.

``moto`` yields the endpoint of an in-process moto server on 127.0.0.1 (Batch in
its no-Docker mode, dummy credentials in the environment); ``prefect_api`` yields
the environment (``PREFECT_API_URL`` set) for a ``prefect server`` subprocess with its own PREFECT_HOME. Both are
stopped in ``finally`` blocks, so a failing test leaves no process or port behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

REGION = "us-east-1"
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post_json(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback URL built here
        pass


@pytest.fixture(scope="module")
def moto():
    """Endpoint URL of a fresh moto server on 127.0.0.1 (state reset before and after)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in DUMMY_ENV.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        server.start()
        try:
            post_json(f"{endpoint}/moto-api/reset", b"")
            post_json(f"{endpoint}/moto-api/config", b'{"batch": {"use_docker": false}}')
            yield endpoint
        finally:
            try:
                post_json(f"{endpoint}/moto-api/reset", b"")
            finally:
                server.stop()


def client(service: str, endpoint: str):
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def network(endpoint: str) -> tuple[str, str, str]:
    """A VPC, one subnet and one security group in moto: ``(vpc_id, subnet_id, group_id)``."""
    ec2 = client("ec2", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"sg-{vpc}", Description="test", VpcId=vpc)["GroupId"]
    return vpc, subnet, group


def service_role(endpoint: str, name: str = "batch-service") -> str:
    """An IAM role ARN for Batch's ServiceRole (moto insists on one; real Batch may use its service-linked role)."""
    iam = client("iam", endpoint)
    trust = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"batch.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """Environment pointing at a ``prefect server start`` subprocess on a free loopback port, killed afterwards."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(  # noqa: S603 - fixed argv
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", process, home / "server.log")
        yield env
    finally:
        _stop(process)
        log.close()


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback URL built here
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of the group is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
