"""Headline lines of a benchmark run: each target key, its measured value, and whether it is met."""

from __future__ import annotations

import operator
import os
import platform
from importlib import metadata

#: The issues' targets: dotted JSON key -> (comparison, bound).
TARGETS = {
    "small.speedup_vs_numpyro_loop": (">=", 50.0),
    "small.speedup_vs_pymc": (">=", 10.0),
    "small.pipeline_over_kernel": ("<=", 1.15),
    "hmm.speedup_vs_ampersand": (">=", 100.0),
    "hmm.ess_bulk_min": (">=", 400.0),
    "hmm.warm_start_speedup": (">=", 2.0),
    "consensus.consensus_dmean_sd_max": ("<=", 0.1),
}
COMPARE = {">=": operator.ge, "<=": operator.le}
PACKAGES = ("jax", "numpyro", "prefect", "arviz", "pymc")


def environment() -> dict:
    """The machine and package versions a run was measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "versions": versions}


def headline(results: dict) -> list[str]:
    """``key = value (target >= bound: met)`` for each target key present in ``results``."""
    lines = []
    for key, (op, bound) in TARGETS.items():
        suite, name = key.split(".")
        if suite not in results:
            continue
        value = results[suite].get(name)
        if value is None:
            lines.append(f"{key} = n/a (target {op} {bound:g})")
            continue
        met = COMPARE[op](value, bound)
        if key == "hmm.warm_start_speedup":
            met = met and results[suite]["warm_equal_quality"]
        lines.append(f"{key} = {value:.3g} (target {op} {bound:g}: {'met' if met else 'missed'})")
    return lines


def markdown(results: dict) -> str:
    """The README's results tables for whatever suites ``results`` holds."""
    env = results["environment"]
    out = [f"{'Quick run (tiny sizes: the numbers mean nothing)' if results['quick'] else 'Full run'} on "
           f"{env['cpus']} CPUs, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".", ""]
    out += ["| key | value | target |", "|---|---|---|"]
    for key, (op, bound) in TARGETS.items():
        suite, name = key.split(".")
        if suite in results:
            out.append(f"| `{key}` | {_fmt(results[suite].get(name))} | {op} {bound:g} |")
    if "small" in results:
        out += ["", "| small: system | partitions/s | CPU-s per partition | median bulk ESS "
                    "| ESS per CPU-s |", "|---|---|---|---|---|"]
        for name, s in results["small"]["systems"].items():
            cells = [s.get(k) for k in ("partitions_per_s", "cpu_s_per_partition", "ess_bulk_median",
                                         "ess_bulk_per_cpu_s")]
            out.append(f"| {name} | " + " | ".join(_fmt(c) for c in cells) + " |"
                       if "skipped" not in s else f"| {name} | skipped: {s['skipped']} | | | |")
        small = results["small"]
        if "cores" in small:
            c = small["cores"]
            out += ["", f"Every core ({c['cores']}): the bare kernel took {_fmt(c['processes_wall_s'])} s as one process "
                        f"per core and {_fmt(c['devices_wall_s'])} s as one process with one JAX device per core "
                        f"(devices / processes = {_fmt(c['devices_over_processes'])}). The pipeline (split, sample, "
                        f"reduce) over the per-core kernel: {_fmt(small['pipeline_over_kernel'])}; `fit` on its "
                        f"defaults (refits and report included): {_fmt(small['fit_over_kernel'])}."]
        if small.get("speedup_vs_numpyro_loop_tuned") is not None:
            out += ["", "`fit` against NumPyro given JAX's compilation cache and one XLA thread "
                        f"(`numpyro_loop_tuned`): {_fmt(small['speedup_vs_numpyro_loop_tuned'])}x fewer CPU seconds "
                        "per partition."]
    if "hmm" in results:
        h, p = results["hmm"], results["hmm"]["projection"]
        out += ["", "| hmm | value |", "|---|---|"]
        rows = {
            "CPU-s per chain (Ampersand: 1,551)": h["cpu_s_per_chain"],
            "min bulk ESS / max R-hat": f"{_fmt(h['ess_bulk_min'])} / {_fmt(h['r_hat_max'])}",
            "µs per series-gradient": h["us_per_series_gradient"],
            "µs per series-gradient at batch " + " / ".join(h.get("us_per_series_gradient_by_batch", {})):
                " / ".join(_fmt(v) for v in h.get("us_per_series_gradient_by_batch", {}).values()),
            "leapfrog steps per draw / batch efficiency (in lockstep)":
                f"{_fmt(h['leapfrog_steps_per_draw'])} / {_fmt(h.get('batch_efficiency'))} "
                f"({_fmt(h['lockstep_efficiency'])})",
            "share of CPU in the chains' own gradients (estimate)": f"{h['useful_gradient_share']:.0%}",
            f"{p['partitions']:,} partitions: CPU-hours (Ampersand: {p['ampersand_cpu_hours']:,.0f})":
                p["cpu_hours"],
            f"{p['partitions']:,} partitions: USD at ${p['usd_per_vcpu_hour']}/vCPU-h (Ampersand: "
            f"{p['ampersand_usd']:,.0f})": p["usd"],
            "warm start: warmup iterations saved / min ESS kept":
                f"{h['warmup_iterations_saved']:.0%} / {h['warm_ess_kept']:.0%}",
            "warm start: equal quality": h["warm_equal_quality"],
        }
        out += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
    if "forward" in results:
        f = results["forward"]
        batches = list(next(iter(f["us_per_series_gradient"].values())))
        out += ["", f"| forward pass (T = {f['length']:,}) | " + " | ".join(f"µs per series-gradient at {b}"
                                                                        for b in batches)
                + f" | time / unrolled at {f['ratio_batch']} | max \\|Δ log p(y)\\| |",
                "|---|" + "---|" * (len(batches) + 2)]
        for name, times in f["us_per_series_gradient"].items():
            out.append(f"| {name} | " + " | ".join(_fmt(times[b]) for b in batches)
                       + f" | {f['slowdown_vs_unrolled'][name]:.2f} | {f['max_abs_loglik_diff'][name]:.2g} |")
    if "fanout" in results:
        out += ["", "| fanout: partitions | wall s | CPU s | client peak RSS MiB | batches | task runs |",
                "|---|---|---|---|---|---|"]
        for n, r in results["fanout"]["runs"].items():
            cells = [r["wall_s"], r["cpu_s"], r["client_peak_rss_mb"], r["batches"], r["task_runs"]]
            out.append(f"| {int(n):,} | " + " | ".join(_fmt(c) for c in cells) + " |")
    if "consensus" in results:
        out += ["", consensus_table(results["consensus"])]
    return "\n".join(out)


def consensus_table(consensus: dict) -> str:
    """One row per dataset, S and method: against full NUTS, against the reference, and speedup."""
    out = ["| dataset | S | method | vs full: max \\|Δmean\\|/sd | sd ratio | max W1/sd "
           "| vs reference: max \\|Δmean\\|/sd | sd ratio | max W1/sd | speedup over full (S workers / 1) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in consensus["datasets"].items():
        ref = d["full"]["vs_reference"]
        out.append(f"| {name} ({d['rows']:,} rows) | 1 | full NUTS | - | - | - | {_cmp(ref)} | 1 |")
        for s in d["shards"].values():
            for method, m in s["methods"].items():
                out.append(f"| {name} | {s['shards']} | {method} | {_cmp(m['vs_full'])} | {_cmp(m['vs_reference'])} "
                           f"| {m['speedup_vs_full']:.2f} / {m['speedup_one_worker']:.2f} |")
    return "\n".join(out)


def _cmp(c: dict | None) -> str:
    if c is None:
        return "- | - | -"
    low, high = c["sd_ratio"]
    return f"{c['dmean_sd']:.3f} | {low:.2f}-{high:.2f} | {c['w1_sd']:.3f}"


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(open(sys.argv[1]).read())))
