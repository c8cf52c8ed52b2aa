"""The program cache's key names exactly what determines a program; a bad cache file is traced again."""

from __future__ import annotations

import os

import jax
import numpy as np

from bayesfan import engine, programs
from bayesfan.engine import SamplerConfig, partition_keys
from models import resolve_model
from tasks.sample import stack_partitions

SAMPLER = SamplerConfig(chains=2, warmup=10, draws=10)


def hmm_args(partitions: int = 2, length: int = 24, seed: int = 0) -> tuple:
    model = resolve_model("poisson_zero_hmm")
    frame, _ = model.simulate(np.random.default_rng(seed), partitions, length)
    parts = [rows[list(model.columns())] for _, rows in frame.groupby("partition")]
    return partition_keys(0, [str(i) for i in range(partitions)], SAMPLER.chains), stack_partitions(
        model, parts, length, partitions), None


def key(model_name: str = "poisson_zero_hmm", sampler=SAMPLER, args=None, **options) -> str:
    return programs.program_key(resolve_model(model_name, options), engine._SOURCE, sampler, args or hmm_args())


def test_key_depends_on_model_options_sampler_shapes_and_engine_source_only():
    base = key()
    assert key() == base  # equal models, same data shapes: one program
    assert key(args=hmm_args(seed=1)) == base  # other data of the same shapes
    assert key(mu_mean=500.0) != base  # a prior changes the log density
    assert key(sampler=SAMPLER._replace(warmup=20)) != base
    assert key(args=hmm_args(length=48)) != base
    assert programs.program_key(resolve_model("poisson_zero_hmm"), engine._SOURCE + "#", SAMPLER, hmm_args()) != base


def test_a_stored_program_is_loaded_and_a_corrupt_one_traced_again(tmp_path):
    traced = []

    def program():  # a new function each time, as in a new process: nothing traced yet
        return jax.jit(lambda keys, data, warm: traced.append(1) or data["x"] * 2)

    args = (np.zeros((2, 2), np.uint32), {"x": np.ones((2, 3), np.float32)}, None)
    first = programs.load_or_export(program(), "k", args, str(tmp_path))
    (path,) = tmp_path.iterdir()
    assert len(traced) == 1 and path.name == "k.jaxexport"
    np.testing.assert_array_equal(programs.load_or_export(program(), "k", args, str(tmp_path))(*args), first(*args))
    assert len(traced) == 1  # loaded, not traced

    path.write_bytes(path.read_bytes()[:100])
    np.testing.assert_array_equal(programs.load_or_export(program(), "k", args, str(tmp_path))(*args), first(*args))
    assert len(traced) == 2 and os.listdir(tmp_path) == ["k.jaxexport"]
