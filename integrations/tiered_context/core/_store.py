"""The `ColdStore` seam (L3) and `LocalColdStore`, its in-process implementation.

L3 holds every original ever `put` (and every derived item), so compression and
pruning can only cost tokens, never data. Every read path takes a mandatory `tenant`
(the session scope); nothing can be read across tenants through this interface.

`LocalColdStore` keeps items, a BM25 index and a unit-vector matrix per tenant in
memory. Given a `path`, it also keeps ``archive.jsonl``, a journal of one JSON line per
item, and replays it on open. The journal's rules:

- **Acknowledged means on disk.** `add` returns once its lines are written and fsynced.
  Concurrent writers do not wait for each other's fsync: theirs run together and the
  filesystem commits them as one (group commit; see `_Journal`).
- **A failed write leaves nothing behind.** On a write or fsync error (a full disk) the
  file is cut back to where it ended, the in-memory index is not touched and `add`
  raises `StoreError`: the record never shows up later, on reopen or otherwise.
- **Every line carries a checksum** (crc32 of the line's JSON body). On open, a torn
  tail (a crash mid-write: never acknowledged) is cut, including a batch (one `add`)
  whose last line never made it. A damaged line with valid records after it is *not*
  cut: it is skipped, copied to ``archive.jsonl.damaged`` and reported (a warning and
  `LocalColdStore.damaged`), and every record after it is kept; so is a whole line
  this release cannot read. Lines written by earlier releases (no checksum) still load.
- **One owner.** The journal is locked (``flock``) while a store has it open; a second
  store on the same path, in this process or another, is refused with `StoreError`.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import fcntl
import json
import logging
import os
import re
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.core._durable import _fsync_dir
from tiered_context.core._items import ContextItem, Tier
from tiered_context.core._lexical import BM25Index
from tiered_context.errors import DuplicateItemError, StoreError

__all__ = ["ColdStore", "DamagedRecord", "Hit", "LocalColdStore", "SearchResult", "SignalStats", "decode_record",
           "encode_record", "search_text"]

log = logging.getLogger("tiered_context")


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result with its raw relevance parts (fused later by the `Scorer`)."""

    item: ContextItem
    bm25: float
    dense: float


@dataclass(frozen=True, slots=True)
class SignalStats:
    """Mean and standard deviation of each raw signal over the tenant's whole collection
    for one query: what turns raw BM25 and cosine scores into comparable z-scores."""

    bm25_mean: float = 0.0
    bm25_std: float = 1.0
    dense_mean: float = 0.0
    dense_std: float = 1.0


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Candidates for one query, and the statistics to normalise their scores."""

    hits: list[Hit]
    stats: SignalStats


@runtime_checkable
class ColdStore(Protocol):
    """L3: archive of originals and derived items, searched by text and vector."""

    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None: ...

    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]: ...

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]: ...

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult: ...

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]: ...

    def items(self, tenant: str) -> list[ContextItem]: ...

    def count(self, tenant: str) -> int: ...


class _Partition:
    """One tenant's items, BM25 index and vectors."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.items: list[ContextItem] = []
        self.index: dict[str, int] = {}
        self.by_seq: dict[int, int] = {}
        self.bm25 = BM25Index()
        self._chunks: list[np.ndarray] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    @property
    def matrix(self) -> np.ndarray:
        if self._chunks:
            self._matrix = np.concatenate([self._matrix, *self._chunks])
            self._chunks.clear()
        return self._matrix

    def add(self, item: ContextItem, vector: np.ndarray) -> None:
        self.index[item.id] = len(self.items)
        if not item.is_derived and item.seq >= 0:
            self.by_seq[item.seq] = len(self.items)
        self.items.append(item)
        self.bm25.add(search_text(item))
        self._chunks.append(vector[None, :])


def search_text(item: ContextItem) -> str:
    """The text BM25 indexes for an item: its speaker (or name), then its text."""
    speaker = item.metadata.get("speaker") or item.metadata.get("name") or ""
    return f"{speaker} {item.text}" if speaker else item.text


@dataclass(frozen=True, slots=True)
class DamagedRecord:
    """A journal line that failed its checksum, or that this release cannot read.

    ``cut=False``: whole lines follow it (or it is whole itself), so it is left in place,
    skipped on every open and copied to ``archive.jsonl.damaged``; every record after it
    is kept. ``cut=True``: it was at the tail, after the last whole line, and was cut
    (copied aside first)."""

    file: Path
    line: int  # 1-based line number in the journal
    offset: int  # byte offset of the line
    reason: str
    cut: bool = False


class LocalColdStore:
    """In-process L3 store: exact hybrid search, optional JSONL journal for durability.

    >>> store = LocalColdStore()                 # memory only
    >>> store = LocalColdStore(path="./memdir")  # journaled, replayed on open

    ``store.damaged`` lists the journal lines found damaged on open (empty if none).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, dim: int | None = None) -> None:
        self._parts: dict[str, _Partition] = {}
        self._dim = dim
        self._lock = threading.RLock()
        self._journal: _Journal | None = None
        self._inflight: dict[tuple[str, str], tuple[ContextItem, int]] = {}  # written, not yet acknowledged
        self.damaged: list[DamagedRecord] = []
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the archive at {self.path}: {exc}; pass a writable path=") from exc
            self._journal = _Journal(self.path / "archive.jsonl")  # locked before it is read
            try:
                self._replay()
            except BaseException:
                self._journal.close()
                raise

    # -- writes ------------------------------------------------------------------
    def add(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        """Archive `items` (with their unit vectors) for `tenant`, durably if journaled.

        Re-adding an identical item is a no-op; the same id with other content raises
        `DuplicateItemError`. A failed write (a full disk) raises `StoreError` and keeps
        nothing: not in memory, not in the journal.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(items) != len(vectors):
            raise StoreError(f"{len(items)} items but {len(vectors)} vectors; pass one vector per item")
        with self._lock:
            part = self._partition(tenant, vectors.shape[1] if vectors.ndim == 2 else None)
            if vectors.ndim != 2 or vectors.shape[1] != part.dim:
                raise StoreError(
                    f"vectors of shape {vectors.shape} do not match this tenant's dim {part.dim}; "
                    "use the same embedder for every item of a store"
                )
            fresh: list[tuple[ContextItem, np.ndarray]] = []
            batch: dict[str, ContextItem] = {}
            for item, vec in zip(items, vectors):
                old = part.items[part.index[item.id]] if item.id in part.index else batch.get(item.id)
                if old is not None:
                    if old.text == item.text and old.role == item.role:
                        continue  # the same item again: idempotent
                    raise DuplicateItemError(
                        f"item id {item.id!r} is already stored with different content; "
                        "give the new item its own id (or omit id= to derive one from content)"
                    )
                pending = self._inflight.get((tenant, item.id))
                if pending is not None and (pending[0].text != item.text or pending[0].role != item.role):
                    raise DuplicateItemError(
                        f"item id {item.id!r} is being stored with different content by another writer; "
                        "give the new item its own id (or omit id= to derive one from content)"
                    )
                batch[item.id] = item
                fresh.append((item, vec))
            if not fresh:
                return
            if self._journal is None:
                for item, vec in fresh:
                    part.add(item, vec)
                return
            n = len(fresh)
            data = b"".join(_encode_line(tenant, i, v, (k, n) if n > 1 else None) for k, (i, v) in enumerate(fresh))
            for item, _ in fresh:  # an identical item in flight elsewhere is written again (replay keeps one)
                _, count = self._inflight.get((tenant, item.id), (item, 0))
                self._inflight[(tenant, item.id)] = (item, count + 1)

        def finish(ok: bool) -> None:  # once the lines are acknowledged (in journal order) or failed
            with self._lock:
                for item, vec in fresh:
                    kept, count = self._inflight.pop((tenant, item.id))
                    if count > 1:
                        self._inflight[(tenant, item.id)] = (kept, count - 1)
                    if ok and item.id not in part.index:
                        part.add(item, vec)

        self._journal.commit(data, finish)

    async def aadd(self, tenant: str, items: Sequence[ContextItem], vectors: np.ndarray) -> None:
        await asyncio.to_thread(self.add, tenant, items, vectors)

    # -- reads -------------------------------------------------------------------
    def get(self, tenant: str, ids: Iterable[str]) -> list[ContextItem]:
        part = self._parts.get(tenant)
        if part is None:
            return []
        return [part.items[part.index[i]] for i in ids if i in part.index]

    def get_by_seq(self, tenant: str, seqs: Iterable[int]) -> list[ContextItem]:
        part = self._parts.get(tenant)
        if part is None:
            return []
        return [part.items[part.by_seq[s]] for s in seqs if s in part.by_seq]

    def items(self, tenant: str) -> list[ContextItem]:
        part = self._parts.get(tenant)
        return list(part.items) if part else []

    def count(self, tenant: str, *, originals_only: bool = True) -> int:
        part = self._parts.get(tenant)
        if part is None:
            return 0
        return len(part.by_seq) if originals_only else len(part.items)

    def search(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        """Union of the top `limit` by BM25 and the top `limit` by cosine, with both
        parts, and the collection-wide statistics of each signal for this query."""
        part = self._parts.get(tenant)
        if part is None or not part.items:
            return SearchResult([], SignalStats())
        with self._lock:
            bm25 = part.bm25.scores(query)
            dense = part.matrix @ np.asarray(vector, dtype=np.float32).reshape(-1)
        n = len(bm25)
        k = min(limit, n)
        top = set(np.argpartition(-dense, k - 1)[:k].tolist()) if k else set()
        positive = np.flatnonzero(bm25 > 0)
        if len(positive) > k:
            positive = positive[np.argpartition(-bm25[positive], k - 1)[:k]]
        top.update(positive.tolist())
        stats = SignalStats(float(bm25.mean()), float(bm25.std()) or 1.0, float(dense.mean()), float(dense.std()) or 1.0)
        return SearchResult([Hit(part.items[i], float(bm25[i]), float(dense[i])) for i in sorted(top)], stats)

    def score(self, tenant: str, query: str, vector: np.ndarray, ids: Iterable[str]) -> dict[str, tuple[float, float]]:
        """(bm25, cosine) for each of `ids` stored under `tenant`."""
        part = self._parts.get(tenant)
        if part is None:
            return {}
        rows = [(i, part.index[i]) for i in ids if i in part.index]
        if not rows:
            return {}
        with self._lock:
            bm25 = part.bm25.scores(query)
            idx = np.asarray([r for _, r in rows])
            dense = part.matrix[idx] @ np.asarray(vector, dtype=np.float32).reshape(-1)
        return {i: (float(bm25[r]), float(d)) for (i, r), d in zip(rows, dense)}

    async def asearch(self, tenant: str, query: str, vector: np.ndarray, *, limit: int) -> SearchResult:
        return self.search(tenant, query, vector, limit=limit)  # in-memory: no I/O to await

    def close(self) -> None:
        """Wait for writes in flight, then release the journal (and its lock)."""
        if self._journal is not None:
            self._journal.close()

    def __enter__(self) -> LocalColdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "memory"
        sizes = {t: len(p.items) for t, p in self._parts.items()}
        return f"LocalColdStore({where}, items={sizes})"

    # -- internals ---------------------------------------------------------------
    def _partition(self, tenant: str, dim: int | None) -> _Partition:
        if not tenant:
            raise StoreError("tenant must be a non-empty string (the session / user scope)")
        part = self._parts.get(tenant)
        if part is None:
            if dim is None:
                raise StoreError("vectors must be a 2-d array (items x dim)")
            if self._dim is not None and dim != self._dim:
                raise StoreError(f"vectors have dim {dim} but this store holds dim {self._dim}; use the same embedder")
            self._dim = dim
            part = self._parts[tenant] = _Partition(dim)
        return part

    def _replay(self) -> None:
        """Load the journal: every valid record, damaged lines skipped and reported,
        the torn tail cut (see `_scan`)."""
        journal = self._journal
        assert journal is not None
        scan = _scan(journal.file)
        for tenant, item, vec in scan.records:
            part = self._partition(tenant, len(vec))
            if item.id not in part.index:
                part.add(item, vec)
        self.damaged = scan.damaged + scan.tail
        if self.damaged:
            _set_aside(journal.file, self.damaged, scan.raw)
        for bad in scan.damaged:
            log.warning(
                "%s line %d is damaged (%s): skipped, and every record after it is kept. A copy is in %s.damaged; "
                "the line stays in place and is skipped on each open (to repair it, edit or delete that line "
                "while no store has the archive open)", bad.file, bad.line, bad.reason, bad.file.name)
        for bad in scan.tail:
            log.warning("%s line %d at the tail is damaged (%s): cut, with a copy in %s.damaged",
                        bad.file, bad.line, bad.reason, bad.file.name)
        if scan.unfinished:
            log.warning("%s ended in a batch of %d record(s) cut short by a crash (never acknowledged): cut",
                        journal.file, scan.unfinished)
        journal.cut(scan.size)


class _Journal:
    """``archive.jsonl`` opened for appending: one owner, concurrent durable appends.

    How an append becomes durable, and why it is fast with many writers:

    - Each `commit` writes its bytes with one ``os.write`` on a raw descriptor (no Python
      buffer, so a failed write cannot leave bytes behind for a later flush), under a
      lock, so that lines never interleave and each append knows where it begins.
    - It then calls fsync *outside* the lock. Concurrent fsyncs of one file share the
      filesystem's journal commit and disk flush (on ext4 here, 8 threads appending and
      fsyncing get tens of times the rate of one): that is the group commit, with no waiting
      on our side for a batch to fill.
    - Each fsync goes through a descriptor of its own, opened before the write: Linux
      reports a failed write-back once per open file, so a shared descriptor could hand
      one writer's error to another and let the first believe its bytes were safe.
    - Appends are acknowledged in file order. A failed one cuts the file back to where
      it began, so it fails every append written after it too, and nothing acknowledged
      is ever cut.
    """

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            self._fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the archive {file}: {exc.strerror or exc}; pass a writable path=") from exc
        try:  # flock, not lockf: closing the other descriptors of the file must not release it
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            raise StoreError(
                f"the archive {file} is already open in another LocalColdStore (this process or another); "
                "close that one first, share one store object between sessions, or give each process its own path="
            ) from exc
        self._closer = weakref.finalize(self, os.close, self._fd)  # a store dropped unclosed releases the lock
        _fsync_dir(file.parent)  # the file itself survives a power cut
        self._end = os.fstat(self._fd).st_size  # where the last append ends
        self._cv = threading.Condition()
        self._flight: list[_Ticket] = []  # written, not yet acknowledged or failed, in file order
        self._closed = False
        self._broken: str | None = None

    def cut(self, size: int) -> None:
        """Truncate the file to `size` bytes (a torn tail found on open)."""
        if size < self._end:
            try:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError as exc:
                raise StoreError(f"cannot cut the torn tail of {self.file}: {exc.strerror or exc}; "
                                 "check the disk and its permissions") from exc
            self._end = size

    def commit(self, data: bytes, finish: Callable[[bool], None]) -> None:
        """Append `data` durably; then `finish(True)`, called in file order. On failure:
        `finish(False)`, nothing of `data` left in the file, and `StoreError`."""
        ticket = _Ticket(finish)
        sync_fd, interrupted = -1, None
        try:
            sync_fd = os.open(self.file, os.O_WRONLY)
            with self._cv:
                if self._broken or self._closed:
                    ticket.error = StoreError(self._broken or f"the archive {self.file} is closed; open a new store")
                else:
                    ticket.start = self._end
                    self._write(data)
                    self._end += len(data)
                    self._flight.append(ticket)
            if ticket.error is None:
                os.fsync(sync_fd)
        except BaseException as exc:  # noqa: BLE001 - a full disk (OSError), or an interrupt: it fails either way
            with self._cv:
                self._fail(ticket, exc)
            if not isinstance(exc, OSError):
                interrupted = exc
        finally:
            if sync_fd >= 0:
                os.close(sync_fd)
        with self._cv:
            while ticket.error is None and self._flight[0] is not ticket:
                self._cv.wait()  # an earlier append is still syncing: it may yet fail and cut this one
            if ticket in self._flight:
                self._flight.remove(ticket)
            self._cv.notify_all()
            ticket.finish(ticket.error is None)
        if interrupted is not None:
            raise interrupted
        if ticket.error is not None:
            raise ticket.error

    def close(self) -> None:
        """Wait for the appends in flight, then close (which releases the lock)."""
        with self._cv:
            self._closed = True
            while self._flight:
                self._cv.wait()
        self._closer()

    def _write(self, data: bytes) -> None:
        """Append all of `data`; on an error cut back what part of it was written, and raise."""
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except BaseException:
            self._truncate(self._end)
            raise

    def _fail(self, ticket: _Ticket, exc: BaseException) -> None:
        """`ticket` failed: cut the file back to where it began (if it got that far);
        it and every append written after it fail. Called under the lock."""
        if ticket.error is not None:
            return  # already failed with an earlier append, which cut its bytes
        doomed = [ticket]
        if ticket in self._flight:
            doomed = self._flight[self._flight.index(ticket):]
            self._truncate(ticket.start)
        for t in doomed:
            reason = getattr(exc, "strerror", None) or repr(exc)
            t.error = StoreError(f"cannot append to the archive {self.file}: {reason}; free disk space "
                                 "(or fix the disk) and retry: nothing of this write was kept")
            t.error.__cause__ = exc
        self._cv.notify_all()

    def _truncate(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            self._broken = (f"the archive {self.file} could not be cut back after a failed write ({exc}), "
                            "so this store takes no more writes; check the disk, then close the store and "
                            "open it again (records of the failed write may then reappear, with their own seqs)")
            return
        self._end = size
        try:
            os.fsync(self._fd)  # best effort: the next append's fsync makes the cut durable anyway
        except OSError:
            pass


@dataclass(eq=False, slots=True)
class _Ticket:
    """One `commit` on its way: where its bytes begin, and how it ended."""

    finish: Callable[[bool], None]
    start: int = 0
    error: BaseException | None = None


# -- the journal's lines ------------------------------------------------------------
# One item per line: the JSON of ``{"tenant", "item", "vec"}`` (+ ``"part": [k, n]`` for
# line k of an `add` of n > 1 items), then ``"crc"``, the crc32 of that JSON as written
# (the bytes before the crc field, closed with "}"). Hashing the bytes as written, not a
# re-serialisation, makes the check exact whatever the metadata holds.
_CRC_TAIL = re.compile(rb', "crc": "([0-9a-f]{8})"\}\n\Z')


def _encode_line(tenant: str, item: ContextItem, vector: np.ndarray, part: tuple[int, int] | None) -> bytes:
    record = {"tenant": tenant, **encode_record(item, vector)}
    if part is not None:
        record["part"] = list(part)
    body = json.dumps(record, default=str).encode("ascii")  # ASCII: escapes, never a raw newline
    return b'%s, "crc": "%08x"}\n' % (body[:-1], zlib.crc32(body))


def _check_line(raw: bytes) -> dict[str, Any]:
    """The record on one line if the line is whole: its checksum matches (or, written by
    an earlier release, it has none and parses as a JSON object); else `ValueError`."""
    match = _CRC_TAIL.search(raw)
    if match is None:
        record = json.loads(raw)  # an earlier release wrote no checksum
        if not isinstance(record, dict) or "crc" in record:
            raise ValueError("no valid checksum")
        return record
    body = raw[:match.start()] + b"}"
    if zlib.crc32(body) != int(match.group(1), 16):
        raise ValueError("checksum mismatch")
    return json.loads(body)


def _part(record: Mapping[str, Any]) -> tuple[int, int]:
    """(k, n): the record is line k of an `add` of n lines ((0, 1): a line of its own)."""
    part = record.get("part")
    if isinstance(part, list) and len(part) == 2 and all(type(x) is int for x in part) and 0 <= part[0] < part[1]:
        return part[0], part[1]
    return 0, 1


def _read_record(record: Mapping[str, Any], dim: int | None) -> tuple[str, ContextItem, np.ndarray]:
    """The tenant, item and vector of a whole record; `ValueError` if this release cannot
    read it as one (or its vector has another size than the records before it)."""
    tenant = record.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("no tenant")
    try:
        item, vec = decode_record(record)
    except Exception as exc:  # whatever it is, it costs this record only
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if not len(vec) or (dim is not None and len(vec) != dim):
        raise ValueError(f"a {len(vec)}-d vector among {dim}-d ones")
    return tenant, item, vec


@dataclass
class _Scan:
    """What `_scan` found in a journal."""

    records: list[tuple[str, ContextItem, np.ndarray]] = field(default_factory=list)
    damaged: list[DamagedRecord] = field(default_factory=list)  # kept in place, skipped
    tail: list[DamagedRecord] = field(default_factory=list)  # damaged lines at the end: cut
    raw: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes of each damaged line
    unfinished: int = 0  # records of a batch cut short at the end: cut
    size: int = 0  # the journal's length once the tail is cut


def _scan(file: Path) -> _Scan:
    """Read the journal, deciding what to keep, skip and cut.

    A line is *whole* if its checksum matches. A line that is not whole *before* a whole
    one was written completely and acknowledged, then damaged: it is skipped and
    reported, and cutting there would lose every record after it. What follows the last
    whole line is the tail, cut: a torn line, lines that are not whole, and the lines of
    an `add` whose last line is missing (a crash mid-write; never acknowledged). A whole
    line this release cannot read as a record is skipped and reported, never cut.
    """
    scan = _Scan()
    held: list[tuple[str, ContextItem, np.ndarray]] = []  # the open batch's records
    batch_open, held_at, held_k, held_n = False, 0, 0, 0  # and its first offset, last line, size
    bad: list[DamagedRecord] = []  # lines that are not whole, since the last whole one
    dim = None
    offset = last_end = 0
    with open(file, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break  # torn: the last write never finished
            try:
                record = _check_line(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                bad.append(DamagedRecord(file, number, offset, str(exc)[:200]))
                scan.raw[offset] = raw
                offset += len(raw)
                continue
            k, n = _part(record)
            if not (batch_open and n == held_n and k > held_k):  # not the rest of the open batch: a new one
                scan.records += held  # a later line exists, so that batch's write went through
                held, held_n = [], n
                held_at = offset if k == 0 else (bad[0].offset if bad else offset)
            batch_open, held_k = k < n - 1, k
            scan.damaged += bad
            bad = []
            try:
                tenant, item, vec = _read_record(record, dim)
            except ValueError as exc:
                scan.damaged.append(DamagedRecord(file, number, offset, f"unreadable record ({exc})"[:200]))
                scan.raw[offset] = raw
            else:
                dim = len(vec)
                held.append((tenant, item, vec))
            if not batch_open:
                scan.records += held
                held = []
            offset += len(raw)
            last_end = offset
    scan.size = last_end
    if batch_open:  # its last line is missing: never acknowledged
        scan.unfinished, scan.size = len(held), held_at
        bad = [d for d in scan.damaged if d.offset >= held_at] + bad
        scan.damaged = [d for d in scan.damaged if d.offset < held_at]
    scan.tail = [DamagedRecord(d.file, d.line, d.offset, d.reason, cut=True) for d in bad]
    return scan


def _set_aside(file: Path, damaged: list[DamagedRecord], raw: dict[int, bytes]) -> None:
    """Append each damaged line (once: a kept line is found again on every open) to
    ``<journal>.damaged`` as ``{"line", "offset", "reason", "cut", "raw"}``, where
    ``raw`` is the line's bytes as latin-1 (``raw.encode("latin-1")`` gives them back)."""
    aside = file.with_name(file.name + ".damaged")
    seen: set[tuple[int, str]] = set()
    try:
        with open(aside, "rb") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    seen.add((entry["offset"], entry["raw"]))
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot read %s (%s); copying the damaged lines again", aside, exc)
    lines = []
    for d in damaged:
        text = raw[d.offset].decode("latin-1")
        if (d.offset, text) not in seen:
            lines.append(json.dumps({"line": d.line, "offset": d.offset, "reason": d.reason, "cut": d.cut,
                                     "raw": text}) + "\n")
    if not lines:
        return
    try:
        with open(aside, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        log.warning("cannot copy %d damaged line(s) of %s to %s (%s); the kept ones are still in place",
                    len(lines), file, aside, exc)


def encode_record(item: ContextItem, vector: np.ndarray) -> dict[str, Any]:
    """One archive record as JSON-ready data: ``{"item": {...}, "vec": "<base64 float32>"}``.

    The format of the local journal and of any store that keeps records as documents
    (e.g. `tiered_context.langchain.GraphStoreColdStore`); `decode_record` reverses it.
    """
    return {
        "item": {
            "id": item.id, "text": item.text, "role": item.role, "timestamp": item.timestamp,
            "tokens": item.tokens, "tier": item.tier.value, "importance": item.importance,
            "pinned": item.pinned, "metadata": dict(item.metadata), "source_ids": list(item.source_ids),
            "seq": item.seq,
        },
        "vec": base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii"),
    }


def decode_record(record: Mapping[str, Any]) -> tuple[ContextItem, np.ndarray]:
    """The item and vector of a record written by `encode_record`."""
    data = record["item"]
    item = ContextItem(**{**data, "tier": Tier(data["tier"]), "source_ids": tuple(data["source_ids"])})
    return item, np.frombuffer(base64.b64decode(record["vec"]), dtype=np.float32)
