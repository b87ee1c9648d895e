"""The LlamaIndex cookbook runs, offline, top to bottom (nbclient + ipykernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "llama_index_memory.ipynb"


def test_cookbook_executes_and_shows_the_facts_survive():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "Traceback" not in text
    assert text.count("TieredMemory: True") == 3
    assert "tokens saved" in text
