"""A small chaos run (``scripts/chaos.py``, issue 7): a pool-backend fit to a flaky loopback S3
survives killed and SIGTERM'd batch runs and a killed parent, loses and duplicates nothing,
gives the clean run's draws, and leaves no process behind. ``make chaos`` runs the full size."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
VERDICT = re.compile(
    r"^chaos: lost=(\S+) duplicated=(\S+) identical=(\S+) kills=(\d+) sigterms=(\d+) parent_restarts=(\d+) "
    r"s3_faults=(\d+)( error=\S+)?$"
)


@pytest.mark.slow
def test_small_chaos_run_loses_nothing_and_matches_the_clean_run(tmp_path):
    report = tmp_path / "report.json"
    done = chaos(["--partitions", "16", "--batch-size", "4", "--kills", "2", "--sigterms", "1", "--fault-rate",
                  "0.05", "--gap", "4", "--timeout", "900", "--seed", "3", "--workdir", str(tmp_path / "work"),
                  "--report", str(report)], timeout=1020)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-4000:]
    verdict = VERDICT.match(lines[-1])
    assert verdict, lines[-1] + "\n" + done.stderr[-4000:]
    lost, duplicated, identical, kills, sigterms, restarts, faults, error = verdict.groups()
    assert error is None, done.stderr[-4000:]
    assert (lost, duplicated, identical) == ("0", "0", "true"), done.stderr[-4000:]
    assert (int(kills), int(sigterms), int(restarts)) == (2, 1, 1), done.stderr[-4000:]
    assert int(faults) > 0
    assert done.returncode == 0, done.stderr[-4000:]

    details = json.loads(report.read_text())
    assert details["sigterms_rescheduled"] == 1, details["events"]
    assert details["batches_reused"] >= 1  # the restarted parent reused what the first one finished
    assert details["leftover_pids"] == []
    alive = [pid for pid in details["started_pids"] if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def chaos(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run scripts/chaos.py; past ``timeout`` SIGTERM it (it stops what it started) before SIGKILL."""
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "chaos.py"), *args],  # noqa: S603
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
