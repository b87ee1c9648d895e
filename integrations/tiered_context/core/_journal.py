"""The journal of a `LocalColdStore` on disk: ``archive.jsonl``, one checksummed JSON
line per record (the rules are in `core._store`'s docstring), and the record format
(`encode_record` / `decode_record`) that stores keeping records as documents share.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered_context.core._durable import fsync_dir
from tiered_context.core._items import ContextItem, Tier
from tiered_context.errors import StoreError

__all__ = ["DamagedRecord", "decode_record", "encode_record"]

log = logging.getLogger("tiered_context")


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


class _Journal:
    """``archive.jsonl`` opened for appending: one owner, concurrent durable appends.

    How an append becomes durable, and why it is fast with many writers:

    - Each `commit` writes its bytes with one ``os.write`` on a raw descriptor (no Python
      buffer, so a failed write cannot leave bytes behind for a later flush), under a
      lock, so that lines never interleave and each append knows where it begins.
    - One fsync runs at a time, outside the lock, and covers every byte written before it
      started. Appends written while it runs wait for it, then one of them syncs them all:
      that is the group commit. (Each writer fsyncing on its own lets the filesystem share
      only the fsyncs that happen to overlap; with the GIL between them they rarely did, and
      8 writers were held to one fsync's rate, ~1,100 appends/s here.)
    - An fsync goes through a descriptor opened before the oldest append it covers was
      written (a duplicate of that append's own): Linux reports a failed write-back once per
      open file, and only to descriptors open when it happened, so a descriptor opened
      later, or shared with other writers, could let an append believe its bytes were safe.
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
        fsync_dir(file.parent)  # the file itself survives a power cut
        self._end = os.fstat(self._fd).st_size  # where the last append ends
        self._synced = self._end  # every byte below this is on disk
        self._syncing = False  # an fsync is running (one at a time)
        self._cuts = 0  # failed appends cut back so far (an fsync across a cut proves nothing)
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
            self._end = self._synced = size

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
                    ticket.start, ticket.fd = self._end, sync_fd
                    self._write(data)
                    self._end += len(data)
                    ticket.end = self._end
                    self._flight.append(ticket)
            if ticket.error is None:
                self._sync(ticket)
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

    def _sync(self, ticket: _Ticket) -> None:
        """Return once `ticket`'s bytes are on disk (or it failed): wait for the fsync that
        runs, or run the next one, for everything written so far."""
        while True:
            with self._cv:
                while ticket.error is None and self._synced < ticket.end and self._syncing:
                    self._cv.wait()
                if ticket.error is not None or self._synced >= ticket.end:
                    return
                head = next(t for t in self._flight if t.error is None and t.end > self._synced)
                fd = os.dup(head.fd)  # open while `head` is unsynced: its writer waits for us
                self._syncing, target, cuts = True, self._end, self._cuts
            try:
                os.fsync(fd)
            except BaseException as exc:
                with self._cv:
                    self._syncing = False
                    self._fail(head, exc)  # head and everything after it; wakes the waiters
                raise
            finally:
                os.close(fd)
            with self._cv:
                self._syncing = False
                if cuts == self._cuts:  # else the bytes it covered may be gone: the next fsync decides
                    self._synced = max(self._synced, target)
                self._cv.notify_all()

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
        self._cuts += 1
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
    end: int = 0
    fd: int = -1  # the descriptor its writer opened before writing it, for an fsync
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
