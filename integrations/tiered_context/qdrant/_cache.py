"""`SemanticCache`: LLM responses keyed by meaning, in Qdrant, scoped per tenant."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np

from tiered_context.core import Embedder, normalize, same_meaning
from tiered_context.errors import ConfigError, InputError, StoreError
from tiered_context.qdrant._connect import connect
from tiered_context.qdrant._engine import CollectionSpec, Engine, PointData, Query, check_meta
from tiered_context.qdrant._tenancy import point_id, scope

__all__ = ["CacheHit", "SemanticCache", "DEFAULT_CANDIDATES", "DEFAULT_THRESHOLD", "MeaningGuard"]

#: ``guard(cached_prompt, new_prompt) -> bool``: may `new_prompt` get `cached_prompt`'s answer?
MeaningGuard = Callable[[str, str], bool]

#: Cosine similarity at or above which a cached prompt counts as the same question, for
#: the default embedder (WordLlama). Chosen on a paraphrase set generated from the LoCoMo
#: and QMSum questions (`python -m tiered_context.evals.bench_qdrant --parts cache`): the
#: lowest threshold with at most 0.5% false hits (a wrong cached answer). WordLlama at 0.92:
#: 49% of paraphrases hit, 0.33% false hits; with `MiniLMEmbedder` use 0.94 (80% / 0.47%).
DEFAULT_THRESHOLD = 0.92
#: How many nearest cached prompts above the threshold a lookup checks with the guard
#: (the nearest may be "Lisbon to Paris" while the next is the "Paris to Lisbon" asked).
DEFAULT_CANDIDATES = 8
_NEVER = 1e18  # "no expiry" (JSON has no infinity)


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached response, the prompt it was stored under, and how close the match was."""

    response: str
    prompt: str
    similarity: float
    exact: bool


class SemanticCache:
    """An LLM response cache that also answers paraphrases of a cached prompt.

    Setup::

        from tiered_context.qdrant import SemanticCache
        cache = SemanticCache(path="./cache")                 # embedded Qdrant
        cache = SemanticCache(store=my_qdrant_cold_store)      # share the store's engine
        cache = SemanticCache(url="http://qdrant:6333", threshold=0.95, ttl=3600)

    Use::

        key = "gpt-4o-mini|temperature=0"                      # model + params
        if (hit := cache.lookup("user-7", prompt, key)) is None:
            answer = call_the_llm(prompt)
            cache.update("user-7", prompt, key, answer)

    Result: the same prompt (exactly) or one whose embedding has cosine >= `threshold`
    *and* the same meaning signature (`tiered_context.core._meaning`: numbers, dates,
    negations and named entities in order agree), under the same tenant *and* the same
    model/params string, returns the cached response until `ttl` seconds have passed.
    "flights from Paris to Lisbon" never gets the answer cached for "... Lisbon to Paris",
    "is it unsafe" never the one for "is it safe". The `candidates` nearest entries above
    the threshold are checked in order, the first that passes `guard` answers;
    ``guard=None`` is the vector match alone. A different model or temperature never
    hits; one tenant never sees another's entries. For LangChain use
    `tiered_context.langchain._cache.TieredSemanticCache`, for LlamaIndex
    `tiered_context.llama_index._cache.SemanticCacheLLM`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: Any = None,
        url: str | None = None,
        api_key: str | None = None,
        engine: Engine | str | None = None,
        embedder: Embedder | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        guard: MeaningGuard | None = same_meaning,
        candidates: int = DEFAULT_CANDIDATES,
        ttl: float | None = None,
        collection: str = "tiered_context_cache",
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold is a cosine similarity in (0, 1], got {threshold!r}")
        if guard is not None and not callable(guard):
            raise ConfigError(f"guard must be a callable (cached_prompt, new_prompt) -> bool or None, got {guard!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= 100:
            raise ConfigError(f"candidates is how many nearest entries a lookup checks, an int in 1..100, got {candidates!r}")
        if ttl is not None and (not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ConfigError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        if store is not None and (path is not None or url is not None):
            raise ConfigError("pass store= (share its engine) or path= / url=, not both")
        self.threshold, self.ttl, self.collection_name = float(threshold), ttl, collection
        if embedder is None:
            from tiered_context.core import WordLlamaEmbedder

            embedder = WordLlamaEmbedder()
        self.embedder = embedder
        self.guard, self.candidates = guard, candidates
        self.hits = self.misses = 0
        self.guarded = 0  # lookups where a vector match was refused by the guard (a wrong answer avoided)
        self._clock = clock  # seconds; injectable so TTL tests need not sleep
        self._lock = threading.RLock()
        if store is not None:
            handle = getattr(store, "_handle", None)
            if handle is None:
                raise ConfigError("store= must be a tiered_context.qdrant.QdrantColdStore")
            self._handle = _share(handle)
        else:
            self._handle = connect(path=path, url=url, api_key=api_key, engine=engine, timeout=timeout)
        self._coll: Any = None
        try:
            meta = self._handle.conn.stored_meta(collection)
            if meta is not None:
                dim = check_meta(f"cache collection {collection!r}", meta, "cache", None)
                self._open(dim)
        except BaseException:
            self._handle.release()
            raise

    # -- the cache ---------------------------------------------------------------------
    def lookup(self, tenant: str, prompt: str, llm_string: str) -> CacheHit | None:
        """The cached response for `prompt` (or a paraphrase) under this model key, or None."""
        _check(prompt, llm_string)
        where_all = scope(tenant)
        if self._coll is None:
            self.misses += 1
            return None
        key = _llm_key(llm_string)
        now = self._clock()
        exact_scope = scope(tenant, ids=[_entry_key(key, prompt)], above=[("expires", now)])
        records, _ = self._coll.scroll(exact_scope, limit=1)
        if records:
            self.hits += 1
            p = records[0].payload
            return CacheHit(p["response"], p["prompt"], 1.0, True)
        vector = self._embed(prompt)
        near = scope(where_all.tenant, equals=[("llm", key)], above=[("expires", now)])
        guard = self.guard
        found = self._coll.query([Query(near, self.candidates if guard is not None else 1, dense=vector)])[0]
        refused = False
        for point in found:  # nearest first
            if point.score < self.threshold:
                break
            p = point.payload
            if guard is None or guard(p["prompt"], prompt):
                self.hits += 1
                return CacheHit(p["response"], p["prompt"], float(point.score), False)
            refused = True
        self.guarded += refused
        self.misses += 1
        return None

    def update(self, tenant: str, prompt: str, llm_string: str, response: str) -> None:
        """Store `response` for `prompt` under this tenant and model key (durable on return)."""
        _check(prompt, llm_string)
        if not isinstance(response, str):
            raise InputError(f"response must be str (serialise it first), got {type(response).__name__}")
        scope(tenant)
        vector = self._embed(prompt)
        key = _llm_key(llm_string)
        now = self._clock()
        payload = {"tenant": tenant, "llm": key, "prompt": prompt, "response": response, "created": now,
                   "expires": now + self.ttl if self.ttl else _NEVER}
        with self._lock:
            coll = self._ensure(vector.shape[0])
            coll.upsert([PointData(point_id(tenant, _entry_key(key, prompt)), vector, None, payload)])

    def clear(self, tenant: str, llm_string: str | None = None) -> None:
        """Drop this tenant's entries (only those of one model key, if given)."""
        where = scope(tenant, equals=[("llm", _llm_key(llm_string))] if llm_string is not None else ())
        if self._coll is not None:
            self._coll.delete(where)

    def purge_expired(self, tenant: str) -> None:
        """Delete this tenant's expired entries (lookups already ignore them)."""
        where = scope(tenant, below=[("expires", self._clock())])
        if self._coll is not None:
            self._coll.delete(where)

    async def alookup(self, tenant: str, prompt: str, llm_string: str) -> CacheHit | None:
        return await asyncio.to_thread(self.lookup, tenant, prompt, llm_string)

    async def aupdate(self, tenant: str, prompt: str, llm_string: str, response: str) -> None:
        await asyncio.to_thread(self.update, tenant, prompt, llm_string, response)

    async def aclear(self, tenant: str, llm_string: str | None = None) -> None:
        await asyncio.to_thread(self.clear, tenant, llm_string)

    def close(self) -> None:
        with self._lock:
            self._coll = None
            self._handle.release()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SemanticCache(threshold={self.threshold}, ttl={self.ttl}, hits={self.hits}, "
                f"misses={self.misses}, guarded={self.guarded})")

    # -- internals ---------------------------------------------------------------------
    def _embed(self, prompt: str) -> np.ndarray:
        return normalize(self.embedder.embed([prompt]))[0]

    def _open(self, dim: int) -> Any:
        spec = CollectionSpec(name=self.collection_name, kind="cache", dim=dim, sparse=False,
                              keyword_fields=("llm",), float_fields=("expires",))
        self._coll = self._handle.conn.collection(spec)
        return self._coll

    def _ensure(self, dim: int) -> Any:
        if self._coll is None:
            if self._handle._released:
                raise StoreError("this SemanticCache is closed; open a new one")
            return self._open(dim)
        if dim != self._coll.dim:
            raise StoreError(f"the embedder gives {dim}-d vectors but the cache holds {self._coll.dim}-d; "
                             "use the same embedder or another collection=")
        return self._coll


def _share(handle: Any) -> Any:
    from tiered_context.qdrant._connect import _LOCK, _OPEN, Handle

    with _LOCK:
        entry = _OPEN.get(handle.key)
        if entry is None:
            raise StoreError("the store passed as store= is closed; open it again")
        entry[1] += 1
    return Handle(handle.key, handle.conn, None)


def _llm_key(llm_string: str) -> str:
    return hashlib.blake2b(llm_string.encode("utf-8"), digest_size=16).hexdigest()


def _entry_key(llm_key: str, prompt: str) -> str:
    return f"cache\x1f{llm_key}\x1f{prompt}"


def _check(prompt: object, llm_string: object) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt must be a non-empty str")
    if not isinstance(llm_string, str):
        raise InputError("llm_string (the model and its parameters) must be a str")

