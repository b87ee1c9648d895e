"""One namespace model for every store: who an item belongs to, and what kind of record it is.

A `Namespace` is a structured value: tenant, user, session, thread, generation and the
library's own record kinds (summaries, checkpoints, preferences, markers) are separate
fields. Stores receive `Namespace.key`, an injective encoding of the whole tuple, and
nothing else: two different namespaces never share a key, whatever characters the ids
hold, so a user-chosen id can never name an internal namespace or another tenant's.

    >>> ns = Namespace(session="s1", user="u7")
    >>> ns.with_kind(Kind.SUMMARIES).key != Namespace(session="s1#summaries", user="u7").key
    True

The key of a plain session (only the characters ``A-Z a-z 0-9 _ . @ : -``, default kind,
no other field) is the session id itself: archives written before namespaces existed open
unchanged. Every other namespace is a JSON array (it starts with ``[``, which a plain id
never does), so the two forms cannot collide.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import Enum

from tiered_context.errors import ConfigError

__all__ = ["Kind", "Namespace", "check_id"]

#: The longest id accepted (characters); longer ids are refused with a clear error.
MAX_ID_CHARS = 16384
_PLAIN = re.compile(r"[A-Za-z0-9_.@:\-]+")
_FORMAT = 1  # the version of the JSON key; bump only with a migration


class Kind(str, Enum):
    """What a namespace holds: the user's items, or one of the library's own record kinds."""

    ITEMS = "items"
    SUMMARIES = "summaries"
    CHECKPOINTS = "checkpoints"
    PREFERENCES = "preferences"
    MARKERS = "markers"


def check_id(value: object, *, name: str, optional: bool = False) -> str | None:
    """Validate one user-chosen id: any non-empty string of at most `MAX_ID_CHARS`
    characters, with no lone surrogates. Returns it unchanged (ids are never rewritten)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__} ({value!r:.60}); pass a string id")
    if not value:
        raise ConfigError(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise ConfigError(f"{name} is {len(value)} characters; ids are limited to {MAX_ID_CHARS}: pass a shorter id or a hash")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} holds a lone surrogate ({value!r:.60}); pass valid Unicode text") from None
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    """Where a record lives. Build it from user ids; derive the library's own namespaces
    with `with_kind` and new generations with `next_generation`, never by string editing.

    Fields: `session` (the conversation or memory), `user` (whose preferences and whose
    data), `tenant` (an organisation or app above users), `thread` (a sub-scope: a
    LangGraph thread, an agent scope), `generation` (bumped by reset/clear: a fresh, empty
    history; the old one stays archived), `kind` (the record kind).
    """

    session: str
    user: str | None = None
    tenant: str | None = None
    thread: str | None = None
    generation: int = 0
    kind: Kind = Kind.ITEMS

    def __post_init__(self) -> None:
        check_id(self.session, name="session_id")
        check_id(self.user, name="user_id", optional=True)
        check_id(self.tenant, name="tenant", optional=True)
        check_id(self.thread, name="thread_id", optional=True)
        if not isinstance(self.generation, int) or isinstance(self.generation, bool) or self.generation < 0:
            raise ConfigError(f"generation must be an int >= 0, got {self.generation!r}")
        object.__setattr__(self, "kind", Kind(self.kind))

    @property
    def key(self) -> str:
        """The store key: injective over every field (see the module docstring)."""
        if (self.kind is Kind.ITEMS and self.generation == 0 and self.user is None and self.tenant is None
                and self.thread is None and _PLAIN.fullmatch(self.session)):
            return self.session
        fields = [_FORMAT, self.tenant, self.user, self.session, self.thread, self.generation, self.kind.value]
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":"))

    def with_kind(self, kind: Kind | str) -> "Namespace":
        """The same scope, another record kind (summaries, checkpoints, ...)."""
        return replace(self, kind=Kind(kind))

    def with_generation(self, generation: int) -> "Namespace":
        return replace(self, generation=generation)

    def next_generation(self) -> "Namespace":
        """A fresh, empty history for the same scope (what reset / clear start)."""
        return replace(self, generation=self.generation + 1)

    @property
    def root(self) -> "Namespace":
        """Generation 0, items: where the scope's generation markers are anchored."""
        return replace(self, generation=0, kind=Kind.ITEMS)

    def legacy_key(self) -> str | None:
        """The key the release before namespaces used for this record kind (for reading
        archives it wrote), or None when it had none."""
        if self.user is not None or self.tenant is not None or self.thread is not None or self.generation:
            return None
        suffix = {Kind.SUMMARIES: "#summaries", Kind.CHECKPOINTS: "#state"}.get(self.kind)
        return None if suffix is None else self.session + suffix

    def __repr__(self) -> str:
        parts = [f"{f}={getattr(self, f)!r:.40}" for f in ("tenant", "user", "session", "thread")
                 if getattr(self, f) is not None]
        if self.generation:
            parts.append(f"generation={self.generation}")
        if self.kind is not Kind.ITEMS:
            parts.append(f"kind={self.kind.value}")
        return f"Namespace({', '.join(parts)})"

