"""The multi-agent scopes cookbook runs, offline, top to bottom (nbclient + ipykernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langgraph")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "multi_agent_scopes.ipynb"


def test_cookbook_executes_and_shows_tokens_per_agent() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "Traceback" not in text
    assert text.count("saw the fact: True") == 2
    assert "Launch on 3 May" in text and "x fewer" in text
    for line in text.splitlines():
        if line.startswith(("dates ", "people ")) and "saw" not in line:
            assert float(line.split()[-1]) >= 3.0  # each worker pays >= 3x less than a full copy
