"""`ContextItem`: the immutable unit everything else moves around."""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from tiered_context.core._validate import _show, check_id, check_role, check_text, plain_metadata, to_timestamp
from tiered_context.errors import InputError

__all__ = ["ContextItem", "Role", "Tier", "coerce_text"]

log = logging.getLogger("tiered_context")


class Role(str, Enum):
    """Who produced an item. Roles outside this set are kept as given in `metadata`."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    DOCUMENT = "document"
    SUMMARY = "summary"


class Tier(str, Enum):
    """Where an item lives. L1 hot (verbatim), L2 warm (compressed), L3 cold (archive)."""

    L1 = "L1"
    L2 = "L2"
    L3 = "L3"


def coerce_text(content: Any) -> str:
    """Turn message content into text, or raise `InputError` saying what to pass.

    Accepts `str`, UTF-8 `bytes` (other bytes are decoded with replacement characters,
    never dropped) and lists of content parts (``{"type": "text", "text": ...}`` and
    non-text parts such as images, which become a short placeholder).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, (bytes, bytearray)):
        return bytes(content).decode("utf-8", errors="replace")
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                kind = part.get("type", "text")
                if "text" in part and isinstance(part["text"], str):
                    parts.append(part["text"])
                else:
                    parts.append(f"[{kind}]")
            else:
                raise InputError(
                    f"content part of type {type(part).__name__} is not supported; "
                    "pass str, bytes, or a list of str / {'type': ..., 'text': ...} parts"
                )
        return "\n".join(parts)
    raise InputError(
        f"content of type {type(content).__name__} is not text; pass str, bytes or a "
        "list of content parts (convert other objects with str() or json.dumps first)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextItem:
    """One unit of context: a chat turn, a tool result, a document chunk or a summary.

    Immutable: a compressed form or a summary is a *new* item whose `source_ids` name
    the originals it stands for, so every assembled context traces back to what was
    stored. `metadata` travels with the item and with everything derived from it.

    >>> item = ContextItem.create("We moved the launch to May 3.", role="user")
    >>> item.tier, item.is_derived
    (<Tier.L1: 'L1'>, False)
    """

    id: str
    text: str
    role: str = Role.USER.value
    timestamp: float = 0.0
    tokens: int = 0
    tier: Tier = Tier.L1
    importance: float = 0.0
    pinned: bool = False
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    source_ids: tuple[str, ...] = ()
    seq: int = -1  # position in the session's history; set by the store on `put`

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError("ContextItem.text must be str; use ContextItem.create(...) to coerce content")
        if not self.id:
            raise InputError("ContextItem.id must be a non-empty string")
        if not isinstance(self.timestamp, (int, float)) or not math.isfinite(self.timestamp):
            raise InputError(f"timestamp must be a finite POSIX time in seconds, got {self.timestamp!r}")
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "source_ids", tuple(self.source_ids))
        object.__setattr__(self, "tier", Tier(self.tier))

    def __hash__(self) -> int:  # equal items share an id; metadata is not hashable
        return hash(self.id)

    @classmethod
    def create(
        cls,
        content: Any,
        *,
        role: str | Role = Role.USER,
        timestamp: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
        pinned: bool = False,
        importance: float = 0.0,
        source_ids: tuple[str, ...] = (),
        tier: Tier = Tier.L1,
    ) -> "ContextItem":
        """Build an item from any supported content; the id is a content hash unless given.

        This is the door every `put` and adapter goes through, so everything is checked
        here and `InputError` says what to pass instead:

        * `content`: see `coerce_text`; any valid Unicode (emoji, RTL marks, control
          characters, NUL) is kept as given; a lone surrogate (``"\\ud800"``: half of a
          UTF-16 pair) in the text, the id, the role or metadata is refused.
        * `timestamp`: see `to_timestamp` (POSIX seconds; unambiguous ms/us/ns epochs are
          converted; datetimes accepted).
        * `metadata`: see `plain_metadata` (plain JSON data, str keys, at most 32 levels;
          reserved keys such as ``tool_call_ids`` type-checked by `check_reserved`).
        * `id` (and `source_ids`), `role`: non-empty str.
        """
        text = check_text(coerce_text(content), "text")
        role_value = check_role(role)
        ts = time.time() if timestamp is None else to_timestamp(timestamp)
        meta = plain_metadata(metadata)
        if isinstance(importance, bool) or not isinstance(importance, numbers.Real) or not math.isfinite(importance):
            raise InputError(f"importance must be a finite number (0.0 lets the memory estimate it), "
                             f"got {_show(importance)}")
        if id is None:
            digest = hashlib.blake2b(
                f"{role_value}\x1f{ts!r}\x1f{text}\x1f{sorted(meta.items(), key=str)!r}".encode("utf-8", "replace"),
                digest_size=12,
            ).hexdigest()
            id = f"it_{digest}"
        else:
            id = check_id(id, "id")
        sources = tuple(check_id(s, f"source_ids[{n}]") for n, s in enumerate(source_ids))
        return cls(
            id=id, text=text, role=role_value, timestamp=ts, metadata=meta, pinned=bool(pinned),
            importance=float(importance), source_ids=sources, tier=tier,
        )

    def checked(self) -> "ContextItem":
        """This item as `create` would accept it (for an item built directly with
        ``ContextItem(...)``, which checks little): same fields, timestamp and metadata
        normalised, or `InputError`. The facade runs it on items handed to `put`."""
        made = ContextItem.create(
            self.text, role=self.role, timestamp=self.timestamp, metadata=self.metadata, id=self.id,
            pinned=self.pinned, importance=self.importance, source_ids=self.source_ids, tier=self.tier,
        )
        return made.evolve(tokens=self.tokens, seq=self.seq)

    @property
    def is_derived(self) -> bool:
        """True for compressed forms and summaries (they stand for `source_ids`)."""
        return bool(self.source_ids)

    @property
    def origin_ids(self) -> tuple[str, ...]:
        """The ids of the stored originals this item stands for (itself if original)."""
        return self.source_ids or (self.id,)

    def evolve(self, **changes: Any) -> "ContextItem":
        """A copy with `changes` applied (the dataclass stays immutable)."""
        return replace(self, **changes)

    def __repr__(self) -> str:
        preview = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        derived = f", from={len(self.source_ids)}" if self.source_ids else ""
        return f"ContextItem({self.id!r}, {self.role}, {self.tier.value}, {self.tokens} tok{derived}, {preview!r})"


# -- validation at the door: one function per concern ---------------------------------------
