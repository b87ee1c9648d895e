"""QdrantColdStore against real embedded Qdrant (edge and qdrant-client local mode)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import stat

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from tiered_context import ContextItem, LocalColdStore, TieredContext  # noqa: E402
from tiered_context.core import normalize  # noqa: E402
from tiered_context import ColdStore  # noqa: E402
from tiered_context.errors import ConfigError, DuplicateItemError, StoreError  # noqa: E402
from tiered_context.qdrant import SCHEMA_VERSION, Engine, FusionMode, QdrantColdStore  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

ENGINES = ["edge", "local"]
TEXTS = [
    "We moved the Lisbon launch to the third of May.",
    "Lunch is at noon in the big room.",
    "The budget for the launch event is 40k euros.",
    "Maria is allergic to peanuts, order the vegan menu.",
    "Flights to Lisbon are booked for the whole team.",
    "The venue in Porto cancelled, we need another one.",
    "Remember to invite the press to the launch.",
    "Carlos prefers the window seat on long flights.",
]


def items_and_vectors(texts=TEXTS, *, start=0, emb=None, role=None):
    emb = emb or HashEmbedder(dim=32)
    items = [ContextItem(id=f"i{start + k}", text=t, role=role or ("user" if k % 2 else "assistant"),
                         timestamp=1000.0 + start + k, seq=start + k, tokens=len(t.split()),
                         metadata={"speaker": "Ana" if k % 2 else "Bo"})
             for k, t in enumerate(texts)]
    return items, normalize(emb.embed(texts))


@pytest.fixture(params=ENGINES)
def store(request, tmp_path):
    s = QdrantColdStore(tmp_path / "q", engine=request.param)
    yield s
    s.close()


def test_implements_the_cold_store_protocol(store):
    assert isinstance(store, ColdStore)
    for name in ("aadd", "asearch", "ascore", "aget", "aget_by_seq", "aitems", "acount", "adelete"):
        assert asyncio.iscoroutinefunction(getattr(store, name)), name


def test_add_get_seq_items_count(store):
    items, vecs = items_and_vectors()
    store.add("s1", items, vecs)
    assert store.count("s1") == len(items)
    assert [i.id for i in store.get("s1", ["i3", "i0", "nope", "i3"])] == ["i3", "i0", "i3"]
    assert [i.seq for i in store.get_by_seq("s1", [5, 1, 99])] == [5, 1]
    back = store.items("s1")
    assert [i.id for i in back] == [i.id for i in items]
    assert back[3] == items[3]  # every field round-trips
    store.add("s1", items[:2], vecs[:2])  # identical re-add: no-op
    assert store.count("s1") == len(items)
    with pytest.raises(DuplicateItemError):
        store.add("s1", [items[0].evolve(text="something else")], vecs[:1])


def test_parts_and_statistics_match_the_in_process_store(store):
    """Raw BM25 / cosine parts and the collection-wide z-statistics are those of
    LocalColdStore (BM25 within the avgdl approximation, cosine exactly)."""
    emb = HashEmbedder(dim=32)
    texts = [f"{a} {b} launch plan item {k}" for k, (a, b) in
             enumerate(zip(["Lisbon", "Porto", "Madrid", "Paris"] * 10, ["budget", "venue", "press", "flights"] * 10))]
    items, vecs = items_and_vectors(texts, emb=emb)
    local = LocalColdStore()
    local.add("s", items, vecs)
    store.add("s", items, vecs)
    for query in ["Lisbon budget", "press launch", "flights to Paris venue"]:
        qv = normalize(emb.embed([query]))[0]
        a, b = local.search("s", query, qv, limit=8), store.search("s", query, qv, limit=8)
        assert b.stats.dense_mean == pytest.approx(a.stats.dense_mean, abs=1e-5)
        assert b.stats.dense_std == pytest.approx(a.stats.dense_std, rel=1e-4)
        assert b.stats.bm25_mean == pytest.approx(a.stats.bm25_mean, rel=0.05)
        assert b.stats.bm25_std == pytest.approx(a.stats.bm25_std, rel=0.05)
        top_a = {h.item.id for h in a.hits if h.bm25 > 0}
        top_b = {h.item.id for h in b.hits if h.bm25 > 0}
        assert len(top_a & top_b) >= 0.75 * len(top_a)
        ids = [i.id for i in items]
        sa, sb = local.score("s", query, qv, ids), store.score("s", query, qv, ids)
        assert sb.keys() == sa.keys()
        for i in ids:
            assert sb[i][1] == pytest.approx(sa[i][1], abs=1e-5)
            assert sb[i][0] == pytest.approx(sa[i][0], rel=0.15, abs=0.05)
        for h in b.hits:  # hits carry the same parts as score()
            assert (h.bm25, h.dense) == pytest.approx(sb[h.item.id], abs=1e-5)


@pytest.mark.parametrize("fusion", [f.value for f in FusionMode])
def test_payload_filters_tier_role_time(tmp_path, fusion):
    with QdrantColdStore(tmp_path / "q", fusion=fusion) as s:
        items, vecs = items_and_vectors()
        items[6] = items[6].evolve(tier="L2")
        s.add("s", items, vecs)
        qv = vecs[0]
        users = s.search("s", "launch Lisbon", qv, limit=8, roles=["user"])
        assert users.hits and all(h.item.role == "user" for h in users.hits)
        window = s.search("s", "launch Lisbon", qv, limit=8, since=1002.0, until=1004.0)
        assert {h.item.id for h in window.hits} <= {"i2", "i3", "i4"} and window.hits
        l2 = s.search("s", "launch", qv, limit=8, tiers=["L2"])
        assert [h.item.id for h in l2.hits] == ["i6"]


def test_tiered_context_resumes_from_the_same_path(tmp_path):
    path = tmp_path / "mem"
    emb = HashEmbedder()
    with TieredContext(session_id="s1", store=QdrantColdStore(path), embedder=emb, compaction="inline") as ctx:
        for k, t in enumerate(TEXTS * 3):
            ctx.put(f"{t} ({k})", metadata={"n": k})
        working = [i.id for i in ctx.working_set]
        out = ctx.assemble("When is the Lisbon launch?", budget=200)
        assert out.tokens <= 200 and "Lisbon" in out.text
    with TieredContext(session_id="s1", store=QdrantColdStore(path), embedder=emb, compaction="inline") as again:
        assert len(again) == len(TEXTS) * 3
        assert [i.id for i in again.working_set] == working
        assert "Lisbon" in again.assemble("When is the Lisbon launch?", budget=200).text
        again.put("one more turn about Lisbon")
        assert max(i.seq for i in again.store.items("s1")) == len(TEXTS) * 3


def test_two_stores_on_one_path_share_the_engine(tmp_path):
    a = QdrantColdStore(tmp_path / "q")
    b = QdrantColdStore(tmp_path / "q")
    items, vecs = items_and_vectors()
    a.add("s", items, vecs)
    assert b.count("s") == len(items)
    a.close()
    assert b.get("s", ["i1"])[0].text == TEXTS[1]  # still open for b
    b.close()


def test_async_twins(store):
    items, vecs = items_and_vectors()

    async def main():
        await store.aadd("s", items, vecs)
        got = await store.aget("s", ["i1"])
        by_seq = await store.aget_by_seq("s", [2])
        found = await store.asearch("s", "Lisbon launch", vecs[0], limit=4)
        scored = await store.ascore("s", "Lisbon", vecs[0], ["i0", "i4"])
        return got, by_seq, found, scored, await store.acount("s"), await store.aitems("s")

    got, by_seq, found, scored, n, every = asyncio.run(main())
    assert got[0].id == "i1" and by_seq[0].seq == 2 and found.hits and set(scored) == {"i0", "i4"}
    assert n == len(items) == len(every)


def test_non_json_payload_values_are_stringified(store):
    class Odd:
        def __str__(self) -> str:
            return "odd!"

    meta = {"when": dt.datetime(2024, 5, 3, 12, 0), "tags": {"b", "a"}, "pair": (1, 2), "nan": float("nan"),
            "obj": Odd(), "raw": b"\x00\x01", "nested": {1: [dt.date(2024, 1, 1)]}, "np": np.float32(1.5)}
    # built directly (the door refuses bytes and int keys): this tests the store's own conversion
    item = ContextItem(id="odd", text="a turn with odd metadata", metadata=meta, timestamp=5.0, seq=0)
    store.add("s", [item], normalize(HashEmbedder(32).embed([item.text])))
    back = store.get("s", [item.id])[0].metadata
    json.dumps(dict(back))  # plain JSON now
    assert back["when"] == "2024-05-03 12:00:00" and back["tags"] == ["a", "b"] and back["pair"] == [1, 2]
    assert back["nan"] == "nan" and back["obj"] == "odd!" and back["nested"] == {"1": ["2024-01-01"]}
    assert back["np"] == 1.5


def test_other_vector_size_is_refused_clearly(tmp_path):
    path = tmp_path / "q"
    with QdrantColdStore(path) as s:
        items, vecs = items_and_vectors()
        s.add("s", items, vecs)
        with pytest.raises(StoreError, match="dim 64 but this store holds dim 32"):
            s.add("s", items_and_vectors(emb=HashEmbedder(64), start=50)[0], normalize(HashEmbedder(64).embed(TEXTS)))
    with pytest.raises(StoreError, match="32-d vectors but this store was given 64-d"):
        QdrantColdStore(path, dim=64)


@pytest.mark.parametrize("engine", ENGINES)
def test_schema_version_mismatch_and_foreign_collections(tmp_path, engine):
    path = tmp_path / "q"
    with QdrantColdStore(path, engine=engine) as s:
        s.add("s", *items_and_vectors())
    if engine == "edge":
        meta = path / "tiered_context" / "meta.json"
        data = json.loads(meta.read_text())
        data["tiered_context"]["schema"] = SCHEMA_VERSION + 1
        meta.write_text(json.dumps(data))
        with pytest.raises(StoreError, match="upgrade tiered-context"):
            QdrantColdStore(path)
        meta.unlink()  # a shard without our metadata: foreign
        with pytest.raises(StoreError, match="not created by tiered-context"):
            QdrantColdStore(path)
    else:
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=str(tmp_path / "foreign"))
        client.create_collection("tiered_context", vectors_config=models.VectorParams(size=4, distance="Cosine"))
        client.close()
        with pytest.raises(StoreError, match="not created by tiered-context"):
            QdrantColdStore(tmp_path / "foreign", engine="local")


def test_corrupted_collection_is_a_store_error(tmp_path):
    path = tmp_path / "q"
    with QdrantColdStore(path) as s:
        s.add("s", *items_and_vectors())
    (path / "tiered_context" / "shard" / "edge_config.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupted"):
        QdrantColdStore(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_not_writable_path_is_a_store_error_unprivileged(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(StoreError, match="writable"):
        QdrantColdStore(ro / "q")


@pytest.mark.parametrize("engine", ENGINES)
def test_not_writable_path_is_a_store_error(tmp_path, engine):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a path under a regular file can never be created, even by root
    with pytest.raises(StoreError):
        QdrantColdStore(blocker / "q", engine=engine)
    with pytest.raises(StoreError, match="is a file"):
        QdrantColdStore(blocker, engine=engine)


def test_second_process_on_the_same_path_is_refused(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "q"
    with QdrantColdStore(path) as s:
        s.add("s", *items_and_vectors())
        code = (
            "import sys\nfrom tiered_context.qdrant import QdrantColdStore\nfrom tiered_context.errors import StoreError\n"
            f"try:\n    QdrantColdStore({str(path)!r})\nexcept StoreError as e:\n    print('refused', e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert "refused" in out.stdout and "another process" in out.stdout


def test_unreachable_server_url_names_what_to_check():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as err:
        QdrantColdStore(url=f"http://127.0.0.1:{port}", timeout=2)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "server is running" in message and "api_key" in message


def test_bad_configuration():
    with pytest.raises(ConfigError):
        QdrantColdStore("/tmp/x", url="http://127.0.0.1:1")
    with pytest.raises(ConfigError):
        QdrantColdStore(engine="nope")
    with pytest.raises(ConfigError):
        QdrantColdStore(url="127.0.0.1:6333")
    with pytest.raises(ConfigError):
        QdrantColdStore(collection="a/b")


def test_temporary_store_without_path_is_removed_on_close():
    s = QdrantColdStore()
    assert s.engine == Engine.EDGE
    s.add("s", *items_and_vectors())
    folder = s._handle.key[1]
    assert os.path.isdir(folder)
    s.close()
    assert not os.path.exists(folder)


def test_reweighting_keeps_young_tenants_exact(tmp_path):
    """avgdl moves a lot while a session is young; the stored BM25 weights follow it."""
    emb = HashEmbedder(32)
    short = [f"word{k} launch" for k in range(6)]
    long = [" ".join(f"filler{k}x{j}" for j in range(30)) + " launch" for k in range(40)]
    items, vecs = items_and_vectors(short + long, emb=emb)
    local, s = LocalColdStore(), QdrantColdStore(tmp_path / "q")
    for k in range(len(items)):  # one at a time, as TieredContext.put does
        local.add("s", items[k:k + 1], vecs[k:k + 1])
        s.add("s", items[k:k + 1], vecs[k:k + 1])
    qv = normalize(emb.embed(["word1 launch"]))[0]
    a, b = local.score("s", "word1 launch", qv, ["i1", "i10"]), s.score("s", "word1 launch", qv, ["i1", "i10"])
    assert b["i1"][0] == pytest.approx(a["i1"][0], rel=0.08)
    assert b["i10"][0] == pytest.approx(a["i10"][0], rel=0.08)
    # the statistics a reweight updated in place equal those rebuilt from the stored weights
    kept = s._state.stats.pop("s")
    assert kept.weighted_avgdl > 0  # a reweight ran (it sets the avgdl the weights share)
    rebuilt = s._state.tenant_stats(s._coll, "s", 8)
    assert dict(kept.df) == dict(rebuilt.df)
    for mine, theirs in ((kept.wsum, rebuilt.wsum), (kept.wsq, rebuilt.wsq)):
        assert mine.keys() == theirs.keys()
        assert all(mine[i] == pytest.approx(theirs[i], rel=1e-6, abs=1e-9) for i in mine)
    s.close()


def test_public_api_is_pinned():
    import tiered_context.langchain as lc
    import tiered_context.llama_index as li
    import tiered_context.qdrant as q

    assert sorted(q.__all__) == ["CacheHit", "Engine", "FusionMode", "QdrantColdStore", "SCHEMA_VERSION",
                                 "SemanticCache", "open_memory_dir"]
    assert "TieredSemanticCache" in lc.__all__ and "SemanticCacheLLM" in li.__all__


@pytest.mark.parametrize(("module", "blocked", "extra"), [
    ("tiered_context.qdrant", "qdrant_client", "qdrant"),
    ("tiered_context.langchain._cache", "langchain_core", "langchain"),
    ("tiered_context.llama_index._cache", "llama_index", "llama-index"),
])
def test_missing_extra_names_the_extra(module, blocked, extra):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {blocked!r} or name.startswith({blocked!r} + '.'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tiered_context.errors import DependencyError\n"
        "try:\n"
        f"    __import__({module!r})\n"
        "except DependencyError as e:\n"
        "    print('DEP', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f'tiered-context[{extra}]' in out.stdout, out.stdout + out.stderr
