"""A full disk, on both stores: `StoreError`, nothing half-acknowledged, nothing written later.

The journal (`LocalColdStore`) is filled for real on a small tmpfs when the test may
mount one (root with CAP_SYS_ADMIN), and always with ENOSPC injected into its writes.
The embedded Qdrant store checks free space before each write (a write into its
memory-mapped files on a full disk would kill the process with SIGBUS): the probe is
patched to report a nearly full disk, and a subprocess fills a real tmpfs.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tiered_context import ContextItem, LocalColdStore, StoreError, TieredContext
from tiered_context.testing import HashEmbedder


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux and mount(8) to make a small filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def memory(store) -> TieredContext:
    return TieredContext(session_id="s", store=store, embedder=HashEmbedder(), compaction="inline", compression="off")


def assert_exactly(path: Path, acked: list[str]) -> None:
    """Reopened, the archive holds the acknowledged puts, each once, at positions 0..n-1."""
    with LocalColdStore(path) as store:
        stored = store.items("s")
    assert [i.id for i in stored] == acked
    assert [i.seq for i in stored] == list(range(len(acked)))


def fill_until_full(ctx: TieredContext, acked: list[str], text: str) -> StoreError:
    for n in range(1000):
        try:
            acked.append(ctx.put(f"{n} {text}").id)
        except StoreError as exc:
            return exc
    raise AssertionError("the disk never filled up")


# -- the journal ---------------------------------------------------------------------
def test_journal_on_a_full_tmpfs(small_disk: Path) -> None:
    path = small_disk / "mem"
    filler = small_disk / "filler"
    ctx = memory(store := LocalColdStore(path))
    acked = [ctx.put("before the disk fills").id]
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * (free - 300_000))  # leaves ~300 kB: a dozen puts
    error = fill_until_full(ctx, acked, "a long turn " * 2000)
    assert "free disk space" in str(error) and len(acked) > 1
    size = (path / "archive.jsonl").stat().st_size
    with pytest.raises(StoreError):  # still full: still refused, still nothing written
        ctx.put("one more " * 2000)
    assert (path / "archive.jsonl").stat().st_size == size
    filler.unlink()  # space again: the memory carries on, at the next position
    acked += [ctx.put(f"after the disk was freed {n}").id for n in range(3)]
    ctx.close()
    store.close()  # a store passed in is the caller's to close
    assert_exactly(path, acked)


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_journal_with_enospc_injected(tmp_path: Path, monkeypatch, call: str) -> None:
    path = tmp_path / "mem"
    store = LocalColdStore(path)
    ctx = memory(store)
    acked = [ctx.put(f"turn {n}").id for n in range(5)]
    journal, real = os.fstat(store._journal._fd), getattr(os, call)

    def full(fd: int, *args):  # appends and fsyncs use different descriptors of the journal
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (journal.st_dev, journal.st_ino):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    monkeypatch.setattr(os, call, full)
    for n in range(3):
        with pytest.raises(StoreError, match="free disk space"):
            ctx.put(f"lost {n}")
        with pytest.raises(StoreError, match="free disk space"):
            ctx.put_many([f"lost batch {n}a", f"lost batch {n}b"])
    monkeypatch.undo()
    acked += [ctx.put(f"turn {n}").id for n in range(5, 8)]
    assert len(ctx) == 8
    ctx.close()
    store.close()
    assert_exactly(path, acked)


WRITER = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from tiered_context import ContextItem, LocalColdStore

    if sys.argv[3] == "qdrant":
        from tiered_context.qdrant import QdrantColdStore as LocalColdStore
    store, out = LocalColdStore(sys.argv[1]), threading.Lock()
    round_ = sys.argv[2]
    print("ready", flush=True)

    def writer(k):
        for n in range(100_000):
            size = 3 if n % 5 == 0 else 1  # batches too: one add is whole or absent
            batch = [ContextItem(id=f"r{round_}-w{k}-{n}-{j}", text=f"writer {k} turn {n} part {j}")
                     for j in range(size)]
            store.add(f"t{k % 2}", batch, np.ones((size, 8), dtype=np.float32))
            with out:
                print(" ".join(i.id for i in batch), flush=True)

    for k in range(4):
        threading.Thread(target=writer, args=(k,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.parametrize("kind", ["journal", "qdrant"])
def test_sigkill_with_concurrent_writers_loses_no_acknowledged_add(tmp_path: Path, kind: str) -> None:
    """Both durable stores share flushes between writers (group commits): what any of them
    acknowledged survives a SIGKILL, whole, once."""
    if kind == "qdrant" and importlib.util.find_spec("qdrant_edge") is None:
        pytest.skip("the qdrant extra is not installed")
    opener = LocalColdStore
    if kind == "qdrant":
        from tiered_context.qdrant import QdrantColdStore as opener
    path = tmp_path / "mem"
    acked: list[list[str]] = []
    for round_ in range(2):  # kill, reopen and write on, kill again
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(round_), kind],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        target = len(acked) + 150
        for line in proc.stdout:
            acked.append(line.split())
            if len(acked) >= target:
                break
        proc.kill()  # SIGKILL while four threads are writing
        proc.wait(timeout=60)
        proc.stdout.close()
        with opener(path) as store:
            stored = [i.id for t in ("t0", "t1") for i in store.items(t)]
        assert len(stored) == len(set(stored)), "an item stored twice"
        assert {i for batch in acked for i in batch} <= set(stored), "an acknowledged item was lost"
        batches: dict[str, int] = {}
        for i in stored:
            batches[i.rsplit("-", 1)[0]] = batches.get(i.rsplit("-", 1)[0], 0) + 1
        assert all(n == (3 if int(b.split("-")[2]) % 5 == 0 else 1) for b, n in batches.items()), "a torn add"


# -- embedded Qdrant -----------------------------------------------------------------
needs_qdrant = pytest.mark.skipif(importlib.util.find_spec("qdrant_edge") is None,
                                  reason="the qdrant extra is not installed: pip install 'tiered-context[qdrant]'")




@needs_qdrant
def test_qdrant_refuses_writes_when_the_disk_is_nearly_full(tmp_path: Path, monkeypatch) -> None:
    from tiered_context.qdrant import QdrantColdStore, _edge

    real_free = _edge.free_bytes
    ctx = memory(QdrantColdStore(tmp_path / "q"))
    acked = [ctx.put(f"turn {n}").id for n in range(3)]
    monkeypatch.setattr(_edge, "free_bytes", lambda path: 10 * 2**20)  # 10 MiB left
    with pytest.raises(StoreError, match="free disk space") as err:
        ctx.put("refused")
    assert "10.0 MiB free" in str(err.value) and "SIGBUS" not in str(err.value)
    monkeypatch.setattr(_edge, "free_bytes", real_free)
    acked.append(ctx.put("after the disk was freed").id)
    stored = ctx.store.items("s")
    assert [i.id for i in stored] == acked and [i.seq for i in stored] == [0, 1, 2, 3]
    ctx.close()
    ctx.store.close()


@needs_qdrant
def test_qdrant_write_checks_room_for_its_own_size(tmp_path: Path, monkeypatch) -> None:
    from tiered_context.qdrant import QdrantColdStore, _edge

    store = QdrantColdStore(tmp_path / "q")
    store.add("s", [ContextItem(id="small", text="a short turn", seq=0)], np.ones((1, 16), dtype=np.float32))
    monkeypatch.setattr(_edge, "free_bytes", lambda path: _edge.MIN_FREE_BYTES + 1_000_000)
    big = ContextItem(id="big", text="word " * 200_000, seq=1)  # ~1 MB of payload, twice on disk
    with pytest.raises(StoreError, match="free disk space"):
        store.add("s", [big], np.ones((1, 16), dtype=np.float32))
    store.add("s", [ContextItem(id="small2", text="another short turn", seq=1)], np.ones((1, 16), dtype=np.float32))
    assert [i.id for i in store.items("s")] == ["small", "small2"]
    store.close()


QDRANT_FILLER = textwrap.dedent("""
    import sys
    import numpy as np
    from tiered_context import ContextItem, StoreError
    from tiered_context.qdrant import QdrantColdStore

    path = sys.argv[1]
    store = QdrantColdStore(path)
    acked = 0
    try:
        for n in range(10_000):
            text = " ".join(f"w{n}-{k % 50}" for k in range(30_000))
            store.add("t", [ContextItem(id=f"i{n}", text=text, seq=n)], np.ones((1, 16), dtype=np.float32))
            acked += 1
    except StoreError as exc:
        print("refused after", acked, ":", exc, flush=True)
    store.close()
    with QdrantColdStore(path) as store:
        print("reopened", store.count("t"), "of", acked, flush=True)
""")


@needs_qdrant
def test_qdrant_on_a_real_full_tmpfs_raises_instead_of_sigbus(tmp_path: Path) -> None:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("needs Linux and mount(8) to make a small filesystem")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        out = subprocess.run([sys.executable, "-c", QDRANT_FILLER, str(mnt / "q")], capture_output=True, text=True, check=False,
                             timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    assert out.returncode == 0, f"the writer died (signal {-out.returncode}): {out.stderr[-2000:]}"
    refused = [line for line in out.stdout.splitlines() if line.startswith("refused after")]
    assert refused and "free disk space" in refused[0], out.stdout
    acked = int(refused[0].split()[2])
    assert f"reopened {acked} of {acked}" in out.stdout
