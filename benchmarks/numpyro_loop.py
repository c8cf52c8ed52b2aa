"""System (c) of ``small``: stock NumPyro, one ``MCMC.run`` per partition, in a process of its own.

``python -m benchmarks.numpyro_loop DATA COUNT SAMPLER_JSON OUT [--tuned]`` fits the first
COUNT partitions of DATA and writes its cost and each partition's smallest bulk ESS to OUT.
It imports neither bayesfan's engine nor its settings, so it runs as a user's first script
does: JAX's defaults (XLA threads for every core, no persistent compilation cache; NumPyro
traces and compiles its sampler on every ``MCMC.run``). ``--tuned`` gives it what bayesfan's
own processes get: JAX's persistent compilation cache, warmed by an untimed first partition,
and one XLA compute thread (the process pinned to one core). Interpreter start and imports
are outside the clock.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path


def main(data: str, count: int, sampler: dict, out: str, tuned: bool) -> None:
    if tuned:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import jax
    import numpy as np
    import pandas as pd
    from jax import random
    from numpyro.infer import MCMC, NUTS

    from benchmarks.measure import ess_bulk_min, measure
    from models import resolve_model

    model = resolve_model("linear_regression")
    frame = pd.read_parquet(data)
    parts = [rows for _, rows in frame.groupby("partition", sort=True)][:count]

    def fit(i: int, rows) -> float:
        kernel = NUTS(model.model, target_accept_prob=sampler["target_accept"],
                      max_tree_depth=sampler["max_tree_depth"])
        mcmc = MCMC(kernel, num_warmup=sampler["warmup"], num_samples=sampler["draws"],
                    num_chains=sampler["chains"], progress_bar=False)
        mcmc.run(random.PRNGKey(i), mask=np.ones(len(rows), bool), **model.arrays(rows))
        return float(ess_bulk_min(mcmc.get_samples(group_by_chain=True)))

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as cache:
        warnings.simplefilter("ignore")  # "not enough devices to run parallel chains": drawn sequentially
        if tuned:
            jax.config.update("jax_compilation_cache_dir", cache)  # as bayesfan's enable_compilation_cache
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
            fit(len(parts), parts[0])
        with measure() as cost:
            ess = [fit(i, rows) for i, rows in enumerate(parts)]
    Path(out).write_text(json.dumps({"wall_s": cost.wall_s, "cpu_s": cost.cpu_s, "ess": ess}))


if __name__ == "__main__":
    data, count, sampler, out, *flags = sys.argv[1:]
    main(data, int(count), json.loads(sampler), out, tuned="--tuned" in flags)
