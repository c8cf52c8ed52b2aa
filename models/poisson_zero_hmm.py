"""``poisson_zero_hmm``: a viewer's hourly series as a two-state (off/on) hidden Markov model.

    S_t ∈ {0: off, 1: on};  y_t = 0 when S_t = 0,  y_t ~ Poisson(mu) when S_t = 1;
    P(S_t = 0 | S_{t-1} = r) = logit⁻¹(X_t · xi_r),  r ∈ {0, 1};  S_0 ~ Categorical(pi0).

X_t is the design row [1, weekday dummies 1..6, hour-of-day dummies 1..23 (option
``hour_of_day``), extra covariate columns (option ``covariates``)], so ``xi`` has
shape (2, K). Priors: mu ~ Gamma with mean ``mu_mean`` and variance ``mu_var``,
xi ~ Normal(0, ``xi_scale``), pi0 ~ Dirichlet(1, 1). The states are summed out by
the forward algorithm (``models.hmm``); padded steps are masked inside it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from pydantic import Field

from models import hmm
from models.base import Model, truth_rows

#: Their truth on (intercept, weekday 1..6): row r is the log-odds of switching off from state r.
XI_TRUTH = np.array([[2.0, -5.0, -3.0, 0.0, 0.0, -5.0, -5.0], [-2.0, -1.0, 3.0, 0.0, 0.0, 5.0, 5.0]])
MU_TRUTH = 50.0
PI0_TRUTH = np.array([0.0, 1.0])


class PoissonZeroHMM(Model):
    name = "poisson_zero_hmm"
    order_by = "hour"

    mu_mean: float = Field(1000.0, gt=0, description="prior mean of mu (Gamma)")
    mu_var: float = Field(10000.0, gt=0, description="prior variance of mu (Gamma)")
    xi_scale: float = Field(100.0, gt=0, description="prior sd of every xi (Normal(0, xi_scale))")
    hour_of_day: bool = Field(False, description="add 23 hour-of-day dummies (hour % 24) to X_t")
    covariates: tuple[str, ...] = Field((), description="extra float columns appended to X_t")

    def columns(self) -> dict[str, str]:
        return {"hour": "float", "y": "count", "weekday": "category:7", **{c: "float" for c in self.covariates}}

    def arrays(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"x": self.design(rows), "y": rows["y"].to_numpy(np.int32)}

    def design(self, rows: pd.DataFrame) -> np.ndarray:
        """X (T, K): intercept, weekday dummies 1..6, hour-of-day dummies 1..23, covariates."""
        weekday = rows["weekday"].to_numpy(int)
        blocks = [np.ones((len(rows), 1)), np.eye(7)[weekday][:, 1:]]
        if self.hour_of_day:
            blocks.append(np.eye(24)[rows["hour"].to_numpy(int) % 24][:, 1:])
        blocks.append(rows[list(self.covariates)].to_numpy(float).reshape(len(rows), -1))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def model(self, mask, x, y):
        shape, rate = self.mu_mean**2 / self.mu_var, self.mu_mean / self.mu_var
        mu = numpyro.sample("mu", dist.Gamma(shape, rate))
        xi = numpyro.sample("xi", dist.Normal(0.0, self.xi_scale).expand([2, x.shape[-1]]).to_event(2))
        pi0 = numpyro.sample("pi0", dist.Dirichlet(jnp.ones(2)))
        numpyro.factor("y", hmm.log_likelihood(*hmm_terms(mu, xi, pi0, x, y), mask))

    def state_probabilities(self, samples: dict, arrays: dict) -> np.ndarray:
        """P(S_t = on | y), averaged over posterior draws (forward-backward; outside the sampler).

        ``samples`` holds draws of ``mu``, ``xi``, ``pi0`` with one leading draw axis;
        ``arrays`` is one partition's ``arrays(rows)`` plus its ``mask``.
        """

        def one(mu, xi, pi0):
            terms = hmm_terms(mu, xi, pi0, arrays["x"], arrays["y"])
            return hmm.state_probabilities(*terms, jnp.asarray(arrays["mask"]))[:, 1]

        probs = jax.vmap(one)(samples["mu"], samples["xi"], samples["pi0"])
        return np.asarray(probs.mean(axis=0))

    def simulate(self, rng, partitions, length):
        """Their truth (``MU_TRUTH``, ``XI_TRUTH``, ``PI0_TRUTH``), jittered per partition.

        mu = 50 · exp(N(0, 0.1²)); each xi gets N(0, 0.25²) noise; hour-of-day and
        covariate coefficients are N(0, 0.5²); covariates are standard normal; pi0 = (0, 1).
        """
        hour = np.arange(length)
        frames, truth = [], []
        for p in range(partitions):
            key = f"p{p:04d}"
            rows = pd.DataFrame({"hour": hour, "weekday": (hour // 24) % 7})
            for column in self.covariates:
                rows[column] = rng.normal(size=length)
            x = self.design(rows)
            xi = rng.normal(0.0, 0.5, (2, x.shape[1]))
            xi[:, :7] = XI_TRUTH + rng.normal(0.0, 0.25, (2, 7))
            mu = MU_TRUTH * np.exp(rng.normal(0.0, 0.1))
            rows["y"] = simulate_series(rng, x, mu, xi, PI0_TRUTH)
            frames.append(rows.assign(partition=key))
            truth += truth_rows(key, {"mu": mu, "xi": xi, "pi0": PI0_TRUTH})
        frame = pd.concat(frames, ignore_index=True)
        return frame[["partition", *frame.columns.drop("partition")]], pd.DataFrame(truth)


def hmm_terms(mu, xi, pi0, x, y):
    """(log_init, log_trans (T, 2, 2), log_emit (T, 2)) of the forward algorithm.

    log_trans[t, r] = (log logit⁻¹(eta_tr), log logit⁻¹(-eta_tr)) with eta = X xi^T;
    log_emit[t] = (log 1[y_t = 0], log Poisson(y_t | mu)).
    """
    eta = x @ xi.T
    log_trans = jnp.stack([jax.nn.log_sigmoid(eta), jax.nn.log_sigmoid(-eta)], axis=-1)
    log_off = jnp.where(y == 0, 0.0, hmm.LOG_ZERO)
    log_emit = jnp.stack([log_off, dist.Poisson(mu).log_prob(y)], axis=-1)
    return jnp.log(pi0), log_trans, log_emit


def simulate_series(rng: np.random.Generator, x: np.ndarray, mu: float, xi: np.ndarray, pi0) -> np.ndarray:
    """Draw the states S_0..S_{T-1} and the counts y (T,) of one series with design ``x``."""
    p_off = 1.0 / (1.0 + np.exp(-(x @ xi.T)))
    state = rng.choice(2, p=np.asarray(pi0) / np.sum(pi0))
    y = np.zeros(len(x), dtype=np.int64)
    for t in range(len(x)):
        if t:
            state = int(rng.random() >= p_off[t, state])
        y[t] = rng.poisson(mu) if state else 0
    return y
