"""Side files written so that a crash, a full disk or a damaged copy never costs the memory.

Two functions, one rule each:

- `write_atomic(path, data)`: the new bytes go to a temporary file in the same directory,
  are fsynced, renamed over `path`, and the directory is fsynced. A reader sees the old
  file or the new one, never a half-written one; a failure (a full disk) raises
  `StoreError` and leaves the old file as it was.
- `read_json(path, what=...)`: the parsed JSON, `None` when the file does not exist, and,
  when it is damaged (truncated, not JSON, not the expected shape), the file is moved
  aside to ``<name>.damaged-<n>`` and `None` is returned with a warning that names the
  file: the caller rebuilds what it held (from the archive) or starts empty. A damaged
  side file never makes a memory unopenable.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tiered_context.errors import StoreError

__all__ = ["disk_usage", "free_bytes", "fsync_dir", "fsync_file", "move_aside", "read_json", "write_atomic", "write_json_atomic"]

log = logging.getLogger("tiered_context")


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, dir fsync)."""
    target = Path(path)
    tmp_name = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        fsync_dir(target.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot write {target}: {exc.strerror or exc}; free disk space or pass a writable path= "
            "(the previous version of the file is unchanged)"
        ) from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> None:
    """`write_atomic` of `value` as UTF-8 JSON."""
    write_atomic(path, json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def read_json(path: str | os.PathLike[str], *, what: str, expect: type | None = dict) -> Any:
    """The JSON in `path`, or None if missing; a damaged file is moved aside (and logged).

    `what` names the file's role in the warning ("LlamaIndex session sidecar"); `expect`
    is the type the top-level value must have (None: any).
    """
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the {what} at {source}: {exc}; check its permissions") from exc
    try:
        value = json.loads(raw)
        if expect is not None and not isinstance(value, expect):
            raise ValueError(f"expected a JSON {expect.__name__}, got {type(value).__name__}")
        return value
    except (ValueError, UnicodeDecodeError) as exc:
        aside = move_aside(source)
        log.warning("the %s at %s is damaged (%s); moved it to %s and continued without it",
                    what, source, exc, aside.name)
        return None


def move_aside(source: Path) -> Path:
    """Rename a damaged file to ``<name>.damaged-<n>`` (kept for inspection); returns the new path."""
    n = 0
    while (aside := source.with_name(f"{source.name}.damaged-{n}")).exists():
        n += 1
    try:
        os.replace(source, aside)
        fsync_dir(source.parent)
    except OSError as exc:
        raise StoreError(f"{source} is damaged and cannot be moved aside ({exc}); move or delete it by hand") from exc
    return aside


def fsync_dir(directory: Path) -> None:
    """fsync `directory` so that a rename in it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync the file at `path` (its data reaches the disk before what follows)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged process can still write on `path`'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` occupy on disk (their sparse holes excluded)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total
