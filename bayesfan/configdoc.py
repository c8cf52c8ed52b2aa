"""The configuration reference, generated from ``FitConfig`` so that it cannot drift."""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from bayesfan.config import FitConfig

SYMBOLS = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<"}
HEADER = """# Configuration reference

Generated from `bayesfan.config.FitConfig` by `python -m bayesfan.configdoc > docs/configuration.md`
(a test fails when this file is stale). Every field is a `bayesfan fit` option
(`partition_by` is `--partition-by`, `model_options` is `--model-option KEY=VALUE`), a
parameter of the `fit-partitions` deployment form, and a keyword of `FitConfig(...)`.

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
