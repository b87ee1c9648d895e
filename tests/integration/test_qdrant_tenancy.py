"""Session A can never read, retrieve, score, count or delete session B's items."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from tiered_context import ContextItem, TieredContext  # noqa: E402
from tiered_context.core import normalize  # noqa: E402
from tiered_context.errors import StoreError  # noqa: E402
from tiered_context.qdrant import QdrantColdStore, SemanticCache  # noqa: E402
from tiered_context.qdrant import _client, _edge, _tenancy  # noqa: E402
from tiered_context.qdrant._tenancy import Scope, point_id, scope  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

EMB = HashEmbedder(32)
SECRET = "the vault code is 7741 and the password is swordfish"


def _items(prefix: str, texts: list[str]) -> tuple[list[ContextItem], np.ndarray]:
    items = [ContextItem(id=f"{prefix}{k}", text=t, seq=k, timestamp=float(k)) for k, t in enumerate(texts)]
    return items, normalize(EMB.embed(texts))


@pytest.fixture(params=["edge", "local"])
def two_sessions(request, tmp_path):
    store = QdrantColdStore(tmp_path / "q", engine=request.param)
    a_items, a_vecs = _items("x", ["hello from session A", "A likes tea"])
    b_items, b_vecs = _items("x", [SECRET, "B likes coffee", "B lives in Porto"])  # same ids as A's!
    store.add("A", a_items, a_vecs)
    store.add("B", b_items, b_vecs)
    yield store
    store.close()


def test_no_public_read_crosses_tenants(two_sessions):
    s = two_sessions
    qv = normalize(EMB.embed([SECRET]))[0]
    # search: B's secret is the best match for the query, yet A sees only A
    found = s.search("A", SECRET, qv, limit=50)
    assert {h.item.text for h in found.hits} <= {"hello from session A", "A likes tea"}
    for filters in ({"roles": ["user"]}, {"since": 0.0, "until": 10.0}, {"tiers": ["L1"]}):
        assert all(not h.item.text.startswith("the vault") for h in s.search("A", SECRET, qv, limit=50, **filters).hits)
    # same item ids in both sessions: each session gets its own
    assert [i.text for i in s.get("A", ["x0", "x1", "x2"])] == ["hello from session A", "A likes tea"]
    assert [i.text for i in s.get_by_seq("A", [0, 1, 2])] == ["hello from session A", "A likes tea"]
    assert {i.text for i in s.items("A")} == {"hello from session A", "A likes tea"}
    assert s.count("A") == 2 and s.count("B") == 3
    assert set(s.score("A", SECRET, qv, ["x0", "x1", "x2"])) == {"x0", "x1"}
    # B's statistics are B's own: A's BM25 IDF and z-statistics ignore B's documents
    assert s.search("A", "vault swordfish", qv, limit=5).stats.bm25_mean == 0.0


def test_guessed_point_ids_and_uuids_do_not_cross(two_sessions):
    s = two_sessions
    b_point = point_id("B", "x0")
    assert b_point != point_id("A", "x0")
    # asking A for B's point id (as an item id) hashes it into A's space: nothing
    assert s.get("A", [b_point]) == []
    assert s.score("A", SECRET, np.ones(32, dtype=np.float32), [b_point]) == {}
    s.delete("A", [b_point, "x2"])
    assert s.count("B") == 3 and s.get("B", ["x0"])[0].text == SECRET


def test_delete_and_drop_only_touch_the_own_tenant(two_sessions):
    s = two_sessions
    s.delete("A", ["x0"])
    assert [i.id for i in s.items("A")] == ["x1"]
    assert s.count("B") == 3 and s.get("B", ["x0"])[0].text == SECRET
    s.drop_tenant("A")
    assert s.count("A") == 0 and s.count("B") == 3


def test_tenant_context_objects_are_isolated(tmp_path):
    store = QdrantColdStore(tmp_path / "q")
    a = TieredContext(session_id="A", store=store, embedder=EMB, compaction="inline")
    b = TieredContext(session_id="B", store=QdrantColdStore(tmp_path / "q"), embedder=EMB, compaction="inline")
    b.put(SECRET, id="same-id")
    a.put("nothing to see here", id="same-id")
    out = a.assemble("what is the vault code?", budget=500)
    assert "7741" not in out.text and len(a) == 1
    assert "7741" in b.assemble("what is the vault code?", budget=500).text
    a.close()
    b.close()


def test_empty_or_non_string_tenant_is_refused(two_sessions):
    s = two_sessions
    v = np.ones(32, dtype=np.float32)
    for bad in ("", "   ", None, 5):
        for call in (lambda t: s.get(t, ["x0"]), lambda t: s.get_by_seq(t, [0]), lambda t: s.items(t),
                     lambda t: s.count(t), lambda t: s.search(t, "q", v, limit=3), lambda t: s.score(t, "q", v, ["x0"]),
                     lambda t: s.delete(t, ["x0"]), lambda t: s.drop_tenant(t),
                     lambda t: s.add(t, *_items("y", ["z"]))):
            with pytest.raises(StoreError, match="tenant"):
                call(bad)
    assert s.count("B") == 3


def test_scopes_cannot_be_built_around_the_tenant_check():
    with pytest.raises(StoreError):
        Scope(tenant="A")  # only scope() makes Scopes
    with pytest.raises(StoreError):
        _edge._filter("A")  # engines refuse anything but a Scope
    with pytest.raises(StoreError):
        _client._filter(object())
    assert scope("A", ids=["x"]).point_ids == (point_id("A", "x"),)


def test_every_engine_request_is_built_from_the_one_tenant_filter():
    """Static guard: the engines build filters only in `_filter` (which starts from the
    tenant condition), and every read / delete method passes its Scope through it."""
    for module in (_edge, _client):
        src = inspect.getsource(module)
        assert src.count("def _filter(") == 1
        assert src.count("key=TENANT_FIELD") == 1
        body = inspect.getsource(module._filter)
        assert body.index("require(scope)") < body.index("TENANT_FIELD")
        for cls in (getattr(module, "EdgeCollection", None), getattr(module, "ClientCollection", None)):
            if cls is None:
                continue
            for name in ("scroll", "count", "delete"):
                assert "_filter(scope)" in inspect.getsource(getattr(cls, name)), (module.__name__, name)
            assert "_filter(q.scope)" in inspect.getsource(cls._request)
    assert inspect.getsource(_tenancy.scope).count("_tenant(tenant)") == 1


def test_semantic_cache_is_per_tenant(tmp_path):
    cache = SemanticCache(tmp_path / "c", embedder=EMB, threshold=0.5)
    cache.update("A", "what is the vault code?", "m", "7741")
    assert cache.lookup("A", "what is the vault code?", "m").response == "7741"
    assert cache.lookup("B", "what is the vault code?", "m") is None
    assert cache.lookup("B", "vault code?", "m") is None
    cache.clear("B")
    assert cache.lookup("A", "what is the vault code?", "m") is not None
    cache.close()
