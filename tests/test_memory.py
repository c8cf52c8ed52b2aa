"""A long compiled loop keeps its memory flat: ``bayesfan.engine`` caps glibc's malloc arenas.

Without the cap, XLA's CPU threads left each iteration's temporaries in per-thread arenas:
this loop of HMM gradients grew by about 25 MB, and a full-size NUTS run by 21 GB. The
first long run settles once (a few MB); after it, memory stays flat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, numpy as np, psutil, jax, jax.numpy as jnp
import bayesfan.engine  # caps the arenas at import
from jax import lax
from numpyro.infer.util import initialize_model
from jax.flatten_util import ravel_pytree
from models import resolve_model
from tasks.sample import stack_partitions
from tasks.split import plan_batches, split_partitions

model = resolve_model("poisson_zero_hmm")
frame, _ = model.simulate(np.random.default_rng(0), 4, 5040)
parts, _ = split_partitions(frame, ("partition",), model)
(plan,) = plan_batches(parts, 4, {})
data = stack_partitions(model, [parts[k] for k in plan.partitions], plan.length, plan.size)

def potential(z, d):
    info = initialize_model(jax.random.PRNGKey(0), model.model, model_kwargs=d, dynamic_args=False)
    return info.potential_fn(ravel_pytree(info.param_info.z)[1](z))

@jax.jit
def descend(z, n):
    step = lambda c: (c[0] + 1, c[1] - 1e-9 * jax.vmap(jax.grad(potential))(c[1], data))
    return lax.while_loop(lambda c: c[0] < n, step, (0, z))[1]

z = jnp.zeros((4, 16))
descend(z, 3000).block_until_ready()  # the first long run settles its buffers (a few MB, once)
before = psutil.Process().memory_info().rss
for _ in range(2):
    descend(z, 3000).block_until_ready()
print(json.dumps({"growth_mb": (psutil.Process().memory_info().rss - before) / 1e6}))
"""


def test_a_long_compiled_loop_does_not_grow_resident_memory():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    growth = json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]
    assert growth < 5.0, f"resident memory grew by {growth:.1f} MB over 6,000 gradient iterations"
