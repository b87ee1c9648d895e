"""Statistics snapshots of the embedded Qdrant store: a clean close saves them, a reopen
trusts them (no scan of the tenant), and anything that could make them stale is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")

from tiered_context import ContextItem  # noqa: E402
from tiered_context.qdrant import QdrantColdStore  # noqa: E402
from tiered_context.qdrant import _state  # noqa: E402


def _fill(path: Path, start: int, stop: int, tenant: str = "t") -> None:
    store = QdrantColdStore(path=path)
    rng = np.random.default_rng(start)
    store.add(tenant, [ContextItem(id=f"i{k}", text=f"note {k} about topic {k % 7} and the launch", seq=k)
                       for k in range(start, stop)], rng.standard_normal((stop - start, 64)).astype(np.float32))
    store.close()


def _search(path: Path, scans: list[int], monkeypatch: pytest.MonkeyPatch, tenant: str = "t") -> tuple:
    real = _state.scroll_all

    def counting(*args, **kwargs):
        scans.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_state, "scroll_all", counting)
    store = QdrantColdStore(path=path)
    out = store.search(tenant, "topic 3 launch", np.ones(64, dtype=np.float32), limit=5)
    store.close()
    monkeypatch.setattr(_state, "scroll_all", real)
    return out.stats, [h.item.id for h in out.hits]


def test_a_reopened_store_ranks_from_its_snapshot_exactly_as_from_a_scan(tmp_path, monkeypatch) -> None:
    _fill(tmp_path / "q", 0, 40)
    shutil.rmtree(tmp_path / "q" / ".stats")  # as an archive written before snapshots existed
    first: list[int] = []
    scanned = _search(tmp_path / "q", first, monkeypatch)
    again: list[int] = []
    assert _search(tmp_path / "q", again, monkeypatch) == scanned
    assert first and not again  # the second open read the snapshot the first one saved


def test_a_write_after_reopen_is_never_ranked_with_the_old_snapshot(tmp_path, monkeypatch) -> None:
    _fill(tmp_path / "q", 0, 40)
    _search(tmp_path / "q", [], monkeypatch)
    _fill(tmp_path / "q", 40, 60)  # statistics folded in memory, saved again at close
    scans: list[int] = []
    from_snapshot = _search(tmp_path / "q", scans, monkeypatch)
    assert not scans
    shutil.rmtree(tmp_path / "q" / ".stats")
    rescanned: list[int] = []
    assert _search(tmp_path / "q", rescanned, monkeypatch) == from_snapshot and rescanned


def test_a_process_killed_after_a_write_leaves_no_trusted_snapshot(tmp_path, monkeypatch) -> None:
    _fill(tmp_path / "q", 0, 40)
    _search(tmp_path / "q", [], monkeypatch)  # a snapshot of 40 points, trusted
    code = (f"import os, numpy as np; from tiered_context import ContextItem; from tiered_context.qdrant import "
            f"QdrantColdStore; s = QdrantColdStore(path={str(tmp_path / 'q')!r}); "
            "s.add('t', [ContextItem(id='late', text='a late note about topic 3', seq=99)], np.ones((1, 64), np.float32)); "
            "os._exit(0)")  # no close: as if killed right after the acknowledged write
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    scans: list[int] = []
    stats, ids = _search(tmp_path / "q", scans, monkeypatch)
    assert scans and "late" in ids  # rebuilt from the shard, which holds the late write


def test_a_damaged_snapshot_is_ignored(tmp_path, monkeypatch) -> None:
    _fill(tmp_path / "q", 0, 40)
    scanned = _search(tmp_path / "q", [], monkeypatch)
    for f in (tmp_path / "q" / ".stats").rglob("*.npz"):
        f.write_bytes(f.read_bytes()[:100])
    scans: list[int] = []
    assert _search(tmp_path / "q", scans, monkeypatch) == scanned and scans
