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
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tiered_context.core._budget import LadderLevel
from tiered_context.core._embed import normalize
from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._store import ColdStore

__all__ = ["Checkpoint", "Checkpoints"]

log = logging.getLogger("tiered_context")


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


class Checkpoints:
    """The ladder's side of checkpoints (a mixin of `core.compaction.Ladder`, like
    `core.summaries.Summaries`): archive its state, and restore the latest on open."""

    def checkpoint(self) -> None:
        """Archive the ladder's state if a compaction step or prune changed it since the last
        checkpoint. Called by `flush` once the ladder has settled (so by `close`).

        Originals put since then need no checkpoint: `resume` leaves them to a replay
        through the ladder, which takes the same decisions as long as none was taken live.
        """
        with self.lock:
            number, changes, retry_at = self._saved
            if (changes, retry_at) == (self._changes, self._retry_at) or self._pending is not None:
                return  # unchanged, or mid-step (a later flush writes it)
            record = Checkpoint(
                number=number + 1, next_seq=self._next_seq,
                working=[(origin, item.tier.value) for origin, item in self._working.items()],
                frontier=[s.id for s in self._frontier], backlog=[i.id for i in self._backlog],
                pruned=[i.origin_ids[0] for i in self._pruned], kept=dict(self._kept),
                released=sorted(self._released & self._working.keys()),  # only these can matter again
                retry_at=self._retry_at, level=self._level.value if self._level is not None else None,
            ).to_item()
            self.config.store.add(self._checkpoint_keys[0], [record], normalize(self.config.embedder.embed([record.text])))
            self._saved = (number + 1, self._changes, self._retry_at)

    def _restore(self, originals: Mapping[str, ContextItem]) -> int:
        """Restore the latest checkpoint; returns the `next_seq` it covers (0 without one,
        or when it names items the archive lacks: the caller then replays all history).

        L2 forms are not archived: they are made again from their originals in one batch.
        """
        try:
            saved = Checkpoint.latest(self.config.store, self._checkpoint_keys)
        except (KeyError, TypeError, ValueError) as exc:  # damaged, or written by a newer version
            log.warning("unreadable checkpoint (%r); replaying the history instead", exc)
            return 0
        if saved is None:
            return 0
        self._saved = (saved.number, -1, -1)  # one that cannot be restored is replaced at the next flush
        frontier = self._stored_summaries(saved.frontier)
        named = [o for o, _ in saved.working] + saved.backlog + saved.pruned
        if len(frontier) != len(saved.frontier) or any(o not in originals for o in named):
            log.warning("checkpoint %d names items the archive lacks; replaying the history instead", saved.number)
            return 0
        compress = [originals[o] for o, tier in saved.working if tier == Tier.L2.value]
        try:
            forms = self.config.compressor.compress(compress, self.config.budget.compression_ratio) if compress else []
        except Exception as exc:
            log.warning("compressed forms could not be made again (%s); %d items resume verbatim", exc, len(compress))
            forms = []
        self._working.clear()
        self._working.update((o, originals[o]) for o, _ in saved.working)
        self._working.update((f.origin_ids[0], f) for f in forms)
        self._frontier = frontier
        self._summarized = {o for s in frontier for o in s.source_ids}
        self._backlog = [originals[o] for o in saved.backlog]
        self._pruned = [originals[o] for o in saved.pruned]
        self._kept, self._released = dict(saved.kept), set(saved.released)
        self._retry_at = saved.retry_at
        self._level = LadderLevel(saved.level) if saved.level is not None else None
        self._saved = (saved.number, self._changes, self._retry_at)
        return saved.next_seq
