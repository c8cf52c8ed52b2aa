"""Posterior hidden-state probabilities of a fitted HMM, from an artifact (not the hot path).

For each partition, P(S_t = on | y) by forward-backward, averaged over (a thinned
set of) posterior draws, with the partition's rows as stored in its batch input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesfan.result import FitResult
from bayesfan.storage import Store
from models import resolve_model
from tasks.report import unit_rows


def state_probabilities(out_url: str, partitions: list[str] | None = None, draws: int = 200) -> pd.DataFrame:
    """Rows of (partition, t, p_on); the model must define ``state_probabilities(samples, arrays)``."""
    result = FitResult(out_url)
    manifest = result.manifest
    model = resolve_model(manifest["config"]["model"], manifest["config"]["model_options"])
    if not hasattr(model, "state_probabilities"):
        raise ValueError(f"model {model.name!r} has no hidden states")
    posterior = result.posterior["posterior"].to_dataset()
    keys = partitions or [str(k) for k in posterior["partition"].values]
    frames = []
    for key in keys:
        if key not in manifest["partitions"] or manifest["partitions"][key]["status"] not in ("ok", "unconverged"):
            raise ValueError(f"partition {key!r} was not fitted in {out_url}")
        stacked = posterior.sel(partition=key).stack(sample=("chain", "draw"))
        stacked = stacked.isel(sample=np.linspace(0, stacked.sizes["sample"] - 1, draws).astype(int))
        samples = {str(k): np.moveaxis(v.values, -1, 0) for k, v in stacked.data_vars.items()}
        rows = unit_rows(Store(out_url), manifest, key)
        arrays = model.arrays(rows) | {"mask": np.ones(len(rows), dtype=bool)}
        probs = model.state_probabilities(samples, arrays)
        frames.append(pd.DataFrame({"partition": key, "t": np.arange(len(rows)), "p_on": probs}))
    return pd.concat(frames, ignore_index=True)
