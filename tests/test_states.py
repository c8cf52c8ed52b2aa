"""Hidden-state probabilities from a poisson_zero_hmm artifact (forward-backward, off the hot path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesfan.config import FitConfig
from flows.fit import run_fit
from models import resolve_model


@pytest.mark.slow
def test_states_command_gives_on_probabilities_consistent_with_the_data(tmp_path):
    frame, _ = resolve_model("poisson_zero_hmm").simulate(np.random.default_rng(4), 2, 96)
    frame.to_parquet(tmp_path / "hmm.parquet", index=False)
    run_fit(FitConfig(data=str(tmp_path / "hmm.parquet"), model="poisson_zero_hmm", partition_by=("partition",),
                      out=str(tmp_path / "out"), chains=2, warmup=150, draws=150, workers=1, max_refits=0,
                      report=False, min_success_ratio=0.0))
    done = subprocess.run([str(Path(sys.executable).parent / "bayesfan"), "states", str(tmp_path / "out"),  # noqa: S603
                           "--to", str(tmp_path / "states.parquet")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    states = pd.read_parquet(tmp_path / "states.parquet")
    assert len(states) == 2 * 96 and states["p_on"].between(0, 1).all()
    y = frame.sort_values(["partition", "hour"])["y"].to_numpy()
    assert np.all(states["p_on"].to_numpy()[y > 0] > 0.99)  # a count > 0 can only come from "on"
