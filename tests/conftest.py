"""Test setup: Prefect state and JAX caches live in a per-session temp dir; nothing leaves loopback.

Each pytest process (each xdist worker) starts one real ``prefect server`` on a free
127.0.0.1 port and points ``PREFECT_API_URL`` at it, so flows and CLI subprocesses
share it instead of each starting an ephemeral API (slow, and on a busy machine two
ephemeral servers can race for one port). Tests of the ephemeral default drop
``PREFECT_API_URL`` from their subprocess environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SESSION_HOME = Path(tempfile.mkdtemp(prefix="bayesfan-tests-"))

os.environ["PREFECT_HOME"] = str(SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.setdefault("BAYESFAN_CACHE_DIR", str(ROOT / ".cache" / "bayesfan"))
# Spawned worker processes import test-only models from tests/.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path[:0] = [str(ROOT / "tests")]

_SERVER: subprocess.Popen | None = None
#: The longest test files (seconds on 2 cores), run first: xdist's ``--dist loadfile`` hands
#: out files in collection order, so long files last would leave one worker idle at the end.
LONGEST_FIRST = ("test_bench.py", "test_sbc.py", "test_backends.py", "test_bad_input.py", "test_pipeline.py",
                 "test_chaos.py", "test_recovery.py", "test_faults.py", "test_reference.py", "test_cli.py",
                 "test_report.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_configure(config):
    """Start this process's Prefect server before any test module imports prefect."""
    global _SERVER
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the xdist controller runs no tests
    if getattr(config.option, "collectonly", False):
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(SESSION_HOME / "prefect-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    _SERVER = subprocess.Popen(  # noqa: S603 - fixed argv
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "PREFECT_UI_ENABLED": "false"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):  # noqa: S310 - loopback
                break
        except OSError:
            if _SERVER.poll() is not None:
                break
            time.sleep(0.5)
    else:
        _stop_server()
        raise RuntimeError(f"prefect server did not start: {(SESSION_HOME / 'prefect-server.log').read_text()[-2000:]}")
    if _SERVER.poll() is not None:
        raise RuntimeError(f"prefect server exited: {(SESSION_HOME / 'prefect-server.log').read_text()[-2000:]}")
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"


def pytest_unconfigure(config):
    _stop_server()


def _stop_server() -> None:
    if _SERVER is None or _SERVER.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(_SERVER.pid, sig)
            _SERVER.wait(timeout=20)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
