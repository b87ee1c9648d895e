"""Session plumbing of `TieredMemory`: settings checks, `ChatMemoryBuffer`-style
defaults, and reading the layout of the release before namespaces.

Generations are the core's (`TieredContext.reset`, one archived marker). The release
before kept generation ``n`` of a session under the raw key ``"<session_id>~<n>"`` and
the current one in a sidecar file (``tiered_memory_sessions.json``); `migrate_legacy`
opens such an archive once, copying the current legacy generation into a core one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from llama_index.core.base.llms.types import ChatMessage

from tiered_context.core import (
    ColdStore,
    ContextItem,
    Embedder,
    Kind,
    Tier,
    TieredContext,
    TokenCounter,
    normalize,
    read_json,
)
from tiered_context.errors import ConfigError

__all__ = ["BufferSerialization", "DEFAULT_TOKEN_LIMIT", "DEFAULT_TOKEN_LIMIT_RATIO", "legacy_generation", "migrate_legacy",
           "check_seams", "buffer_defaults", "common_prefix", "stored_form", "as_core_embedder"]

DEFAULT_TOKEN_LIMIT = 3000
#: Share of an LLM's context window used when only `llm=` is given (as ChatMemoryBuffer).
DEFAULT_TOKEN_LIMIT_RATIO = 0.75
#: The sidecar of the release before namespaces (read, never written).
SIDECAR = "tiered_memory_sessions.json"
MIGRATION_ROLE = "legacy-migration"
log = logging.getLogger("tiered_context.llama_index")


class BufferSerialization:
    """`ChatMemoryBuffer` parity for a `BaseMemory` with a ``path`` field and
    `get_all()`: `to_dict` / `from_dict`, `to_string` / `from_string` and pickle keep the
    history of an in-memory archive (an archive on disk is reopened instead)."""

    def to_dict(self, **kwargs: Any) -> Dict[str, Any]:
        data = super().to_dict(**kwargs)  # type: ignore[misc]
        if self.path is None:  # type: ignore[attr-defined]
            data["chat_history"] = [stored_form(m) for m in self.get_all()]  # type: ignore[attr-defined]
        return data

    def to_string(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_string(cls, json_str: str) -> Any:
        return cls.from_dict(json.loads(json_str))  # type: ignore[attr-defined]

    def __getstate__(self) -> Dict[str, Any]:
        return {"__dict__": {k: v for k, v in self.to_dict().items() if k != "class_name"}}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state["__dict__"])  # type: ignore[misc]


def legacy_generation(store: ColdStore, session_id: str, path: Optional[str]) -> int:
    """The current generation of `session_id` in the layout of the release before
    namespaces (generation ``n`` under the raw key ``"<session_id>~<n>"``, the latest
    recorded in the sidecar file): 0 when there is none. A damaged or truncated sidecar
    is moved aside (`read_json`) and the count falls back to the archive."""
    recorded = 0
    if path is not None:
        state = read_json(Path(path) / SIDECAR, what="TieredMemory generation sidecar", expect=dict)
        value = (state or {}).get(session_id, 0)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1_000_000:
            recorded = value
    generation = 0
    while store.count(f"{session_id}~{generation + 1}") > 0:
        generation += 1
    return max(recorded, generation)


def migrate_legacy(ctx: TieredContext, path: Optional[str]) -> bool:
    """Open an archive written by the release before namespaces: when the session's
    current history lives in a legacy generation ``"<session_id>~<n>"`` (n >= 1), copy
    its originals into a new generation of `ctx` (ids, text, roles, metadata kept; the
    legacy keys stay archived, nothing is deleted) and record the migration, once.

    Only the exact legacy key of this session id is read, and only when the sidecar or
    the archive says it holds this session's generation; a session *named*
    ``"<victim>~1"`` has its own namespace and never reaches it (see `Namespace`)."""
    ns = ctx.namespace
    if ns.user is not None or ns.tenant is not None or ns.thread is not None:
        return False  # the legacy layout had only plain sessions
    store = ctx.store
    markers = ns.root.with_kind(Kind.MARKERS).key
    if any(m.role == MIGRATION_ROLE for m in store.items(markers)):
        return False
    legacy = legacy_generation(store, ns.session, path)
    if legacy == 0:
        return False
    source = f"{ns.session}~{legacy}"
    originals = sorted((i for i in store.items(source) if not i.is_derived), key=lambda i: i.seq)
    generation = ctx.reset()
    if originals:
        ctx.put_many([ContextItem(id=i.id, text=i.text, role=i.role, timestamp=i.timestamp, pinned=i.pinned,
                                  metadata={**i.metadata, "legacy_key": source}) for i in originals])
    record = ContextItem(id=f"legacy-migration-{generation:08d}", text=f"migrated {source}", role=MIGRATION_ROLE,
                         tier=Tier.L3, metadata={"source": source, "generation": generation})
    store.add(markers, [record], normalize(ctx.embedder.embed([record.text])))
    log.info("TieredMemory %r: migrated the legacy generation %r (%d messages) to generation %d",
             ns.session, source, len(originals), generation)
    return True


def check_seams(*, store: Any, path: Any, context_factory: Any, embedder: Any, counter: Any, config: Any = None) -> None:
    if store is not None and path is not None:
        raise ConfigError("pass either path= (an archive on disk) or store= (a shared ColdStore), not both")
    if context_factory is not None and config is not None:
        raise ConfigError("pass config= (a MemoryConfig) or context_factory=, not both")
    if context_factory is not None and any(v is not None for v in (store, path, embedder, counter)):
        raise ConfigError("with context_factory=, configure store / path / embedder / counter in the factory's TieredContext")
    if config is not None and any(v is not None for v in (store, path, embedder, counter)):
        raise ConfigError("with config=, set store / path / embedder / counter in the MemoryConfig "
                          "(config.replace(store=...)), not as separate arguments")


def buffer_defaults(*, llm: Any, chat_store: Any, token_limit: Optional[int], tokenizer_fn: Optional[Callable[[str], Any]],
                    counter: Optional[TokenCounter], context_factory: Any) -> Tuple[int, Optional[TokenCounter]]:
    """`ChatMemoryBuffer.from_defaults` semantics: the token limit (75% of the LLM's
    window when only `llm` is given) and the counter (from `tokenizer_fn`, else the
    LLM's model name when it is a known OpenAI / Llama 3 / Qwen model)."""
    if chat_store is not None:
        raise ConfigError(
            "TieredMemory keeps history in its own archive, not a chat store; drop chat_store= and "
            "pass path='./memdir' (on disk) or store=<a tiered_context ColdStore shared by sessions>"
        )
    if llm is not None and token_limit is None:
        token_limit = int(llm.metadata.context_window * DEFAULT_TOKEN_LIMIT_RATIO)
    if context_factory is not None:
        return token_limit or DEFAULT_TOKEN_LIMIT, None  # the factory's TieredContext brings its own counter
    if counter is None and tokenizer_fn is not None:
        counter = TokenCounter.from_tokenizer(tokenizer_fn, name=getattr(tokenizer_fn, "__name__", None))
    if counter is None and llm is not None:
        try:
            counter = TokenCounter.for_model(str(getattr(llm.metadata, "model_name", "") or ""))
        except ConfigError:
            counter = None
    return token_limit or DEFAULT_TOKEN_LIMIT, counter


def common_prefix(history: Sequence[ChatMessage], messages: Sequence[ChatMessage]) -> int:
    """How many of `messages` repeat `history` from its start (0 unless they extend it)."""
    if len(messages) < len(history):
        return 0
    for i, (old, new) in enumerate(zip(history, messages)):
        if stored_form(old) != stored_form(new):
            return i
    return len(history)


def stored_form(message: ChatMessage) -> Dict[str, Any]:
    """A message as compared and serialised (the per-call `session_id` kwarg dropped)."""
    data = message.model_dump(mode="json")
    (data.get("additional_kwargs") or {}).pop("session_id", None)
    return data


def as_core_embedder(embedder: Any) -> Embedder:
    """A core `Embedder` from None (offline WordLlama), a LlamaIndex `BaseEmbedding` or
    a core embedder."""
    if embedder is None:
        from tiered_context.core import WordLlamaEmbedder

        return WordLlamaEmbedder()
    from llama_index.core.base.embeddings.base import BaseEmbedding

    if isinstance(embedder, BaseEmbedding):
        from tiered_context.llama_index._embeddings import LlamaIndexEmbedder

        return LlamaIndexEmbedder(embedder)
    return embedder
