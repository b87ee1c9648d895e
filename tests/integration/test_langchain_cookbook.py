"""The LangChain cookbook runs end to end (nbclient, offline, fake chat models)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langchain.agents")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "langchain_agent_middleware.ipynb"


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_cookbook_executes_and_shows_the_comparison():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = _text(nb)
    assert "tiered: 0 of" in text  # no tiered call over the budget
    assert "orphaned tool messages, unanswered calls): none" in text
    assert "summarization: the agent call failed" in text and "tiered: 40 turns answered" in text
    row = next(line for line in text.splitlines() if line.startswith("tiered ") and "/8" in line)
    assert row.split()[-1] == "8/8"
    assert "<recalled_context>" in text  # recalled history as one labelled block
    assert text.count("request kept: True; tool result cut: True") == 2  # issue 14's repro, both role modes
    assert "RunnableWithMessageHistory: history sent" in text and "(max_tokens=400)" in text
    assert "TieredSummaryMemory:" in text and "moving_summary_buffer 0 chars" not in text
