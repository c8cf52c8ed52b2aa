"""``impressions_nb``: hourly TV impressions with weekday and daypart effects.

    impressions_t ~ NegativeBinomial2(mean = exp(alpha + b_weekday[w_t] + b_daypart[d_t]), phi)

``b_weekday`` (7) and ``b_daypart`` (``dayparts``) are sum-to-zero effects, so
``alpha`` is the log mean over the week and the effects are nearly orthogonal to
it (a much better geometry for NUTS than reference coding). Priors:
alpha ~ Normal(4, 2), b ~ ZeroSumNormal(1), phi ~ Gamma(2, 0.1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers
from pydantic import Field

from models.base import Model, truth_rows


class ImpressionsNB(Model):
    name = "impressions_nb"
    order_by = "hour"

    dayparts: int = Field(4, ge=1, le=24, description="number of dayparts per day")

    def columns(self) -> dict[str, str]:
        return {
            "hour": "float",
            "impressions": "count",
            "weekday": "category:7",
            "daypart": f"category:{self.dayparts}",
        }

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "weekday": rows["weekday"].to_numpy(np.int32),
            "daypart": rows["daypart"].to_numpy(np.int32),
            "impressions": rows["impressions"].to_numpy(np.int32),
        }

    def model(self, mask, weekday, daypart, impressions):
        alpha = numpyro.sample("alpha", dist.Normal(4.0, 2.0))
        b_weekday = numpyro.sample("b_weekday", dist.ZeroSumNormal(1.0, event_shape=(7,)))
        b_daypart = numpyro.sample("b_daypart", dist.ZeroSumNormal(1.0, event_shape=(self.dayparts,)))
        phi = numpyro.sample("phi", dist.Gamma(2.0, 0.1))
        log_mean = alpha + b_weekday[weekday] + b_daypart[daypart]
        with handlers.mask(mask=mask):
            numpyro.sample("impressions", dist.NegativeBinomial2(jnp.exp(log_mean), phi), obs=impressions)

    def simulate(self, rng, partitions, length):
        frames, truth = [], []
        hour = np.arange(length)
        weekday = (hour // 24) % 7
        daypart = (hour % 24) * self.dayparts // 24
        markets = ["NYC", "LA", "CHI", "HOU", "PHX", "PHL", "SAT", "SD"]
        networks = ["ESPN", "CNN", "FOX", "NBC", "ABC", "HGTV", "TNT", "AMC"]
        for p in range(partitions):
            market, network = markets[p % len(markets)], networks[(p // len(markets)) % len(networks)]
            if p >= len(markets) * len(networks):
                network = f"{network}{p // (len(markets) * len(networks))}"
            alpha = rng.normal(4.0, 0.5)
            b_weekday = _zero_sum(rng.normal(0.0, 0.3, 7))
            b_daypart = _zero_sum(rng.normal(0.0, 0.5, self.dayparts))
            phi = rng.gamma(10.0, 1.0)
            mean = np.exp(alpha + b_weekday[weekday] + b_daypart[daypart])
            counts = rng.negative_binomial(phi, phi / (phi + mean))
            frames.append(
                pd.DataFrame(
                    {"market": market, "network": network, "hour": hour, "weekday": weekday,
                     "daypart": daypart, "impressions": counts}
                )
            )
            truth += truth_rows(
                f"{market}|{network}",
                {"alpha": alpha, "b_weekday": b_weekday, "b_daypart": b_daypart, "phi": phi},
            )
        return pd.concat(frames, ignore_index=True), pd.DataFrame(truth)


def _zero_sum(effects: np.ndarray) -> np.ndarray:
    return effects - effects.mean()
