"""A user's own model: daily sales counts with a log-linear price effect.

    sales_i ~ Poisson(exp(a + b · price_i)),  a ~ Normal(2, 1),  b ~ Normal(0, 1).

Registering it takes a ``Model`` subclass with three parts: ``columns()`` and the
data adapter ``arrays(rows)`` (one partition's rows -> arrays; bayesfan pads them
and passes the mask), the NumPyro ``model(mask, **arrays)``, and optionally
``simulate``. Use it as ``bayesfan fit --model mypkg.module:MyModel``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers

from models.base import Model, truth_rows


class MyModel(Model):
    name = "my_sales"
    order_by = "day"

    def columns(self) -> dict[str, str]:
        return {"day": "float", "price": "float", "sales": "count"}

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"price": rows["price"].to_numpy(np.float32), "sales": rows["sales"].to_numpy(np.int32)}

    def model(self, mask, price, sales):
        a = numpyro.sample("a", dist.Normal(2.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        with handlers.mask(mask=mask):
            numpyro.sample("sales", dist.Poisson(jnp.exp(a + b * price)), obs=sales)

    def simulate(self, rng, partitions, length):
        frames, truth = [], []
        for p in range(partitions):
            key = f"store{p}"
            a, b = rng.normal(2.0, 0.3), rng.normal(-0.5, 0.2)
            price = rng.uniform(-1.0, 1.0, length)
            sales = rng.poisson(np.exp(a + b * price))
            frames.append(pd.DataFrame({"store": key, "day": np.arange(length), "price": price, "sales": sales}))
            truth += truth_rows(key, {"a": a, "b": b})
        return pd.concat(frames, ignore_index=True), pd.DataFrame(truth)
