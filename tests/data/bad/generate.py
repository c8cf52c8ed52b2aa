"""Write the bad-input corpus next to this file (``python tests/data/bad/generate.py``).

Each file is one malformed input; ``cases.json`` says how ``bayesfan fit`` must
answer it. Partitions called ``good`` hold the same rows (and dtypes: counts are
floats with integer values) in every file of a model, so the tests fit them once
and reuse the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
#: Market names that must be fitted like any other and never become a path.
ODD_KEYS = ["../../escape", "a/b", "/", "..", "line\nbreak", "ünïcødé 東京 📺", ".hidden", "C:\\temp"]


def regression(key: str, n: int = 24, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y = 1.0 + 0.5 * x1 - x2 + rng.normal(0, 0.5, n)
    return pd.DataFrame({"partition": key, "x1": x1, "x2": x2, "y": y})


def impressions(key: str, hours: int = 48, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hour = np.arange(hours)
    return pd.DataFrame({"partition": key, "hour": hour, "weekday": (hour // 24) % 7,
                         "daypart": (hour % 24) * 4 // 24, "impressions": rng.poisson(50, hours).astype(float)})


def with_bad(good: pd.DataFrame, bad: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([good, bad], ignore_index=True)


def main() -> None:
    lr, nb = regression("good"), impressions("good")
    files: dict[str, pd.DataFrame | bytes] = {
        "valid.csv": lr,
        "valid.parquet": lr,
        # whole-file problems: exit 2
        "missing_column.csv": lr.drop(columns="x2"),
        "missing_partition_column.parquet": lr.drop(columns="partition"),
        "text_in_numbers.csv": lr.astype({"y": object}).assign(y=lambda f: f.y.where(f.index != 3, "twelve")),
        "string_counts.parquet": nb.astype({"impressions": str}),
        "datetime_hours.parquet": nb.assign(hour=pd.date_range("2026-01-05", periods=len(nb), freq="h")),
        "csv_named_parquet.parquet": lr.to_csv(index=False).encode(),
        "latin1.csv": with_bad(lr, regression("Bogotá", 3)).to_csv(index=False).encode("latin-1"),
        "no_header.csv": lr.to_csv(index=False, header=False).encode(),
        "empty.csv": b"",
        "header_only.csv": lr.iloc[:0],
        "no_rows.parquet": lr.iloc[:0],
        # partition problems: quarantined, the rest fitted (exit 1)
        "nan_y.csv": with_bad(lr, regression("nan_y").assign(y=lambda f: f.y.where(f.index != 5))),
        "inf_x1.parquet": with_bad(lr, regression("inf_x1").assign(x1=lambda f: f.x1.where(f.index != 2, np.inf))),
        "one_row.csv": with_bad(lr, regression("one_row", 1)),
        "gigantic.parquet": with_bad(lr, pd.DataFrame({"partition": "huge", "x1": np.zeros(1_000_001),
                                                       "x2": np.ones(1_000_001), "y": np.ones(1_000_001)})),
        "negative_counts.csv": with_bad(nb, impressions("negative").assign(
            impressions=lambda f: f.impressions.where(f.index != 7, -3))),
        "fractional_counts.csv": with_bad(nb, impressions("fractional").assign(
            impressions=lambda f: f.impressions.where(f.index != 7, 2.5))),
        "nan_counts.csv": with_bad(nb, impressions("nan_counts").assign(
            impressions=lambda f: f.impressions.where(f.index != 7))),
        "duplicated_hours.csv": with_bad(nb, impressions("duplicated").assign(
            hour=lambda f: f.hour.where(f.index != 9, 8))),
        "weekday_out_of_range.csv": with_bad(nb, impressions("weekday_7").assign(weekday=7)),
        # odd keys are fitted like any other; keys that '|' makes ambiguous are quarantined
        "odd_keys.parquet": pd.concat(
            [regression(k, seed=i).rename(columns={"partition": "market"}).assign(network=n)
             for i, (k, n) in enumerate([*((k, "net") for k in ODD_KEYS), ("a|b", "c"), ("a", "b|c")])],
            ignore_index=True,
        ),
    }
    for name, content in files.items():
        path = HERE / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif name.endswith(".parquet"):
            content.to_parquet(path, index=False)
        else:
            content.to_csv(path, index=False)
    valid = (HERE / "valid.parquet").read_bytes()
    (HERE / "truncated.parquet").write_bytes(valid[: len(valid) // 2])


if __name__ == "__main__":
    main()
