"""Ladder checkpoints: the archive record that lets a reopened memory resume exactly.

The archive holds every original and every summary, but not which originals the ladder
had compressed to L2, retired before a summary took them (the backlog), pruned, or kept
for their facts. Those depend on where batch boundaries fell, and background compaction
places them by timing, so replaying the history cannot find them again. `flush` (so
`close`) archives them as one `Checkpoint`; a reopened `TieredContext` restores the
latest and replays only the originals put after it. An archive without checkpoints
(older, or never flushed) replays its whole history, as before.

The record is an item of the namespace's `Kind.CHECKPOINTS` key, which no query reads, with
id ``ckpt_<number>_<digest>`` and metadata ``{"checkpoint": number, "state": {...}}``,
the state being the other fields of `Checkpoint` as JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._store import ColdStore

__all__ = ["Checkpoint"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """The ladder's state once it settled; every item is named by id, nothing is copied."""

    number: int  # increases with every checkpoint of a session; the highest is the latest
    next_seq: int  # originals with this seq or later were put after the checkpoint
    working: list[tuple[str, str]]  # (origin id, "L1" | "L2"), oldest first
    frontier: list[str]  # the live summaries, oldest first
    backlog: list[str]  # retired originals not summarized yet
    pruned: list[str]  # pruned originals not summarized yet
    kept: dict[str, float]  # kept in L2 for their facts -> the facts' score
    released: list[str]  # working items released from `kept` (never kept again)
    retry_at: int
    level: str | None

    def to_item(self) -> ContextItem:
        """The archive record (its vector is the caller's: any embedding of its text)."""
        state = {k: v for k, v in asdict(self).items() if k != "number"}
        digest = hashlib.blake2b(json.dumps(state, sort_keys=True).encode(), digest_size=8).hexdigest()
        text = (f"ladder checkpoint {self.number}: {len(self.working)} working items, "
                f"{len(self.frontier)} live summaries, next seq {self.next_seq}")
        return ContextItem(id=f"ckpt_{self.number:08d}_{digest}", text=text, role="checkpoint", tier=Tier.L3,
                           metadata={"checkpoint": self.number, "state": state})

    @classmethod
    def latest(cls, store: ColdStore, keys: Sequence[str]) -> "Checkpoint | None":
        """The latest checkpoint stored under any of `keys` (a namespace's checkpoint key,
        then the key an archive written before namespaces used), or None.

        Only records the ladder wrote count (role ``checkpoint``): `put` cannot make one."""
        records = [r for key in keys for r in store.items(key)
                   if r.role == "checkpoint" and isinstance(r.metadata.get("state"), dict)]
        if not records:
            return None
        record = max(records, key=lambda r: (int(r.metadata["checkpoint"]), r.id))
        state: dict[str, Any] = dict(record.metadata["state"])
        state["working"] = [(origin, tier) for origin, tier in state["working"]]
        return cls(number=int(record.metadata["checkpoint"]), **state)
