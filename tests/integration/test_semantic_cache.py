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
