"""Docs that are generated must be current."""

from pathlib import Path

from bayesfan.configdoc import reference

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_generated_from_the_config_model():
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), (
        "docs/configuration.md is stale: run `python -m bayesfan.configdoc > docs/configuration.md`")
