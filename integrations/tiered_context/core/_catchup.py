"""Cross-worker catch-up: a `TieredContext` on a store many processes write.

A `SharedColdStore` keeps a commit log per tenant. A memory on one remembers how far it
has read that log (`_log_position`, read with its watermark before the items when it
opens) and the originals it holds (`_known`); before it puts or assembles, `_catch_up`
admits what other workers acknowledged since, in sequence order. A store used by one
process needs none of this: every write went through the memory itself.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from tiered_context.core._items import ContextItem
from tiered_context.errors import InputError

__all__ = ["CatchUp", "SharedColdStore"]

log = logging.getLogger("tiered_context")


@runtime_checkable
class SharedColdStore(Protocol):
    """A `ColdStore` that many worker processes write at once (Postgres, a Qdrant server).

    `next_seqs(tenant, n)` allocates sequence numbers no other worker issues;
    `watermark(tenant)` is the length of the tenant's commit log (records acknowledged,
    originals and derived); `since(tenant, position)` returns the records after
    `position`, in commit order. A memory on such a store catches up before it puts or
    assembles, so every worker sees every acknowledged write.
    """

    def next_seqs(self, tenant: str, n: int) -> range: ...

    def watermark(self, tenant: str) -> int: ...

    def since(self, tenant: str, watermark: int) -> list[ContextItem]: ...


def _sound(item: ContextItem) -> bool:
    """False for a record an older release archived without checking it at the door (it
    stays archived, `assemble` reports it in `skipped`; the ladder never batches it)."""
    try:
        item.checked()
    except (InputError, TypeError, ValueError) as exc:
        log.warning("archived item %r is not valid input (%s); it stays archived but out of the working set",
                    item.id, " ".join(str(exc).split())[:200])
        return False
    return True


class CatchUp:
    """What `TieredContext` does on a `SharedColdStore` (a mixin of the facade: it reads
    the facade's `store`, `_lock`, `_namespace`, `_ladder` and sequence counters)."""

    def _catch_up(self) -> None:
        """Admit the originals other workers acknowledged since this memory last looked (a
        store shared across processes: `SharedColdStore`). One cheap read when nothing changed."""
        if not self._shared:
            return  # an in-process or single-process store: every write went through this object
        key = self._namespace.key
        with self._lock:
            if self.store.watermark(key) == self._log_position:
                return
            records = self.store.since(key, self._log_position)
            self._log_position += len(records)
            fresh = sorted((i for i in records if not i.is_derived and i.id not in self._known), key=lambda i: i.seq)
            self._known.update(i.id for i in fresh)
            fresh = [i for i in fresh if _sound(i)]
            if fresh:
                self._next_seq = max(self._next_seq, fresh[-1].seq + 1)
                self._visible_seq = max(self._visible_seq, fresh[-1].seq + 1)
                self._ladder.admit(fresh)
