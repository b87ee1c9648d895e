"""`PostgresColdStore` on a real PostgreSQL 16 with pgvector (started by the `postgres_server`
fixture on a Unix socket): the `ColdStore` contract, the same scores and statistics as
`LocalColdStore`, tenant isolation under hostile tenant strings, two store instances (two
workers) seeing each other's writes at once, the sequence allocator and the commit log, and
the LangGraph path (`PostgresStore` + `PostgresSaver` behind `create_agent`)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

pytest.importorskip("psycopg")

from tiered_context import Budget, LocalColdStore, TieredContext  # noqa: E402
from tiered_context.core import normalize  # noqa: E402
from tiered_context import ContextItem  # noqa: E402
from tiered_context.errors import DuplicateItemError, StoreError  # noqa: E402
from tiered_context.postgres import PostgresColdStore  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

EMB = HashEmbedder(dim=64)
WORDS = ("launch budget tram museum badge pastry hotel river design review invoice garden piano "
         "ticket meeting vendor server backup laptop office coffee bakery train flight visa passport "
         "contract deadline audit report salary doctor dentist concert festival football tennis "
         "violin camera lens bridge castle harbor island forest desert canyon glacier volcano").split()


def _corpus(n: int, seed: int = 7) -> list[ContextItem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        out.append(ContextItem.create(f"{words} number {i}", role="user" if i % 2 else "assistant").evolve(seq=i))
    return out


def _vecs(items) -> np.ndarray:
    return normalize(EMB.embed([i.text for i in items]))


def _q(text: str) -> np.ndarray:
    return normalize(EMB.embed([text]))[0]


@pytest.fixture
def store(postgres_uri):
    s = PostgresColdStore(postgres_uri)
    yield s
    s.close()


def test_the_contract_and_the_scores_are_those_of_the_local_store(store):
    items = _corpus(240)
    local = LocalColdStore()
    for k in range(0, len(items), 17):
        store.add("s1", items[k:k + 17], _vecs(items[k:k + 17]))
        local.add("s1", items[k:k + 17], _vecs(items[k:k + 17]))
    assert store.count("s1") == local.count("s1") == 240
    assert [i.id for i in store.items("s1")] == [i.id for i in local.items("s1")]
    assert store.items("s1")[5] == items[5]  # every field round-trips
    assert [i.seq for i in store.get_by_seq("s1", [9, 3, 999, 3])] == [9, 3, 3]
    ids = [items[4].id, "nope", items[200].id]
    assert [i.id for i in store.get("s1", ids)] == [items[4].id, items[200].id]
    for query in ("launch budget review", "passport visa flight deadline", "volcano", "nothing matches zzz"):
        mine, ref = store.search("s1", query, _q(query), limit=12), local.search("s1", query, _q(query), limit=12)
        for a, b in zip((mine.stats.bm25_mean, mine.stats.bm25_std, mine.stats.dense_mean, mine.stats.dense_std),
                        (ref.stats.bm25_mean, ref.stats.bm25_std, ref.stats.dense_mean, ref.stats.dense_std)):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
        got = {h.item.id: (h.bm25, h.dense) for h in mine.hits}
        want = {h.item.id: (h.bm25, h.dense) for h in ref.hits}
        best = sorted(want, key=lambda i: -want[i][0])[:5] + sorted(want, key=lambda i: -want[i][1])[:5]
        assert set(best) <= set(got)  # the leaders of each signal (ties below them may differ)
        for i in set(got) & set(want):
            assert got[i] == pytest.approx(want[i], rel=1e-4, abs=1e-6)
        scored = store.score("s1", query, _q(query), ids)
        assert set(scored) == {items[4].id, items[200].id}
        ref_scored = local.score("s1", query, _q(query), ids)
        for i in scored:
            assert scored[i] == pytest.approx(ref_scored[i], rel=1e-4, abs=1e-6)
    assert store.search("empty", "launch", _q("launch"), limit=5).hits == []
    assert store.count("empty") == 0 and store.items("empty") == [] and store.score("empty", "x", _q("x"), ids) == {}


def test_re_adding_is_a_no_op_and_conflicts_are_refused(store):
    items = _corpus(6)
    store.add("s", items, _vecs(items))
    mark = store.watermark("s")
    store.add("s", items[:3], _vecs(items[:3]))  # the same records again
    assert store.watermark("s") == mark == 6
    with pytest.raises(DuplicateItemError):
        store.add("s", [items[0].evolve(text="changed")], _vecs(items[:1]))
    with pytest.raises(StoreError, match="next_seqs"):
        store.add("s", [ContextItem.create("a new turn", role="user").evolve(seq=2)], _vecs(items[:1]))
    with pytest.raises(StoreError, match="dim"):
        store.add("s", [ContextItem.create("other dim", role="user").evolve(seq=50)], np.ones((1, 8), np.float32))
    with pytest.raises(StoreError):
        store.add("", items[:1], _vecs(items[:1]))
    assert store.count("s") == 6 and store.watermark("s") == 6  # a refused batch wrote nothing


def test_a_summary_made_by_two_workers_is_stored_once(postgres_uri):
    a, b = PostgresColdStore(postgres_uri), PostgresColdStore(postgres_uri)
    summary = ContextItem.create("Alice moved the launch to May.", role="system").evolve(
        id="sum_0_41_abcdef", source_ids=("it_1", "it_2"))
    barrier = threading.Barrier(2)

    def write(s):
        barrier.wait()
        s.add("s#summaries", [summary], _vecs([summary]))

    threads = [threading.Thread(target=write, args=(s,)) for s in (a, b)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [i.id for i in a.items("s#summaries")] == ["sum_0_41_abcdef"] and b.watermark("s#summaries") == 1
    assert a.count("s#summaries") == 0 and a.count("s#summaries", originals_only=False) == 1
    a.close()
    b.close()


HOSTILE = ["a", "a\x00", "a\x00b", "a%", "a%25", "a.b", "a/b", "a#summaries", "A", "ä", "a\u0301", "🙂",
           "a'; DROP TABLE tiered_context_items; --", '["json", 1]', " a", "a ", "\\", "x" * 5000, "a\nb"]


def test_hostile_tenant_strings_never_reach_another_tenant(store):
    for n, tenant in enumerate(HOSTILE):
        item = ContextItem.create(f"secret of tenant {n} kiwi{n}", role="user").evolve(seq=0)
        store.add(tenant, [item], _vecs([item]))
    for n, tenant in enumerate(HOSTILE):
        found = store.items(tenant)
        assert [i.text for i in found] == [f"secret of tenant {n} kiwi{n}"], tenant
        hits = store.search(tenant, "secret tenant kiwi", _q("secret tenant kiwi"), limit=50).hits
        assert [h.item.text for h in hits] == [found[0].text]
        assert store.count(tenant) == 1 and store.watermark(tenant) == 1
        others = [store.items(t)[0].id for t in HOSTILE if t != tenant]
        assert store.get(tenant, others) == [] and store.score(tenant, "secret", _q("secret"), others) == {}
    assert store.items("a\x00c") == [] and store.items("b") == []


def test_two_workers_see_each_others_writes_at_once(postgres_uri):
    a, b = PostgresColdStore(postgres_uri), PostgresColdStore(postgres_uri)
    items = _corpus(40)
    for k, item in enumerate(items):
        writer, reader = (a, b) if k % 2 == 0 else (b, a)
        writer.add("thread", [item], _vecs([item]))
        assert reader.watermark("thread") == k + 1
        assert [i.id for i in reader.since("thread", k)] == [item.id]
        assert reader.get("thread", [item.id]) == [item]
        hits = reader.search("thread", item.text, _q(item.text), limit=3).hits
        assert item.id in {h.item.id for h in hits}
    query = "launch deadline audit"
    ra, rb = a.search("thread", query, _q(query), limit=10), b.search("thread", query, _q(query), limit=10)
    assert (ra.stats.bm25_mean, ra.stats.bm25_std) == (rb.stats.bm25_mean, rb.stats.bm25_std)  # the same SQL
    assert ra.stats.dense_mean == pytest.approx(rb.stats.dense_mean, rel=1e-9)  # the same moments, up to rounding
    assert ra.stats.dense_std == pytest.approx(rb.stats.dense_std, rel=1e-9)
    assert [(h.item.id, h.bm25) for h in ra.hits] == [(h.item.id, h.bm25) for h in rb.hits]
    a.close()
    b.close()


def test_next_seqs_are_never_issued_twice(postgres_uri):
    stores = [PostgresColdStore(postgres_uri) for _ in range(3)]
    got: list[int] = []
    lock = threading.Lock()

    def take(s):
        for _ in range(40):
            r = s.next_seqs("t", 3)
            with lock:
                got.extend(r)

    threads = [threading.Thread(target=take, args=(s,)) for s in stores for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(got) == len(set(got)) == 3 * 40 * 6 and set(got) == set(range(len(got)))
    items = _corpus(3)
    stores[0].add("u", [i.evolve(seq=100 + n) for n, i in enumerate(items)], _vecs(items))  # seqs given by hand
    assert stores[1].next_seqs("u", 2) == range(103, 105)  # the allocator starts above what is stored
    assert stores[0].next_seqs("u", 0) == range(105, 105)
    for s in stores:
        s.close()


def test_the_moments_snapshot_gives_a_new_worker_the_same_statistics(postgres_uri, monkeypatch):
    from tiered_context.postgres import _moments

    monkeypatch.setattr(_moments, "SNAPSHOT_EVERY", 32)
    a = PostgresColdStore(postgres_uri)
    items = _corpus(100)
    a.add("m", items[:70], _vecs(items[:70]))
    query = "bridge castle harbor"
    first = a.search("m", query, _q(query), limit=5)
    a.add("m", items[70:], _vecs(items[70:]))
    second = a.search("m", query, _q(query), limit=5)
    fresh = PostgresColdStore(postgres_uri)  # loads the snapshot at 70, reads the 30 after it
    third = fresh.search("m", query, _q(query), limit=5)
    local = LocalColdStore()
    local.add("m", items, _vecs(items))
    ref = local.search("m", query, _q(query), limit=5).stats
    assert first.stats.dense_mean != second.stats.dense_mean
    for got in (second.stats, third.stats):
        assert got.dense_mean == pytest.approx(ref.dense_mean, rel=1e-5)
        assert got.dense_std == pytest.approx(ref.dense_std, rel=1e-4)
    a.close()
    fresh.close()


def test_the_hnsw_index_serves_large_tenants(postgres_uri):
    exact, indexed = PostgresColdStore(postgres_uri), PostgresColdStore(postgres_uri, exact_below=0)
    items = _corpus(300, seed=3)
    exact.add("big", items, _vecs(items))
    small = _corpus(5, seed=4)
    exact.add("small", small, _vecs(small))  # another tenant in the same index
    for query in ("volcano glacier canyon", "violin concert festival"):
        a = exact.search("big", query, _q(query), limit=10)
        b = indexed.search("big", query, _q(query), limit=10)
        best = max(a.hits, key=lambda h: h.dense)
        assert best.item.id in {h.item.id for h in b.hits}
        assert a.stats == b.stats
        assert {h.item.id for h in indexed.search("small", query, _q(query), limit=3).hits} <= {i.id for i in small}
    exact.close()
    indexed.close()


def test_tiered_context_runs_on_postgres_and_a_new_process_resumes_it(postgres_uri):
    store = PostgresColdStore(postgres_uri)
    ctx = TieredContext(session_id="s1", store=store, embedder=EMB, budget=Budget(max_tokens=400), compaction="inline")
    ctx.put("For the record, my badge number is 88231.", role="user")
    for i in range(60):
        ctx.put(f"Filler {i}: museums, trams, pastries and the hotel breakfast were discussed.", role="user")
    out = ctx.assemble("What is my badge number?", budget=200)
    assert "88231" in out.text
    ctx.close()
    again = TieredContext(session_id="s1", store=PostgresColdStore(postgres_uri), embedder=EMB,
                          budget=Budget(max_tokens=400), compaction="inline")
    assert "88231" in again.assemble("What is my badge number?", budget=200).text
    assert again.store.count("s1") == 61
    again.close()
    store.close()


# -- the LangGraph path: PostgresStore + PostgresSaver ------------------------------------------
def test_graph_store_cold_store_on_a_postgres_store_is_served_by_the_database(postgres_uri):
    pytest.importorskip("langgraph.store.postgres")
    from langgraph.store.postgres import PostgresStore

    from tiered_context.langchain import GraphStoreColdStore

    with PostgresStore.from_conn_string(postgres_uri) as pg1, PostgresStore.from_conn_string(postgres_uri) as pg2:
        pg1.setup()
        one, two = GraphStoreColdStore(pg1), GraphStoreColdStore(pg2)  # two workers
        assert one.postgres is not None and two.postgres is not None
        items = _corpus(10)
        one.add("alice/t.1", items[:5], _vecs(items[:5]))
        assert two.count("alice/t.1") == 5 and two.watermark("alice/t.1") == 5
        two.add("alice/t.1", items[5:], _vecs(items[5:]))
        assert [i.id for i in one.since("alice/t.1", 5)] == [i.id for i in items[5:]]
        hit = one.search("alice/t.1", items[7].text, _q(items[7].text), limit=3).hits
        assert items[7].id in {h.item.id for h in hit}
        assert len(set(one.next_seqs("alice/t.1", 4)) | set(two.next_seqs("alice/t.1", 4))) == 8
        pg1.put(("docs",), "k", {"v": 1})  # the LangGraph store itself still works on the shared connection
        assert pg2.get(("docs",), "k").value == {"v": 1}


def test_create_agent_with_postgres_store_and_saver(postgres_uri):
    pytest.importorskip("langgraph.checkpoint.postgres")
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    from tiered_context.langchain import TieredContextMiddleware
    from tiered_context.langchain.testing import RecordingChatModel

    with PostgresStore.from_conn_string(postgres_uri) as store, PostgresSaver.from_conn_string(postgres_uri) as saver:
        store.setup()
        saver.setup()
        model = RecordingChatModel(responses=["Noted."] * 100)
        mw = TieredContextMiddleware(max_tokens=300, working_set_tokens=150, compaction="inline", embedder=EMB)
        agent = create_agent(model, tools=[], middleware=[mw], store=store, checkpointer=saver)
        cfg = {"configurable": {"thread_id": "trip.1"}}
        for i in range(30):
            text = "For the record, my badge number is 88231." if i == 3 else \
                f"Filler {i}: museums, trams, pastries and the hotel breakfast menu were discussed at length."
            agent.invoke({"messages": [HumanMessage(text)]}, cfg)
        agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
        assert "88231" in model.last_text
        archive = PostgresColdStore(postgres_uri)  # another worker reads the same archive
        assert archive.count("trip.1") >= 60
        archive.close()
        import psycopg

        with psycopg.connect(postgres_uri) as conn:  # summaries too: more than one tenant holds records
            tenants = conn.execute("SELECT count(*) FROM tiered_context_tenants WHERE log > 0").fetchone()[0]
        assert tenants >= 2
        mw.close()


def test_graph_store_cold_store_on_an_async_postgres_store(postgres_uri):
    """A LangGraph server's store is async: the archive opens a small pool of its own to the same database."""
    pytest.importorskip("langgraph.store.postgres")
    import asyncio

    from langgraph.store.postgres import AsyncPostgresStore

    from tiered_context.langchain import GraphStoreColdStore

    items = _corpus(6)

    async def run():
        async with AsyncPostgresStore.from_conn_string(postgres_uri) as pg:
            await pg.setup()
            archive = GraphStoreColdStore(pg)
            try:
                await archive.aadd("bob/t2", items, _vecs(items))
                found = await archive.asearch("bob/t2", items[2].text, _q(items[2].text), limit=3)
                return archive.postgres, [h.item.id for h in found.hits], archive.watermark("bob/t2")
            finally:
                archive.close()

    backend, hits, mark = asyncio.run(run())
    assert backend is not None and items[2].id in hits and mark == 6
    reader = PostgresColdStore(postgres_uri)
    assert [i.id for i in reader.items("bob/t2")] == [i.id for i in items]
    reader.close()


def test_graph_store_cold_store_has_the_same_coherence_interface_on_any_base_store():
    """Other BaseStores keep the in-process index (one process at a time), with the same methods."""
    pytest.importorskip("langgraph")
    from langgraph.store.memory import InMemoryStore

    from tiered_context.langchain import GraphStoreColdStore

    archive = GraphStoreColdStore(InMemoryStore())
    assert archive.postgres is None and archive.watermark("s") == 0 and archive.next_seqs("s", 2) == range(0, 2)
    items = _corpus(4)
    archive.add("s", items, _vecs(items))
    assert archive.watermark("s") == 4 and [i.id for i in archive.since("s", 2)] == [i.id for i in items[2:]]
    assert archive.next_seqs("s", 1) == range(4, 5)  # above what is stored
