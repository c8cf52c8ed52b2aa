"""Traced batch programs shared across processes through ``jax.export``.

Tracing NumPyro's NUTS under two ``vmap``s takes seconds (7 s for a small linear
regression on one core), and JAX's persistent compilation cache only saves the
compile that follows it. So the traced program itself is stored: ``load_or_export``
serializes it (StableHLO, ``jax.export``) under ``$BAYESFAN_CACHE_DIR/programs`` and
a later process, a new worker or container, deserializes it in milliseconds and
compiles it from the compilation cache, without tracing.

The file name is a hash of everything that determines the program (``program_key``):
the jaxpr of the model's log density and initialisation on one partition (and its
constants), the sampler settings, the arguments' shapes and dtypes, the source of the
engine's functional core (``engine._SOURCE``), and the jax, jaxlib and numpyro versions.
Tracing that jaxpr costs tens of milliseconds; editing a model, a helper it calls, or
the engine's chain changes the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import uuid
from typing import Callable

import jax
import jaxlib
import numpy as np
import numpyro
from jax import export
from numpyro.infer.util import initialize_model

_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def program_key(model: Callable, source: str, settings: object, args: tuple) -> str:
    """sha256 naming the program ``jit(vmap(vmap(chain)))`` of ``model`` for ``args``.

    ``args`` is ``(keys, data, warm)`` with leading ``(partition, ...)`` axes;
    ``source`` is the source of the engine code that builds the program, ``settings`` its
    static configuration.
    """
    digest = hashlib.sha256()
    for part in (jax.__version__, jaxlib.__version__, numpyro.__version__, jax.default_backend(),
                 source, repr(settings), signature(args)):
        digest.update(str(part).encode())
        digest.update(b"\0")
    _, data, _ = args
    first = jax.tree.map(lambda a: a[0], data)
    closed = jax.make_jaxpr(lambda key, d: _density(model, key, d))(jax.random.PRNGKey(0), first)
    digest.update(_ADDRESS.sub("", str(closed.jaxpr)).encode())
    for const in closed.consts:
        digest.update(np.ascontiguousarray(const).tobytes())
    return digest.hexdigest()


def load_or_export(jitted: Callable, key: str, args: tuple, directory: str) -> Callable:
    """``jitted``'s program for ``args`` as a callable: deserialized from ``directory/key``, or
    traced, exported and stored there (atomically, so concurrent workers never read half a file)."""
    path = os.path.join(directory, f"{key}.jaxexport")
    try:
        with open(path, "rb") as f:
            exported = export.deserialize(bytearray(f.read()))
    except (OSError, ValueError, struct.error):  # missing, or unreadable: trace it again
        exported = export.export(jitted)(*args)
        _store(exported.serialize(), path)
    return jax.jit(exported.call)


def _store(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` atomically; best effort: a full or read-only disk only costs a trace."""
    partial = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(partial)


def _density(model: Callable, key, data: dict):
    """What a model contributes to the program: initialisation, log density and its gradient."""
    info = initialize_model(key, model, model_kwargs=data, dynamic_args=False)
    z = info.param_info.z
    return jax.value_and_grad(info.potential_fn)(z), info.postprocess_fn(z)


def signature(args: tuple) -> str:
    leaves, treedef = jax.tree.flatten(args)
    return f"{treedef}|" + ",".join(f"{np.shape(a)}:{np.result_type(a)}" for a in leaves)
