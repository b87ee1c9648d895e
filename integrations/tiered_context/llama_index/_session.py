"""Session plumbing of `TieredMemory`: settings checks, `ChatMemoryBuffer`-style
defaults, and the generation counter that `reset()` / `set()` advance.

A session's generation ``n`` lives in the archive under ``"<session_id>~<n>"``
(generation 0 under ``session_id`` itself). With an on-disk archive the current
generation is also recorded in a sidecar file, so an empty new generation (a `reset`
just before the process ended) is not mistaken for the last one holding items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from llama_index.core.base.llms.types import ChatMessage

from tiered_context.core.embed import Embedder
from tiered_context.core.store import ColdStore
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import ConfigError

__all__ = ["BufferSerialization", "DEFAULT_TOKEN_LIMIT", "DEFAULT_TOKEN_LIMIT_RATIO", "tenant", "find_generation", "record_generation",
           "check_seams", "buffer_defaults", "common_prefix", "stored_form", "as_core_embedder"]

DEFAULT_TOKEN_LIMIT = 3000
#: Share of an LLM's context window used when only `llm=` is given (as ChatMemoryBuffer).
DEFAULT_TOKEN_LIMIT_RATIO = 0.75
SIDECAR = "tiered_memory_sessions.json"


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


def tenant(session_id: str, generation: int) -> str:
    """The archive scope of one generation of a session."""
    return session_id if generation == 0 else f"{session_id}~{generation}"


def find_generation(store: ColdStore, session_id: str, path: Optional[str]) -> int:
    """The session's current generation: the sidecar's record (with a path), else the
    last generation holding items."""
    recorded = 0
    if path is not None:
        sidecar = Path(path) / SIDECAR
        if sidecar.exists():
            recorded = int(json.loads(sidecar.read_text()).get(session_id, 0))
    generation = 0
    while store.count(tenant(session_id, generation + 1)) > 0:
        generation += 1
    return max(recorded, generation)


def record_generation(path: Optional[str], session_id: str, generation: int) -> None:
    """Write the session's current generation to the sidecar (no-op in memory)."""
    if path is None:
        return
    sidecar = Path(path) / SIDECAR
    state = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    state[session_id] = generation
    sidecar.write_text(json.dumps(state))


def check_seams(*, store: Any, path: Any, context_factory: Any, embedder: Any, counter: Any) -> None:
    if store is not None and path is not None:
        raise ConfigError("pass either path= (an archive on disk) or store= (a shared ColdStore), not both")
    if context_factory is not None and any(v is not None for v in (store, path, embedder, counter)):
        raise ConfigError("with context_factory=, configure store / path / embedder / counter in the factory's TieredContext")


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
        from tiered_context.core.embed import WordLlamaEmbedder

        return WordLlamaEmbedder()
    from llama_index.core.base.embeddings.base import BaseEmbedding

    if isinstance(embedder, BaseEmbedding):
        from tiered_context.llama_index.embeddings import LlamaIndexEmbedder

        return LlamaIndexEmbedder(embedder)
    return embedder
