"""`SemanticCacheLLM`: a LlamaIndex LLM that answers from the Qdrant `SemanticCache`
before calling the LLM it wraps.

```python
from tiered_context.llama_index._cache import SemanticCacheLLM
from tiered_context.qdrant import SemanticCache

llm = SemanticCacheLLM(llm=OpenAI(model="gpt-4o-mini"), cache=SemanticCache(path="./cache"), tenant="u7")
llm.complete("What is the capital of France?")   # calls OpenAI, caches the answer
llm.complete("Tell me France's capital city")    # from the cache
```
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

try:
    from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                                  CompletionResponse, CompletionResponseAsyncGen,
                                                  CompletionResponseGen, LLMMetadata, MessageRole)
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.llms.llm import LLM
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("llama-index-core", "llama-index") from exc

__all__ = ["SemanticCacheLLM"]

_SECRET_SUFFIXES = ("key", "_token", "secret", "password", "credentials", "headers")


class SemanticCacheLLM(LLM):
    """Wraps any LlamaIndex LLM with a semantic response cache.

    Setup: ``SemanticCacheLLM(llm=inner, cache=SemanticCache(...), tenant="user-7")``.

    Use it wherever the inner LLM was used (query engines, agents, `Settings.llm`):
    `complete` / `chat` and their async and streaming forms look in the cache first.
    The key is the prompt text (chat: "role: content" lines), the tenant, and the inner
    LLM's class and parameters (model, temperature, ...; secrets are never part of it),
    so another model or temperature never hits.

    Result: a hit returns the cached text without calling the inner LLM (a stream yields
    it as one chunk). Responses carrying tool calls are never cached.
    """

    llm: LLM = Field(description="The LLM to call on a cache miss.")
    tenant: str = Field(default="default", description="The user / session scope of the cache.")
    _cache: Any = PrivateAttr()

    def __init__(self, *, llm: LLM, cache: Any, tenant: str = "default", **kwargs: Any) -> None:
        from tiered_context.qdrant._tenancy import scope

        scope(tenant)
        super().__init__(llm=llm, tenant=tenant, **kwargs)
        self._cache = cache

    @classmethod
    def class_name(cls) -> str:
        return "SemanticCacheLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return self.llm.metadata

    @property
    def cache(self) -> Any:
        return self._cache

    # -- keys --------------------------------------------------------------------------
    def llm_string(self, mode: str = "complete") -> str:
        """The inner LLM's class and parameters (secrets left out) and the call mode:
        a chat answer is never served for a completion prompt or the reverse."""
        try:
            params = self.llm.to_dict()
        except Exception:  # noqa: BLE001 - a model that cannot describe itself keys by class
            params = {}
        params = {k: v for k, v in params.items() if not k.lower().endswith(_SECRET_SUFFIXES) and k != "token"}
        name = f"{type(self.llm).__module__}.{type(self.llm).__qualname__}"
        return f"{name}|{mode}|" + json.dumps(params, sort_keys=True, default=str)

    @staticmethod
    def _chat_text(messages: Sequence[ChatMessage]) -> str:
        return "\n".join(f"{m.role.value}: {m.content or ''}" for m in messages)

    # -- sync --------------------------------------------------------------------------
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        hit = self._cache.lookup(self.tenant, prompt, self.llm_string())
        if hit is not None:
            return CompletionResponse(text=hit.response, additional_kwargs={"cache_hit": True})
        out = self.llm.complete(prompt, formatted=formatted, **kwargs)
        self._cache.update(self.tenant, prompt, self.llm_string(), out.text)
        return out

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        key = self._chat_text(messages)
        hit = self._cache.lookup(self.tenant, key, self.llm_string("chat"))
        if hit is not None:
            return _chat_hit(hit.response)
        out = self.llm.chat(messages, **kwargs)
        if _cacheable(out):
            self._cache.update(self.tenant, key, self.llm_string("chat"), out.message.content or "")
        return out

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        hit = self._cache.lookup(self.tenant, prompt, self.llm_string())

        def gen() -> Generator[CompletionResponse, None, None]:
            if hit is not None:
                yield CompletionResponse(text=hit.response, delta=hit.response, additional_kwargs={"cache_hit": True})
                return
            last = None
            for last in self.llm.stream_complete(prompt, formatted=formatted, **kwargs):
                yield last
            if last is not None:
                self._cache.update(self.tenant, prompt, self.llm_string(), last.text)

        return gen()

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        key = self._chat_text(messages)
        hit = self._cache.lookup(self.tenant, key, self.llm_string("chat"))

        def gen() -> Generator[ChatResponse, None, None]:
            if hit is not None:
                yield _chat_hit(hit.response, delta=True)
                return
            last = None
            for last in self.llm.stream_chat(messages, **kwargs):
                yield last
            if last is not None and _cacheable(last):
                self._cache.update(self.tenant, key, self.llm_string("chat"), last.message.content or "")

        return gen()

    # -- async -------------------------------------------------------------------------
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        hit = await self._cache.alookup(self.tenant, prompt, self.llm_string())
        if hit is not None:
            return CompletionResponse(text=hit.response, additional_kwargs={"cache_hit": True})
        out = await self.llm.acomplete(prompt, formatted=formatted, **kwargs)
        await self._cache.aupdate(self.tenant, prompt, self.llm_string(), out.text)
        return out

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        key = self._chat_text(messages)
        hit = await self._cache.alookup(self.tenant, key, self.llm_string("chat"))
        if hit is not None:
            return _chat_hit(hit.response)
        out = await self.llm.achat(messages, **kwargs)
        if _cacheable(out):
            await self._cache.aupdate(self.tenant, key, self.llm_string("chat"), out.message.content or "")
        return out

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        hit = await self._cache.alookup(self.tenant, prompt, self.llm_string())

        async def gen() -> AsyncGenerator[CompletionResponse, None]:
            if hit is not None:
                yield CompletionResponse(text=hit.response, delta=hit.response, additional_kwargs={"cache_hit": True})
                return
            last = None
            async for last in await self.llm.astream_complete(prompt, formatted=formatted, **kwargs):
                yield last
            if last is not None:
                await self._cache.aupdate(self.tenant, prompt, self.llm_string(), last.text)

        return gen()

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        key = self._chat_text(messages)
        hit = await self._cache.alookup(self.tenant, key, self.llm_string("chat"))

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            if hit is not None:
                yield _chat_hit(hit.response, delta=True)
                return
            last = None
            async for last in await self.llm.astream_chat(messages, **kwargs):
                yield last
            if last is not None and _cacheable(last):
                await self._cache.aupdate(self.tenant, key, self.llm_string("chat"), last.message.content or "")

        return gen()


def _chat_hit(text: str, delta: bool = False) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                        delta=text if delta else None, additional_kwargs={"cache_hit": True})


def _cacheable(out: ChatResponse) -> bool:
    """Only plain text answers: a tool call cannot be replayed from text."""
    extra = out.message.additional_kwargs or {}
    return isinstance(out.message.content, str) and not extra.get("tool_calls") and not any(
        getattr(b, "block_type", "text") not in ("text",) for b in getattr(out.message, "blocks", []) or [])
