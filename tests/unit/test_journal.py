"""The journal of `LocalColdStore` (``archive.jsonl``): checksums, damage, torn tails,
old records, one owner, failed writes and group commit.

Each test writes a journal, damages or interrupts it the way a crash, a bad disk or a
full disk would, and checks what a reopen keeps. No sleeps: threads meet on barriers.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tiered_context import ContextItem, LocalColdStore, StoreError
from tiered_context.core import encode_record, normalize
from tiered_context.testing import HashEmbedder

EMB = HashEmbedder(dim=16)


def make(prefix: str, count: int, start: int = 0) -> list[ContextItem]:
    return [ContextItem.create(f"{prefix} note {n} about topic {n % 7}", id=f"{prefix}-{n}").evolve(seq=n)
            for n in range(start, start + count)]


def vecs(items: list[ContextItem]) -> np.ndarray:
    return normalize(EMB.embed([i.text for i in items]))


def fill(path: Path, items: list[ContextItem], tenant: str = "t") -> None:
    """One `add` per item, then close."""
    with LocalColdStore(path) as store:
        for item in items:
            store.add(tenant, [item], vecs([item]))


def ids(path: Path, tenant: str = "t") -> list[str]:
    with LocalColdStore(path) as store:
        return [i.id for i in store.items(tenant)]


def journal(path: Path) -> Path:
    return path / "archive.jsonl"


def lines(path: Path) -> list[bytes]:
    return journal(path).read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new_lines: list[bytes]) -> None:
    journal(path).write_bytes(b"".join(new_lines))


# -- checksums and damage -------------------------------------------------------------
def test_every_line_is_json_with_a_checksum(tmp_path: Path) -> None:
    fill(tmp_path, make("a", 3))
    for raw in lines(tmp_path):
        record = json.loads(raw)
        assert record["tenant"] == "t" and len(record["crc"]) == 8


@pytest.mark.parametrize("damage", ["flipped byte", "not json", "zeros"])
def test_a_damaged_middle_record_costs_that_record_only(tmp_path: Path, caplog, damage: str) -> None:
    items = make("a", 100)
    fill(tmp_path, items)
    before = lines(tmp_path)
    bad = before[10]  # line 11 of 100
    if damage == "flipped byte":
        bad = bad.replace(b"note 10", b"note 1O")  # still valid JSON: only the checksum knows
    elif damage == "not json":
        bad = bad[:40] + b"\n"
    else:
        bad = b"\0" * (len(bad) - 1) + b"\n"
    rewrite(tmp_path, before[:10] + [bad] + before[11:])
    size = journal(tmp_path).stat().st_size

    with caplog.at_level(logging.WARNING, logger="tiered_context"):
        store = LocalColdStore(tmp_path)
    try:
        assert [i.id for i in store.items("t")] == [i.id for i in items if i.id != "a-10"]  # all 89 after it kept
        assert [(d.line, d.cut) for d in store.damaged] == [(11, False)]
        assert "archive.jsonl line 11 is damaged" in caplog.text
        assert journal(tmp_path).stat().st_size == size  # nothing truncated
        more = make("a", 2, start=100)
        store.add("t", more, vecs(more))
    finally:
        store.close()

    aside = [json.loads(x) for x in (tmp_path / "archive.jsonl.damaged").read_text().splitlines()]
    assert [(e["line"], e["cut"]) for e in aside] == [(11, False)]
    assert aside[0]["raw"].encode("latin-1") == bad  # the exact bytes, for a repair by hand
    # every later open skips and reports it again, without copying it twice
    with LocalColdStore(tmp_path) as again:
        assert again.count("t") == 101 and [d.line for d in again.damaged] == [11]
    assert len((tmp_path / "archive.jsonl.damaged").read_text().splitlines()) == 1


def test_several_damaged_lines_and_the_batches_around_them(tmp_path: Path) -> None:
    with LocalColdStore(tmp_path) as store:
        for k in range(4):  # four batches of three
            batch = make(f"b{k}", 3)
            store.add("t", batch, vecs(batch))
    raw = lines(tmp_path)
    raw[1] = raw[1].replace(b"note", b"nope")  # the middle of batch 0
    raw[5] = raw[5].replace(b"note", b"nope")  # the last line of batch 1
    raw[6] = raw[6].replace(b"note", b"nope")  # the first line of batch 2
    rewrite(tmp_path, raw)
    with LocalColdStore(tmp_path) as store:
        assert [i.id for i in store.items("t")] == ["b0-0", "b0-2", "b1-0", "b1-1", "b2-1", "b2-2",
                                                    "b3-0", "b3-1", "b3-2"]
        assert [d.line for d in store.damaged] == [2, 6, 7]


# -- the tail ---------------------------------------------------------------------------
def test_a_torn_tail_is_cut(tmp_path: Path) -> None:
    fill(tmp_path, make("a", 5))
    whole = journal(tmp_path).read_bytes()
    journal(tmp_path).write_bytes(whole + lines(tmp_path)[0][:50])  # a crash mid-write
    with LocalColdStore(tmp_path) as store:
        assert store.count("t") == 5 and store.damaged == []
        more = make("a", 1, start=5)
        store.add("t", more, vecs(more))
    assert journal(tmp_path).read_bytes().startswith(whole) and len(lines(tmp_path)) == 6
    assert ids(tmp_path) == [f"a-{n}" for n in range(6)]


def test_a_damaged_last_line_is_cut_and_copied_aside(tmp_path: Path) -> None:
    fill(tmp_path, make("a", 5))
    raw = lines(tmp_path)
    raw[-1] = raw[-1].replace(b"note", b"nope")
    rewrite(tmp_path, raw)
    with LocalColdStore(tmp_path) as store:
        assert store.count("t") == 4
        assert [(d.line, d.cut) for d in store.damaged] == [(5, True)]
    assert len(lines(tmp_path)) == 4
    aside = json.loads((tmp_path / "archive.jsonl.damaged").read_text())
    assert aside["cut"] and aside["raw"].encode("latin-1") == raw[-1]


def test_a_whole_record_this_release_cannot_read_is_kept_not_cut(tmp_path: Path) -> None:
    """Its checksum matches, so it is what was written (by a newer release, say): it is
    skipped and reported, even at the tail, and left for a release that can read it."""
    fill(tmp_path, make("a", 2))
    item = make("new", 1)[0]
    record = {"tenant": "t", **encode_record(item, vecs([item])[0])}
    record["item"]["shape"] = "from the future"  # a field this release does not know
    body = json.dumps(record).encode()
    line = body[:-1] + b', "crc": "%08x"}\n' % zlib.crc32(body)
    journal(tmp_path).write_bytes(journal(tmp_path).read_bytes() + line)
    with LocalColdStore(tmp_path) as store:
        assert [i.id for i in store.items("t")] == ["a-0", "a-1"]
        assert [(d.line, d.cut) for d in store.damaged] == [(3, False)] and "unreadable" in store.damaged[0].reason
    assert lines(tmp_path)[-1] == line  # still there


def test_opening_with_another_dim_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    fill(tmp_path, make("a", 3))
    before = journal(tmp_path).read_bytes()
    with pytest.raises(StoreError, match="dim"):
        LocalColdStore(tmp_path, dim=EMB.dim * 2)
    assert journal(tmp_path).read_bytes() == before
    LocalColdStore(tmp_path).close()  # and the refused open released the path


def test_a_batch_cut_short_at_the_tail_is_cut_whole(tmp_path: Path) -> None:
    """An `add` is all or nothing, on disk too: a crash after two of its three lines
    leaves none of them (it was never acknowledged)."""
    fill(tmp_path, make("a", 2))
    with LocalColdStore(tmp_path) as store:
        batch = make("b", 3)
        store.add("t", batch, vecs(batch))
    raw = lines(tmp_path)
    rewrite(tmp_path, raw[:-1] + [raw[-1][:30]])
    with LocalColdStore(tmp_path) as store:
        assert [i.id for i in store.items("t")] == ["a-0", "a-1"]
    assert lines(tmp_path) == raw[:2]


# -- the previous release's journal -----------------------------------------------------
def test_records_without_a_checksum_still_load(tmp_path: Path) -> None:
    old = make("old", 3)
    tmp_path.mkdir(exist_ok=True)
    journal(tmp_path).write_text("".join(
        json.dumps({"tenant": "t", **encode_record(i, v)}, default=str) + "\n" for i, v in zip(old, vecs(old))))
    with LocalColdStore(tmp_path) as store:
        assert store.items("t") == old and store.damaged == []
        new = make("new", 2)
        store.add("t", new, vecs(new))
    assert ids(tmp_path) == ["old-0", "old-1", "old-2", "new-0", "new-1"]


# -- one owner --------------------------------------------------------------------------
def test_a_second_store_on_the_same_path_is_refused(tmp_path: Path) -> None:
    first = LocalColdStore(tmp_path)
    with pytest.raises(StoreError, match=r"archive\.jsonl is already open") as err:
        LocalColdStore(tmp_path)
    assert str(tmp_path) in str(err.value) and "close that one first" in str(err.value)
    first.close()
    LocalColdStore(tmp_path).close()  # released by close()


def test_a_store_dropped_without_close_releases_the_path(tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    del store
    gc.collect()
    LocalColdStore(tmp_path).close()


def test_a_second_process_on_the_same_path_is_refused(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from tiered_context import LocalColdStore, StoreError
        try:
            LocalColdStore(sys.argv[1])
        except StoreError as exc:
            print("refused:", exc)
        else:
            print("opened")
    """)
    with LocalColdStore(tmp_path):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False, timeout=120)
    assert out.stdout.startswith("refused:") and "already open" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False, timeout=120)
    assert out.stdout.startswith("opened"), out.stdout + out.stderr


# -- failed writes ----------------------------------------------------------------------
def on_journal(store: LocalColdStore):
    """A test of whether a descriptor is open on the store's journal (appends and fsyncs
    go through different descriptors of it)."""
    st = os.fstat(store._journal._fd)

    def check(fd: int) -> bool:
        try:
            other = os.fstat(fd)
        except OSError:
            return False
        return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)

    return check


def _fail_on(monkeypatch, store: LocalColdStore, name: str, *, partial: bool = False) -> list[int]:
    """Make `os.<name>` on the store's journal raise ENOSPC (`partial`: a write first
    lands half its bytes). Returns a list counting the failures."""
    real, journal_fd, failures = getattr(os, name), on_journal(store), []

    def fake(fd, *args):
        if not journal_fd(fd):
            return real(fd, *args)
        if partial and not failures:
            failures.append(1)
            return real(fd, bytes(args[0])[: len(args[0]) // 2])
        failures.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, name, fake)
    return failures


@pytest.mark.parametrize("how", ["write", "partial write", "fsync"])
def test_a_failed_write_keeps_nothing(tmp_path: Path, monkeypatch, how: str) -> None:
    store = LocalColdStore(tmp_path)
    first = make("a", 3)
    store.add("t", first, vecs(first))
    size = journal(tmp_path).stat().st_size
    failures = _fail_on(monkeypatch, store, "fsync" if how == "fsync" else "write", partial=how == "partial write")
    lost = make("lost", 2)
    with pytest.raises(StoreError, match="free disk space") as err:
        store.add("t", lost, vecs(lost))
    assert failures and isinstance(err.value.__cause__, OSError)
    assert journal(tmp_path).stat().st_size == size  # cut back: no byte of it stays
    assert store.get("t", ["lost-0", "lost-1"]) == [] and store.count("t") == 3
    monkeypatch.undo()  # the disk has room again
    later = make("b", 2)
    store.add("t", later, vecs(later))
    store.close()
    assert ids(tmp_path) == ["a-0", "a-1", "a-2", "b-0", "b-1"]


def test_a_failed_group_fails_every_writer_in_it(tmp_path: Path, monkeypatch) -> None:
    store = LocalColdStore(tmp_path)
    _fail_on(monkeypatch, store, "fsync")
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(k: int) -> None:
        batch = make(f"w{k}", 2)
        barrier.wait()
        try:
            store.add("t", batch, vecs(batch))
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and store.count("t") == 0 and journal(tmp_path).stat().st_size == 0
    store.close()


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = LocalColdStore(tmp_path)
    store.close()
    items = make("a", 1)
    with pytest.raises(StoreError, match="closed"):
        store.add("t", items, vecs(items))


# -- group commit -----------------------------------------------------------------------
def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    writers, each = 8, 40
    store = LocalColdStore(tmp_path)
    barrier = threading.Barrier(writers)
    batches = {k: [make(f"w{k}", 1, start=n) for n in range(each)] for k in range(writers)}

    def writer(k: int) -> None:
        barrier.wait()
        for n, batch in enumerate(batches[k]):
            tenant = "shared" if n % 2 else f"own-{k}"
            store.add(tenant, batch, vecs(batch))
            store.add(tenant, batch, vecs(batch))  # the same item again: a no-op

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = {t: [i.id for i in store.items(t)] for t in ["shared", *(f"own-{k}" for k in range(writers))]}
    store.close()

    assert len(lines(tmp_path)) == writers * each  # one line per item, re-adds write nothing
    with LocalColdStore(tmp_path) as reopened:
        for tenant, expected in live.items():
            got = [i.id for i in reopened.items(tenant)]
            assert got == expected  # same items, same order as before the reopen
            assert not [i for i, c in Counter(got).items() if c > 1]
        assert sum(len(v) for v in live.values()) == writers * each


class Choreography:
    """Hooks on os.write / os.fsync of one journal: the first fsync (whichever writer runs
    it) waits until `ready()` holds, then does `then()`. `queued()`: the appends waiting
    for their pass (queued, written or being synced)."""

    def __init__(self, monkeypatch, store: LocalColdStore, ready, then) -> None:
        self.cv = threading.Condition()
        self.written: list[str] = []  # item ids in file order
        self.synced = 0  # fsyncs after the first that returned
        self.writes = 0  # os.write calls on the journal
        self.first: int | None = None
        real_write, real_fsync, journal_fd = os.write, os.fsync, on_journal(store)
        self.queued = lambda: len(store._journal._flight)
        real_wait = store._journal._wait

        def wait(ticket):  # an append just queued: let the held fsync look again
            with self.cv:
                self.cv.notify_all()
            return real_wait(ticket)

        monkeypatch.setattr(store._journal, "_wait", wait)

        def write(fd, data):
            if journal_fd(fd):
                with self.cv:  # a pass writes every append queued before it, in one write
                    self.writes += 1
                    self.written += [json.loads(line)["item"]["id"] for line in bytes(data).splitlines()]
                    self.cv.notify_all()
            return real_write(fd, data)

        def fsync(fd):
            if journal_fd(fd):
                with self.cv:
                    first = self.first is None
                    self.first = self.first or threading.get_ident()
                if first:
                    with self.cv:
                        assert self.cv.wait_for(lambda: ready(self), timeout=60)
                    return then(real_fsync, fd)
            real_fsync(fd)
            with self.cv:
                self.synced += 1
                self.cv.notify_all()

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def run_writers(store: LocalColdStore, count: int, returned: list[str], errors: list[str]) -> None:
    def writer(k: int) -> None:
        item = make(f"w{k}", 1)
        try:
            store.add("t", item, vecs(item))
            returned.append(item[0].id)
        except StoreError:
            errors.append(item[0].id)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_appends_queued_during_a_pass_share_the_next_and_are_acknowledged_in_file_order(
        tmp_path: Path, monkeypatch) -> None:
    """Appends queued while a pass runs wait for it (its fsync may fail, and then the file
    is cut back below them all), then one pass writes them with one write and one fsync:
    the group commit."""
    store = LocalColdStore(tmp_path)
    returned: list[str] = []
    seen: list[list[str]] = []

    def then(real_fsync, fd):
        seen.append(list(returned))  # all four are written: none may have returned
        real_fsync(fd)

    dance = Choreography(monkeypatch, store, ready=lambda d: d.queued() == 4, then=then)
    run_writers(store, 4, returned, errors := [])
    assert seen == [[]] and errors == []
    assert dance.synced <= 1 and dance.writes <= 2  # four appends, at most two writes and fsyncs (not one each)
    assert [i.id for i in store.items("t")] == dance.written  # in memory as in the file
    store.close()


def test_a_failed_fsync_fails_every_append_queued_after_it(tmp_path: Path, monkeypatch) -> None:
    store = LocalColdStore(tmp_path)
    before = make("ok", 1)
    store.add("t", before, vecs(before))  # acknowledged: no failure may cut it
    size = journal(tmp_path).stat().st_size

    def then(real_fsync, fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    Choreography(monkeypatch, store, ready=lambda d: d.queued() == 4, then=then)
    returned: list[str] = []
    errors: list[str] = []
    run_writers(store, 4, returned, errors)
    assert returned == [] and len(errors) == 4  # the head failed, and the others came after it
    assert journal(tmp_path).stat().st_size == size and [i.id for i in store.items("t")] == ["ok-0"]
    monkeypatch.undo()
    after = make("later", 1)
    store.add("t", after, vecs(after))
    store.close()
    assert ids(tmp_path) == ["ok-0", "later-0"]
