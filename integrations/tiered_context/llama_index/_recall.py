"""The labelled context block: how recalled and compressed history reaches the model.

What the memory retrieves from the archive, compresses or summarises is never passed off
as a real turn. It goes into ONE block of text (in the system message, where LlamaIndex
puts memory), under a header that says what it is; lines are chronological, grouped
under the calendar day they were said (``[4 December 2026]``: every line is dated by the
header above it), each attributed to its speaker (the message's ``name``, else its role);
a compressed line starts with ``*`` (one token; the header says what it means), a
summary with ``(summary of N earlier messages)``::

    Recalled from earlier in this conversation (lines starting with * are compressed, not verbatim):
    [4 December 2026]
    user: We moved the Lisbon launch to 3 May.
    *assistant: Noted Lisbon launch 3 May.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from tiered_context.core import ContextItem, day_of, header, speaker

__all__ = ["RECALL_HEADER", "COMPRESSED_MARK", "recall_line", "recall_day", "render_recall"]

RECALL_HEADER = "Recalled from earlier in this conversation (lines starting with * are compressed, not verbatim):"
#: Marks a compressed line (one token: the header says what it means).
COMPRESSED_MARK = "*"
_REAL_DATES_FROM = 365 * 86400


def recall_day(item: ContextItem) -> Optional[str]:
    """The day an item was said: its timestamp when that is a real date, else the wall
    clock it was stored at (``created_at``; TieredMemory's timestamps are positions)."""
    day = day_of(item)
    if day is not None:
        return day
    created = item.metadata.get("created_at")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return day_of(ContextItem(id="_", text="_", timestamp=float(created)))
    return None


def _speaker(item: ContextItem) -> str:
    stored = item.metadata.get("li_message")
    if isinstance(stored, Mapping):
        name = (stored.get("additional_kwargs") or {}).get("name")
        if isinstance(name, str) and name.strip():
            return name.strip()
    return speaker(item)


def recall_line(item: ContextItem, *, summarised: int = 0) -> str:
    """One attributed line (no date: the day header above it dates it)."""
    text = " ".join(item.text.split()) if "\n" not in item.text.strip() else item.text.strip()
    if summarised or (item.is_derived and len(item.origin_ids) > 1):
        n = summarised or len(item.origin_ids)
        return f"(summary of {n} earlier messages): {text}"
    mark = COMPRESSED_MARK if item.is_derived else ""
    return f"{mark}{_speaker(item)}: {text}"


def render_recall(items: Sequence[ContextItem], *, header_line: str = RECALL_HEADER) -> str:
    """The block for `items` (chronological order is the caller's), or "" when empty."""
    if not items:
        return ""
    out = [header_line] if header_line else []
    current: Any = None
    for item in items:
        day = recall_day(item)
        if day is not None and day != current:
            out.append(header(day))
            current = day
        out.append(recall_line(item))
    return "\n".join(out)
