"""The embedded shard's HNSW index is built in a child process: puts and searches go on,
nothing acknowledged is lost, and a process killed at any step of the swap reopens whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")

from tiered_context.core import ContextItem  # noqa: E402
from tiered_context.qdrant import QdrantColdStore, _indexer  # noqa: E402

DIM = 32


def _items(start: int, stop: int) -> list[ContextItem]:
    return [ContextItem(id=f"i{k}", text=f"item {k} about topic {k % 17}", role="user", seq=k) for k in range(start, stop)]


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _hnsw_built(store: QdrantColdStore) -> bool:
    """True once a segment of the live shard carries an HNSW graph."""
    return any("hnsw_config.json" in files for _, _, files in os.walk(store._coll.folder / "shard" / "segments"))


@pytest.fixture()
def paused_build(monkeypatch):
    """The build stops after its child finished, before the swap, until `resume` is set."""
    built, resume = threading.Event(), threading.Event()

    def step(name: str) -> None:
        if name == "built":
            built.set()
            assert resume.wait(60), "the test never resumed the build"

    monkeypatch.setattr(_indexer, "on_step", step)
    return built, resume


def test_puts_and_searches_go_on_while_the_index_builds(tmp_path, paused_build):
    built, resume = paused_build
    store = QdrantColdStore(path=tmp_path / "q", index_after=600)
    store.add("t", _items(0, 600), _vectors(600, 0))  # reaches index_after: a build starts
    coll = store._coll
    assert coll.indexing and not _hnsw_built(store)
    assert built.wait(120), "the child process never finished the build"
    # The build is done but not swapped in: the live shard takes puts and searches.
    store.add("t", _items(600, 650), _vectors(50, 1))
    store.delete("t", ["i3"])
    hits = store.search("t", "topic 5", _vectors(1, 2)[0], limit=10)
    assert len(hits.hits) >= 10
    resume.set()
    coll._build.join(60)
    assert coll._build.swapped and coll._build.error is None
    assert store.count("t") == 649  # the 50 puts and the delete made during the build were replayed
    assert store.get("t", ["i3", "i649"])[0].id == "i649"
    store.close()
    assert sorted(os.listdir(tmp_path / "q" / "tiered_context")) == ["meta.json", "shard"]
    reopened = QdrantColdStore(path=tmp_path / "q")
    assert reopened.count("t") == 649
    reopened.close()


def test_optimize_builds_the_graph_in_a_child_while_this_process_runs(tmp_path):
    store = QdrantColdStore(path=tmp_path / "q")
    n = 12_000  # 256-d: past the engine's indexing threshold (~10 MB of vectors), so a graph is built
    for start in range(0, n, 3000):
        store.add("t", _items(start, start + 3000),
                  np.random.default_rng(start).standard_normal((3000, 256)).astype(np.float32))
    assert not _hnsw_built(store)
    ticks, build = 0, store._coll.build_index()
    while build.is_alive():  # this thread keeps running Python while the child builds
        ticks += 1
        build.join(0.01)
    assert build.swapped and _hnsw_built(store) and ticks > 0
    assert store.count("t") == n
    assert store.optimize(wait=True) is True  # again: nothing new, still whole
    assert store.count("t") == n
    store.close()


def test_close_during_a_build_kills_the_child_and_leaves_the_store_whole(tmp_path, paused_build):
    built, resume = paused_build
    store = QdrantColdStore(path=tmp_path / "q", index_after=200)
    store.add("t", _items(0, 200), _vectors(200, 0))
    assert built.wait(120)
    resume.set()
    store.close()  # the build sees it is cancelled and does not swap
    assert sorted(os.listdir(tmp_path / "q" / "tiered_context")) == ["meta.json", "shard"]
    reopened = QdrantColdStore(path=tmp_path / "q")
    assert reopened.count("t") == 200
    reopened.close()


def test_index_after_is_validated(tmp_path):
    with pytest.raises(Exception, match="index_after must be a positive int"):
        QdrantColdStore(path=tmp_path / "q", index_after=0)


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from tiered_context.core import ContextItem
    from tiered_context.qdrant import QdrantColdStore, _indexer

    path, kill_at = sys.argv[1], sys.argv[2]
    store = QdrantColdStore(path=path, index_after=300)
    rng = np.random.default_rng(0)

    def add(a, b):
        items = [ContextItem(id=f"i{k}", text=f"item {k}", role="user", seq=k) for k in range(a, b)]
        store.add("t", items, rng.standard_normal((b - a, 32)).astype(np.float32))
        print("acked", b, flush=True)

    def step(name):
        if name == "built":
            add(300, 340)  # acknowledged during the build: recorded for the replay
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    _indexer.on_step = step
    add(0, 300)
    store._coll._build.join()
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("kill_at", ["copied", "built", "swap-marked", "renamed", "replayed"])
def test_sigkill_at_any_step_of_a_build_loses_nothing(tmp_path, kill_at):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    path = tmp_path / "q"
    proc = subprocess.run([sys.executable, str(script), str(path), kill_at], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    acked = max([int(line.split()[1]) for line in proc.stdout.split("\n") if line.startswith("acked")] or [0])
    store = QdrantColdStore(path=path)
    held = store.count("t")  # every acknowledged batch, and a batch in flight whole or not at all
    assert held >= acked and held in (0, 300, 340)
    assert len(store.get("t", [f"i{k}" for k in range(held)])) == held
    assert sorted(os.listdir(path / "tiered_context")) == ["meta.json", "shard"]
    store.add("t", _items(1000, 1010), _vectors(10, 3))  # and it takes writes again
    assert store.count("t") == held + 10
    store.close()
