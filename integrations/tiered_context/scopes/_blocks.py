"""`ContextBlock`: the immutable, versioned unit that agents share through scopes.

A block is what one agent hands another instead of a copied history: a turn, a summary
or a fact, with its content hash, token count, tenant, the scope that wrote it, its
provenance (`source_ids`) and its relevance to the task of the scope it was routed to.
Changing a block makes a new version (`revise`); retiring one is also a new version
(`retire`), so a scope's history of a key is a list of immutable versions.

The assembler packs `ContextItem`s; `ContextBlock.to_item()` is the bridge (the block's
identity travels in the item's metadata), so blocks are assembled by the same packer
as everything else.

>>> b = ContextBlock.create("Launch moved to 3 May.", tenant="acme", scope="root")
>>> b.version, b.kind, b.retired
(1, <BlockKind.TURN: 'turn'>, False)
>>> b2 = b.revise("Launch moved to 5 May.")
>>> (b2.key == b.key, b2.version, b2.content_hash != b.content_hash)
(True, 2, True)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from tiered_context.core import (
    ContextItem,
    Role,
    check_role,
    check_text,
    coerce_text,
    plain_metadata,
    to_timestamp,
)
from tiered_context.errors import InputError

__all__ = ["BlockKind", "ContextBlock", "MergeResult", "OnConflict", "ScopeDiff", "content_hash"]


class BlockKind(str, Enum):
    """What a block holds: a turn (message, tool result, document), a summary, or a fact."""

    TURN = "turn"
    SUMMARY = "summary"
    FACT = "fact"


def content_hash(text: str) -> str:
    """A short stable hash of `text` (blake2b, 16 hex digits): equal content, equal hash."""
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextBlock:
    """One immutable version of a keyed unit of shared context.

    `key` names the unit across versions (default: ``"b_" + content hash``), `version`
    counts its revisions from 1, `tokens` is set by the scope that stores it (its
    counter), `relevance` is the routing score for the receiving scope's task (None when
    written directly), `source_ids` name what a summary or fact stands for.
    """

    key: str
    version: int = 1
    content: str
    content_hash: str = ""
    tokens: int = 0
    tenant: str
    scope: str
    kind: BlockKind = BlockKind.TURN
    role: str = Role.USER.value
    source_ids: tuple[str, ...] = ()
    relevance: float | None = None
    retired: bool = False
    shared: bool = True
    timestamp: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise InputError("ContextBlock.key must be a non-empty string")
        if not isinstance(self.version, int) or self.version < 1:
            raise InputError(f"ContextBlock.version must be an int >= 1, got {self.version!r}")
        if not self.tenant:
            raise InputError("ContextBlock.tenant must be a non-empty string (the user / organisation scope)")
        object.__setattr__(self, "kind", BlockKind(self.kind))
        object.__setattr__(self, "source_ids", tuple(self.source_ids))
        if not self.content_hash:
            object.__setattr__(self, "content_hash", content_hash(self.content))
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __hash__(self) -> int:
        return hash((self.key, self.version, self.content_hash))

    @classmethod
    def create(
        cls,
        content: Any,
        *,
        tenant: str,
        scope: str,
        key: str | None = None,
        kind: BlockKind | str = BlockKind.TURN,
        role: str | Role = Role.USER,
        source_ids: tuple[str, ...] = (),
        relevance: float | None = None,
        shared: bool = True,
        timestamp: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "ContextBlock":
        """A version-1 block from any supported content (str, bytes, content parts)."""
        text = check_text(coerce_text(content), "the block's content")
        if not text.strip():
            raise InputError("a block needs non-empty content; skip empty messages")
        role = check_role(role)
        metadata = plain_metadata(metadata)  # reserved keys type-checked there
        try:
            kind = BlockKind(kind)
        except ValueError:
            raise InputError(f"kind must be one of {[k.value for k in BlockKind]}, got {kind!r}") from None
        digest = content_hash(text)
        return cls(
            key=key or f"b_{digest}", content=text, content_hash=digest, tenant=tenant, scope=scope, kind=kind,
            role=role, source_ids=tuple(source_ids),
            relevance=relevance, shared=shared, timestamp=time.time() if timestamp is None else to_timestamp(timestamp),
            metadata=metadata,
        )

    @property
    def id(self) -> str:
        """``key@version``: the identity of this version (the item id it assembles as)."""
        return f"{self.key}@{self.version}"

    def revise(self, content: Any, **changes: Any) -> "ContextBlock":
        """The next version of this block with new content (e.g. an updated summary)."""
        text = coerce_text(content)
        return replace(self, content=text, content_hash=content_hash(text), version=self.version + 1,
                       retired=False, tokens=0, **changes)

    def retire(self, **changes: Any) -> "ContextBlock":
        """The next version, marked retired: no scope shows it any more, its history stays."""
        return replace(self, version=self.version + 1, retired=True, **changes)

    def evolve(self, **changes: Any) -> "ContextBlock":
        """A copy with `changes` (same version unless given): re-stamping scope, tokens, relevance."""
        return replace(self, **changes)

    def to_item(self, seq: int = -1) -> ContextItem:
        """The `ContextItem` the assembler packs; `metadata` carries the block's identity."""
        meta = {**self.metadata, "block_key": self.key, "block_version": self.version, "block_kind": self.kind.value,
                "block_scope": self.scope, "tenant": self.tenant}
        if self.relevance is not None:
            meta["block_relevance"] = round(self.relevance, 4)
        return ContextItem(
            id=self.id, text=self.content, role=Role.SUMMARY.value if self.kind == BlockKind.SUMMARY else self.role,
            timestamp=self.timestamp, tokens=self.tokens, metadata=meta, seq=seq,
            source_ids=self.source_ids if self.kind == BlockKind.SUMMARY else (),
            importance=1.0 if self.kind == BlockKind.FACT else 0.0,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (MCP resources, snapshots); `from_dict` reads it back."""
        return {
            "key": self.key, "version": self.version, "content": self.content, "content_hash": self.content_hash,
            "tokens": self.tokens, "tenant": self.tenant, "scope": self.scope, "kind": self.kind.value,
            "role": self.role, "source_ids": list(self.source_ids), "relevance": self.relevance,
            "retired": self.retired, "shared": self.shared, "timestamp": self.timestamp,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ContextBlock":
        try:
            return cls(**{**data, "source_ids": tuple(data.get("source_ids") or ())})
        except TypeError as exc:
            raise InputError(f"not a ContextBlock dict ({exc}); pass what ContextBlock.as_dict() returns") from exc

    def __repr__(self) -> str:
        preview = self.content if len(self.content) <= 32 else self.content[:29] + "..."
        flags = (", retired" if self.retired else "") + ("" if self.shared else ", private")
        rel = f", rel={self.relevance:.2f}" if self.relevance is not None else ""
        return (f"ContextBlock({self.key!r} v{self.version}, {self.kind.value}, {self.tokens} tok, "
                f"{self.tenant}/{self.scope}{rel}{flags}, {preview!r})")


class OnConflict(str, Enum):
    """What `merge` does with keys changed on both sides: raise, keep ours, take theirs."""

    RAISE = "raise"
    OURS = "ours"
    THEIRS = "theirs"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeDiff:
    """What a child changed since it forked, relative to parent version `base_version`."""

    scope: str
    parent: str
    tenant: str
    base_version: int
    added: tuple[ContextBlock, ...] = ()
    updated: tuple[ContextBlock, ...] = ()
    retired: tuple[ContextBlock, ...] = ()

    @property
    def keys(self) -> set[str]:
        return {b.key for b in (*self.added, *self.updated, *self.retired)}

    @property
    def tokens(self) -> int:
        """Tokens of the content a merge hands over (retirements cost none)."""
        return sum(b.tokens for b in (*self.added, *self.updated))

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.retired)

    def as_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "parent": self.parent, "tenant": self.tenant, "base_version": self.base_version,
                **{k: [b.as_dict() for b in getattr(self, k)] for k in ("added", "updated", "retired")}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScopeDiff":
        return cls(scope=data["scope"], parent=data["parent"], tenant=data["tenant"],
                   base_version=int(data["base_version"]),
                   **{k: tuple(ContextBlock.from_dict(b) for b in data.get(k) or ()) for k in ("added", "updated", "retired")})

    def __repr__(self) -> str:
        return (f"ScopeDiff({self.scope!r} -> {self.parent!r} @v{self.base_version}: +{len(self.added)} "
                f"~{len(self.updated)} -{len(self.retired)}, {self.tokens} tok)")


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeResult:
    """What `merge` did: keys applied, conflicting keys kept as the parent had them,
    whether the diff was rebased (stale base, no overlap) and the parent's new version."""

    applied: tuple[str, ...]
    kept: tuple[str, ...] = ()
    overwritten: tuple[str, ...] = ()
    rebased: bool = False
    version: int = 0
