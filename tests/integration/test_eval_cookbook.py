"""The eval cookbook runs, offline, top to bottom (nbclient + ipykernel), on a LoCoMo slice,
with a real local Phoenix on loopback when Phoenix is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parents[2] / "cookbook" / "evaluate_retention.ipynb"
LOCOMO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "locomo" / "locomo_dev5.json"


def _outputs(nb) -> tuple[str, list[str]]:
    """All text the code cells printed, and the mime types of their rich outputs."""
    texts, kinds = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(out.get("text", ""))
            kinds += list(out.get("data", {}))
    return "\n".join(texts), kinds


@pytest.mark.skipif(not LOCOMO.is_file(), reason=f"LoCoMo data not found at {LOCOMO}")
def test_eval_cookbook_runs_plots_and_compares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel inherits this environment: write under tmp_path (Phoenix's SQLite too)
    monkeypatch.setenv("COOKBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("LOCOMO_PATH", str(LOCOMO))
    monkeypatch.delenv("COOKBOOK_PHOENIX", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text, kinds = _outputs(nb)
    assert "Traceback" not in text
    assert kinds.count("image/png") == 2  # the retention curve and the category bars, displayed
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "retention.png").is_file()
    assert text.count("CIs overlap:") == 2
    assert "tiered:no-compress @ 4000" in text
    if importlib.util.find_spec("phoenix") is None:
        assert "Phoenix skipped: not installed" in text
    else:  # a real local Phoenix on loopback: one span per assembly of the small run
        assert "Phoenix UI: http://127.0.0.1:" in text
        assert "Phoenix holds 10 assembly spans of this run" in text
        assert (tmp_path / "out" / "phoenix").is_dir()
