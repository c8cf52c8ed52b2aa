"""The streamed ``posterior.zarr`` equals the in-memory concatenation, whatever the batch layout."""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayesfan.storage import Store, pack_tree
from tasks import reduce
from tasks.reduce import GROUPS, combine_trees, write_posterior
from tasks.sample import RESULT


def batch_tree(keys: list[str], rng: np.random.Generator) -> xr.DataTree:
    n, coords = len(keys), {"partition": np.asarray(keys, dtype=str)}
    return xr.DataTree.from_dict({
        "posterior": xr.Dataset({"mu": (("partition", "chain", "draw"), rng.normal(size=(n, 2, 5))),
                                 "beta": (("partition", "chain", "draw", "beta_dim_0"),
                                          rng.normal(size=(n, 2, 5, 3)).astype("float32"))}, coords=coords),
        "sample_stats": xr.Dataset({"diverging": (("partition", "chain", "draw"), rng.random((n, 2, 5)) < 0.1)},
                                   coords=coords),
        "adaptation": xr.Dataset({"step_size": (("partition", "chain"), rng.random((n, 2)))}, coords=coords),
    })


def test_streamed_posterior_matches_concatenation_across_chunks_and_refits(tmp_path, monkeypatch):
    monkeypatch.setattr(reduce, "CHUNK", 4)  # several chunks, none aligned with a batch
    rng = np.random.default_rng(0)
    layout = {"b0": [f"k{i:02d}" for i in range(0, 14, 2)],  # first round: interleaved in key order
              "b1": [f"k{i:02d}" for i in range(1, 14, 2)],
              "b2": ["k03", "k10"]}  # the refit round: its two partitions replace their first fits
    store = Store(str(tmp_path / "out"))
    trees = {b: batch_tree(keys, rng) for b, keys in layout.items()}
    for b, tree in trees.items():
        store.write_bytes(pack_tree(tree), "batches", b, RESULT)
    records = [{"batch_id": b} for b in layout]
    keep = [[k for k in layout["b0"] if k != "k10"], [k for k in layout["b1"] if k != "k03"], layout["b2"]]

    write_posterior(store, records, keep)

    written = xr.open_datatree(store.path("posterior.zarr"), engine="zarr").load()
    expected = combine_trees([trees[b].sel(partition=k) for b, k in zip(layout, keep)])
    assert list(written["posterior"]["partition"].values) == [f"k{i:02d}" for i in range(14)]
    for group in GROUPS:
        xr.testing.assert_identical(written[group].to_dataset(), expected[group].to_dataset())
    np.testing.assert_array_equal(written["posterior"]["mu"].sel(partition="k03"),
                                  trees["b2"]["posterior"]["mu"].sel(partition="k03"))
