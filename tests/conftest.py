"""Shared fixtures and the network guard: unit tests never leave the machine.

* Every connection to a non-loopback address raises ``RuntimeError("test tried to reach
  the network: ...")`` (only 127.0.0.0/8, ::1, ``localhost`` and AF_UNIX are allowed).
* ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set before any test module imports a
  model library, and are inherited by subprocesses the tests start.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _is_loopback_host(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip().lower().strip("[]").split("%", 1)[0]  # "[::1]", "fe80::1%eth0"
    if host in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name would need DNS: that is the network
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _allowed(family: Any, address: Any) -> bool:
    if hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
        return True
    if isinstance(address, (str, bytes)):  # a path: AF_UNIX given without the family
        return family is None or (hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX)
    if isinstance(address, tuple) and address:
        return _is_loopback_host(address[0])
    return False


def _refuse(address: Any) -> RuntimeError:
    return RuntimeError(f"test tried to reach the network: {address!r} (only loopback and AF_UNIX are allowed)")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if not _allowed(self.family, address):
        raise _refuse(address)
    return _ORIGINAL_CONNECT(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if not _allowed(self.family, address):
        raise _refuse(address)
    return _ORIGINAL_CONNECT_EX(self, address)


def _guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    if not _allowed(None, address):
        raise _refuse(address)
    return _ORIGINAL_CREATE_CONNECTION(address, *args, **kwargs)


_ORIGINAL_CONNECT = socket.socket.connect
_ORIGINAL_CONNECT_EX = socket.socket.connect_ex
_ORIGINAL_CREATE_CONNECTION = socket.create_connection


def _arm(mp: pytest.MonkeyPatch) -> None:
    if socket.socket.connect is not _guarded_connect:
        mp.setattr(socket.socket, "connect", _guarded_connect)
    if socket.socket.connect_ex is not _guarded_connect_ex:
        mp.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    if socket.create_connection is not _guarded_create_connection:
        mp.setattr(socket, "create_connection", _guarded_create_connection)


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    """Session-wide: a connection to anything but loopback / AF_UNIX fails loudly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        _arm(mp)
        yield


@pytest.fixture(autouse=True)
def _no_network_rearm(_no_network: None) -> Iterator[None]:
    """Re-arm the guard for every test: plugins such as pytest-socket reset
    ``socket.socket.connect`` to the real one in their per-test teardown hook."""
    with pytest.MonkeyPatch.context() as mp:
        _arm(mp)
        yield


@pytest.fixture
def hash_ctx():
    """A fresh in-memory `TieredContext` with the deterministic `HashEmbedder`, inline compaction."""
    from tiered_context import TieredContext
    from tiered_context.testing import HashEmbedder

    ctx = TieredContext(session_id="t", embedder=HashEmbedder(), compaction="inline")
    yield ctx
    ctx.close()


@pytest.fixture
def shared_data() -> Path:
    """`/work/shared/data` (LoCoMo, QMSum), located relative to the repository."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


# -- PostgreSQL with pgvector, on this machine only (a Unix socket, no TCP) ---------------------
class PostgresServer:
    """A PostgreSQL 16 + pgvector server started for the test session.

    ``uri(database)`` is a libpq URI on the server's Unix socket; ``create_database()`` makes
    an empty database (each test gets its own), ``drop_database(name)`` removes it.
    """

    def __init__(self, socket_dir: str, stop: Any) -> None:
        self.socket_dir, self._stop = socket_dir, stop

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        import uuid

        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._stop()


def _start_pgserver(pgdata: Path) -> PostgresServer | None:
    """PostgreSQL 16 with pgvector from the `pgserver` wheel (the test extra installs it)."""
    try:
        import pgserver
    except ImportError:
        return None
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri = server.get_uri()
    socket_dir = uri.split("host=", 1)[1].split("&", 1)[0]
    return PostgresServer(socket_dir, server.cleanup)


def _start_debian_postgres(pgdata: Path) -> PostgresServer | None:
    """The fallback: Debian's ``postgresql`` and ``postgresql-NN-pgvector`` packages."""
    import glob
    import shutil
    import subprocess

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        return None
    bindir = Path(bins[-1]).parent
    version = bindir.parent.name
    if not Path(f"/usr/share/postgresql/{version}/extension/vector.control").exists():
        return None
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(pgdata, "postgres", "postgres")
    data, sock = pgdata / "data", pgdata / "sock"
    sock.mkdir(exist_ok=True)
    if run_as:
        shutil.chown(sock, "postgres", "postgres")
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(pgdata / "log"),
                    "-o", f"-h '' -k {sock}", "start"], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop"],
                       capture_output=True)

    return PostgresServer(str(sock), stop)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL 16 with pgvector for the session (pgserver, else Debian's), on a
    Unix socket only; skips the test when neither is installed."""
    pytest.importorskip("psycopg", reason="the Postgres tests need psycopg: pip install 'tiered-context[postgres]'")
    import shutil
    import tempfile

    # not under pytest's 0700 tmp root: the server runs as its own system user when we are root
    base = Path(tempfile.mkdtemp(prefix="tc-pg-"))
    try:
        server = _start_pgserver(base / "pgdata") or _start_debian_postgres(base)
        if server is None:
            why = ("no PostgreSQL with pgvector here: pip install pgserver (in tiered-context[test]), "
                   "or apt-get install postgresql postgresql-17-pgvector")
            if os.environ.get("CI"):
                pytest.fail(why + " (CI must run the Postgres tests)")
            pytest.skip(why)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_uri(postgres_server: PostgresServer) -> Iterator[str]:
    """The URI of a fresh, empty database on the session's PostgreSQL (dropped afterwards)."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.uri(name)
    finally:
        postgres_server.drop_database(name)
