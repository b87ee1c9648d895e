"""The LlamaIndex engines cookbook (chat engine with TieredMemory, query engine with the
postprocessors) runs offline, top to bottom, and shows what it claims."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "llama_index_engines.ipynb"


def test_engines_cookbook_executes_recalls_and_budgets():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "Traceback" not in text
    assert "booking reference recalled: True" in text
    assert "compress + pack to 120" in text and text.count("answer kept: True") == 2
    tokens = int(text.split(" tokens (limit 400)")[0].rsplit(", ", 1)[-1])
    assert tokens <= 400
