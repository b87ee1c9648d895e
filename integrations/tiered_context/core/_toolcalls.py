"""Tool calls and their results travel together.

An assistant turn that calls tools carries the call ids in metadata ``tool_call_ids``;
each result carries its ``tool_call_id``. The assembler packs a call and its results as
one bundle, never one without the other: an orphaned tool message is a provider error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["call_ids", "call_bundles"]


def call_ids(item: Any) -> set[str]:
    """The tool-call ids `item` makes or answers (malformed values count as none; the
    assembler skips such items before they become candidates)."""
    calls = item.metadata.get("tool_call_ids")
    ids = {str(c) for c in calls} if isinstance(calls, (list, tuple)) else set()
    if item.metadata.get("tool_call_id"):
        ids.add(str(item.metadata["tool_call_id"]))
    return ids


def call_bundles(linked: Mapping[str, set[str]], seq: Callable[[str], int]) -> dict[str, tuple[str, ...]]:
    """Each id of `linked` (item id -> its `call_ids`) -> its bundle: every item sharing a
    call id with it, directly or through others, in history order (`seq`)."""
    groups: list[tuple[set[str], set[str]]] = []  # (call ids, item ids)
    for origin, ids in linked.items():
        merged = (set(ids), {origin})
        for group in [g for g in groups if g[0] & ids]:
            groups.remove(group)
            merged[0].update(group[0])
            merged[1].update(group[1])
        groups.append(merged)
    out: dict[str, tuple[str, ...]] = {}
    for _, members in groups:
        ordered = tuple(sorted(members, key=seq))
        out.update((o, ordered) for o in members)
    return out
