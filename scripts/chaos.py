#!/usr/bin/env python
"""The chaos run (issue 7): a fit on ``--backend pool`` survives killed workers, Spot-style
SIGTERMs, a killed parent and a flaky S3, and gives the same draws as a clean run.

Everything runs on 127.0.0.1: a ``prefect server``, a moto S3 server, a fault-injecting
proxy in front of moto (``tests/faultproxy.py``) that answers ``--fault-rate`` of the
requests with 500/503, a process work pool with two ``prefect worker`` processes and the
parent ``bayesfan fit --backend pool`` writing its artifact to ``s3://`` through the proxy.
While it runs, a driver:

* SIGKILLs ``--kills`` times the flow-run process tree a worker started for a batch that is
  Running and not yet done (the container dies: the worker reports the run Crashed and
  the parent resubmits it on its interruption budget);
* sends SIGTERM ``--sigterms`` times to such a process (a Spot reclaim; workers run with
  ``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule``, so the run goes back to
  Scheduled and a worker picks it up again);
* SIGKILLs the parent's process group once, mid-run, and starts the same command again
  (finished batches are reused through ``done.json``, in-flight children are found again
  through their idempotency keys).

Before each event the driver freezes (SIGSTOP) a running batch and the event hits it, so a
fast run cannot finish before the plan does; the batch frozen for the parent's restart
stays frozen across it.

It then fits the same data and seed with ``--backend local`` into a local directory and
compares. The last line of stdout is the verdict::

    chaos: lost=0 duplicated=0 identical=true kills=5 sigterms=3 parent_restarts=1 s3_faults=F

The exit status is 0 only when nothing was lost or duplicated, the draws are identical
and every planned kill, SIGTERM and restart happened. The run is bounded by ``--timeout``
and every process it starts is stopped in ``finally`` blocks (progress goes to stderr,
logs of every process to ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from faultproxy import FaultProxy  # noqa: E402 - tests/ on the path first

BIN = Path(sys.executable).parent
POOL = "bayesfan-chaos"
BUCKET = "bayesfan-chaos"
REGION = "us-east-1"
KEY_ID, SECRET = "AKIABAYESFANCHAOS001", "testing"


class ChaosTimeout(Exception):
    """The run did not finish within ``--timeout``."""


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Chaos:
    """The servers, workers and parent of one chaos run, and the driver that disturbs them."""

    def __init__(self, args: argparse.Namespace, work: Path, stack: ExitStack):
        self.args, self.work, self.stack = args, work, stack
        self.rng = random.Random(args.seed)
        self.deadline = time.monotonic() + args.timeout
        self.processes: list[subprocess.Popen] = []
        self.started_pids: list[int] = []
        self.kills = self.sigterms = self.parent_restarts = 0
        self.parent: subprocess.Popen | None = None
        self.parent_starts = 0
        self.workers: list[subprocess.Popen] = []
        self.signalled: set[int] = set()  # pids: a rescheduled run comes back in a new process, a target again
        self.events: list[dict] = []

    # --- time -------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self, what: str) -> None:
        if self.left() <= 0:
            raise ChaosTimeout(f"timed out after {self.args.timeout:.0f}s while {what}")

    # --- processes --------------------------------------------------------------------------
    def spawn(self, argv: list[str], env: dict, name: str) -> subprocess.Popen:
        """Start ``argv`` in its own session (a process group to kill), output to ``<name>.log``."""
        out = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - closed by the stack
        self.stack.callback(out.close)
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603 - fixed argv
                                   start_new_session=True, cwd=ROOT)
        self.processes.append(process)
        self.started_pids.append(process.pid)
        self.stack.callback(stop_tree, process)
        return process

    def run(self, argv: list[str], env: dict, name: str, timeout: float | None = None) -> str:
        """Run ``argv`` to the end (bounded by the deadline); its output, or raise on failure."""
        process = self.spawn(argv, env, name)
        try:
            process.wait(timeout=max(1.0, min(timeout or self.left(), self.left())))
        except subprocess.TimeoutExpired:
            raise ChaosTimeout(f"{name} did not finish in time") from None
        output = (self.work / f"{name}.log").read_text(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"{name} exited {process.returncode}:\n{output[-4000:]}")
        return output

    # --- setup ------------------------------------------------------------------------------
    def base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
        env |= {
            "PREFECT_HOME": str(self.work / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "BAYESFAN_CACHE_DIR": os.environ.get("BAYESFAN_CACHE_DIR", str(ROOT / ".cache" / "bayesfan")),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            # nothing leaves loopback: no config files, no instance metadata
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(key, None)
        return env

    def start_prefect(self) -> None:
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = self.base_env() | {"PREFECT_API_URL": self.api}
        server = self.spawn([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            self.env, "prefect-server")
        while True:
            self.check_time("waiting for the prefect server")
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited {server.returncode}:\n"
                                   f"{(self.work / 'prefect-server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                time.sleep(0.5)
        log(f"prefect server at {self.api}")

    def start_s3(self) -> None:
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self.stack.callback(server.stop)
        self.moto = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client("s3", endpoint_url=self.moto, region_name=REGION,
                               aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        self.s3.create_bucket(Bucket=BUCKET)
        self.proxy = self.stack.enter_context(FaultProxy(self.moto, self.args.fault_rate, self.args.seed))
        self.env["AWS_ENDPOINT_URL_S3"] = self.proxy.url
        log(f"moto at {self.moto}, fault proxy ({self.args.fault_rate:.0%}) at {self.proxy.url}")

    def deploy(self) -> None:
        """A process pool whose runs start as ``prefect flow-run execute``, the supervisor an ECS task
        runs too: it turns a SIGTERM into a reschedule (``python -m prefect.engine``, the process
        pool's default, would end the run Crashed)."""
        output = self.run([str(BIN / "prefect"), "work-pool", "get-default-base-job-template", "--type", "process"],
                          self.env, "job-template", timeout=180)
        template = json.loads(output[output.index("{"):])
        template["variables"]["properties"]["command"]["default"] = f"{BIN / 'prefect'} flow-run execute"
        (self.work / "job-template.json").write_text(json.dumps(template))
        self.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", "--base-job-template",
                  str(self.work / "job-template.json")], self.env, "work-pool-create", timeout=180)
        output = self.run([str(BIN / "bayesfan"), "deploy", "--work-pool", POOL, "--source", str(ROOT)], self.env,
                          "deploy", timeout=300)
        if "fit-batch/fit-batch" not in output:
            raise RuntimeError(f"deploy did not register fit-batch:\n{output[-2000:]}")

    def start_workers(self) -> None:
        env = self.env | {
            "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
        for i in range(self.args.workers):
            self.workers.append(self.spawn(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                 "--name", f"chaos-worker-{i}", "--limit", str(self.args.worker_limit)],
                env, f"worker-{i}",
            ))
        log(f"{len(self.workers)} workers started (limit {self.args.worker_limit} runs each)")

    def simulate(self) -> None:
        self.data = self.work / "data.parquet"
        self.run([str(BIN / "bayesfan"), "simulate", "linear_regression", "--out", str(self.data), "--partitions",
                  str(self.args.partitions), "--length", str(self.args.length), "--seed", str(self.args.seed)],
                 self.base_env(), "simulate", timeout=300)

    def fit_argv(self, out: str, *extra: str) -> list[str]:
        return [str(BIN / "bayesfan"), "fit", "--data", str(self.data), "--model", "linear_regression",
                "--partition-by", "partition", "--out", out, "--seed", str(self.args.seed),
                "--chains", "2", "--warmup", "100", "--draws", "100", "--batch-size", str(self.args.batch_size),
                "--max-refits", "0", *extra]

    # --- the chaos run ----------------------------------------------------------------------
    @property
    def chaos_out(self) -> str:
        return f"s3://{BUCKET}/chaos"

    def start_parent(self) -> None:
        self.parent_starts += 1
        argv = self.fit_argv(self.chaos_out, "--backend", "pool", "--work-pool", POOL,
                             "--max-in-flight", str(self.args.max_in_flight),
                             "--max-interruptions", str(self.args.kills + self.args.sigterms + 5))
        self.parent = self.spawn(argv, self.env, f"parent-{self.parent_starts}")
        log(f"parent #{self.parent_starts} started (pid {self.parent.pid})")

    def batch_done(self, batch_id: str) -> bool:
        """Whether the batch's done.json is in the bucket (read from moto directly, never faulted)."""
        try:
            self.s3.head_object(Bucket=BUCKET, Key=f"chaos/batches/{batch_id}/done.json")
            return True
        except self.s3.exceptions.ClientError:
            return False

    def batches_done(self) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="chaos/batches/")
        return sum(1 for page in pages for obj in page.get("Contents", []) if obj["Key"].endswith("/done.json"))

    def flow_run(self, run_id: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.api}/flow_runs/{run_id}", timeout=10) as response:  # noqa: S310
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def targets(self) -> list[tuple[psutil.Process, dict]]:
        """(process a worker started, its flow run) for each batch Running now and not yet done."""
        found = []
        for worker in self.workers:
            try:
                children = psutil.Process(worker.pid).children(recursive=False)
            except psutil.Error:
                continue
            for child in children:
                try:
                    run_id = child.environ().get("PREFECT__FLOW_RUN_ID")
                except psutil.Error:
                    continue
                if not run_id or child.pid in self.signalled:
                    continue
                run = self.flow_run(run_id)
                if not run or (run.get("state") or {}).get("type") != "RUNNING":
                    continue
                batch_id = run["parameters"]["plan"]["batch_id"]
                if not self.batch_done(batch_id):
                    found.append((child, run))
        return found

    def parent_running(self) -> bool:
        return self.parent is not None and self.parent.poll() is None

    def wait_for_target(self, what: str) -> tuple[psutil.Process, dict] | None:
        while self.parent_running():
            self.check_time(f"waiting to {what}")
            found = self.targets()
            if found:
                return self.rng.choice(found)
            time.sleep(0.5)
        return None

    def hold(self) -> tuple[psutil.Process, dict, list[psutil.Process]] | None:
        """Freeze (SIGSTOP) the process tree of a running batch, somewhere mid-batch: the next event's target.

        A frozen batch cannot finish, so every planned event finds a batch to hit however fast
        the rest of the run goes (a stalled machine is one more fault the run must survive)."""
        target = self.wait_for_target("hold a batch")
        if target is None:
            return None
        process, run = target
        time.sleep(self.rng.uniform(0.0, 2.0))  # somewhere mid-batch
        tree = [process, *safe_children(process)]
        _signal(tree, signal.SIGSTOP)
        if self.batch_done(run["parameters"]["plan"]["batch_id"]) or not process.is_running():
            _signal(tree, signal.SIGCONT)  # it finished first: hold another
            return self.hold()
        return process, run, tree

    def hit(self, kind: str, held: tuple[psutil.Process, dict, list[psutil.Process]]) -> None:
        """SIGKILL the held batch's process tree (``kill``) or SIGTERM its top process (``sigterm``)."""
        process, run, tree = held
        self.signalled.add(process.pid)
        if kind == "kill":
            _signal(tree, signal.SIGKILL)
            self.kills += 1
        else:
            _signal([process], signal.SIGTERM)
            _signal(tree, signal.SIGCONT)  # the handler runs once the process is awake
            self.sigterms += 1
        run_id, batch_id = run["id"], run["parameters"]["plan"]["batch_id"]
        self.events.append({"event": kind, "t": round(time.monotonic() - self.t0, 1), "flow_run": run_id,
                            "batch": batch_id, "pid": process.pid})
        log(f"{kind}: flow run {run['name']} ({run_id[:8]}, batch {batch_id[:12]}), pid {process.pid}")

    def restart_parent(self) -> None:
        """SIGKILL the parent's process group once some batches are done, then restart it."""
        while self.batches_done() < 1:
            self.check_time("waiting to kill the parent")
            time.sleep(0.5)
        time.sleep(self.rng.uniform(0.0, 2.0))
        pid = self.parent.pid
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.parent.wait(timeout=30)
        self.events.append({"event": "parent_kill", "t": round(time.monotonic() - self.t0, 1), "pid": pid,
                            "batches_done": self.batches_done()})
        log(f"parent killed (pid {pid}) with {self.batches_done()} batches done")
        time.sleep(self.rng.uniform(1.0, 3.0))
        self.start_parent()
        self.parent_restarts += 1

    def drive(self) -> None:
        """Start the parent, disturb it as planned, wait for it to finish.

        Before each event a running batch is held (frozen) and the event hits it; across the
        parent's restart it stays held, so the run cannot end before the plan does."""
        plan = ["kill"] * self.args.kills + ["sigterm"] * self.args.sigterms
        self.rng.shuffle(plan)
        plan.insert(len(plan) // 2, "parent")
        self.t0 = time.monotonic()
        self.start_parent()
        held = None
        try:
            for event in plan:
                held = held or self.hold()
                if held is None:
                    log(f"the parent finished before every planned event ({event} not done)")
                    break
                time.sleep(self.rng.uniform(self.args.gap / 2, self.args.gap))
                if event == "parent":
                    self.restart_parent()
                else:
                    self.hit(event, held)
                    held = None
        finally:
            if held is not None:
                _signal(held[2], signal.SIGCONT)
        while self.parent.poll() is None:
            self.check_time("waiting for the parent to finish")
            time.sleep(1.0)
        self.chaos_seconds = time.monotonic() - self.t0
        if self.parent.returncode != 0:
            tail = (self.work / f"parent-{self.parent_starts}.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"the chaos parent exited {self.parent.returncode}:\n{tail}")
        log(f"chaos run finished in {self.chaos_seconds:.0f}s")

    def start_clean(self) -> None:
        """The clean run: same data and seed, ``--backend local`` into a local directory, alongside."""
        self.clean_out = self.work / "clean"
        env = self.env | {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}  # nothing S3 about it
        self.clean_started = time.monotonic()
        self.clean = self.spawn(self.fit_argv(str(self.clean_out), "--backend", "local", "--workers", "1"),
                                env, "clean")

    def wait_clean(self) -> Path:
        while self.clean.poll() is None:
            self.check_time("waiting for the clean run")
            time.sleep(1.0)
        if self.clean.returncode != 0:
            tail = (self.work / "clean.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"the clean run exited {self.clean.returncode}:\n{tail}")
        finished = (self.work / "clean.log").stat().st_mtime  # its last words: when it finished
        self.clean_seconds = finished - (time.time() - (time.monotonic() - self.clean_started))
        log(f"clean run finished in {self.clean_seconds:.0f}s")
        return self.clean_out

    # --- verdict ----------------------------------------------------------------------------
    def compare(self, clean: Path) -> dict:
        import pandas as pd
        import s3fs
        import xarray as xr

        fs = s3fs.S3FileSystem(endpoint_url=self.moto, key=KEY_ID, secret=SECRET, skip_instance_cache=True)
        local = self.work / "chaos-artifact"
        fs.get(f"{BUCKET}/chaos/", str(local) + "/", recursive=True)
        chaos = open_posterior(local)
        reference = open_posterior(clean)
        expected = set(pd.read_parquet(self.data)["partition"].astype(str))
        present = [str(p) for p in chaos["partition"].values]
        lost = len(expected - set(present))
        duplicated = len(present) - len(set(present))
        try:
            xr.testing.assert_equal(chaos, reference)
            identical = True
        except AssertionError as exc:
            log(f"draws differ: {str(exc)[:2000]}")
            identical = False
        manifest = json.loads((local / "manifest.json").read_text()) if (local / "manifest.json").exists() else {}
        return {"lost": lost, "duplicated": duplicated, "identical": identical,
                "counts": manifest.get("counts"), "batches_reused": manifest.get("batches_reused")}

    def rescheduled(self) -> int:
        """How many SIGTERM'd runs went back to Scheduled (AwaitingRetry) instead of ending Crashed."""
        count = 0
        for event in self.events:
            if event["event"] != "sigterm":
                continue
            url = f"{self.api}/flow_run_states/?flow_run_id={event['flow_run']}"
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
                names = [state["name"] for state in json.loads(response.read())]
            event["states"] = names
            count += "AwaitingRetry" in names
        return count

    def run_states(self) -> dict:
        """How many fit-batch flow runs ended in which state."""
        counts: dict[str, int] = {}
        offset = 0
        while True:
            body = json.dumps({"limit": 200, "offset": offset}).encode()
            request = urllib.request.Request(f"{self.api}/flow_runs/filter", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                runs = json.loads(response.read())
            for run in runs:
                if run["name"].startswith("fit-batch"):
                    name = (run.get("state") or {}).get("name", "?")
                    counts[name] = counts.get(name, 0) + 1
            if len(runs) < 200:
                return counts
            offset += 200


def open_posterior(out: Path):
    import xarray as xr

    tree = xr.open_datatree(out / "posterior.zarr", engine="zarr")
    return tree["posterior"].to_dataset().load()


def _signal(processes: list[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def safe_children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def stop_tree(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``process``'s group (and any descendant that left it), then SIGKILL what is left."""
    try:
        family = [psutil.Process(process.pid), *safe_children(psutil.Process(process.pid))]
    except psutil.Error:
        family = []
    group_alive = process.poll() is None  # a reaped leader's pid may belong to someone else by now
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if group_alive:
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in family:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(family, timeout=wait)
        if not alive:
            break
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="chaos.py")
    parser.add_argument("--partitions", type=int, default=200, help="partitions of the simulated table")
    parser.add_argument("--length", type=int, default=30, help="rows per partition")
    parser.add_argument("--batch-size", type=int, default=8, help="partitions per batch")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of a running batch's process")
    parser.add_argument("--sigterms", type=int, default=3, help="SIGTERMs (Spot reclaims) of a running batch")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="fraction of S3 requests answered 500/503")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the fit and the chaos schedule")
    parser.add_argument("--workers", type=int, default=2, help="prefect worker processes")
    parser.add_argument("--worker-limit", type=int, default=1, help="concurrent flow runs per worker")
    parser.add_argument("--max-in-flight", type=int, default=4, help="the parent's --max-in-flight")
    parser.add_argument("--gap", type=float, default=8.0, help="most seconds between two chaos events")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and artifacts (default: a temp dir, "
                        "removed after a passing run)")
    parser.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bayesfan-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    verdict = {"lost": "?", "duplicated": "?", "identical": False}
    chaos = None
    error = None
    try:
        with ExitStack() as stack:
            chaos = Chaos(args, work, stack)
            # SIGTERM/SIGINT to this script unwind the stack too, so nothing is left behind
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _raise_interrupt)
            chaos.simulate()
            chaos.start_prefect()
            chaos.start_s3()
            chaos.deploy()
            chaos.start_workers()
            chaos.start_clean()
            chaos.drive()
            verdict.update(chaos.compare(chaos.wait_clean()))
            try:
                verdict["flow_runs"] = chaos.run_states()
                verdict["sigterms_rescheduled"] = chaos.rescheduled()
            except OSError:
                pass
            log("stopping every process")
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - reported in the verdict
        error = f"{type(exc).__name__}: {exc}"
        log(f"error: {error}")
    if chaos is None:
        return 2
    faults = sum(chaos.proxy.faults.values()) if hasattr(chaos, "proxy") else 0
    requests = chaos.proxy.requests if hasattr(chaos, "proxy") else 0
    leftovers = [pid for pid in chaos.started_pids if _alive(pid)]
    ok = (error is None and verdict["lost"] == 0 and verdict["duplicated"] == 0 and verdict["identical"]
          and chaos.kills == args.kills and chaos.sigterms == args.sigterms and chaos.parent_restarts == 1
          and not leftovers)
    report = {
        **verdict, "ok": ok, "error": error, "kills": chaos.kills, "sigterms": chaos.sigterms,
        "parent_restarts": chaos.parent_restarts, "s3_faults": faults, "s3_requests": requests,
        "events": chaos.events, "started_pids": chaos.started_pids, "leftover_pids": leftovers,
        "seconds": {"total": round(time.monotonic() - started, 1),
                    "chaos": round(getattr(chaos, "chaos_seconds", 0.0), 1),
                    "clean": round(getattr(chaos, "clean_seconds", 0.0), 1)},
        "workdir": str(work), "args": {k: str(v) for k, v in vars(args).items()},
    }
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    log(json.dumps({k: report[k] for k in ("counts", "batches_reused", "flow_runs", "sigterms_rescheduled",
                                           "s3_requests", "seconds",
                                           "leftover_pids") if k in report}, default=str))
    if ok and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"logs and artifacts kept in {work}")
    identical = "true" if verdict["identical"] else "false"
    line = (f"chaos: lost={verdict['lost']} duplicated={verdict['duplicated']} identical={identical} "
            f"kills={chaos.kills} sigterms={chaos.sigterms} parent_restarts={chaos.parent_restarts} s3_faults={faults}")
    if error:
        line += " error=" + error.split(":")[0]
    print(line, flush=True)
    return 0 if ok else 1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    sys.exit(main())
