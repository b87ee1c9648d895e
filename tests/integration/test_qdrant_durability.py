"""Durability of the Qdrant cold tier: SIGKILL mid-ingest, concurrent writers, failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from tiered_context import ContextItem, TieredContext  # noqa: E402
from tiered_context.core import normalize  # noqa: E402
from tiered_context.qdrant import QdrantColdStore  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

WRITER = textwrap.dedent(
    """
    import sys
    from tiered_context import TieredContext
    from tiered_context.qdrant import QdrantColdStore
    from tiered_context.testing import HashEmbedder

    path, engine = sys.argv[1], sys.argv[2]
    ctx = TieredContext(session_id="s", store=QdrantColdStore(path, engine=engine), embedder=HashEmbedder(),
                        compaction="inline")
    k = len(ctx)
    print("ready", k, flush=True)
    while True:
        if k % 7 == 0:  # batches too: a batch is acknowledged whole or not at all
            batch = ctx.put_many([f"turn {k + j} about topic {(k + j) % 13}" for j in range(3)])
            print(*[i.id for i in batch], flush=True)
            k += 3
        else:
            print(ctx.put(f"turn {k} about topic {k % 13}").id, flush=True)
            k += 1
    """
)


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_sigkill_mid_ingest_loses_no_acknowledged_item(tmp_path, engine):
    path = str(tmp_path / "q")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    acked: list[str] = []
    for round_ in range(2 if engine == "edge" else 1):  # kill, restart, kill again
        proc = subprocess.Popen([sys.executable, str(script), path, engine], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "ready" and int(ready[1]) >= len(acked)
        target = len(acked) + 80
        for line in proc.stdout:
            acked.extend(line.split())
            if len(acked) >= target:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: it is writing the next item now
        proc.wait(timeout=30)
        proc.stdout.close()
        with QdrantColdStore(path, engine=engine) as store:
            stored = store.items("s")
            ids = [i.id for i in stored]
            assert not [i for i, n in Counter(ids).items() if n > 1], "duplicates after restart"
            assert set(acked) <= set(ids), f"round {round_}: lost {set(acked) - set(ids)}"
            seqs = sorted(i.seq for i in stored if not i.is_derived)
            assert seqs == list(range(len(seqs))), "history positions must stay contiguous"
    with TieredContext(session_id="s", store=QdrantColdStore(path, engine=engine), embedder=HashEmbedder()) as ctx:
        assert ctx.put("after the crashes").seq == len(ctx) - 1


def test_concurrent_adds_of_one_id_one_wins_the_rest_are_refused_or_no_ops(tmp_path):
    """Concurrent adds share their flush (a group commit), and each is still checked as if
    it came alone. Of the writers racing for one id with their own text,
    exactly one stores it and the others get DuplicateItemError; an identical re-add is a
    no-op; nothing is lost across a reopen."""
    from tiered_context import DuplicateItemError

    store = QdrantColdStore(tmp_path / "q")
    emb = HashEmbedder(32)
    writers, rounds = 8, 15
    start = threading.Barrier(writers)
    won: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def add(item: ContextItem) -> None:
        store.add("t", [item], normalize(emb.embed([item.text])))

    def writer(w: int) -> None:
        start.wait()
        try:
            for r in range(rounds):
                own = ContextItem(id=f"own-{w}-{r}", text=f"writer {w} round {r} notes", seq=r)
                add(own)
                add(own)  # the same item again: a no-op
                try:
                    add(ContextItem(id=f"race-{r}", text=f"writer {w} claims round {r}", seq=r))
                    won.setdefault(f"race-{r}", []).append(w)
                except DuplicateItemError:
                    pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(won) == sorted(f"race-{r}" for r in range(rounds)) and all(len(v) == 1 for v in won.values())
    store.close()
    with QdrantColdStore(tmp_path / "q") as reopened:
        assert reopened.count("t") == writers * rounds + rounds
        for race, (w,) in won.items():
            (item,) = reopened.get("t", [race])
            assert item.text == f"writer {w} claims round {race.split('-')[1]}"


def test_concurrent_threads_and_tasks_lose_nothing(tmp_path):
    store = QdrantColdStore(tmp_path / "q")
    emb = HashEmbedder(32)

    def batch(tenant: str, start: int, n: int) -> tuple[list[ContextItem], np.ndarray]:
        texts = [f"{tenant} writes item {start + k} about {k % 5}" for k in range(n)]
        items = [ContextItem(id=f"{tenant}-{start + k}", text=t, seq=start + k) for k, t in enumerate(texts)]
        return items, normalize(emb.embed(texts))

    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for j in range(25):  # shared tenant "all" and an own tenant per thread
                store.add("all", *batch(f"t{w}", j * 2, 2))
                store.add(f"own{w}", *batch(f"t{w}", j, 1))
                store.search("all", "writes item", normalize(emb.embed(["writes item"]))[0], limit=5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()

    async def tasks() -> None:
        async def one(w: int) -> None:
            for j in range(20):
                await store.aadd("all", *batch(f"a{w}", j, 1))
                await store.asearch("all", "item", normalize(emb.embed(["item"]))[0], limit=3)

        await asyncio.gather(*(one(w) for w in range(5)))

    asyncio.run(tasks())
    for t in threads:
        t.join()
    assert not errors, errors
    assert store.count("all") == 6 * 50 + 5 * 20
    assert all(store.count(f"own{w}") == 25 for w in range(6))
    # statistics followed every write: BM25 IDF over exactly the stored documents
    stats = store._tenant_stats("all")
    assert stats.n == 6 * 50 + 5 * 20
    store.close()
    with QdrantColdStore(tmp_path / "q") as again:  # and all of it is on disk
        assert again.count("all") == 400


class FailingMidBatch(HashEmbedder):
    """Embeds texts one at a time and fails on the `fail_at`-th text it ever sees."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(dim=32)
        self.seen, self.fail_at = 0, fail_at

    def embed(self, texts):
        rows = []
        for text in texts:
            self.seen += 1
            if self.seen == self.fail_at:
                raise RuntimeError("embedding service failed (test fake)")
            rows.append(super().embed([text])[0])
        return np.stack(rows)


def test_embedder_failure_mid_batch_writes_nothing(tmp_path):
    path = tmp_path / "q"
    ctx = TieredContext(session_id="s", store=QdrantColdStore(path), embedder=FailingMidBatch(fail_at=6),
                        compaction="inline")
    ctx.put_many([f"first batch {k}" for k in range(3)])
    with pytest.raises(RuntimeError, match="test fake"):
        ctx.put_many([f"second batch {k}" for k in range(5)])  # fails on its 3rd text
    assert len(ctx) == 3
    assert not [i for i in ctx.store.items("s") if i.text.startswith("second")]
    retried = ctx.put_many([f"second batch {k}" for k in range(5)])  # the retry succeeds whole
    seqs = [i.seq for i in retried]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 3
    ctx.close()
    with QdrantColdStore(path) as store:
        assert store.count("s") == 8


def test_store_write_failure_leaves_nothing_behind(tmp_path):
    """A batch the engine rejects (a vector of the wrong size inside it) is not partly kept."""
    with QdrantColdStore(tmp_path / "q", dim=32) as store:
        good = [ContextItem(id=f"g{k}", text=f"good {k}", seq=k) for k in range(3)]
        store.add("s", good, normalize(HashEmbedder(32).embed([i.text for i in good])))
        items = [ContextItem(id=f"b{k}", text=f"bad {k}", seq=3 + k) for k in range(3)]
        vecs = np.ones((3, 32), dtype=np.float32)
        vecs[1, 0] = np.nan
        try:
            store.add("s", items, vecs)
        except Exception:  # noqa: BLE001 - either refused whole...
            assert store.count("s") == 3
        else:  # ...or stored whole
            assert store.count("s") == 6


# -- what a put no longer asks the engine, and what it still waits for -----------------
def test_an_id_a_read_found_missing_is_not_asked_again_until_written(tmp_path, monkeypatch):
    from tiered_context.qdrant import _edge

    store = QdrantColdStore(tmp_path / "q")
    vec = np.ones((1, 8), dtype=np.float32)
    store.add("t", [ContextItem(id="old", text="an old turn", seq=0)], vec)
    asked: list[int] = []
    real = _edge.EdgeCollection.retrieve
    monkeypatch.setattr(_edge.EdgeCollection, "retrieve", lambda self, *a: asked.append(1) or real(self, *a))
    assert store.get("t", ["new"]) == [] and len(asked) == 1
    assert store.get("t", ["new"]) == [] and len(asked) == 1  # known absent: no engine read
    store.add("t", [ContextItem(id="new", text="a new turn", seq=1)], vec)  # no engine read either
    assert [i.text for i in store.get("t", ["new"])] == ["a new turn"] and len(asked) == 1
    assert store.get("u", ["new"]) == [] and len(asked) == 2  # absence is per tenant
    store.close()


def test_a_read_that_races_a_write_of_the_id_does_not_record_it_absent():
    from tiered_context.qdrant._state import ItemCache

    cache = ItemCache(100, absent=True)
    with cache.reading("t") as missing:  # the engine read found nothing ...
        cache.remember("t", [ContextItem(id="x", text="written meanwhile", seq=0)])  # ... a write ran
        missing(["x", "y"])
    assert cache.lookup("t", ["x", "y"]) == ({"x": ContextItem(id="x", text="written meanwhile", seq=0)}, [])
    cache.forget("t")  # a delete evicts the item: asked of the engine again
    with cache.reading("t") as missing:
        missing(["z"])
        cache.remember("t", [ContextItem(id="z", text="written after the read", seq=1)])
    assert cache.lookup("t", ["x", "y", "z"])[1] == ["x"]  # y stays absent; z was written
    assert ItemCache(100, absent=False).lookup("t", ["y"]) == ({}, ["y"])  # a server: never assumed


def test_a_put_that_finds_an_item_still_flushing_waits_for_its_flush(tmp_path, monkeypatch):
    """An embedded write is visible when applied and durable at its group commit: a reader
    of it (the same turn put twice at once) must not acknowledge it before that commit."""
    from tiered_context.qdrant import _wal

    store = QdrantColdStore(tmp_path / "q")
    vec = np.ones((1, 8), dtype=np.float32)
    store.add("t", [ContextItem(id="first", text="opens the collection", seq=0)], vec)
    gate, synced, real = threading.Event(), [], _wal.LogSync._pass

    def held_pass(self, *, keep):
        gate.wait()
        real(self, keep=keep)
        synced.append(True)

    monkeypatch.setattr(_wal.LogSync, "_pass", held_pass)
    item = ContextItem(id="x", text="the same turn, put twice at once", seq=1)
    writer = threading.Thread(target=store.add, args=("t", [item], vec))
    writer.start()
    while store._cache.lookup("t", ["x"])[0] == {} and writer.is_alive():  # applied: visible, not yet durable
        threading.Event().wait(0.001)
    seen: list[bool] = []
    reader = threading.Thread(target=lambda: (store.get("t", ["x"]), seen.append(bool(synced))))
    adder = threading.Thread(target=lambda: (store.add("t", [item], vec), seen.append(bool(synced))))
    searcher = threading.Thread(target=lambda: seen.append(
        "x" in [h.item.id for h in store.search("t", "the same turn", vec[0], limit=5).hits] and bool(synced)))
    for t in (reader, adder, searcher):
        t.start()
    reader.join(0.3)
    gate.set()
    for t in (writer, reader, adder, searcher):
        t.join()
    assert seen == [True, True, True], "a read returned the item before its flush"
    store.close()


def test_writers_that_apply_while_a_flush_runs_share_the_next(tmp_path, monkeypatch):
    from tiered_context.qdrant import _wal

    store = QdrantColdStore(tmp_path / "q")
    vec = np.ones((1, 8), dtype=np.float32)
    store.add("t", [ContextItem(id="first", text="opens the collection", seq=0)], vec)
    coll, writers = store._state.coll, 6
    all_applied, gate, passes, real = threading.Event(), threading.Event(), [], _wal.LogSync._pass
    count = coll._log.applied_one

    def applied_one():
        ticket = count()
        if coll._log.applied == 1 + writers:
            all_applied.set()
        return ticket

    def held_pass(self, *, keep):
        passes.append(self.applied)
        gate.wait()  # the first pass holds until every writer has applied
        real(self, keep=keep)

    monkeypatch.setattr(coll._log, "applied_one", applied_one)
    monkeypatch.setattr(_wal.LogSync, "_pass", held_pass)
    threads = [threading.Thread(target=store.add, args=("t", [ContextItem(id=f"w{k}", text=f"writer {k}", seq=k + 1)],
                                                               vec)) for k in range(writers)]
    for t in threads:
        t.start()
    assert all_applied.wait(60)
    gate.set()
    for t in threads:
        t.join()
    assert len(passes) <= 2, f"{len(passes)} flushes for {writers} writers"  # the first, and one for the rest
    monkeypatch.undo()
    store.close()
    with QdrantColdStore(tmp_path / "q") as again:
        assert again.count("t") == 1 + writers


def test_a_log_file_renamed_during_a_flush_is_found_again(tmp_path, monkeypatch):
    from tiered_context.qdrant import _wal

    wal = tmp_path / "wal"
    wal.mkdir()
    for name in ("open-1", "open-2", "first-index"):
        (wal / name).write_bytes(b"log")
    log = _wal.LogSync(wal, flush=lambda: pytest.fail("the log directory exists"))
    real, listed = os.listdir, []

    def stale_once(path):
        names = real(path)
        if not listed:  # listed before a rotation renamed the segment
            os.replace(wal / "open-1", wal / "closed-1")
        listed.append(names)
        return names

    monkeypatch.setattr(_wal.os, "listdir", stale_once)
    log.wait(log.applied_one())
    assert len(listed) == 2 and "closed-1" in log._synced_closed  # listed again; the closed segment synced
    log.close()
