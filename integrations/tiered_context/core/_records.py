"""The records of a `LocalColdStore`'s journal: one checksummed JSON line per record (the
rules are in `core._store`'s docstring), the scan that reads them back on open and sets
damaged lines aside, and the record format (`encode_record` / `decode_record`) that stores
keeping records as documents share. The durable append is `core._journal`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiered_context.core._items import ContextItem, Tier

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
