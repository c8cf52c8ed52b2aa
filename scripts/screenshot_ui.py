"""Screenshot a fit in the Prefect UI: its flow-run page's Artifacts tab, and two artifacts.

Starts ``prefect server start`` on 127.0.0.1 (state in a temp PREFECT_HOME, analytics
off), runs a tiny fit against it with PREFECT_API_URL set, writes the artifact's
report, then drives headless Debian chromium (``apt-get install -y chromium``) over
the DevTools protocol. Writes ``docs/ui-flow-run.png``, ``docs/ui-artifact-summary.png``
and ``docs/ui-artifact-diagnostics.png``. Nothing leaves loopback.

    python scripts/screenshot_ui.py [--docs DIR] [--publish]

``--publish`` wraps the fit in a flow that publishes the artifacts itself, for a
``fit-partitions`` flow that does not call ``publish_artifacts``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1400, 1000
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
    f"--window-size={WIDTH},{HEIGHT}",
]
#: The flow-run page resets ``?tab=`` while the run loads, so the tab is clicked.
FIND_TAB = "[...document.querySelectorAll('.p-tab, [role=tab]')].find(e => e.textContent.trim() === 'Artifacts')"
#: Artifacts shot on their own page, and text that shows they have rendered.
ARTIFACTS = {"summary": "projected cost", "diagnostics": "ess_bulk"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_url(url: str, process: subprocess.Popen, timeout: float = 300.0) -> bytes:
    """GET ``url`` until it answers 200, while ``process`` (which serves it) runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s")


def run_fit(work: Path, publish: bool):
    """Simulate 4 partitions, fit them against the server and write the report; return the run id."""
    import numpy as np
    from prefect import flow

    from bayesfan.config import FitConfig
    from bayesfan.result import FitFailed
    from flows.fit import fit_partitions
    from models import resolve_model
    from tasks.artifacts import publish_artifacts
    from tasks.report import build_report

    frame, _ = resolve_model("impressions_nb").simulate(np.random.default_rng(0), 4, 96)
    frame.to_parquet(work / "data.parquet", index=False)
    config = FitConfig(data=str(work / "data.parquet"), model="impressions_nb", partition_by="market,network",
                       out=str(work / "artifact"), chains=2, warmup=150, draws=150, workers=1)

    @flow(name="fit-and-publish")
    def fit_and_publish():
        try:
            result = fit_partitions(config)
        except FitFailed as exc:
            result = exc.result
        build_report(result.path)
        publish_artifacts(result.manifest, "screenshot")

    if publish:
        return fit_and_publish(return_state=True).state_details.flow_run_id
    state = fit_partitions(config, return_state=True)
    build_report(config.out)
    return state.state_details.flow_run_id


def run_artifacts(run_id) -> dict[str, str]:
    """``{"summary": id, "diagnostics": id}`` of the run's artifacts, by key suffix."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {name: str(a.id) for a in found for name in ARTIFACTS if (a.key or "").endswith(f"-{name}")}


class DevTools:
    """A minimal Chrome DevTools Protocol client on one page's websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws, self.last = connect(ws_url, max_size=None), 0

    def call(self, method: str, **params):
        self.last += 1
        self.ws.send(json.dumps({"id": self.last, "method": method, "params": params}))
        while (reply := json.loads(self.ws.recv())).get("id") != self.last:
            pass
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not self.evaluate(expression):
            if time.time() > deadline:
                raise TimeoutError(f"{what} did not appear in {timeout:.0f}s")
            time.sleep(0.5)
        time.sleep(2)  # let the rest of the page finish rendering

    def open(self, url: str, ready: str, what: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(ready, what)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"wrote {path}")


def screenshots(base: str, run_id, artifacts: dict[str, str], docs: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    port = free_port()
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
         "--remote-debugging-address=127.0.0.1", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pages = json.loads(wait_url(f"http://127.0.0.1:{port}/json/list", browser, 120))
        tools = DevTools(next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"))
        tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        tools.open(f"{base}/runs/flow-run/{run_id}", f"!!({FIND_TAB})", "the flow run's Artifacts tab")
        tools.evaluate(f"({FIND_TAB}).click()")
        tools.wait_for("document.body.innerText.includes('-diagnostics')", "the diagnostics artifact")
        tools.save(docs / "ui-flow-run.png")
        for name, needle in ARTIFACTS.items():
            tools.open(f"{base}/artifacts/artifact/{artifacts[name]}",
                       f"document.body.innerText.includes({json.dumps(needle)})", f"the {name} artifact")
            tools.save(docs / f"ui-artifact-{name}.png")
    finally:
        browser.terminate()
        browser.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the PNGs go")
    parser.add_argument("--publish", action="store_true", help="publish the artifacts from a wrapper flow")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bayesfan-ui-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Set before prefect is imported: this process, its workers and the server share them.
    os.environ.update({
        "PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"{base}/api", "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_LOGGING_LEVEL": "WARNING",
    })
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(work / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_url(f"{base}/api/health", server)
            run_id = run_fit(work, args.publish)
            artifacts = run_artifacts(run_id)
            if set(artifacts) != set(ARTIFACTS):
                raise SystemExit(f"flow run {run_id} has no bayesfan artifacts: wire publish_artifacts into "
                                 "the flow, or pass --publish")
            screenshots(base, run_id, artifacts, args.docs, work / "chromium")
        finally:
            server.terminate()
            server.wait(timeout=60)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
