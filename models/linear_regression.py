"""``linear_regression``: y_i ~ Normal(alpha + x_i · beta, sigma).

Priors: alpha ~ Normal(0, 10), beta_k ~ Normal(0, 5), sigma ~ HalfNormal(5).
"""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers

from models.base import Model, truth_rows


class LinearRegression(Model):
    name = "linear_regression"

    y: str = "y"
    covariates: tuple[str, ...] = ("x1", "x2")

    def columns(self) -> dict[str, str]:
        return {self.y: "float", **{c: "float" for c in self.covariates}}

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "x": rows[list(self.covariates)].to_numpy(np.float32),
            "y": rows[self.y].to_numpy(np.float32),
        }

    def model(self, mask, x, y):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 5.0).expand([x.shape[-1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(5.0))
        with handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(alpha + x @ beta, sigma), obs=y)

    def simulate(self, rng, partitions, length):
        frames, truth = [], []
        k = len(self.covariates)
        for p in range(partitions):
            key = f"p{p:04d}"
            alpha, beta, sigma = rng.normal(0, 2), rng.normal(0, 1, k), rng.uniform(0.5, 2.0)
            x = rng.normal(size=(length, k))
            frame = pd.DataFrame(x, columns=list(self.covariates))
            frame[self.y] = alpha + x @ beta + rng.normal(0, sigma, length)
            frame.insert(0, "partition", key)
            frames.append(frame)
            truth += truth_rows(key, {"alpha": alpha, "beta": beta, "sigma": sigma})
        return pd.concat(frames, ignore_index=True), pd.DataFrame(truth)
