"""The ``bayesfan`` command line: simulate, fit, inspect, demo.

Exit codes: 0 when every partition is ok or unconverged; 1 when some partition
failed or was quarantined (the artifact of the rest is still written); 2 for
bad input or configuration, reported as one line (``--debug`` for the traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# The CLI reports outcomes itself (one line per error); Prefect's own logs are for --debug.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])

USAGE_ERRORS = (
    "DataError", "ModelNotFound", "ValidationError", "UsageError", "BadParameter", "StorageError", "IncompleteArtifact",
    "ConfigFileError",
)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    message = " ".join(str(exc).split()) if type(exc).__name__ != "ValidationError" else _pydantic_line(exc)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2 if type(exc).__name__ in USAGE_ERRORS else 1)


def _pydantic_line(exc) -> str:
    first = exc.errors()[0]
    where = ".".join(map(str, first["loc"])) or "config"
    if first["type"] == "missing":
        return f"missing required setting {where!r}"
    return f"invalid {where}: {first['msg']} (got {first.get('input')!r})"


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--model-option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@app.command()
def simulate(
    model: str = typer.Argument(..., help="model name or module.path:object"),
    out: Path = typer.Option(..., "--out", help="data file to write (.parquet or .csv); truth.parquet goes beside it"),
    partitions: int = typer.Option(64, "--partitions", min=1, help="number of partitions"),
    length: int = typer.Option(168, "--length", min=1, help="rows (time steps for a series model) per partition"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    model_option: list[str] = typer.Option([], "--model-option", help="model option KEY=VALUE (repeatable)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Simulate data in the long format `fit` reads, plus truth.parquet with the true parameters."""
    import numpy as np

    from models import resolve_model

    try:
        spec = resolve_model(model, _parse_options(model_option))
        frame, truth = spec.simulate(np.random.default_rng(seed), partitions, length)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        _fail(exc, debug)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False) if out.suffix == ".csv" else frame.to_parquet(out, index=False)
    truth.to_parquet(out.parent / "truth.parquet", index=False)
    typer.echo(f"wrote {len(frame)} rows in {partitions} partitions to {out} (truth: {out.parent / 'truth.parquet'})")


@app.command()
def fit(
    ctx: typer.Context,
    config_file: Optional[str] = typer.Option(None, "--config", help="YAML, JSON or TOML file of FitConfig fields "
                                              "(docs/configuration.md); flags given here override it"),
    data: Optional[str] = typer.Option(None, "--data", help="Parquet or CSV: a local path or fsspec URL (s3://...) "
                                       "[required, here or in --config]"),
    model: Optional[str] = typer.Option(None, "--model", help="registered model name, or module.path:object "
                                        "[required, here or in --config]"),
    partition_by: str = typer.Option("", "--partition-by", help="comma-separated partition key columns "
                                     "(required in partition mode)"),
    out: Optional[str] = typer.Option(None, "--out", help="artifact directory: local path or s3://bucket/prefix "
                                      "[required, here or in --config]"),
    chains: int = typer.Option(4, help="NUTS chains per partition"),
    warmup: int = typer.Option(500, help="warmup iterations per chain"),
    draws: int = typer.Option(500, help="kept draws per chain"),
    seed: int = typer.Option(0, help="run seed; per-partition keys derive from (seed, partition)"),
    batch_size: int = typer.Option(32, "--batch-size", help="most partitions per batch (one compiled program)"),
    workers: Optional[int] = typer.Option(None, help="worker processes (default: CPU count)"),
    max_retries: int = typer.Option(3, "--max-retries", help="retries of a failed batch"),
    model_option: list[str] = typer.Option([], "--model-option", help="model option KEY=VALUE (repeatable)"),
    mode: str = typer.Option("partitions", help="partitions: one model per partition; consensus: one model, "
                             "data split into shards"),
    shards: int = typer.Option(4, help="consensus mode: number of data shards"),
    combine: str = typer.Option("consensus", help="consensus mode: consensus, consensus-diag, parametric, "
                                "semiparametric or full"),
    shard_by: Optional[str] = typer.Option(None, "--shard-by", help="consensus mode: keep a group's rows in one shard"),
    backend: str = typer.Option("local", help="local (process pool), dask, pool (Prefect work pool) or batch "
                                "(AWS Batch arrays)"),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="dask: scheduler address"),
    work_pool: Optional[str] = typer.Option(None, "--work-pool", help="pool: work pool of the fit-batch deployment"),
    max_in_flight: int = typer.Option(64, "--max-in-flight", help="pool/batch: most batches running at once"),
    job_queue: Optional[str] = typer.Option(None, "--job-queue", help="batch: AWS Batch job queue"),
    job_definition: Optional[str] = typer.Option(None, "--job-definition", help="batch: AWS Batch job definition"),
    max_interruptions: int = typer.Option(5, "--max-interruptions", help="resubmissions after crashes or Spot "
                                          "interruptions (a separate budget from --max-retries)"),
    max_refits: int = typer.Option(1, "--max-refits", help="refits of unconverged partitions (double warmup, "
                                   "higher target_accept)"),
    min_success_ratio: float = typer.Option(1.0, "--min-success-ratio", help="fraction of partitions that must be "
                                            "ok or unconverged; below it the run exits 1"),
    warm_start: Optional[str] = typer.Option(None, "--warm-start", help="previous artifact to start chains from"),
    warm_warmup: int = typer.Option(150, "--warm-warmup", help="warmup iterations of a warm-started partition"),
    laplace: bool = typer.Option(True, "--laplace/--no-laplace", help="start at the posterior mode and sample in "
                                 "coordinates that whiten the Laplace approximation there"),
    kernel: str = typer.Option("auto", help="how a batch's chains advance: stepwise, lockstep, or auto (lockstep "
                               "for cheap gradients and small batches)"),
    report: bool = typer.Option(True, "--report/--no-report", help="write report.html with diagnostic plots"),
    quiet: bool = typer.Option(False, "--quiet", help="no live progress bar (it is off anyway when not a TTY)"),
    as_json: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Fit one model per partition (or one model over shards) and write the artifact to OUT."""
    from bayesfan.config import FitConfig
    from bayesfan.result import FitFailed
    from models import resolve_model

    if debug:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
    # Only flags given on the command line override the config file (typer vendors click's ParameterSource).
    flags = {k: v for k, v in locals().items()
             if k in FitConfig.model_fields and ctx.get_parameter_source(k).name != "DEFAULT"}
    try:
        config = _fit_config(config_file, flags, _parse_options(model_option))
        _preflight(config, resolve_model(config.model, config.model_options))
        from flows.fit import run_fit

        with _live_progress(sys.stdout.isatty() and not (quiet or as_json)):
            result = run_fit(config)
    except FitFailed as exc:
        _report(exc.result, as_json)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        _fail(exc, debug)
    _report(result, as_json)


def _fit_config(path: str | None, flags: dict, model_options: dict):
    """``FitConfig`` from the file at ``path`` (if any) with the command line's ``flags`` laid over it.

    An invalid value that came from the file is reported with the file's name.
    """
    from pydantic import ValidationError

    from bayesfan.config import ConfigFileError, FitConfig, read_settings

    settings = read_settings(path) if path else {}
    merged = settings | flags
    merged["model_options"] = {**(settings.get("model_options") or {}), **model_options}
    try:
        return FitConfig(**merged)
    except ValidationError as exc:
        where = exc.errors()[0]["loc"][:1]
        if where and where[0] in settings and where[0] not in flags:
            raise ConfigFileError(f"{path}: {_pydantic_line(exc)}") from None
        raise


@app.command("batch-child")
def batch_child(
    spec: Optional[str] = typer.Option(None, "--spec", help="run spec URL (default: $BAYESFAN_SPEC)"),
    index: Optional[int] = typer.Option(None, "--index", help="child index (default: $BAYESFAN_INDEX_OFFSET + "
                                        "$AWS_BATCH_JOB_ARRAY_INDEX)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Fit one batch of an AWS Batch run (what each array-job child runs)."""
    from flows.awsbatch import run_child
    from tasks.awsbatch import child_index

    try:
        spec_url = spec or os.environ["BAYESFAN_SPEC"]
        record = run_child(spec_url, child_index() if index is None else index,
                           attempt=int(os.environ.get("AWS_BATCH_JOB_ATTEMPT", "1")))
    except Exception as exc:  # noqa: BLE001 - one line unless --debug; a non-zero exit fails the child
        _fail(exc, debug)
    typer.echo(f"batch {record['batch_id']}: {len(record['partitions'])} partitions done")


@app.command()
def deploy(
    work_pool: str = typer.Option(..., "--work-pool", help="Prefect work pool for both deployments"),
    image: Optional[str] = typer.Option(None, "--image", help="container image (ECS pools); none for process pools"),
    source: Path = typer.Option(Path("."), "--source", help="project directory the worker runs flows from "
                                "(process pools)"),
):
    """Register the fit-partitions and fit-batch deployments on WORK_POOL."""
    from flows.deploy import deploy_flows

    for name in deploy_flows(work_pool, image, str(source.resolve())):
        typer.echo(f"deployed {name} on {work_pool}")


@app.command()
def states(
    out: str = typer.Argument(..., help="artifact directory or URL of a hidden-Markov fit"),
    to: Path = typer.Option(..., "--to", help="Parquet file to write (partition, t, p_on)"),
    partition: list[str] = typer.Option([], "--partition", help="partition key (repeatable; default: all)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Posterior state probabilities P(on | y) per hour, by forward-backward over posterior draws."""
    from tasks.states import state_probabilities

    try:
        frame = state_probabilities(out, partition or None)
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        _fail(exc, debug)
    frame.to_parquet(to, index=False)
    typer.echo(f"wrote {len(frame)} rows for {frame['partition'].nunique()} partitions to {to}")


@app.command()
def inspect(out: str = typer.Argument(..., help="artifact directory or URL")):
    """Counts by status, the worst partitions, and failures with their reasons."""
    from bayesfan.result import FitResult

    try:
        result = FitResult(out)
        result.manifest
    except Exception as exc:  # noqa: BLE001
        _fail(exc, False)
    _report(result, False, detail=True)


@app.command()
def report(
    out: str = typer.Argument(..., help="artifact directory or URL"),
    parameter: Optional[str] = typer.Option(None, "--parameter", help="parameter of the forest plot (default: first)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
):
    """Write OUT/report.html: forest, convergence, trace, rank and predictive-check plots, failures."""
    try:
        from tasks.report import build_report

        typer.echo(f"report: {build_report(out, parameter)}")
    except Exception as exc:  # noqa: BLE001 - one line unless --debug
        _fail(exc, debug)


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out", help="where to write the data and artifact")):
    """Simulate a small TV-viewing dataset (64 partitions) and fit it."""
    data = out / "data" / "impressions.parquet"
    _simulate_demo(data)
    fit(
        data=str(data), model="impressions_nb", partition_by="market,network", out=str(out / "artifact"),
        chains=4, warmup=300, draws=700, seed=0, batch_size=32, workers=None, max_retries=3,
        model_option=[], mode="partitions", shards=4, combine="consensus", shard_by=None, backend="local",
        dask_address=None, work_pool=None, max_in_flight=64, job_queue=None, job_definition=None,
        max_interruptions=5, max_refits=1, min_success_ratio=1.0, warm_start=None, warm_warmup=150,
        report=True, quiet=False, as_json=False, debug=False,
    )


@app.command()
def bench(
    suite: str = typer.Argument(..., help="small, hmm, forward, fanout, consensus or all"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="write every figure as JSON to this file"),
    quick: bool = typer.Option(False, "--quick", help="tiny sizes: checks the suite runs, not how fast"),
):
    """Run a benchmark suite (benchmarks/README.md) and print its target ratios."""
    from benchmarks import SUITES, run_suites
    from benchmarks.report import headline

    if suite not in (*SUITES, "all"):
        raise typer.BadParameter(f"{suite!r} is not one of {', '.join(SUITES)}, all", param_hint="SUITE")
    results = run_suites(suite, quick, json_path)
    for line in headline(results):
        typer.echo(line)


def _simulate_demo(path: Path) -> None:
    import numpy as np

    from models import resolve_model

    frame, truth = resolve_model("impressions_nb").simulate(np.random.default_rng(0), 64, 168)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    truth.to_parquet(path.parent / "truth.parquet", index=False)
    typer.echo(f"simulated 64 partitions x 168 hours of impressions -> {path}")


@contextlib.contextmanager
def _live_progress(enabled: bool):
    """A rich progress bar of partitions (rate, ETA, failures) fed by the flow's progress listeners."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from flows import progress

    columns = (TextColumn("fitting"), BarColumn(), MofNCompleteColumn(), TextColumn("partitions"),
               TextColumn("[dim]{task.fields[rate]}"), TimeRemainingColumn(),
               TextColumn("[red]{task.fields[failed]} failed"))
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("fit", total=None, failed=0, rate="")

        def update(done: int, total: int, failed: int) -> None:
            bar.update(task, completed=done, total=total, failed=failed)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:.1f} partitions/s" if speed else "")

        progress.subscribe(update)
        try:
            yield
        finally:
            progress.LISTENERS.remove(update)


def _report(result, as_json: bool, detail: bool = False) -> None:
    manifest = result.manifest
    counts = manifest["counts"]
    if as_json:
        typer.echo(json.dumps({"path": result.path, "counts": counts, "worst_r_hat": manifest["worst_r_hat"],
                               "min_ess_bulk": manifest["min_ess_bulk"], "run_id": manifest["run_id"]}))
        return
    typer.echo(
        f"partitions: {counts['total']}  ok: {counts['ok']}  unconverged: {counts['unconverged']}  "
        f"failed: {counts['failed']}  quarantined: {counts['quarantined']}"
    )
    worst = manifest["worst_r_hat"]
    typer.echo(f"worst r_hat: {worst:.4f}" if worst is not None else "worst r_hat: n/a")
    typer.echo(f"batches: {manifest['batches_total']} ({manifest['batches_reused']} reused)")
    typer.echo(f"artifact: {result.path}")
    for warning in manifest.get("warnings", []):
        typer.echo(f"warning: {warning}")
    partitions = manifest["partitions"]
    if detail:
        ranked = sorted(
            (k for k, p in partitions.items() if p.get("r_hat_max") is not None),
            key=lambda k: -partitions[k]["r_hat_max"],
        )[:5]
        for key in ranked:
            p = partitions[key]
            typer.echo(f"  worst: {key}  r_hat={p['r_hat_max']:.4f}  ess_bulk={p['ess_bulk_min']:.0f}  "
                       f"divergences={p['divergences']}  status={p['status']}")
    for key, p in partitions.items():
        if p["status"] in ("failed", "quarantined") or (detail and p["status"] == "unconverged"):
            typer.echo(f"  {p['status']}: {key}: {p['reason']}")
    if sys.stdout.isatty():
        _summary_table(manifest)


def _summary_table(manifest: dict, rows: int = 10) -> None:
    """A rich table of the worst partitions, worst first (terminals only; scripts get the lines above)."""
    from rich.console import Console
    from rich.table import Table

    from tasks.artifacts import diagnostics_table

    table = Table(title="worst partitions")
    for column in ("partition", "status", "r_hat", "ess_bulk", "divergences", "attempts", "reason"):
        table.add_column(column)
    for row in diagnostics_table(manifest, limit=rows):
        table.add_row(*(str("" if row.get(c) is None else row.get(c)) for c in
                        ("partition", "status", "r_hat", "ess_bulk", "divergences", "attempts", "reason")))
    Console().print(table)


def _preflight(config, model) -> None:
    """Bad data or an unwritable artifact location fail here, in seconds, before any flow starts."""
    from bayesfan.storage import check_writable
    from tasks.load import preflight

    preflight(config.data, config.partition_by + ((config.shard_by,) if config.shard_by else ()), model)
    check_writable(config.out)


def main() -> int:
    """Run the CLI; a usage error is one ``error:`` line (exit 2), like every other error."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
        else:
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
