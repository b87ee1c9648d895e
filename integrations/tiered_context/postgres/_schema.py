"""The tables of `PostgresColdStore`, their migration, and the binary `vector` adapters.

Schema (version 1), created by `setup` under an advisory lock (any number of workers may
call it at once):

``tiered_context_tenants``  one row per (space, tenant key): the tenant's commit log
    length ``log`` (the watermark), its originals count, the summed BM25 document length
    and the vector dimension. An `add` locks this row for its transaction, so positions in
    the log are assigned in commit order, without gaps.
``tiered_context_seqs``     the sequence allocator: ``next`` per tenant (`next_seqs`).
``tiered_context_items``    one row per record: its log position ``pos``, id, seq, the
    item as JSON (``record``, the format of `encode_record`) and its unit vector.
``tiered_context_postings`` the lexical index: (tenant, term, pos) -> term frequency and
    document length, the terms of `tiered_context.core._lexical.terms` (so BM25 here is the
    core's BM25, computed by the database over the tenant's postings).
``tiered_context_moments``  the dense statistics' snapshot per tenant: the sum of vectors
    and of their outer products up to a log position (see `_moments`).

Tenant keys and item ids are stored as UTF-8 bytes (``bytea``): any string, including
NUL and every character a hostile id may hold, is stored and compared exactly.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format

__all__ = ["SCHEMA_VERSION", "HNSW_MAX_DIM", "Vector", "adapters_for", "hnsw_index_sql", "setup_sql"]

SCHEMA_VERSION = 1
#: pgvector's HNSW index takes vectors of at most this many dimensions; above it, search is exact.
HNSW_MAX_DIM = 2000
_LOCK_KEY = 0x7C0DE_57A7E  # pg_advisory_xact_lock key for migrations

_DDL = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS tiered_context_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS tiered_context_tenants (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    space text NOT NULL,
    key bytea NOT NULL,
    dim integer,
    log bigint NOT NULL DEFAULT 0,
    originals bigint NOT NULL DEFAULT 0,
    total_len bigint NOT NULL DEFAULT 0,
    UNIQUE (space, key)
);
CREATE TABLE IF NOT EXISTS tiered_context_seqs (
    tenant bigint PRIMARY KEY,
    next bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS tiered_context_items (
    tenant bigint NOT NULL,
    pos bigint NOT NULL,
    id bytea NOT NULL,
    seq bigint NOT NULL,
    derived boolean NOT NULL,
    len integer NOT NULL,
    dim integer NOT NULL,
    record bytea NOT NULL,
    vec vector NOT NULL,
    PRIMARY KEY (tenant, pos)
);
CREATE UNIQUE INDEX IF NOT EXISTS tiered_context_items_id ON tiered_context_items (tenant, id);
CREATE UNIQUE INDEX IF NOT EXISTS tiered_context_items_seq ON tiered_context_items (tenant, seq)
    WHERE seq >= 0 AND NOT derived;
CREATE TABLE IF NOT EXISTS tiered_context_postings (
    tenant bigint NOT NULL,
    term text COLLATE "C" NOT NULL,
    pos bigint NOT NULL,
    tf integer NOT NULL,
    len integer NOT NULL,
    PRIMARY KEY (tenant, term, pos) INCLUDE (tf, len)
);
CREATE TABLE IF NOT EXISTS tiered_context_moments (
    tenant bigint PRIMARY KEY,
    pos bigint NOT NULL,
    dim integer NOT NULL,
    s bytea NOT NULL,
    m bytea NOT NULL
);
"""


def setup_sql() -> list[tuple[str, tuple[Any, ...]]]:
    """The statements of one migration transaction (lock, DDL, version row)."""
    return [
        ("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,)),
        *((sql.strip(), ()) for sql in _DDL.split(";") if sql.strip()),  # one by one: a connection may prepare every statement
        ("INSERT INTO tiered_context_schema (version) SELECT %s WHERE NOT EXISTS (SELECT 1 FROM tiered_context_schema)",
         (SCHEMA_VERSION,)),
        ("SELECT max(version) FROM tiered_context_schema", ()),
    ]


def hnsw_index_sql(dim: int) -> list[tuple[str, tuple[Any, ...]]]:
    """The partial HNSW index (inner product) over the records of one dimension."""
    dim = int(dim)
    return [
        ("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,)),
        (f"CREATE INDEX IF NOT EXISTS tiered_context_items_hnsw_{dim} ON tiered_context_items "
         f"USING hnsw ((vec::vector({dim})) vector_ip_ops) WHERE dim = {dim}", ()),
    ]


class Vector:
    """A float32 vector to send as a pgvector ``vector`` parameter (binary format)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array, dtype=np.float32).reshape(-1)


class _VectorDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Vector) -> bytes:
        return struct.pack(">HH", obj.array.shape[0], 0) + obj.array.astype(">f4").tobytes()


class _VectorLoader(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> np.ndarray:
        raw = bytes(data)
        dim = struct.unpack_from(">H", raw)[0]
        return np.frombuffer(raw, dtype=">f4", count=dim, offset=4).astype(np.float32)


def adapters_for(oid: int) -> tuple[type[Dumper], type[Loader]]:
    """A dumper and a loader bound to the database's ``vector`` type oid; registered on each
    cursor's own adapters (never on a shared connection's, e.g. a LangGraph store's)."""
    return type("VectorDumper", (_VectorDumper,), {"oid": oid}), _VectorLoader
