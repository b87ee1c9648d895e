"""`TieredContext`: input validation, batching, idempotency, persistence, feedback, threads."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest

from tiered_context import (
    Budget,
    ConfigError,
    ContextItem,
    DuplicateItemError,
    InputError,
    LocalColdStore,
    Role,
    Tier,
    TieredContext,
)
from tiered_context.testing import HashEmbedder

T0 = 1_714_000_000


def history(n: int) -> list[str]:
    return [f"Turn {i}: we talked about invoice {i * 13} for the Lisbon office and the May launch." for i in range(n)]


# -- input ------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "   ", "\n\t ", b"  ", [{"type": "text", "text": " "}]])
def test_empty_or_whitespace_text_is_input_error(hash_ctx: TieredContext, content: object) -> None:
    with pytest.raises(InputError, match="empty"):
        hash_ctx.put(content)
    with pytest.raises(InputError, match="empty"):
        hash_ctx.put_many([{"role": "user", "content": content}])
    assert len(hash_ctx) == 0


def test_non_text_content_is_input_error(hash_ctx: TieredContext) -> None:
    with pytest.raises(InputError, match="not text"):
        hash_ctx.put(object())


def test_put_returns_the_stored_item(hash_ctx: TieredContext) -> None:
    item = hash_ctx.put("We moved the Lisbon launch to 3 May.", role=Role.ASSISTANT, metadata={"msg": 17}, timestamp=T0)
    assert item.role == "assistant" and item.metadata["msg"] == 17 and item.timestamp == T0
    assert item.seq == 0 and item.tier == Tier.L1
    assert item.tokens == hash_ctx.counter.count(item.text) > 0
    assert 0 < item.importance <= 1
    assert hash_ctx.store.get("t", [item.id]) == [item]
    assert len(hash_ctx) == 1


def test_put_a_context_item(hash_ctx: TieredContext) -> None:
    given = ContextItem.create("A document chunk about the launch.", role=Role.DOCUMENT, id="doc-1", timestamp=T0)
    stored = hash_ctx.put(given)
    assert stored.id == "doc-1" and stored.role == "document" and stored.text == given.text
    assert stored.seq == 0 and stored.tokens > 0


def test_put_a_dict(hash_ctx: TieredContext) -> None:
    stored = hash_ctx.put_many(
        [
            {"role": "assistant", "content": "Noted, 3 May.", "metadata": {"speaker": "Bot"}, "id": "m1"},
            {"role": "system", "text": "Be brief.", "pinned": True, "timestamp": T0},
            "a plain string",
        ]
    )
    assert [s.role for s in stored] == ["assistant", "system", "user"]
    assert stored[0].id == "m1" and stored[0].metadata["speaker"] == "Bot"
    assert stored[1].pinned and stored[1].timestamp == T0 and stored[1].importance == 1.0
    assert [s.seq for s in stored] == [0, 1, 2]
    with pytest.raises(InputError, match="'content'"):
        hash_ctx.put_many([{"role": "user"}])


def test_put_bytes_and_multimodal_parts(hash_ctx: TieredContext) -> None:
    a = hash_ctx.put(b"caf\xc3\xa9 \xff")
    b = hash_ctx.put([{"type": "text", "text": "look at this"}, {"type": "image_url", "image_url": {"url": "x"}}])
    assert a.text == "café \ufffd"
    assert b.text == "look at this\n[image_url]"


def test_derived_items_cannot_be_put(hash_ctx: TieredContext) -> None:
    derived = ContextItem.create("a summary", source_ids=("x",), timestamp=T0)
    with pytest.raises(InputError, match="derived"):
        hash_ctx.put(derived)


def test_put_many_is_one_embedding_call() -> None:
    embedder = HashEmbedder()
    ctx = TieredContext(session_id="t", embedder=embedder, compaction="inline")
    before = embedder.calls
    stored = ctx.put_many(history(25))
    assert embedder.calls - before == 1
    assert len(stored) == 25 and len(ctx) == 25
    assert [s.seq for s in stored] == list(range(25))
    ctx.put_many([])
    assert embedder.calls - before == 1  # nothing to embed, no call


def test_idempotent_re_put_does_not_grow(hash_ctx: TieredContext) -> None:
    first = hash_ctx.put("The launch is on 3 May.", id="fact-1")
    again = hash_ctx.put("The launch is on 3 May.", id="fact-1")
    assert len(hash_ctx) == 1
    assert again == first and again.seq == 0
    in_batch = hash_ctx.put_many([{"content": "other", "id": "o"}, {"content": "other", "id": "o"}])
    assert in_batch[0] == in_batch[1] and len(hash_ctx) == 2
    assert len(hash_ctx.working_set) == 2


def test_same_id_with_other_text_is_rejected_and_nothing_changes(hash_ctx: TieredContext) -> None:
    hash_ctx.put("The launch is on 3 May.", id="fact-1")
    with pytest.raises(DuplicateItemError, match="fact-1"):
        hash_ctx.put("The launch is on 9 June.", id="fact-1")
    assert len(hash_ctx) == 1
    assert hash_ctx.store.get("t", ["fact-1"])[0].text == "The launch is on 3 May."
    with pytest.raises(DuplicateItemError):  # a batch with one conflict stores none of it
        hash_ctx.put_many([{"content": "fresh", "id": "f"}, {"content": "changed", "id": "fact-1"}])
    assert len(hash_ctx) == 1 and hash_ctx.store.get("t", ["f"]) == []
    nxt = hash_ctx.put("next turn")
    assert nxt.seq == 1  # the failed puts left no gap in the history
    assert [w.id for w in hash_ctx.working_set] == ["fact-1", nxt.id]


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="session_id"):
        TieredContext(session_id="", embedder=HashEmbedder())
    with pytest.raises(ConfigError, match="path= .* or store="):
        TieredContext(session_id="s", embedder=HashEmbedder(), path="/tmp/x", store=LocalColdStore())
    assert TieredContext(session_id="s", embedder=HashEmbedder(), budget=300).budget.max_tokens == 300


def test_unknown_compaction_is_config_error() -> None:
    with pytest.raises(ConfigError):
        TieredContext(session_id="s", embedder=HashEmbedder(), compaction="eager")


def test_sessions_sharing_a_store_are_isolated() -> None:
    store = LocalColdStore()
    alice = TieredContext(session_id="alice", embedder=HashEmbedder(), store=store, compaction="inline")
    bob = TieredContext(session_id="bob", embedder=HashEmbedder(), store=store, compaction="inline")
    secret = alice.put("Alice's locker code is 4521.", id="shared-id")
    bob.put("Bob likes Oslo.", id="shared-id")  # same id, other tenant: no clash
    out = bob.assemble("What is the locker code 4521?", budget=500)
    assert "4521" not in out.text
    assert [i.text for i in out.items] == ["Bob likes Oslo."]  # only Bob's own item
    assert alice.store.get("alice", [secret.id])[0].text == secret.text
    assert len(alice) == 1 and len(bob) == 1


# -- persistence ------------------------------------------------------------------------
def test_reopen_resumes_the_same_memory(tmp_path) -> None:
    def open_ctx() -> TieredContext:
        return TieredContext(path=tmp_path, session_id="s", embedder=HashEmbedder(), compaction="inline",
                             budget=Budget(max_tokens=100))

    ctx = open_ctx()
    for i, text in enumerate(history(60)):
        ctx.put(text, timestamp=T0 + 60 * i, metadata={"turn": i})
    query = "invoice 390 Lisbon"
    before = ctx.assemble(query, budget=150)
    working = [(w.id, w.tier) for w in ctx.working_set]
    n = len(ctx)
    assert any(t == Tier.L2 for _, t in working)  # the ladder ran
    ctx.close()

    reopened = open_ctx()
    try:
        assert len(reopened) == n == 60
        assert [(w.id, w.tier) for w in reopened.working_set] == working
        after = reopened.assemble(query, budget=150)
        assert after.text == before.text
        nxt = reopened.put("one more turn")
        assert nxt.seq == 60
    finally:
        reopened.close()


def test_reopen_keeps_sessions_apart(tmp_path) -> None:
    with TieredContext(path=tmp_path, session_id="a", embedder=HashEmbedder()) as a:
        a.put("only in a")
    with TieredContext(path=tmp_path, session_id="b", embedder=HashEmbedder()) as b:
        assert len(b) == 0
        b.put("only in b")
    with TieredContext(path=tmp_path, session_id="a", embedder=HashEmbedder()) as a:
        assert len(a) == 1 and "only in b" not in a.assemble("only in", budget=100).text


def test_non_writable_path_is_store_error(tmp_path) -> None:
    from tiered_context import StoreError

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError):
        TieredContext(path=tmp_path / "file.txt" / "sub", session_id="s", embedder=HashEmbedder())


# -- feedback ---------------------------------------------------------------------------
def test_feedback_changes_the_users_weights_and_persists(tmp_path) -> None:
    ctx = TieredContext(path=tmp_path, session_id="s", user_id="ana", embedder=HashEmbedder(), compaction="inline")
    for text in history(30):
        ctx.put(text)
    defaults = ctx.scorer.preferences.weights(None).copy()
    out = ctx.assemble("invoice 130", budget=200)
    used = [i.id for i in out.items if "invoice 130 " in i.text]
    assert used
    ctx.feedback(out, used=used)
    learned = ctx.scorer.preferences.weights("ana")
    assert not np.allclose(learned, defaults)
    assert np.allclose(ctx.scorer.preferences.weights(None), defaults)  # other users untouched
    assert np.allclose(ctx.scorer.preferences.weights("bob"), defaults)
    assert not (tmp_path / "preferences.json").exists()  # archived with the items, not a side file
    # preference shows up in the next report
    parts = ctx.assemble("invoice 130", budget=200).report.scores
    assert any(abs(p["preference"]) > 0 for p in parts.values())
    ctx.close()
    with TieredContext(path=tmp_path, session_id="s", user_id="ana", embedder=HashEmbedder()) as again:
        assert np.allclose(again.scorer.preferences.weights("ana"), learned, atol=1e-5)


def test_feedback_without_path_stays_in_memory(hash_ctx: TieredContext) -> None:
    for text in history(10):
        hash_ctx.put(text)
    out = hash_ctx.assemble("invoice 26", budget=200)
    hash_ctx.feedback(out, used=[out.items[0].origin_ids[0]], user_id="u1")
    assert "u1" in hash_ctx.scorer.preferences.state()


# -- concurrency, repr ------------------------------------------------------------------
@pytest.mark.parametrize("compaction", ["inline", "background"])
def test_concurrent_puts_from_threads(compaction: str) -> None:
    ctx = TieredContext(session_id="c", embedder=HashEmbedder(), compaction=compaction, budget=Budget(max_tokens=200))
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                ctx.put(f"thread {k} message {i}: the budget for the Lisbon office was discussed again")
                if i % 10 == 0:
                    ctx.assemble(f"thread {k}", budget=100)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx.flush()
    try:
        assert errors == []
        assert len(ctx) == 200
        seqs = sorted(i.seq for i in ctx.store.items("c") if not i.is_derived)
        assert seqs == list(range(200))
        assert ctx.working_tokens < ctx.budget.compress_at * ctx.budget.working_limit
    finally:
        ctx.close()


def test_repr_mentions_session_and_items(hash_ctx: TieredContext) -> None:
    hash_ctx.put("hello")
    hash_ctx.put("world")
    text = repr(hash_ctx)
    assert "session_id='t'" in text and "items=2" in text and "memory" in text


def test_context_manager_closes_the_store(tmp_path) -> None:
    with TieredContext(path=tmp_path, session_id="s", embedder=HashEmbedder()) as ctx:
        ctx.put("hello")
        assert str(tmp_path) in repr(ctx)
    with TieredContext(path=tmp_path, session_id="s", embedder=HashEmbedder()) as again:
        assert len(again) == 1


# -- concurrent puts on one memory (core._writes) ---------------------------------------------
def test_threads_putting_into_one_durable_memory_keep_every_item_once_in_order(tmp_path) -> None:
    ctx = TieredContext(session_id="s", path=tmp_path / "m", embedder=HashEmbedder(), compaction="inline")
    start = threading.Barrier(8)
    acked: list[list[str]] = [[] for _ in range(8)]

    def writer(k: int) -> None:
        start.wait()
        for n in range(40):
            item = ctx.put(f"writer {k} turn {n}") if n % 4 else ctx.put_many([f"w{k} t{n} a", f"w{k} t{n} b"])[0]
            acked[k].append(item.id)
            assert item.id in {i.origin_ids[0] for i in ctx.working_set} or item.id in {i.id for i in ctx.store.items("s")}

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [i for i in ctx.store.items(ctx.namespace.key) if not i.is_derived]
    assert sorted(i.seq for i in stored) == list(range(len(stored))) == list(range(8 * 50))
    assert {a for ids in acked for a in ids} <= {i.id for i in stored}
    seqs = [i.seq for i in ctx.working_set]
    assert seqs == sorted(seqs)
    ctx.close()
    again = TieredContext(session_id="s", path=tmp_path / "m", embedder=HashEmbedder(), compaction="inline")
    assert len(again) == 8 * 50
    again.close()


def test_a_failed_write_among_writes_in_flight_never_enters_the_working_set() -> None:
    from tiered_context import LocalColdStore, StoreError

    held, release, ok_written = threading.Event(), threading.Event(), threading.Event()

    class Store(LocalColdStore):
        def add(self, tenant, items, vectors):
            texts = {i.text for i in items}
            if "slow" in texts:
                held.set()
                assert release.wait(30)
            if "bad" in texts:
                raise StoreError("injected: the disk is full")
            super().add(tenant, items, vectors)
            if "ok" in texts:
                ok_written.set()

    ctx = TieredContext(session_id="s", store=Store(), embedder=HashEmbedder(), compaction="inline")
    ctx.put("first")
    slow = threading.Thread(target=ctx.put, args=("slow",))
    slow.start()
    assert held.wait(30)  # "slow" has its number and is being written
    with pytest.raises(StoreError):
        ctx.put("bad")
    done: list = []
    ok = threading.Thread(target=lambda: done.append(ctx.put("ok")))
    ok.start()
    assert ok_written.wait(30)  # stored, but not acknowledged before "slow", numbered first, settles
    assert done == [] and "ok" not in [i.text for i in ctx.working_set]
    release.set()
    slow.join()
    ok.join()
    assert [i.text for i in ctx.working_set] == ["first", "slow", "ok"]
    assert [i.seq for i in ctx.working_set] == [0, 1, 3]  # "bad" failed while "slow" was in flight: a gap
    assert ctx.put("after").seq == 4
    assert "bad" not in [i.text for i in ctx.store.items("s")]
    with pytest.raises(StoreError):  # nothing in flight: a failed put costs no number
        ctx.put("bad")
    assert ctx.put("last").seq == 5


def test_the_same_item_put_by_two_threads_is_written_once() -> None:
    from tiered_context import LocalColdStore

    held, release = threading.Event(), threading.Event()
    calls: list[int] = []

    class Store(LocalColdStore):
        def add(self, tenant, items, vectors):
            calls.append(len(items))
            if len(calls) == 1:
                held.set()
                assert release.wait(30)
            super().add(tenant, items, vectors)

    ctx = TieredContext(session_id="s", store=Store(), embedder=HashEmbedder(), compaction="inline")
    results: list = []
    first = threading.Thread(target=lambda: results.append(ctx.put("same turn", id="x")))
    first.start()
    assert held.wait(30)
    second = threading.Thread(target=lambda: results.append(ctx.put("same turn", id="x")))
    second.start()
    release.set()
    first.join()
    second.join()
    assert calls == [1] and results[0] == results[1] and len(ctx) == 1


def test_the_default_embedder_gives_wordllamas_own_vectors_bit_for_bit() -> None:
    from tiered_context import WordLlamaEmbedder
    from tiered_context.core import normalize

    import random

    rng = random.Random(7)  # word-by-word encoding (memoised) must give the tokenizer's ids for any text
    alphabet = list(" ▁\t\n  ab<s></s><unk>é😀世\x00\u200b\ufeff.,!?'\"-_AZ09\\") + ["<s>", "</s>", "the", "The"]
    texts = ["We moved the launch to 3 May.", "", " ", "héllo 😀 世界", "word " * 700, "Caroline: I went to a LGBTQ group!",
             "  two  spaces ", "▁▁ x", "a<s>b", "tab\tand\nnewline"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    emb = WordLlamaEmbedder()
    reference = normalize(emb._model.embed(texts, norm=False))  # WordLlama's padded batches
    assert np.array_equal(emb.embed(texts).view(np.uint32), reference.view(np.uint32))
    singles = np.concatenate([emb.embed([t]) for t in texts])
    assert np.array_equal(singles.view(np.uint32), reference.view(np.uint32))


def test_the_default_embedder_leaves_the_applications_logging_alone() -> None:
    """wordllama's import calls logging.basicConfig(level=INFO): the memory undoes it."""
    import subprocess
    import sys

    code = ("import logging; from tiered_context import TieredContext; TieredContext().put('hello there'); "
            "root = logging.getLogger(); print(len(root.handlers), root.level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["0", str(logging.WARNING)]
