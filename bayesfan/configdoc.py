"""The configuration reference, generated from ``FitConfig`` so that it cannot drift."""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from bayesfan.config import FitConfig

SYMBOLS = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<"}
HEADER = """# Configuration reference

Generated from `bayesfan.config.FitConfig` by `python -m bayesfan.configdoc > docs/configuration.md`
(a test fails when this file is stale). Every field is a key of the settings file that
`bayesfan fit --config FILE` reads (YAML, JSON or TOML; flags given on the command line
override it), a parameter of the `fit-partitions` deployment form, and a keyword of
`FitConfig(...)` (`FitConfig(**read_settings("fit.yaml"))` in a notebook, with
`bayesfan.config.read_settings`). Most fields are also flags: `partition_by` is
`--partition-by`, `model_options` is `--model-option KEY=VALUE`; `target_accept`,
`max_tree_depth`, `retry_delay`, `max_divergence_rate`, `rhat_max`, `ess_min`,
`poll_seconds` and `result_wait_seconds` are set in the file only.

```yaml
# fit.yaml: bayesfan fit --config fit.yaml [--flags that override it]
data: s3://viewing/hourly.parquet
model: poisson_zero_hmm
partition_by: [market, network, daypart]
out: s3://viewing/posteriors/2026-12-05
model_options: {hour_of_day: true}
warmup: 1000
draws: 1000
target_accept: 0.9
```

| field | type | default | bounds | description |
| --- | --- | --- | --- | --- |
"""


def reference() -> str:
    rows = []
    for name, field in FitConfig.model_fields.items():
        default = "required" if field.default is PydanticUndefined and field.default_factory is None else (
            repr(field.default_factory()) if field.default_factory else repr(field.default))
        bounds = ", ".join(f"{SYMBOLS[type(m).__name__]} {getattr(m, type(m).__name__.lower())}"
                           for m in field.metadata if type(m).__name__ in SYMBOLS)
        kind = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
        rows.append(f"| `{name}` | `{kind}` | `{default}` | {bounds} | {field.description or ''} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
