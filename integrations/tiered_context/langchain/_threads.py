"""`ThreadMemories`: the per-thread memories behind `TieredContextMiddleware`.

Opens a thread's `TieredContext` on first use (from one frozen `MemoryConfig`, all
threads sharing its store), takes in the thread's messages not seen yet, evicts the
least recently used thread past ``max_sessions`` and closes them all (and the store the
middleware opened) on `close`. The middleware's hooks live in `_middleware`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tiered_context.core import (
    ColdStore,
    LocalColdStore,
    MemoryConfig,
    TieredContext,
    WordLlamaEmbedder,
)
from tiered_context.errors import ConfigError, DuplicateItemError
from tiered_context.langchain._convert import message_time, message_to_item

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

__all__ = ["Key", "ThreadMemories"]

log = logging.getLogger("tiered_context.langchain")


class _SharedStore:
    """The one store all sessions share: closing a session's context must not close it."""

    def __init__(self, store: ColdStore) -> None:
        self.inner = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:  # the middleware closes the real store in its own close()
        return None


Key = tuple[str | None, str]  # (user, thread): separate fields, never joined


class ThreadMemories:
    """Every open thread's `TieredContext`, keyed by (user, thread), least recently used
    evicted past `max_sessions` (the archive stays; reopened on demand)."""

    def __init__(
        self,
        config: MemoryConfig,
        *,
        factory: Callable[[str, str | None], TieredContext] | None,
        max_sessions: int,
        use_runtime_store: bool,
    ) -> None:
        self.config = config  # resolved (store opened) on the first thread
        self._owns_store = config.store is None
        self._use_runtime_store = (use_runtime_store and config.store is None and config.path is None
                                   and factory is None)
        self._graph_store: Any = None
        self._factory = factory
        self._max_sessions = max_sessions
        self._contexts: OrderedDict[Key, TieredContext] = OrderedDict()
        self._ingested: dict[Key, set[str]] = {}
        self._lock = threading.RLock()
        self._store_to_close: Any = None

    def open(self, key: Key) -> TieredContext:
        """The `TieredContext` of the (checked) `key`, created on first use."""
        user_id, thread = key
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is not None:
                self._contexts.move_to_end(key)
                return ctx
            if self._factory is not None:
                ctx = self._factory(thread, user_id)
            else:
                if not self.config.resolved:
                    config = self.config
                    if config.store is None and config.path is None:
                        config = config.replace(store=LocalColdStore())
                    if config.embedder is None:
                        config = config.replace(embedder=WordLlamaEmbedder())
                    config = config.resolve()
                    # threads share the store; the middleware closes it in close(), not a thread's memory
                    self.config = config.replace(store=_SharedStore(config.store))
                    self._store_to_close = config.store if self._owns_store else None
                ctx = TieredContext(config=self.config, session_id=thread, user_id=user_id)
                self._adopt_legacy(ctx, user_id, thread)
            self._contexts[key] = ctx
            self._ingested[key] = set()
            while len(self._contexts) > self._max_sessions:  # the archive stays; reopened on demand
                old, evicted = self._contexts.popitem(last=False)
                self._ingested.pop(old, None)
                self._retire(evicted)
            return ctx

    def has_ingested(self, key: Key) -> bool:
        """True once any message of the thread has been taken in (since it was opened)."""
        return bool(self._ingested.get(key))

    def _adopt_legacy(self, ctx: TieredContext, user: str | None, thread: str) -> None:
        """Copy a thread the previous release archived under ``"user/thread"`` into its
        namespace (once, when the new one is empty; unambiguous ids only)."""
        if user is None or "/" in user or "/" in thread or len(ctx):
            return
        legacy = sorted((i for i in ctx.store.items(f"{user}/{thread}") if not i.is_derived), key=lambda i: i.seq)
        if legacy:
            log.info("thread %r of user %r: %d messages copied from the previous release's layout", thread, user, len(legacy))
            ctx.put_many([i.evolve(seq=-1) for i in legacy])

    def bind_store(self, graph_store: Any) -> None:
        """Archive into the agent's LangGraph store (``create_agent(store=...)``) when this
        middleware was given no path, store or factory of its own."""
        if graph_store is None or not self._use_runtime_store:
            return
        with self._lock:
            if self._graph_store is None and not self.config.resolved:
                from tiered_context.langchain._graph_store import GraphStoreColdStore

                self.config = self.config.replace(store=GraphStoreColdStore(graph_store))
                self._graph_store = graph_store
            elif self._graph_store is not None and graph_store is not self._graph_store:
                raise ConfigError(
                    "this TieredContextMiddleware already archives into another agent's store; give each agent "
                    "that has its own store= its own TieredContextMiddleware (or pass store=/path= explicitly)"
                )

    def _retire(self, ctx: TieredContext) -> None:
        if self._factory is None:
            ctx.close()  # waits for its compaction, stops its worker; the shared store stays open
        else:
            ctx.flush()  # a factory's contexts belong to the caller

    def flush(self) -> None:
        """Wait for background compaction in every open thread (tests, shutdown)."""
        with self._lock:
            contexts = list(self._contexts.values())
        for ctx in contexts:
            ctx.flush()

    def close(self) -> None:
        """Finish background work, close every thread's memory and the store the middleware opened."""
        with self._lock:
            contexts = list(self._contexts.values())
            self._contexts.clear()
            self._ingested.clear()
        for ctx in contexts:
            self._retire(ctx)
        store = self._store_to_close
        if store is not None and hasattr(store, "close"):
            store.close()

    def ingest(self, key: Key, ctx: TieredContext, messages: list[BaseMessage]) -> None:
        """Archive the messages of the thread not seen yet, one `put_many` per message: a
        reopened archive replays its originals one by one (`TieredContext` resumes per
        item), so live compaction must see the same steps, or a resumed thread would
        re-make its summaries (re-asking an LLM summarizer) instead of replaying them."""
        seen = self._ingested.setdefault(key, set())
        fresh = [m for m in messages if m.id and m.id not in seen]
        now = time.time()
        for m in fresh:
            item = message_to_item(m, timestamp=message_time(m, default=now))
            if item is None:
                continue
            try:
                ctx.put_many([item])
            except DuplicateItemError:  # a message id reused with new content: keep both versions
                digest = hashlib.blake2b(item.text.encode(), digest_size=4).hexdigest()
                ctx.put_many([message_to_item(m, timestamp=message_time(m, default=now), item_id=f"lc:{m.id}:{digest}")])
        seen.update(m.id for m in fresh)
