"""``logistic_regression``: y_i ~ Bernoulli(logit⁻¹(alpha + x_i · beta)).

Priors: alpha ~ Normal(0, 5), beta_k ~ Normal(0, 2.5) (weakly informative on the logit
scale; proper, so they stay proper when consensus mode fractionates them).
"""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers

from models.base import Model, truth_rows


class LogisticRegression(Model):
    name = "logistic_regression"

    y: str = "y"
    covariates: tuple[str, ...] = tuple(f"x{k}" for k in range(1, 10))

    def columns(self) -> dict[str, str]:
        return {self.y: "category:2", **{c: "float" for c in self.covariates}}

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "x": rows[list(self.covariates)].to_numpy(np.float32),
            "y": rows[self.y].to_numpy(np.int32),
        }

    def model(self, mask, x, y):
        alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 2.5).expand([x.shape[-1]]).to_event(1))
        with handlers.mask(mask=mask):
            numpyro.sample("y", dist.BernoulliLogits(alpha + x @ beta), obs=y)

    def simulate(self, rng, partitions, length):
        """Standard-normal covariates; alpha ~ N(0, 0.5), beta_k ~ N(0, 0.5) per partition."""
        frames, truth = [], []
        k = len(self.covariates)
        for p in range(partitions):
            key = f"p{p:04d}"
            alpha, beta = rng.normal(0, 0.5), rng.normal(0, 0.5, k)
            x = rng.normal(size=(length, k))
            frame = pd.DataFrame(x, columns=list(self.covariates))
            frame[self.y] = (rng.uniform(size=length) < 1 / (1 + np.exp(-(alpha + x @ beta)))).astype(np.int64)
            frame.insert(0, "partition", key)
            frames.append(frame)
            truth += truth_rows(key, {"alpha": alpha, "beta": beta})
        return pd.concat(frames, ignore_index=True), pd.DataFrame(truth)
