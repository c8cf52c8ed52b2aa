"""NumPyro models that bayesfan fits, one module each, and the registry that names them."""

from models.registry import resolve_model

__all__ = ["resolve_model"]
