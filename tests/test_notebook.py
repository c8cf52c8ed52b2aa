"""examples/quickstart.ipynb runs top to bottom in a fresh kernel and draws its forest plot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
pytestmark = pytest.mark.slow


def test_quickstart_notebook(tmp_path, monkeypatch):
    # The kernel inherits this environment: Prefect state in a temp dir, a patient ephemeral server.
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert "'failed': 0" in str(notebook.cells[3].outputs[-1]["data"]["text/plain"])
    assert (tmp_path / "quickstart" / "artifact" / "manifest.json").exists()
