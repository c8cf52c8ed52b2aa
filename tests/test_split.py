"""Split and batch planning: partitions, quarantine, buckets, content-addressed batch ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesfan.storage import Store
from models import resolve_model
from tasks.split import (
    bucket_length, padded_size, plan_batches, read_batch_input, split_partitions, write_batch_input,
)

CONFIG = {"model": "linear_regression", "seed": 0}


def regression_frame(sizes: dict[tuple[str, str], int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for (market, network), n in sizes.items():
        frames.append(pd.DataFrame({"market": market, "network": network, "x1": rng.normal(size=n),
                                    "x2": rng.normal(size=n), "y": rng.normal(size=n)}))
    return pd.concat(frames, ignore_index=True)


def test_split_groups_rows_by_key_columns_and_quarantines_bad_partitions():
    frame = regression_frame({("NYC", "ESPN"): 10, ("NYC", "CNN"): 12, ("LA", "ESPN"): 1, ("LA", "CNN"): 5})
    frame.loc[(frame.market == "LA") & (frame.network == "CNN"), "y"] = np.nan
    parts, quarantined = split_partitions(frame, ("market", "network"), resolve_model("linear_regression"))
    assert sorted(parts) == ["NYC|CNN", "NYC|ESPN"]
    assert [len(parts[k]) for k in ("NYC|CNN", "NYC|ESPN")] == [12, 10]
    assert quarantined == {"LA|CNN": "column 'y' has NaN or infinite values", "LA|ESPN": "1 rows, needs at least 2"}
    assert list(parts["NYC|ESPN"].columns) == ["y", "x1", "x2"]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 100, 1000, 5040])
def test_bucket_length_covers_n_with_small_padding(n):
    length = bucket_length(n)
    assert length >= n and length % 8 == 0
    assert length - n < max(8, 0.2 * n)


def test_padded_size_is_power_of_two_capped_by_batch_size():
    assert [padded_size(c, 64) for c in (1, 2, 3, 33, 64)] == [1, 2, 4, 64, 64]
    assert padded_size(30, 24) == 24


def test_plan_buckets_by_size_and_ids_are_content_hashes():
    sizes = {("m", f"n{i:02d}"): n for i, n in enumerate([100] * 5 + [300] * 3)}
    parts, _ = split_partitions(regression_frame(sizes), ("market", "network"), resolve_model("linear_regression"))
    plans = plan_batches(parts, batch_size=4, config_fields=CONFIG)
    assert [(p.length, len(p.partitions), p.size) for p in plans] == [(104, 4, 4), (104, 1, 1), (312, 3, 4)]
    assert sorted(k for p in plans for k in p.partitions) == sorted(parts)
    assert [p.batch_id for p in plans] == [p.batch_id for p in plan_batches(parts, 4, CONFIG)]

    changed = dict(parts)
    changed["m|n07"] = changed["m|n07"].assign(y=changed["m|n07"].y + 1.0)
    ids = [p.batch_id for p in plan_batches(changed, 4, CONFIG)]
    assert ids[:2] == [p.batch_id for p in plans[:2]] and ids[2] != plans[2].batch_id
    other_seed = [p.batch_id for p in plan_batches(parts, 4, {**CONFIG, "seed": 1})]
    assert not set(other_seed) & {p.batch_id for p in plans}


def test_batch_input_round_trips_through_storage(tmp_path):
    parts, _ = split_partitions(regression_frame({("a", "b"): 6, ("a", "c"): 7}), ("market", "network"),
                                resolve_model("linear_regression"))
    (plan,) = plan_batches(parts, 8, CONFIG)
    store = Store(str(tmp_path))
    write_batch_input(store, plan, parts)
    back = read_batch_input(store, plan)
    for key in plan.partitions:
        pd.testing.assert_frame_equal(back[key], parts[key])
