"""Open (or share) the connection to one embedded directory or one server.

An embedded directory belongs to one process, and within it to one engine object:
stores and caches opened on the same path in one process share it (reference counted),
so `TieredContext(store=QdrantColdStore(path=p))` per session and a `SemanticCache`
on the same path work side by side.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from tiered_context.errors import ConfigError, StoreError
from tiered_context.qdrant._engine import Engine

__all__ = ["Handle", "connect"]

_LOCK = threading.Lock()
_OPEN: dict[tuple, list[Any]] = {}  # key -> [connection, refcount]


class Handle:
    """One user's reference to a shared connection; `release()` exactly once."""

    def __init__(self, key: tuple, conn: Any, temp: str | None) -> None:
        self.key, self.conn, self._temp, self._released = key, conn, temp, False

    @property
    def engine(self) -> Engine:
        return Engine(self.conn.engine)

    def release(self) -> None:
        with _LOCK:
            if self._released:
                return
            self._released = True
            entry = _OPEN.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _OPEN[self.key]
        try:
            self.conn.close()
        finally:
            if self._temp is not None:
                shutil.rmtree(self._temp, ignore_errors=True)


def connect(*, path: str | os.PathLike[str] | None, url: str | None, api_key: str | None,
            engine: Engine | str | None, timeout: float) -> Handle:
    """A `Handle` on the right engine: `url` -> server; else `engine` (default edge) on
    `path` (a temporary directory, removed on close, when no path is given)."""
    if url is not None and path is not None:
        raise ConfigError("pass path= (embedded) or url= (a Qdrant server), not both")
    if url is not None:
        if engine not in (None, Engine.SERVER, "server"):
            raise ConfigError(f"url= always means Engine.SERVER; drop engine={engine!r}")
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(f"url must look like http://host:6333, got {url!r}")
        kind = Engine.SERVER
    else:
        try:
            kind = Engine(engine or Engine.EDGE)
        except ValueError as exc:
            raise ConfigError(f"engine must be one of {[e.value for e in Engine]}, got {engine!r}") from exc
        if kind == Engine.SERVER:
            raise ConfigError("Engine.SERVER needs url=")
    temp = None
    if kind == Engine.SERVER:
        key: tuple = ("server", url, api_key)
    else:
        if path is None:
            temp = tempfile.mkdtemp(prefix="tiered-qdrant-")
            path = temp
        where = Path(path).expanduser()
        if where.exists() and not where.is_dir():
            raise StoreError(f"{where} is a file, not a directory; pass a directory path= for the Qdrant store")
        key = (kind.value, str(where.resolve()))
    with _LOCK:
        entry = _OPEN.get(key)
        if entry is None:
            conn = _open(kind, Path(key[1]) if kind != Engine.SERVER else None, url, api_key, timeout, temp is not None)
            entry = _OPEN[key] = [conn, 0]
        entry[1] += 1
        return Handle(key, entry[0], temp)


def _open(kind: Engine, path: Path | None, url: str | None, api_key: str | None, timeout: float,
          temporary: bool = False) -> Any:
    if kind == Engine.EDGE:
        from tiered_context.qdrant._edge import EdgeConnection

        assert path is not None
        return EdgeConnection(path, temporary=temporary)
    from tiered_context.qdrant._client import ClientConnection

    return ClientConnection(path=path, url=url, api_key=api_key, timeout=timeout)
