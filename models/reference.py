"""Five posteriordb reference posteriors as bayesfan models (names as in posteriordb).

They check the engine and the shared forward algorithm against gold-standard
draws (``tests/test_reference.py``). A partition's rows are the posterior's data
rows: schools, time steps or observations. Flat priors are ``ImproperUniform``.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro import handlers
from numpyro.distributions import constraints

from models import hmm
from models.base import Model


def flat(support, shape=()):
    """The improper flat prior on ``support`` (Stan's default for a declared parameter)."""
    return dist.ImproperUniform(support, (), shape)


def _float_arrays(rows: pd.DataFrame, columns) -> dict[str, np.ndarray]:
    return {c: rows[c].to_numpy(np.float32) for c in columns}


class EightSchoolsNoncentered(Model):
    """theta_trans_j ~ N(0, 1), mu ~ N(0, 5), tau ~ HalfCauchy(5), theta = mu + tau theta_trans,
    y_j ~ N(theta_j, sigma_j)."""

    name = "eight_schools_noncentered"
    min_rows = 1

    def columns(self) -> dict[str, str]:
        return {"y": "float", "sigma": "float"}

    def arrays(self, rows):
        return _float_arrays(rows, self.columns())

    def model(self, mask, y, sigma):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand(y.shape).to_event(1))
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        with handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


class HMMExample(Model):
    """Two-state Gaussian HMM: rows theta1, theta2 of the transition matrix ~ flat on the simplex;
    mu positive-ordered with target += N(mu_1 | 3, 1) + N(mu_2 | 10, 1); y_t ~ N(mu[S_t], 1);
    the forward recursion starts at alpha_0(k) = log N(y_0 | mu_k, 1) (no initial-state term)."""

    name = "hmm_example"
    order_by = "t"

    def columns(self) -> dict[str, str]:
        return {"t": "float", "y": "float"}

    def arrays(self, rows):
        return _float_arrays(rows, ["y"])

    def model(self, mask, y):
        theta1 = numpyro.sample("theta1", dist.Dirichlet(jnp.ones(2)))
        theta2 = numpyro.sample("theta2", dist.Dirichlet(jnp.ones(2)))
        mu = numpyro.sample("mu", flat(constraints.positive_ordered_vector, (2,)))
        numpyro.factor("mu_prior", dist.Normal(jnp.array([3.0, 10.0]), 1.0).log_prob(mu).sum())
        log_trans = jnp.log(jnp.stack([theta1, theta2]))
        log_emit = dist.Normal(mu, 1.0).log_prob(y[:, None])
        numpyro.factor("y", hmm.log_likelihood(jnp.zeros(2), log_trans, log_emit, mask))


class KidscoreMomiq(Model):
    """kid_score_i ~ N(beta_1 + beta_2 mom_iq_i, sigma); beta flat, sigma ~ HalfCauchy(2.5)."""

    name = "kidiq_kidscore_momiq"

    def columns(self) -> dict[str, str]:
        return {"kid_score": "float", "mom_iq": "float"}

    def arrays(self, rows):
        return _float_arrays(rows, self.columns())

    def model(self, mask, kid_score, mom_iq):
        beta = numpyro.sample("beta", flat(constraints.real_vector, (2,)))
        sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
        with handlers.mask(mask=mask):
            numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


class LogearnHeight(Model):
    """log(earn_i) ~ N(beta_1 + beta_2 height_i, sigma); beta and sigma > 0 flat."""

    name = "earnings_logearn_height"

    def columns(self) -> dict[str, str]:
        return {"earn": "float", "height": "float"}

    def arrays(self, rows):
        return {"log_earn": np.log(rows["earn"].to_numpy(np.float32)), "height": rows["height"].to_numpy(np.float32)}

    def model(self, mask, log_earn, height):
        beta = numpyro.sample("beta", flat(constraints.real_vector, (2,)))
        sigma = numpyro.sample("sigma", flat(constraints.positive))
        with handlers.mask(mask=mask):
            numpyro.sample("log_earn", dist.Normal(beta[0] + beta[1] * height, sigma), obs=log_earn)


class Nes(Model):
    """partyid7_i ~ N(x_i · beta, sigma), x = (1, real_ideo, race_adj, age30_44, age45_64, age65up,
    educ1, gender, income) with age dummies from age_discrete = 2, 3, 4; beta and sigma > 0 flat."""

    name = "nes2000_nes"
    predictors: ClassVar[tuple[str, ...]] = ("real_ideo", "race_adj", "educ1", "gender", "income")

    def columns(self) -> dict[str, str]:
        return {"partyid7": "float", "age_discrete": "float", **{c: "float" for c in self.predictors}}

    def arrays(self, rows):
        age = rows["age_discrete"].to_numpy()
        x = np.column_stack(
            [np.ones(len(rows)), rows["real_ideo"], rows["race_adj"], age == 2, age == 3, age == 4,
             rows["educ1"], rows["gender"], rows["income"]]
        )
        return {"x": x.astype(np.float32), "partyid7": rows["partyid7"].to_numpy(np.float32)}

    def model(self, mask, x, partyid7):
        beta = numpyro.sample("beta", flat(constraints.real_vector, (9,)))
        sigma = numpyro.sample("sigma", flat(constraints.positive))
        with handlers.mask(mask=mask):
            numpyro.sample("partyid7", dist.Normal(x @ beta, sigma), obs=partyid7)


REFERENCE_MODELS: dict[str, type[Model]] = {
    "eight_schools-eight_schools_noncentered": EightSchoolsNoncentered,
    "hmm_example-hmm_example": HMMExample,
    "kidiq-kidscore_momiq": KidscoreMomiq,
    "earnings-logearn_height": LogearnHeight,
    "nes2000-nes": Nes,
}
