"""`TieredSemanticCache`: LangChain's `BaseCache` over the Qdrant `SemanticCache`.

```python
from langchain_core.globals import set_llm_cache
from tiered_context.langchain._cache import TieredSemanticCache
from tiered_context.qdrant import SemanticCache

set_llm_cache(TieredSemanticCache(SemanticCache(path="./cache"), tenant="user-7"))
llm.invoke("What is the capital of France?")   # calls the model, caches the answer
llm.invoke("Tell me France's capital city")    # answered from the cache
```
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumps, loads
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("langchain-core", "langchain") from exc

if TYPE_CHECKING:
    from tiered_context.qdrant import SemanticCache

__all__ = ["TieredSemanticCache"]


class TieredSemanticCache(BaseCache):
    """A LangChain LLM cache that answers paraphrases of cached prompts.

    Setup: ``TieredSemanticCache(SemanticCache(path="./cache"), tenant="user-7")``, then
    ``langchain_core.globals.set_llm_cache(...)`` (or ``cache=`` on one model).

    Use: every LLM / chat model call looks here first (sync and async). The key is the
    prompt's text (for chat models, the messages' roles and contents), the tenant, and
    LangChain's ``llm_string`` (model class, name, temperature and other parameters):
    another model or temperature never hits.

    Result: a hit returns the generations stored for the same or a semantically close
    prompt (cosine >= the cache's threshold), within its TTL.
    """

    def __init__(self, cache: SemanticCache, *, tenant: str = "default") -> None:
        from tiered_context.qdrant._tenancy import scope

        scope(tenant)  # validates the tenant now, not at the first call
        self.cache, self.tenant = cache, tenant

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        hit = self.cache.lookup(self.tenant, prompt_text(prompt), llm_string)
        return _load(hit.response) if hit is not None else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self.cache.update(self.tenant, prompt_text(prompt), llm_string, _dump(return_val))

    def clear(self, **kwargs: Any) -> None:
        """Drop this tenant's entries (``llm_string=`` to drop one model's only)."""
        self.cache.clear(self.tenant, kwargs.get("llm_string"))

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        hit = await self.cache.alookup(self.tenant, prompt_text(prompt), llm_string)
        return _load(hit.response) if hit is not None else None

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self.cache.aupdate(self.tenant, prompt_text(prompt), llm_string, _dump(return_val))

    async def aclear(self, **kwargs: Any) -> None:
        await self.cache.aclear(self.tenant, kwargs.get("llm_string"))


def prompt_text(prompt: str) -> str:
    """The text to key on: chat models hand LangChain caches their messages serialised
    as JSON; embedding that JSON would mostly embed its keys, so use "role: content"."""
    if not prompt.startswith("["):
        return prompt
    try:
        messages = json.loads(prompt)
    except ValueError:
        return prompt
    lines = []
    for m in messages if isinstance(messages, list) else ():
        kwargs = m.get("kwargs", {}) if isinstance(m, dict) else {}
        content = kwargs.get("content")
        if content is None:
            return prompt
        if not isinstance(content, str):
            content = json.dumps(content, sort_keys=True)
        kind = (m.get("id") or ["", "message"])[-1]
        lines.append(f"{kind}: {content}")
    return "\n".join(lines) or prompt


def _load(text: str) -> Sequence[Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `loads` is marked beta
            return loads(text, allowed_objects="core")
    except Exception:  # noqa: BLE001 - an unreadable entry is a miss, never an error
        return None


def _dump(generations: RETURN_VAL_TYPE) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dumps(list(generations))
