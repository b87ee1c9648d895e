"""Session plumbing of `TieredMemory`: settings checks, `ChatMemoryBuffer`-style
defaults, and reading the layout of the release before namespaces; `MemorySetup`, its
construction (`from_defaults`, `model_post_init`, the core `MemoryConfig`).

Generations are the core's (`TieredContext.reset`, one archived marker). The release
before kept generation ``n`` of a session under the raw key ``"<session_id>~<n>"`` and
the current one in a sidecar file (``tiered_memory_sessions.json``); `migrate_legacy`
opens such an archive once, copying the current legacy generation into a core one.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory.types import DEFAULT_CHAT_STORE_KEY

from tiered_context.core import (
    Budget,
    ColdStore,
    Compaction,
    ContextItem,
    Embedder,
    Kind,
    MemoryConfig,
    ScoringConfig,
    Tier,
    TieredContext,
    TokenCounter,
    check_id,
    normalize,
    read_json,
)
from tiered_context.errors import ConfigError
from tiered_context.llama_index._convert import MediaTokens, SizedTokens
from tiered_context.llama_index._instrumentation import emit_ladder

if TYPE_CHECKING:
    from tiered_context.llama_index._memory import TieredMemory

__all__ = ["BufferSerialization", "MemorySetup", "DEFAULT_TOKEN_LIMIT", "DEFAULT_TOKEN_LIMIT_RATIO", "legacy_generation", "migrate_legacy",
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


class MemorySetup:
    """`TieredMemory`'s construction: `from_defaults` (`ChatMemoryBuffer.from_defaults`
    arguments and the tiered ones), `model_post_init` (checks the settings, opens the
    session's `TieredContext`, loads its history) and `_config` (the core settings as one
    `MemoryConfig`). A mixin of `TieredMemory`, whose fields it reads."""

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        chat_history: Optional[List[ChatMessage]] = None,
        llm: Optional[Any] = None,
        chat_store: Optional[Any] = None,
        chat_store_key: str = DEFAULT_CHAT_STORE_KEY,
        token_limit: Optional[int] = None,
        tokenizer_fn: Optional[Callable[[str], Any]] = None,
        *,
        session_id: Optional[str] = None,
        user_id: Optional[str] = None,
        path: Optional[Union[str, Path]] = None,
        store: Optional[ColdStore] = None,
        embedder: Optional[Any] = None,
        embed_model: Optional[Any] = None,
        counter: Optional[TokenCounter] = None,
        scoring: Optional[ScoringConfig] = None,
        config: Optional[MemoryConfig] = None,
        compaction: Union[Compaction, str] = Compaction.BACKGROUND,
        recent_messages: int = 2,
        pin_system: bool = True,
        start_with_user: bool = True,
        alternate: bool = False,
        in_place: bool = False,
        working_set_tokens: Optional[int] = None,
        media_tokens: Optional[MediaTokens] = None,
        context_factory: Optional[Callable[[str], TieredContext]] = None,
    ) -> "TieredMemory":
        """Accepts `ChatMemoryBuffer.from_defaults` arguments (`chat_history`, `llm`,
        `chat_store_key`, `token_limit`, `tokenizer_fn`) and the tiered ones.

        Core settings come from `config` (a `MemoryConfig`: summarizer, compression, any
        store) or the shortcuts `path` / `store` / `embedder` / `counter` / `scoring` /
        `compaction` / `working_set_tokens`; `context_factory(session_id)` (returns a
        `TieredContext`) is still accepted. `token_limit` is this memory's hard limit
        whatever the config's budget. `llm` sets the token limit to 75% of its context
        window when `token_limit` is not given, and the tokenizer when its model name is a
        known OpenAI / Llama 3 / Qwen model. `chat_store` is not supported (the archive is
        the store): pass `path=` or `store=` instead. `embed_model` takes a LlamaIndex
        `BaseEmbedding`.
        """
        check_seams(store=store, path=path, context_factory=context_factory, embedder=embed_model or embedder,
                    counter=counter, config=config)
        token_limit, counter = buffer_defaults(llm=llm, chat_store=chat_store, token_limit=token_limit,
                                               tokenizer_fn=tokenizer_fn, counter=counter,
                                               context_factory=context_factory or config)
        return cls(
            token_limit=token_limit,
            session_id=session_id if session_id is not None else chat_store_key,
            chat_store_key=chat_store_key,
            user_id=user_id,
            chat_history=chat_history,
            tokenizer_fn=tokenizer_fn,
            path=str(path) if path is not None else None,
            store=store,
            embedder=embed_model if embed_model is not None else embedder,
            counter=counter,
            scoring=scoring,
            config=config,
            compaction=Compaction(compaction).value,
            recent_messages=recent_messages,
            pin_system=pin_system,
            start_with_user=start_with_user,
            alternate=alternate,
            in_place=in_place,
            working_set_tokens=working_set_tokens,
            media_tokens=media_tokens or MediaTokens(),
            context_factory=context_factory,
        )

    def model_post_init(self, __context: Any) -> None:
        check_id(self.session_id, name="session_id")
        check_id(self.user_id, name="user_id", optional=True)
        check_seams(store=self.store, path=self.path, context_factory=self.context_factory, embedder=self.embedder,
                    counter=self.counter, config=self.config)
        if not self.start_with_user:
            warnings.warn("start_with_user=False has no effect: the first non-system message is always the user's "
                          "(the conversation contract)", DeprecationWarning, stacklevel=3)
        if self.context_factory is not None:
            ctx = self.context_factory(self.session_id)
            if not isinstance(ctx, TieredContext) or ctx.session_id != self.session_id:
                raise ConfigError("context_factory(session_id) must return TieredContext(session_id=session_id, ...)")
            self._owns_store = False
        else:
            ctx = TieredContext(config=self._config(), session_id=self.session_id, user_id=self.user_id)
            # the memory opened its store itself (no store= / config.store given): it closes it
            self._owns_store = self.store is None and (self.config is None or self.config.store is None)
        self._ctx = ctx
        self.store, self.counter, self.embedder = ctx.store, ctx.counter, ctx.embedder
        if self.path is None and ctx.path is not None:
            self.path = str(ctx.path)
        if self.tokenizer_fn is None:
            self.tokenizer_fn = SizedTokens(self.counter)
        migrate_legacy(ctx, self.path)
        self._load_history()
        if self.chat_history:
            initial, self.chat_history = list(self.chat_history), None
            self.set(initial)
        self.chat_history = None

    def _config(self) -> MemoryConfig:
        """The core settings, as one value: `config` (its budget sized to this memory) or
        the shortcuts."""
        session = self.session_id
        if self.config is not None:
            budget = self.config.budget
            if self.working_set_tokens is not None or budget.max_tokens != self.token_limit:
                budget = Budget(max_tokens=self.token_limit, working_set_tokens=self.working_set_tokens or budget.working_set_tokens,
                                alert_at=budget.alert_at, compress_at=budget.compress_at, prune_at=budget.prune_at,
                                compression_ratio=budget.compression_ratio, recent_items=self.recent_messages)
            return self.config.replace(budget=budget)
        return MemoryConfig(
            path=Path(self.path) if self.path is not None else None,
            store=self.store,
            budget=Budget(max_tokens=self.token_limit, working_set_tokens=self.working_set_tokens, recent_items=self.recent_messages),
            counter=self.counter or TokenCounter(),
            embedder=as_core_embedder(self.embedder),
            scoring=self.scoring,
            compaction=self.compaction,
            on_event=lambda event: emit_ladder(session, event),
        )
