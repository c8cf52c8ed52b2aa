"""Model registry: a registered name, or a user's ``module.path:object``.

The object may be a ``Model`` subclass or an instance of one. Options (a dict)
are validated by the model's own pydantic fields, so unknown keys are errors.
"""

from __future__ import annotations

import importlib

from pydantic import ValidationError

from models.base import Model
from models.impressions_nb import ImpressionsNB
from models.linear_regression import LinearRegression
from models.logistic_regression import LogisticRegression
from models.poisson_zero_hmm import PoissonZeroHMM

REGISTRY: dict[str, type[Model]] = {
    cls.name: cls for cls in (LinearRegression, LogisticRegression, ImpressionsNB, PoissonZeroHMM)
}


class ModelNotFound(ValueError):
    pass


def resolve_model(name: str, options: dict | None = None) -> Model:
    """The model called ``name`` (registered, or ``module.path:object``) with ``options``."""
    options = dict(options or {})
    if name in REGISTRY:
        target = REGISTRY[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelNotFound(f"cannot import model {name!r}: {exc}") from None
    else:
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFound(f"unknown model {name!r} (registered: {known}; or use module.path:object)")
    if isinstance(target, Model):
        return target.model_copy(update=options) if options else target
    if not (isinstance(target, type) and issubclass(target, Model)):
        raise ModelNotFound(f"{name!r} is not a bayesfan Model subclass or instance")
    try:
        return target(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ModelNotFound(f"model {name!r} option {where!r}: {first['msg']}") from None
