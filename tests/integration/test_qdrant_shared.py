"""`QdrantColdStore(url=...)`: many workers on one Qdrant server stay coherent.

No Qdrant server can be installed here: `qdrant_rest.RestServer` serves qdrant-client's
local mode behind Qdrant's REST API on 127.0.0.1 (one node, linearizable), and every store
below talks to it through the real REST client (``Engine.SERVER``). Two stores in one
process are two workers when their URLs differ (127.0.0.1 / localhost: separate
connections and state); the multi-process tests spawn real worker processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

sys.path.insert(0, str(Path(__file__).parent))

from qdrant_rest import RestServer  # noqa: E402

from tiered_context import Budget, ContextItem, TieredContext  # noqa: E402
from tiered_context.core import normalize  # noqa: E402
from tiered_context.qdrant import QdrantColdStore  # noqa: E402
from qdrant_client import models as qm  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

TIMEOUT = 60.0
PROTOCOL = ("next_seqs", "watermark", "since")  # core's SharedColdStore: what TieredContext catches up through
EMB = HashEmbedder(dim=32)


@pytest.fixture
def server():
    srv = RestServer().start()
    yield srv
    srv.stop()


def two_workers(server: RestServer) -> tuple[QdrantColdStore, QdrantColdStore]:
    port = server.url.rsplit(":", 1)[1]
    return QdrantColdStore(url=server.url), QdrantColdStore(url=f"http://localhost:{port}")


def put(store: QdrantColdStore, tenant: str, key: str, text: str, *, seq: int | None = None) -> ContextItem:
    seq = store.next_seqs(tenant, 1)[0] if seq is None else seq
    item = ContextItem.create(text, role="user", id=key).evolve(seq=seq)
    store.add(tenant, [item], normalize(EMB.embed([text])))
    return item


def search_ids(store: QdrantColdStore, tenant: str, text: str) -> list[str]:
    return [h.item.id for h in store.search(tenant, text, normalize(EMB.embed([text]))[0], limit=5).hits]


# -- the protocol ---------------------------------------------------------------------------------
def test_a_server_store_is_shared_an_embedded_one_is_not(server, tmp_path):
    a, b = two_workers(server)
    edge = QdrantColdStore(tmp_path / "e")
    try:
        assert all(callable(getattr(a, m, None)) for m in PROTOCOL) and isinstance(a, QdrantColdStore)
        assert a._handle.conn is not b._handle.conn  # two workers, not one shared connection
        assert not any(hasattr(edge, m) for m in PROTOCOL)
    finally:
        for s in (a, b, edge):
            s.close()


def test_two_workers_never_get_the_same_seq(server):
    a, b = two_workers(server)
    got: dict[str, list[range]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def run(name: str, store: QdrantColdStore, sizes: list[int]) -> None:
        start.wait()
        for n in sizes:
            got[name].append(store.next_seqs("t", n))

    rng = np.random.default_rng(0)
    threads = [threading.Thread(target=run, args=(name, s, list(rng.integers(1, 5, 40))))
               for name, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [s for ranges in got.values() for r in ranges for s in r]
    assert len(seqs) == len(set(seqs)) == sum(len(r) for ranges in got.values() for r in ranges)
    assert all(len(r) > 0 and r.step == 1 for ranges in got.values() for r in ranges)
    assert max(seqs) < 2 * len(seqs)  # gaps only from contention, not a range per worker
    for s in (a, b):
        s.close()


def test_catch_up_follows_the_log_when_seqs_land_out_of_order(server):
    """Worker A holds seq 0 but logs after worker B (seq 1): a reader that has passed B's
    record still gets A's, because it follows log positions, not seqs."""
    a, b = two_workers(server)
    reader = b
    try:
        seq_a, seq_b = a.next_seqs("t", 1)[0], b.next_seqs("t", 1)[0]
        assert seq_a < seq_b
        put(b, "t", "from-b", "B says the vault code is 4471", seq=seq_b)
        assert reader.watermark("t") == 1
        assert [i.id for i in reader.since("t", 0)] == ["from-b"]
        put(a, "t", "from-a", "A says the boat leaves at dawn", seq=seq_a)
        assert reader.watermark("t") == 2
        assert [(i.id, i.seq) for i in reader.since("t", 1)] == [("from-a", seq_a)]
        assert reader.since("t", 2) == [] and reader.watermark("t") == 2
        assert [i.id for i in a.items("t")] == ["from-a", "from-b"]  # history (seq) order
        assert "from-a" in search_ids(b, "t", "boat leaves at dawn")
    finally:
        a.close()
        b.close()


def test_a_reader_stops_at_a_slot_it_cannot_see_yet(server):
    """Slots 0 and 2 visible, 1 not (yet): since() returns slot 0 only and the watermark
    stays above the reader's position, so it comes back for 1 and then 2."""
    a, b = two_workers(server)
    try:
        for k in range(3):
            put(a, "t", f"k{k}", f"fact number {k} about the harbour")
        slot = qm.Filter(must=[qm.FieldCondition(key="kind", match=qm.MatchValue(value="pos")),
                               qm.FieldCondition(key="n", match=qm.MatchValue(value=1))])
        log = "tiered_context__log"
        (hidden,), _ = server.local.scroll(log, scroll_filter=slot, limit=1, with_vectors=True)
        server.local.delete(log, qm.FilterSelector(filter=slot))  # as if slot 1 were not applied yet
        fresh = b  # has read no slot yet
        assert [i.id for i in fresh.since("t", 0)] == ["k0"]
        assert fresh.watermark("t") != 1  # a position of 1 is not the end: come back
        server.local.upsert(log, [qm.PointStruct(id=hidden.id, vector=hidden.vector, payload=hidden.payload)])
        assert [i.id for i in fresh.since("t", 1)] == ["k1", "k2"]
        assert fresh.watermark("t") == 3
    finally:
        a.close()
        b.close()


def test_a_lost_claim_moves_on_without_a_hole(server):
    """A's claim request is in flight (held by the server) while B claims the same slot and
    is acknowledged; A's insert-only write then loses the slot, and A logs at the next one."""
    a, b = two_workers(server)
    try:
        put(a, "t", "k0", "first fact of the day")
        b.watermark("t")  # b knows the log too
        server.hold.append(lambda method, path, body: path.endswith("__log/points") and method == "PUT"
                           and any(p.get("payload", {}).get("id") == "slow" for p in body.get("points", [])))
        done = threading.Event()
        t = threading.Thread(target=lambda: (put(a, "t", "slow", "the slow writer's fact"), done.set()))
        t.start()
        assert server.held.wait(TIMEOUT)
        put(b, "t", "fast", "the fast writer's fact")  # takes slot 1, acknowledged
        assert [i.id for i in b.since("t", 1)] == ["fast"]
        server.release()
        t.join(TIMEOUT)
        assert done.is_set()
        assert [i.id for i in b.since("t", 2)] == ["slow"] and b.watermark("t") == 3
        assert [i.id for i in a.since("t", 0)] == ["k0", "fast", "slow"]
    finally:
        server.release()
        a.close()
        b.close()


def test_statistics_do_not_drift_between_workers(server):
    a, b = two_workers(server)
    try:
        rng = np.random.default_rng(1)
        words = "harbour vault boat dawn ticket audit vendor launch budget lisbon porto tram".split()
        for k in range(30):
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
            put(a if k % 3 else b, "t", f"k{k}", f"{text} item {k}")
            if k % 7 == 0:
                search_ids(a if k % 2 else b, "t", "vault boat")  # statistics loaded part-way
        query = "vault audit lisbon"
        qv = normalize(EMB.embed([query]))[0]
        third = QdrantColdStore(url=server.url.replace("127.0.0.1", "localhost"))
        results = [s.search("t", query, qv, limit=8) for s in (a, b, third)]
        assert results[0].stats == results[1].stats == results[2].stats
        assert [h.item.id for h in results[0].hits] == [h.item.id for h in results[1].hits]
        assert a._stats["t"].n == b._stats["t"].n == 30
    finally:
        a.close()
        b.close()


def test_a_record_logged_by_a_dead_worker_is_repaired(server):
    """A worker dies after its log claim, before writing the searchable collection: readers
    catch up with the record, and the next search by another worker writes it there."""
    a, b = two_workers(server)
    try:
        put(a, "t", "k0", "the harbour opens at six")
        item = ContextItem.create("the vault code is 9913", role="user", id="orphan").evolve(seq=a.next_seqs("t", 1)[0])
        points_written = []
        original = QdrantColdStore._write
        try:
            QdrantColdStore._write = lambda self, tenant, coll, points: points_written.append(points)  # dies here
            a.add("t", [item], normalize(EMB.embed([item.text])))
        finally:
            QdrantColdStore._write = original
        assert points_written and b.get("t", ["orphan"]) == []
        assert [i.id for i in b.since("t", 1)] == ["orphan"]
        assert "orphan" in search_ids(b, "t", "vault code 9913")  # folded, repaired, found
        assert [i.id for i in b.get("t", ["orphan"])] == ["orphan"]
    finally:
        a.close()
        b.close()


# -- TieredContext on a server ---------------------------------------------------------------------
def _turns(stores: list[QdrantColdStore], threads: int = 4, turns: int = 8) -> dict[tuple[int, int], list[str]]:
    contexts: dict[tuple[int, int], TieredContext] = {}
    got = {}
    for turn in range(turns):
        for h in range(threads):
            w = (turn + h) % len(stores)
            ctx = contexts.get((w, h))
            if ctx is None:
                ctx = contexts[(w, h)] = TieredContext(session_id=f"t{h}", store=stores[w], embedder=HashEmbedder(),
                                                       budget=Budget(max_tokens=300), compaction="inline")
            text = (f"In thread {h} the badge number is {88000 + h}." if turn == 2 else
                    f"Turn {turn} of thread {h}: museums, trams, pastries and the hotel breakfast were discussed.")
            ctx.put(text, role="user", id=f"t{h}/{turn}", timestamp=1_700_000_000.0 + turn)
            got[(h, turn)] = [i.id for i in ctx.assemble(f"What is the badge number of thread {h}?", budget=200).items]
    for ctx in contexts.values():
        ctx.flush()
    return got


def test_tiered_context_workers_assemble_what_one_would(server):
    one = RestServer().start()
    try:
        single = QdrantColdStore(url=one.url)
        a, b = two_workers(server)
        try:
            assert _turns([a, b]) == _turns([single])
        finally:
            for s in (a, b, single):
                s.close()
    finally:
        one.stop()


# -- worker processes ------------------------------------------------------------------------------
def _worker(url: str, index: int, commands: Any, results: Any) -> None:
    store = QdrantColdStore(url=url)
    results.put(("ready", index, os.getpid()))
    while True:
        cmd = commands.get()
        try:
            if cmd[0] == "burst":
                for n, key in enumerate(cmd[2]):
                    tenant = cmd[1][n % len(cmd[1])]
                    item = put(store, tenant, f"{tenant}/{key}", f"fact {key} of {tenant}: worker {index} filed zq{key}x")
                    results.put(("ack", index, tenant, item.id, item.seq))
                results.put(("burst-done", index))
            elif cmd[0] == "report":
                report = {}
                for tenant in cmd[1]:
                    items = store.items(tenant)
                    report[tenant] = {"ids": sorted(i.id for i in items), "seqs": sorted(i.seq for i in items),
                                      "log": sorted(i.id for i in store.since(tenant, 0)),
                                      "watermark": store.watermark(tenant), "count": store.count(tenant),
                                      "found": all(i.id in search_ids(store, tenant, i.text) for i in items)}
                results.put(("report", index, report))
            elif cmd[0] == "stop":
                store.close()
                results.put(("stopped", index))
                return
        except Exception as exc:  # report, never hang the parent
            results.put(("error", index, repr(exc)))


@pytest.mark.parametrize("n", [3])
def test_worker_processes_writing_at_once_lose_nothing_and_share_no_seq(server, n):
    tenants = ["a", "b"]
    ctx = mp.get_context("spawn")
    results, commands = ctx.Queue(), [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=_worker, args=(server.url, i, commands[i], results), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    acks: list[tuple] = []

    def expect(kind: str) -> tuple:
        while True:
            try:
                msg = results.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no {kind!r} within {TIMEOUT} s") from None
            assert msg[0] != "error", msg
            if msg[0] == "ack":
                acks.append(msg)
                continue
            assert msg[0] == kind, msg
            return msg

    try:
        for _ in range(n):
            expect("ready")
        for w in range(n):
            commands[w].put(("burst", tenants, list(range(100 * w, 100 * w + 16))))
        for _ in range(n):
            expect("burst-done")
        for w in range(n):
            commands[w].put(("report", tenants))
        reports = [expect("report")[2] for _ in range(n)]
        for tenant in tenants:
            acked = {a[3]: a[4] for a in acks if a[2] == tenant}
            for report in reports:
                got = report[tenant]
                assert got == reports[0][tenant]  # every worker sees the same
                assert got["ids"] == got["log"] == sorted(acked)  # nothing lost, nothing extra
                assert got["watermark"] == got["count"] == len(acked)
                assert got["seqs"] == sorted(acked.values()) and len(set(got["seqs"])) == len(acked)
                assert got["found"]
    finally:
        for q in commands:
            q.put(("stop",))
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()
