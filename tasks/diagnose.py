"""Per-partition posterior summary and convergence status, vectorised over partitions with arviz."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from models.base import scalar_names

SAMPLE_DIMS = ("chain", "draw")
SUMMARY_COLUMNS = [
    "partition", "parameter", "mean", "sd", "eti89_lb", "eti89_ub",
    "r_hat", "ess_bulk", "ess_tail", "divergences", "status",
]


def _flatten(stat: xr.Dataset, partitions: np.ndarray) -> dict[str, np.ndarray]:
    """``{parameter: (partition,) values}`` with names like ``xi[0,1]``."""
    out = {}
    for name, da in stat.data_vars.items():
        da = da.transpose("partition", ...)
        values = da.values.reshape(len(partitions), -1)
        for j, label in enumerate(scalar_names(str(name), da.shape[1:])):
            out[label] = values[:, j]
    return out


def summarize(
    tree: xr.DataTree, rhat_max: float, ess_min: float, max_divergence_rate: float = 1.0
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Summary rows (one per partition x scalar parameter) and each partition's status.

    A partition is ``unconverged`` when any parameter has R-hat > ``rhat_max``
    (or NaN) or bulk ESS < ``ess_min``, or more than ``max_divergence_rate`` of
    its draws diverged; otherwise ``ok``.
    """
    post = tree["posterior"].to_dataset()
    partitions = post["partition"].values.astype(str)
    stats = {
        "mean": post.mean(SAMPLE_DIMS),
        "sd": post.std(SAMPLE_DIMS, ddof=1),
        "eti89_lb": post.quantile(0.055, dim=SAMPLE_DIMS).drop_vars("quantile"),
        "eti89_ub": post.quantile(0.945, dim=SAMPLE_DIMS).drop_vars("quantile"),
        "r_hat": az.rhat(post),
        "ess_bulk": az.ess(post, method="bulk"),
        "ess_tail": az.ess(post, method="tail"),
    }
    flat = {column: _flatten(ds, partitions) for column, ds in stats.items()}
    divergences = tree["sample_stats"]["diverging"].sum(SAMPLE_DIMS).values.astype(int)
    parameters = list(flat["mean"])
    frame = pd.DataFrame(
        {
            "partition": np.repeat(partitions, len(parameters)),
            "parameter": np.tile(parameters, len(partitions)),
            **{c: np.stack([flat[c][p] for p in parameters], axis=1).ravel() for c in stats},
            "divergences": np.repeat(divergences, len(parameters)),
        }
    )
    draws = post.sizes["chain"] * post.sizes["draw"]
    verdicts = {}
    for i, key in enumerate(partitions):
        rows = frame.iloc[i * len(parameters) : (i + 1) * len(parameters)]
        verdicts[key] = _verdict(rows, rhat_max, ess_min, divergences[i], max_divergence_rate * draws)
    frame["status"] = frame["partition"].map({k: v["status"] for k, v in verdicts.items()})
    return frame[SUMMARY_COLUMNS], verdicts


def _verdict(rows: pd.DataFrame, rhat_max: float, ess_min: float, divergences: int, max_divergences: float) -> dict:
    worst_rhat = rows["r_hat"].fillna(np.inf).idxmax()
    worst_ess = rows["ess_bulk"].fillna(0.0).idxmin()
    r_hat, ess = rows.at[worst_rhat, "r_hat"], rows.at[worst_ess, "ess_bulk"]
    reasons = []
    if not r_hat <= rhat_max:
        reasons.append(f"r_hat {r_hat:.3f} > {rhat_max} ({rows.at[worst_rhat, 'parameter']})")
    if not ess >= ess_min:
        reasons.append(f"ess_bulk {ess:.0f} < {ess_min:g} ({rows.at[worst_ess, 'parameter']})")
    if divergences > max_divergences:
        reasons.append(f"{divergences} divergent draws")
    return {
        "status": "unconverged" if reasons else "ok",
        "reason": "; ".join(reasons) or None,
        "r_hat_max": None if np.isnan(r_hat) else float(r_hat),
        "ess_bulk_min": None if np.isnan(ess) else float(ess),
        "divergences": int(divergences),
    }
