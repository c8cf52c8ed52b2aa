"""``<out>/report.html``: a fit artifact as one self-contained page for a person.

Sections: a forest plot of one parameter across (a sample of) the partitions; R-hat,
bulk ESS and divergences across partitions; trace, rank and ESS plots of the worst
partitions; posterior predictive checks of those partitions against their rows; in
consensus mode the sub-posteriors against the combined posterior; and a table of
failed and quarantined partitions. Plots are ArviZ's (matplotlib backend), inlined as
base64 PNGs and also written to ``<out>/report/<name>.png``.
"""

from __future__ import annotations

import base64
import html
import io
import warnings

import arviz as az
import jax
import matplotlib.pyplot as plt
import numpy as np
import numpyro.distributions as dist
import pandas as pd
import xarray as xr
from numpyro import handlers
from numpyro.infer import Predictive
from numpyro.primitives import Messenger

from bayesfan.result import FitResult
from bayesfan.storage import Store
from models import resolve_model
from tasks.reduce import STATUSES
from tasks.split import PARTITION_COLUMN

#: Partitions in the forest plot; larger runs are sampled (the worst always included).
MAX_PARTITIONS = 40
#: Partitions with trace, rank, ESS and predictive-check plots.
WORST = 3
#: Posterior draws per predictive check.
PPC_DRAWS = 50
#: Rows of the failures table.
TABLE_ROWS = 1000


class UsageError(ValueError):
    """A report option names something the artifact does not have (the CLI exits 2)."""


class Page:
    """HTML fragments and the PNGs they show, in order."""

    def __init__(self):
        self.parts: list[str] = []
        self.pngs: dict[str, bytes] = {}

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def figure(self, name: str, figure, caption: str) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        self.pngs[name] = buffer.getvalue()
        data = base64.b64encode(self.pngs[name]).decode()
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def plot(self, name: str, collection, caption: str) -> None:
        """Add an arviz-plots ``PlotCollection``'s figure."""
        self.figure(name, collection.viz["figure"].item(), caption)

    def table(self, rows: list[dict], css: str) -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r.values()) + "</tr>"
                       for r in rows)
        self.parts.append(f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')

    def html(self, title: str) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
                 "text-align:left;font-size:90%}figure{display:inline-block;vertical-align:top;margin:0.5em}"
                 "figcaption{color:#555;font-size:90%}")
        return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}</body></html>")


def build_report(out_url: str, parameter: str | None = None, max_partitions: int = MAX_PARTITIONS,
                 worst: int = WORST, seed: int = 0) -> str:
    """Write ``<out>/report.html`` and ``<out>/report/*.png``; return the report's URL."""
    result = FitResult(out_url)
    manifest, store, page = result.manifest, Store(out_url), Page()
    overview(page, manifest)
    tree = result.posterior if manifest["artifact"]["posterior"] is not None else None
    if tree is not None and ({"posterior", "subposteriors"} & set(tree.children)):
        units, verdicts = fitted_units(tree, manifest)
        parameter = choose_parameter(units, parameter)
        keys = worst_units(units, verdicts, worst)
        if "subposteriors" in tree.children and "posterior" in tree.children:
            consensus_section(page, tree, parameter)
        else:
            forest_section(page, units, parameter, keys, max_partitions, seed)
        convergence_section(page, verdicts, manifest["config"])
        worst_section(page, units, verdicts, keys, parameter)
        ppc_section(page, store, manifest, tree, keys)
    failures_section(page, manifest)
    store.remove("report")  # no PNG of an earlier report survives
    for name, png in page.pngs.items():
        store.write_bytes(png, "report", f"{name}.png")
    store.write_bytes(page.html(f"bayesfan report: {manifest['model']} ({manifest['run_id']})").encode(),
                      "report.html")
    return store.url("report.html")


def overview(page: Page, manifest: dict) -> None:
    counts, config = manifest["counts"], manifest["config"]
    page.heading("Overview")
    page.table([{"model": manifest["model"], "mode": config.get("mode", "partitions"),
                 **{s: counts[s] for s in (*STATUSES, "total")},
                 "chains": config["chains"], "warmup": config["warmup"], "draws": config["draws"],
                 "worst r_hat": manifest["worst_r_hat"], "data": manifest["input"]["url"]}], "overview")
    for warning in manifest.get("warnings", []):
        page.text(f"warning: {warning}")


def fitted_units(tree: xr.DataTree, manifest: dict) -> tuple[xr.DataTree, dict[str, dict]]:
    """What NUTS sampled, with dim ``partition``, and the manifest entries of those units.

    Partition mode: the partitions. Consensus mode: the shards' sub-posteriors, or with
    ``combine="full"`` the one fit ``all``.
    """
    if "subposteriors" in tree.children:
        groups = {"posterior": tree["subposteriors"], "sample_stats": tree["sample_stats"]}
        return xr.DataTree.from_dict({g: n.to_dataset().rename(shard="partition") for g, n in groups.items()}), \
            manifest["shards"]
    groups = {g: tree[g].to_dataset() for g in ("posterior", "sample_stats")}
    if "partition" not in groups["posterior"].dims:
        groups = {g: ds.expand_dims(partition=["all"]) for g, ds in groups.items()}
    return xr.DataTree.from_dict(groups), manifest["partitions"]


def choose_parameter(units: xr.DataTree, parameter: str | None) -> str:
    names = [str(v) for v in units["posterior"].data_vars]
    if parameter is None:
        return names[0]
    if parameter not in names:
        raise UsageError(f"unknown parameter {parameter!r}; the posterior has {', '.join(names)}")
    return parameter


def worst_units(units: xr.DataTree, verdicts: dict[str, dict], count: int) -> list[str]:
    """The fitted units with the highest R-hat (an undefined R-hat counts as worst)."""
    fitted = [str(k) for k in units["posterior"]["partition"].values]
    return sorted(fitted, key=lambda k: -(verdicts[k].get("r_hat_max") or np.inf))[:count]


def sample_keys(keys: list[str], count: int, keep: list[str], seed: int) -> list[str]:
    """``keys`` if there are at most ``count``; else ``keep`` plus a seeded random sample, sorted."""
    if len(keys) <= count:
        return keys
    rest = sorted(set(keys) - set(keep))
    chosen = np.random.default_rng(seed).choice(len(rest), max(0, count - len(keep)), replace=False)
    return sorted(keep + [rest[i] for i in chosen])


def forest_section(page: Page, units: xr.DataTree, parameter: str, keep: list[str], count: int, seed: int) -> None:
    keys = [str(k) for k in units["posterior"]["partition"].values]
    shown = sample_keys(keys, count, keep, seed)
    page.heading(f"Forest plot: {parameter}")
    note = "" if len(shown) == len(keys) else f" (a random {len(shown)} of {len(keys)}, the worst included)"
    collection = az.plot_forest(units.sel(partition=shown), var_names=[parameter], combined=True,
                                backend="matplotlib")
    page.plot("forest", collection, f"{parameter}: 50% and 94% intervals per partition{note}")


def consensus_section(page: Page, tree: xr.DataTree, parameter: str) -> None:
    page.heading(f"Sub-posteriors and the combined posterior: {parameter}")
    sub = tree["subposteriors"].to_dataset()
    models = {str(s): xr.DataTree.from_dict({"posterior": sub.sel(shard=s, drop=True)}) for s in sub["shard"].values}
    models["combined"] = xr.DataTree.from_dict({"posterior": tree["posterior"].to_dataset()})
    collection = az.plot_forest(models, var_names=[parameter], combined=True, backend="matplotlib")
    collection.add_legend("model")
    page.plot("consensus", collection, "each shard's sub-posterior (prior^(1/S)) and their combination")


def convergence_section(page: Page, verdicts: dict[str, dict], config: dict) -> None:
    """Histograms of worst R-hat and lowest bulk ESS per partition, and divergences by partition."""
    page.heading("Convergence across partitions")
    fitted = {k: v for k, v in verdicts.items() if v.get("r_hat_max") is not None}
    if not fitted:
        page.text("No partition has diagnostics.")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
    left.hist([v["r_hat_max"] for v in fitted.values()], bins=30)
    left.axvline(config["rhat_max"], color="C3", linestyle="--")
    left.set(xlabel="worst R-hat of the partition", ylabel="partitions")
    right.hist([v["ess_bulk_min"] for v in fitted.values()], bins=30)
    right.axvline(config["ess_min"], color="C3", linestyle="--")
    right.set(xlabel="lowest bulk ESS of the partition")
    page.figure("convergence", figure, f"{len(fitted)} partitions; dashed: the thresholds that mark a "
                                       "partition unconverged")
    divergent = sorted(((v["divergences"], k) for k, v in fitted.items() if v.get("divergences")), reverse=True)
    if not divergent:
        page.text(f"No divergent transitions in any of the {len(fitted)} partitions.")
        return
    shown = divergent[:MAX_PARTITIONS]
    figure, axis = plt.subplots(figsize=(8, 1 + 0.25 * len(shown)))
    axis.barh([k for _, k in shown][::-1], [d for d, _ in shown][::-1])
    axis.set(xlabel="divergent transitions")
    page.figure("divergences", figure, f"{len(divergent)} partitions with divergences"
                                       + (f" (the {len(shown)} with most shown)" if len(shown) < len(divergent) else ""))


def one_unit(units: xr.DataTree, key: str) -> xr.DataTree:
    """One unit's groups with integer coordinates on every dim (so plots can select by position)."""
    groups = {}
    for group in ("posterior", "sample_stats"):
        ds = units[group].to_dataset().sel(partition=key, drop=True)
        groups[group] = ds.assign_coords({d: np.arange(n) for d, n in ds.sizes.items() if d not in ds.coords})
    return xr.DataTree.from_dict(groups)


def worst_element(posterior: xr.Dataset) -> tuple[str, dict]:
    """The variable and coordinates of the highest rank R-hat."""
    rhat = az.rhat(posterior)
    name = max(rhat.data_vars, key=lambda v: float(rhat[v].fillna(np.inf).max()))
    da = rhat[name].fillna(np.inf)
    position = np.unravel_index(int(np.argmax(da.values)), da.shape) if da.ndim else ()
    return str(name), {d: int(da[d].values[i]) for d, i in zip(da.dims, position)}


def worst_section(page: Page, units: xr.DataTree, verdicts: dict[str, dict], keys: list[str], parameter: str) -> None:
    page.heading("Worst partitions")
    for i, key in enumerate(keys, 1):
        one = one_unit(units, key)
        name, coords = worst_element(one["posterior"].to_dataset())
        label = name + (f"[{','.join(map(str, coords.values()))}]" if coords else "")
        v = verdicts[key]
        page.text(f"{key}: status {v['status']}, worst R-hat {_cell(v.get('r_hat_max'))} ({label}), "
                  f"lowest bulk ESS {_cell(v.get('ess_bulk_min'))}, divergences {v.get('divergences')}")
        names = list(dict.fromkeys([parameter, name]))
        page.plot(f"trace-{i}", az.plot_trace_dist(one, var_names=names, backend="matplotlib"),
                  f"{key}: trace of {', '.join(names)}")
        if one["posterior"].sizes["chain"] > 1:  # rank plots compare chains
            page.plot(f"rank-{i}", az.plot_rank(one, var_names=[name], coords=coords, backend="matplotlib"),
                      f"{key}: rank Δ-ECDF of {label}, one line per chain")
        page.plot(f"ess-{i}", az.plot_ess(one, var_names=[name], coords=coords, backend="matplotlib"),
                  f"{key}: local ESS of {label}")


class Unobserved(Messenger):
    """Sample observed sites instead of conditioning on them (their ``obs`` is ignored)."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["value"], msg["is_observed"] = None, False


def observed_sites(model, rows: pd.DataFrame, latent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's observed sample sites on ``rows`` and their data (``numpyro.factor`` terms excluded).

    ``latent`` (one posterior draw) fills the latent sites, so improper priors are never sampled.
    """
    mask = np.ones(len(rows), dtype=bool)
    seeded = handlers.substitute(handlers.seed(model.model, 0), data=latent)
    trace = handlers.trace(seeded).get_trace(mask, **model.arrays(rows))
    return {name: np.asarray(site["value"]) for name, site in trace.items()
            if site["type"] == "sample" and site["is_observed"] and not isinstance(_base(site["fn"]), dist.Unit)}


def predictive_tree(model, key: str, posterior: xr.Dataset, rows: pd.DataFrame, draws: int) -> xr.DataTree | None:
    """Posterior predictive draws and observed data of one unit, the ``obs`` coordinate set to ``key``."""
    stacked = posterior.stack(sample=("chain", "draw"))
    stacked = stacked.isel(sample=np.linspace(0, stacked.sizes["sample"] - 1, draws).astype(int))
    samples = {str(k): np.moveaxis(v.values, -1, 0) for k, v in stacked.data_vars.items()}
    observed = observed_sites(model, rows, {k: v[0] for k, v in samples.items()})
    if not observed:
        return None
    predict = Predictive(Unobserved(model.model), posterior_samples=samples, return_sites=list(observed))
    predicted = predict(jax.random.PRNGKey(0), np.ones(len(rows), dtype=bool), **model.arrays(rows))
    obs = {"obs": np.repeat(key, next(iter(observed.values())).size)}
    return xr.DataTree.from_dict({
        "posterior_predictive": xr.Dataset(
            {n: (("chain", "draw", "obs"), np.asarray(predicted[n]).reshape(1, draws, -1)) for n in observed}, obs),
        "observed_data": xr.Dataset({n: ("obs", v.ravel()) for n, v in observed.items()}, obs),
    })


def unit_rows(store: Store, manifest: dict, key: str) -> pd.DataFrame:
    """A partition's rows as stored in its batch input; in consensus mode all shards' rows."""
    batch = manifest["partitions"][key].get("batch")
    ids = [batch] if batch else list(manifest["batches"])
    frame = pd.concat([pd.read_parquet(io.BytesIO(store.read_bytes("batches", b, "input.parquet"))) for b in ids],
                      ignore_index=True)
    if batch:
        frame = frame[frame[PARTITION_COLUMN] == key]
    return frame.drop(columns=PARTITION_COLUMN).reset_index(drop=True)


def ppc_section(page: Page, store: Store, manifest: dict, tree: xr.DataTree, keys: list[str]) -> None:
    page.heading("Posterior predictive checks")
    if "posterior" not in tree.children:
        page.text("No combined posterior, so no predictive check.")
        return
    posterior = tree["posterior"].to_dataset()
    if "partition" not in posterior.dims:
        posterior, keys = posterior.expand_dims(partition=["all"]), ["all"]
    config = manifest["config"]
    model = resolve_model(config["model"], config["model_options"])
    trees = [t for key in keys
             if (t := predictive_tree(model, key, posterior.sel(partition=key, drop=True),
                                      unit_rows(store, manifest, key), PPC_DRAWS)) is not None]
    if not trees:
        page.text(f"Model {model.name!r} has no observed sample sites to predict (e.g. a marginalised likelihood).")
        return
    combined = xr.DataTree.from_dict({g: xr.concat([t[g].to_dataset() for t in trees], "obs")
                                      for g in ("posterior_predictive", "observed_data")})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*look discrete", category=UserWarning)
        collection = az.plot_ppc_dist(combined, kind="ecdf", cols=["__variable__", "obs"], backend="matplotlib")
    page.plot("ppc", collection, f"ECDF of the observed rows (dark) against {PPC_DRAWS} posterior predictive "
                                 f"draws, for {', '.join(keys)}")


def failures_section(page: Page, manifest: dict) -> None:
    page.heading("Failed and quarantined partitions")
    rows = [{"partition": k, "status": p["status"], "attempts": p.get("attempts"), "reason": p.get("reason")}
            for k, p in manifest["partitions"].items() if p["status"] in ("failed", "quarantined")]
    if not rows:
        page.text("None.")
        return
    page.table(rows[:TABLE_ROWS], "failures")
    if len(rows) > TABLE_ROWS:
        page.text(f"... and {len(rows) - TABLE_ROWS} more in manifest.json")


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
