"""Tenancy: the one place that scopes every read, write and delete to one tenant.

Every request the Qdrant cold tier sends is built from a `Scope`, and a `Scope` can only
be made by `scope()`, which refuses an empty tenant. The engines translate a `Scope`
into their own filter with the tenant condition first (`must: tenant == ...`), so no
query path can omit it. Point ids are `uuid5(tenant, key)`: the same item id under
another tenant is another point, and guessing an id never crosses tenants.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from tiered_context.errors import StoreError

__all__ = ["Scope", "TENANT_FIELD", "point_id", "scope"]

#: Payload field that holds the tenant (keyword index, ``is_tenant=True``).
TENANT_FIELD = "tenant"
_NAMESPACE = uuid.UUID("5f0c1c6e-3c2b-5b9e-9a51-7e1d0c5a9f10")
_NS_BYTES = _NAMESPACE.bytes


@dataclass(frozen=True, slots=True)
class Scope:
    """A tenant plus optional narrowing conditions; build it with `scope()` only."""

    tenant: str
    point_ids: tuple[str, ...] | None = None
    seqs: tuple[int, ...] | None = None
    tiers: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    since: float | None = None
    until: float | None = None
    originals_only: bool = False
    #: exact keyword matches on other payload fields (e.g. the semantic cache's model key)
    equals: tuple[tuple[str, str], ...] = ()
    #: (field, lower bound): keep points whose float `field` is > bound (e.g. not expired)
    above: tuple[tuple[str, float], ...] = ()
    #: (field, upper bound): keep points whose float `field` is <= bound (e.g. expired)
    below: tuple[tuple[str, float], ...] = ()
    _token: object = None

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise StoreError("build a Scope with tiered_context.qdrant._tenancy.scope(), never directly")


_TOKEN = object()


def _tenant(tenant: object) -> str:
    if not isinstance(tenant, str) or not tenant.strip():
        raise StoreError(
            f"tenant must be a non-empty string (the session / user / agent scope), got {tenant!r}"
        )
    return tenant


def scope(
    tenant: str,
    *,
    ids: Iterable[str] | None = None,
    seqs: Iterable[int] | None = None,
    tiers: Iterable[str] | None = None,
    roles: Iterable[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    originals_only: bool = False,
    equals: Iterable[tuple[str, str]] = (),
    above: Iterable[tuple[str, float]] = (),
    below: Iterable[tuple[str, float]] = (),
) -> Scope:
    """The mandatory tenant condition plus optional ones. `ids` are item ids (hashed into
    this tenant's point ids here, so they can only ever name this tenant's points)."""
    tenant = _tenant(tenant)
    for bound in (since, until):
        if bound is not None and (not isinstance(bound, (int, float)) or not math.isfinite(bound)):
            raise StoreError(f"time bounds must be finite POSIX seconds, got {bound!r}")
    return Scope(
        tenant=tenant,
        point_ids=None if ids is None else tuple(point_id(tenant, i) for i in ids),
        seqs=None if seqs is None else tuple(int(s) for s in seqs),
        tiers=None if tiers is None else tuple(getattr(t, "value", t) for t in tiers),
        roles=None if roles is None else tuple(getattr(r, "value", r) for r in roles),
        since=since,
        until=until,
        originals_only=originals_only,
        equals=tuple(equals),
        above=tuple(above),
        below=tuple(below),
        _token=_TOKEN,
    )


_NS_LENGTH_PREFIXED = hashlib.sha1(b"tiered-context point ids, length-prefixed").digest()[:16]


def point_id(tenant: str, key: str) -> str:
    """The Qdrant point id of `key` (an item id) under `tenant`: a UUID5 of both
    (same value as ``uuid.uuid5``, computed without building UUID objects).

    The name hashed is ``tenant \x1f key`` when neither holds the separator (the layout
    every existing collection has), else an unambiguous length-prefixed form, so no two
    (tenant, key) pairs ever share a point (a control character in an id cannot collide)."""
    tenant = _tenant(tenant)
    if "\x1f" in tenant or "\x1f" in key:  # hashed under another namespace: cannot meet a legacy name
        name = _NS_LENGTH_PREFIXED + f"{len(tenant)}:{tenant}{key}".encode("utf-8", "surrogatepass")
    else:
        name = _NS_BYTES + f"{tenant}\x1f{key}".encode("utf-8", "surrogatepass")
    h = bytearray(hashlib.sha1(name).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def require(value: object) -> Scope:
    """Engines call this on every request: anything but a `Scope` is refused."""
    if not isinstance(value, Scope):
        raise StoreError("internal: every Qdrant request must carry a tenant Scope")
    return value
