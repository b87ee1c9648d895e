"""SemanticCache on embedded Qdrant, and its LangChain / LlamaIndex adapters."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from tiered_context.errors import ConfigError, InputError  # noqa: E402
from tiered_context.qdrant import QdrantColdStore, SemanticCache  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

EMB = HashEmbedder(64)
Q = "When is the Lisbon product launch happening?"
PARAPHRASE = "the Lisbon product launch: when is it happening, roughly"
OTHER = "How many people are invited to the Porto dinner?"


@pytest.fixture
def cache(tmp_path):
    c = SemanticCache(tmp_path / "c", embedder=EMB, threshold=0.8)
    yield c
    c.close()


def test_exact_paraphrase_and_unrelated(cache):
    assert cache.lookup("u", Q, "m|t=0") is None
    cache.update("u", Q, "m|t=0", "On 3 May.")
    exact = cache.lookup("u", Q, "m|t=0")
    assert exact.response == "On 3 May." and exact.exact and exact.similarity == 1.0
    close = cache.lookup("u", PARAPHRASE, "m|t=0")
    assert close is not None and not close.exact and close.prompt == Q and close.similarity >= 0.8
    assert cache.lookup("u", OTHER, "m|t=0") is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_no_hit_across_models_or_parameters(cache):
    cache.update("u", Q, "gpt-x|temperature=0", "On 3 May.")
    assert cache.lookup("u", Q, "gpt-x|temperature=0.7") is None
    assert cache.lookup("u", Q, "gpt-y|temperature=0") is None
    assert cache.lookup("u", PARAPHRASE, "gpt-y|temperature=0") is None
    cache.update("u", Q, "gpt-y|temperature=0", "3 May (model y)")
    assert cache.lookup("u", Q, "gpt-y|temperature=0").response == "3 May (model y)"
    assert cache.lookup("u", Q, "gpt-x|temperature=0").response == "On 3 May."
    cache.clear("u", "gpt-x|temperature=0")
    assert cache.lookup("u", Q, "gpt-x|temperature=0") is None
    assert cache.lookup("u", Q, "gpt-y|temperature=0") is not None


def test_threshold_decides(tmp_path):
    strict = SemanticCache(tmp_path / "c", embedder=EMB, threshold=0.999)
    strict.update("u", Q, "m", "On 3 May.")
    assert strict.lookup("u", PARAPHRASE, "m") is None
    assert strict.lookup("u", Q, "m") is not None  # exact prompts always hit
    strict.close()


def test_ttl_expires_entries(tmp_path):
    now = [1000.0]
    c = SemanticCache(tmp_path / "c", embedder=EMB, threshold=0.8, ttl=60, clock=lambda: now[0])
    c.update("u", Q, "m", "On 3 May.")
    now[0] += 59
    assert c.lookup("u", Q, "m") is not None and c.lookup("u", PARAPHRASE, "m") is not None
    now[0] += 2
    assert c.lookup("u", Q, "m") is None and c.lookup("u", PARAPHRASE, "m") is None
    c.purge_expired("u")
    assert c._coll.count(__import__("tiered_context.qdrant._tenancy", fromlist=["scope"]).scope("u")) == 0
    c.close()


def test_persists_and_shares_the_store_engine(tmp_path):
    store = QdrantColdStore(tmp_path / "q")
    c = SemanticCache(store=store, embedder=EMB)
    c.update("u", Q, "m", "On 3 May.")
    store.close()  # the cache still holds the engine
    assert c.lookup("u", Q, "m").response == "On 3 May."
    c.close()
    again = SemanticCache(tmp_path / "q", embedder=EMB)
    assert again.lookup("u", Q, "m").response == "On 3 May."
    again.close()


def test_async_api(cache):
    async def main():
        await cache.aupdate("u", Q, "m", "On 3 May.")
        hit = await cache.alookup("u", PARAPHRASE, "m")
        await cache.aclear("u")
        return hit, await cache.alookup("u", Q, "m")

    hit, after = asyncio.run(main())
    assert hit.response == "On 3 May." and after is None


def test_bad_input(tmp_path, cache):
    with pytest.raises(ConfigError):
        SemanticCache(tmp_path / "x", embedder=EMB, threshold=1.5)
    with pytest.raises(ConfigError):
        SemanticCache(tmp_path / "x", embedder=EMB, ttl=0)
    with pytest.raises(InputError):
        cache.update("u", "", "m", "x")
    with pytest.raises(InputError):
        cache.update("u", Q, "m", {"not": "text"})


# -- LangChain ------------------------------------------------------------------------
def test_langchain_cache_with_set_llm_cache(cache):
    pytest.importorskip("langchain_core")
    from langchain_core.globals import get_llm_cache, set_llm_cache
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from tiered_context.langchain import TieredSemanticCache

    previous = get_llm_cache()
    set_llm_cache(TieredSemanticCache(cache, tenant="u"))
    try:
        chat = FakeListChatModel(responses=["On 3 May.", "WRONG: model was called twice"])
        assert chat.invoke(Q).content == "On 3 May."
        assert chat.invoke(PARAPHRASE).content == "On 3 May."  # from the cache
        other_model = FakeListChatModel(responses=["from the other model"])  # other params: other key
        assert other_model.invoke(Q).content == "from the other model"
        llm = FakeListLLM(responses=["plain answer", "WRONG"])
        assert llm.invoke(Q) == "plain answer" and llm.invoke(PARAPHRASE) == "plain answer"
        assert asyncio.run(chat.ainvoke(PARAPHRASE)).content == "On 3 May."  # async path
    finally:
        set_llm_cache(previous)


def test_langchain_cache_tenants_and_clear(cache):
    pytest.importorskip("langchain_core")
    from langchain_core.outputs import Generation

    from tiered_context.langchain import TieredSemanticCache

    a, b = TieredSemanticCache(cache, tenant="A"), TieredSemanticCache(cache, tenant="B")
    a.update(Q, "llm", [Generation(text="On 3 May.")])
    assert a.lookup(PARAPHRASE, "llm")[0].text == "On 3 May."
    assert b.lookup(Q, "llm") is None
    a.clear()
    assert a.lookup(Q, "llm") is None
    assert asyncio.run(a.alookup(Q, "llm")) is None


# -- LlamaIndex -----------------------------------------------------------------------
def test_llama_index_wrapper_consults_the_cache(cache):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage, MockLLM

    from tiered_context.llama_index import SemanticCacheLLM

    calls = []

    class Counting(MockLLM):
        @property
        def calls(self) -> int:
            return len(calls)

        def complete(self, prompt, formatted=False, **kwargs):
            calls.append(prompt)
            return super().complete(prompt, formatted=formatted, **kwargs)  # MockLLM.chat comes here too

    inner = Counting(max_tokens=4)
    llm = SemanticCacheLLM(llm=inner, cache=cache, tenant="u")
    first = llm.complete(Q)
    again = llm.complete(PARAPHRASE)
    assert again.text == first.text and again.additional_kwargs.get("cache_hit") and inner.calls == 1
    llm.chat([ChatMessage(role="user", content=Q)])
    hit = llm.chat([ChatMessage(role="user", content=PARAPHRASE)])
    assert hit.additional_kwargs.get("cache_hit") and inner.calls == 2
    other = SemanticCacheLLM(llm=Counting(max_tokens=9), cache=cache, tenant="u")  # other params
    assert not other.complete(Q).additional_kwargs.get("cache_hit") and len(calls) == 3
    assert [r.delta for r in llm.stream_complete(PARAPHRASE)] == [first.text]

    async def main():
        return await llm.acomplete(PARAPHRASE), [r async for r in await llm.astream_chat(
            [ChatMessage(role="user", content=PARAPHRASE)])]

    done, chunks = asyncio.run(main())
    assert done.additional_kwargs.get("cache_hit") and len(chunks) == 1 and len(calls) == 3


# -- the meaning guard (issue 13 item 8) --------------------------------------------------
MEANING_CHANGES = [  # (cached prompt, new prompt): same words or nearly, another answer
    ("flights from Paris to Lisbon", "from Lisbon to Paris"),
    ("flights from Paris to Lisbon", "flights from Lisbon to Paris"),
    ("is it safe", "is it unsafe"),
    ("costs 100 euros", "costs 9000 euros"),
    ("weather in Oslo today", "tomorrow"),
    ("weather in Oslo today", "weather in Oslo tomorrow"),
]
PARAPHRASES = [  # (cached prompt, new prompt): the cached answer is right for the new one
    ("flights from Paris to Lisbon", "are there flights from Paris to Lisbon"),
    ("is it safe", "is that safe"),
    ("costs 100 euros", "it costs 100 euros"),
    ("weather in Oslo today", "what's the weather in Oslo today"),
]


@pytest.fixture(scope="module")
def wordllama():
    from tiered_context import WordLlamaEmbedder

    return WordLlamaEmbedder()


def _fresh_lookup(cache, tenant, cached, asked):
    cache.update(tenant, cached, "m|t=0", f"answer for: {cached}")
    return cache.lookup(tenant, asked, "m|t=0")


@pytest.mark.parametrize("cached, asked", MEANING_CHANGES)
def test_meaning_changes_miss_at_the_default_threshold(tmp_path, wordllama, cached, asked):
    c = SemanticCache(tmp_path / "c", embedder=wordllama)  # the default embedder, threshold and guard
    try:
        assert c.threshold == 0.92 and c.lookup("u", cached, "m|t=0") is None
        assert _fresh_lookup(c, "u", cached, asked) is None
        assert c.lookup("u", cached, "m|t=0").exact  # the entry is there: the guard refused the other prompt
    finally:
        c.close()


@pytest.mark.parametrize("cached, asked", PARAPHRASES)
def test_paraphrases_that_keep_the_meaning_still_hit(tmp_path, wordllama, cached, asked):
    c = SemanticCache(tmp_path / "c", embedder=wordllama)
    try:
        hit = _fresh_lookup(c, "u", cached, asked)
        assert hit is not None and not hit.exact and hit.prompt == cached and hit.similarity >= 0.92
        assert c.guarded == 0
    finally:
        c.close()


def test_the_guard_alone_decides_when_vectors_always_match(tmp_path, wordllama):
    """At a threshold every pair passes, the vector match alone serves every wrong answer;
    the guard refuses each meaning change and still serves each paraphrase."""
    guarded = SemanticCache(tmp_path / "g", embedder=wordllama, threshold=0.05)
    bare = SemanticCache(tmp_path / "b", embedder=wordllama, threshold=0.05, guard=None)
    try:
        for n, (cached, asked) in enumerate(MEANING_CHANGES):
            assert _fresh_lookup(bare, f"t{n}", cached, asked) is not None  # the wrong answer, before
            assert _fresh_lookup(guarded, f"t{n}", cached, asked) is None  # refused, after
        assert guarded.guarded == len(MEANING_CHANGES) and bare.guarded == 0
        for n, (cached, asked) in enumerate(PARAPHRASES):
            assert _fresh_lookup(guarded, f"p{n}", cached, asked).prompt == cached
    finally:
        guarded.close()
        bare.close()


def test_several_candidates_are_checked_not_only_the_nearest(tmp_path):
    """HashEmbedder ignores word order: the wrong direction (same words as the question)
    is the nearest entry, the right one (one word fewer) the second; the lookup passes
    over the first and answers with the second. Checking only the nearest would miss."""
    wrong, right = "please: flights from Lisbon to Paris", "flights from Paris to Lisbon"
    asked = "flights from Paris to Lisbon, please"
    for candidates, expected in ((8, "P->L"), (1, None)):
        c = SemanticCache(tmp_path / f"c{candidates}", embedder=EMB, threshold=0.8, candidates=candidates)
        try:
            c.update("u", wrong, "m", "L->P")
            c.update("u", right, "m", "P->L")
            hit = c.lookup("u", asked, "m")
            assert (hit.response if hit else None) == expected and c.guarded == (expected is None)
        finally:
            c.close()


def test_tenants_stay_apart_with_the_guard(cache):
    cache.update("alice", "weather in Oslo today", "m", "alice's answer")
    assert cache.lookup("bob", "weather in Oslo today", "m") is None
    assert cache.lookup("bob", "the weather in Oslo today", "m") is None
    assert cache.lookup("alice", "the weather in Oslo today", "m").response == "alice's answer"
    cache.update("bob", "weather in Oslo tomorrow", "m", "bob's answer")
    assert cache.lookup("alice", "the weather in Oslo tomorrow", "m") is None  # bob's entry is not alice's
    assert cache.lookup("bob", "the weather in Oslo tomorrow", "m").response == "bob's answer"


def test_guard_configuration(tmp_path):
    with pytest.raises(ConfigError):
        SemanticCache(tmp_path / "x", embedder=EMB, candidates=0)
    with pytest.raises(ConfigError):
        SemanticCache(tmp_path / "x", embedder=EMB, guard="same_meaning")
    seen = []
    custom = SemanticCache(tmp_path / "c", embedder=EMB, threshold=0.8,
                           guard=lambda cached, new: seen.append((cached, new)) or False)
    try:
        custom.update("u", Q, "m", "On 3 May.")
        assert custom.lookup("u", Q, "m") is not None  # an exact prompt never consults the guard
        assert custom.lookup("u", PARAPHRASE, "m") is None and seen == [(Q, PARAPHRASE)]
        assert custom.guarded == 1 and "guarded=1" in repr(custom)
    finally:
        custom.close()


# -- the signature itself (pure functions, no store) -----------------------------------
@pytest.mark.parametrize("a, b, kind", [
    ("flights from Paris to Lisbon", "from Lisbon to Paris", "named entities"),
    ("Oslo weather today", "Bergen weather today", "named entities"),
    ("is it safe", "is it unsafe", "negated word"),
    ("a non-smoking room", "a smoking room", "negated word"),
    ("Is the API key required?", "Isn't the API key required?", "negation"),
    ("costs 100 euros", "costs 9000 euros", "numbers"),
    ("We need twenty-five chairs", "We need 35 chairs", "numbers"),
    ("the first flight", "the second flight", "numbers"),
    ("weather in Oslo today", "weather in Oslo tomorrow", "dates"),
    ("sales for next week", "sales for last week", "dates"),
    ("meeting at 7am", "meeting at 7pm", "dates"),
    ("Remind me on 3 May", "Remind me on 3 June", "dates"),
])
def test_signature_conflicts(a, b, kind):
    from tiered_context.core._meaning import meaning_conflicts
    from tiered_context.core import same_meaning

    conflicts = meaning_conflicts(a, b)
    assert not same_meaning(a, b) and any(c.startswith(kind) for c in conflicts), conflicts
    assert meaning_conflicts(b, a)  # symmetric


@pytest.mark.parametrize("a, b", [
    ("Flights from Paris to Lisbon", "show me flights from Paris to Lisbon"),
    ("Tell me the weather in Oslo", "What's the weather in Oslo?"),
    ("who painted the mona lisa", "Who painted the Mona Lisa?"),
    ("I can't log in", "I cannot log in"),
    ("Is it not too late?", "Isn't it too late?"),
    ("costs 9,000 euros", "costs nine thousand euros"),
    ("The budget is 10k", "the budget is 10,000"),
    ("Book a table for 4", "Please book a table for four"),
    ("May I book the room on May 3?", "Can I book the room on 3 May?"),
    ("Which one is cheaper?", "Which is cheaper?"),
])
def test_signature_keeps_paraphrases(a, b):
    from tiered_context.core._meaning import meaning_conflicts

    assert meaning_conflicts(a, b) == ()


def test_cache_eval_reports_before_and_after():
    from tiered_context.evals.cache_eval import evaluate, markdown

    rows = {(r.threshold, r.guard): r for r in evaluate(["hash"])}
    before, after = rows[(0.8, False)], rows[(0.8, True)]
    assert after.false_hit_rate < before.false_hit_rate and after.hit_rate == before.hit_rate
    assert set(after.false_by_category) <= {"other"}  # only changes the signature does not model
    assert "| hash | 0.80 | on (after) |" in markdown(list(rows.values()))
