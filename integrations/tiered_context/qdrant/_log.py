"""The commit log and the sequence allocator of a Qdrant store that many workers share.

Qdrant has no transaction and no compare-and-set on a counter; it does have, since 1.17,
``upsert(update_mode=insert_only)``: a point that exists keeps its content, so of several
writers of one point id the first one applied wins, and a read-back says who. That is
all this module builds on. Both structures live in a side collection ``<name>__log`` (one
shard), one point per *slot*, per tenant and kind:

- ``pos`` slots, the commit log: slot ``i`` (0-based) is log position ``i + 1`` and holds a
  full copy of one archived record (its payload, and its vectors as payload fields);
- ``seq`` slots, the allocator: slot ``s`` issued means seq ``s`` belongs to one worker.

**Claiming** (`Claims.claim`): a worker writes ``k`` slots ``h .. h+k-1`` in *one*
insert-only request, each carrying a fresh token, then reads them back; the slots with its
token are its own. ``h`` is a hint: never above the number of slots already written
(taken from slots it has seen). Lost slots were written by someone else, so the worker
jumps past them (``h + k`` plus how many slots it can see beyond) and claims again.

**Why the log has no holes.** A request that claims ``h .. h+k-1`` starts at or below the
end of the slots written so far, and is applied as one update of the single shard (the
write-ahead log replays it whole after a crash). So the written slots are always a prefix
``0 .. H-1``: no position is ever skipped and filled later.

**Why a reader never misses an acknowledged record.** A writer acknowledges only after
(1) every record of its batch owns a ``pos`` slot (read back) and (2) the records are in
the main collection. A reader advances over the *contiguous* run of slots it can read
(`read`), so even if it saw slot 12 before slot 11 (a batch applied in chunks, a lagging
replica), it stops at 11 and comes back: its position never passes a slot that is not
there yet, and a slot, once written, never changes. Seqs and log positions are separate:
a worker holding seq 10 may log after the one holding seq 11; the reader follows the log.

**Why no seq is issued twice.** A seq is issued only to the worker whose token its slot
holds, and a slot is written once. A worker that dies between claiming and writing, or
that wins only part of a range (it must be contiguous), leaves gaps, never duplicates.

A worker that dies after claiming ``pos`` slots but before writing the main collection
leaves records in the log only: readers still catch up with them (the log is the source
of truth), and the next worker that folds them into its statistics copies them into the
main collection (`QdrantColdStore` repair).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from tiered_context.qdrant._engine import CollectionSpec, PointData, Record
from tiered_context.qdrant._tenancy import Scope, point_id, scope

__all__ = ["LOG_SUFFIX", "Claims", "log_spec"]

LOG_SUFFIX = "__log"
POS, SEQ = "pos", "seq"
PAGE = 512  # slots per read request
_NO_VECTOR = np.zeros(1, dtype=np.float32)  # the log collection's vector is a placeholder
_MAX_ROUNDS = 64


def log_spec(name: str) -> CollectionSpec:
    """The side collection of `name`: one shard (a claim request is one atomic update),
    strong write ordering and majority reads on a cluster. Its one vector is a placeholder:
    a ``pos`` slot keeps the record's vectors in its payload (``vec``, ``spi``, ``spv``)."""
    return CollectionSpec(name=name + LOG_SUFFIX, kind="log", dim=1, sparse=False, keyword_fields=("kind", "id"),
                          integer_fields=("n",), shards=1, strong=True)


def slot_key(kind: str, n: int) -> str:
    return f"{kind}:{n}"


class Claims:
    """Insert-only slot claims in the log collection `coll` (see the module docstring)."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self._hints: dict[tuple[str, str], int] = {}  # (tenant, kind) -> slots known to be written

    def _where(self, tenant: str, kind: str, n: int) -> Scope:
        return scope(tenant, equals=[("kind", kind)], above=[("n", n - 1)])

    def known(self, tenant: str, kind: str) -> int:
        """Slots known to be written (every slot below is): from this worker's claims and reads."""
        return self._hints.get((tenant, kind), 0)

    def written(self, tenant: str, kind: str, at_least: int = 0, *, known: bool = False) -> int:
        """How many `kind` slots of `tenant` are written: ``at_least`` (or, with `known`, the
        slots this worker knows are written) plus a count of the visible ones from there.

        Why a reader can trust it: say it returns the position ``P`` the reader reached,
        having read every slot below ``P``. If the bound ``b <= P``, the count includes the
        ``P - b`` slots in ``[b, P)``, so no slot at ``P`` or beyond is visible; if ``b > P``
        it returns at least ``b > P``. So equal means nothing was logged since."""
        if known:
            at_least = max(at_least, self.known(tenant, kind))
        return at_least + self.coll.count(self._where(tenant, kind, at_least))

    def claim(self, tenant: str, kind: str, entries: Sequence[dict[str, Any] | None], *, contiguous: bool,
              floor: int = 0) -> list[int]:
        """Slot numbers for `entries` (payloads, in order), each slot written with this
        worker's entry. `contiguous`: all in one run (a seq range); a partial win is then
        given up (gaps). An entry of None claims a bare slot (the allocator's)."""
        if (tenant, kind) not in self._hints:
            self._hints[(tenant, kind)] = self.written(tenant, kind)  # once per tenant: near the end
        hint = max(self._hints[(tenant, kind)], floor)
        won: dict[int, int] = {}
        todo = list(range(len(entries)))
        for _ in range(_MAX_ROUNDS):
            if not todo:
                break
            token = uuid.uuid4().hex
            slots = list(range(hint, hint + len(todo)))
            points = [self._point(tenant, kind, n, token, entries[i]) for i, n in zip(todo, slots)]
            self.coll.upsert(points, insert_only=True)
            mine = {int(r.payload["n"]) for r in self._slots(tenant, kind, slots, payload=["n", "token"])
                    if r.payload.get("token") == token}
            if contiguous and len(mine) != len(slots):
                mine = set()  # a seq range must be one run: the slots won here are gaps
            won.update((i, n) for i, n in zip(todo, slots) if n in mine)
            todo = [i for i, n in zip(todo, slots) if n not in mine]
            hint += len(slots)  # every slot of the request is written now, by someone
            if todo:
                hint = self.written(tenant, kind, hint)  # jump over what others wrote meanwhile
        else:
            from tiered_context.errors import StoreError

            raise StoreError(f"could not claim {kind} slots of tenant {tenant!r:.80} in {_MAX_ROUNDS} rounds "
                             "(too many writers on one tenant at once); retry")
        self._hints[(tenant, kind)] = max(self._hints.get((tenant, kind), 0), hint)
        return [won[i] for i in range(len(entries))]

    def read(self, tenant: str, kind: str, start: int, *, payload: bool | list[str] = True,
             limit: int | None = None) -> list[Record]:
        """The contiguous run of written slots from `start` (sorted), at most `limit`;
        `payload`: which fields to read (a list must hold ``n``)."""
        out: list[Record] = []
        while limit is None or len(out) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(out))
            numbers = list(range(start + len(out), start + len(out) + want))
            found = {int(r.payload["n"]): r for r in self._slots(tenant, kind, numbers, payload=payload)}
            run = 0
            while run < want and numbers[run] in found:
                out.append(found[numbers[run]])
                run += 1
            if run < want:
                break
        if out:
            self._hints[(tenant, kind)] = max(self._hints.get((tenant, kind), 0), start + len(out))
        return out

    def mark(self, tenant: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Set `payload` on the `pos` slots holding records `ids` (a deletion's tombstone)."""
        for item_id in dict.fromkeys(ids):
            self.coll.set_payload(scope(tenant, equals=[("kind", POS), ("id", item_id)]), payload)

    def forget(self, tenant: str) -> None:
        self.coll.delete(scope(tenant))
        for key in [k for k in self._hints if k[0] == tenant]:
            del self._hints[key]

    # -- internals -------------------------------------------------------------------------
    def _slots(self, tenant: str, kind: str, numbers: list[int], *, payload: Any = True) -> list[Record]:
        if not numbers:
            return []
        where = scope(tenant, ids=[slot_key(kind, n) for n in numbers])
        records, _ = self.coll.scroll(where, limit=len(numbers), with_payload=payload)
        return records

    @staticmethod
    def _point(tenant: str, kind: str, n: int, token: str, entry: dict[str, Any] | None) -> PointData:
        base = {"tenant": tenant, "kind": kind, "n": n, "token": token}
        return PointData(point_id(tenant, slot_key(kind, n)), _NO_VECTOR, None, {**(entry or {}), **base})
