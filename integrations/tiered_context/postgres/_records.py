"""How records are kept: tenant keys and ids as exact UTF-8 bytes, items as JSON (the format
of `encode_record`, without the vector), and a cache of decoded items."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np

from tiered_context.core import ContextItem, decode_record, encode_record
from tiered_context.errors import StoreError

__all__ = ["ItemCache", "item_id", "tenant_key", "to_item", "to_record"]


def tenant_key(tenant: str) -> bytes:
    if not isinstance(tenant, str) or not tenant:
        raise StoreError("tenant must be a non-empty string (the session / user scope)")
    return tenant.encode("utf-8", "surrogatepass")


def item_id(item_id: str) -> bytes:
    return item_id.encode("utf-8", "surrogatepass")


def to_record(item: ContextItem) -> bytes:
    data = encode_record(item, np.zeros(0, dtype=np.float32))["item"]
    return json.dumps(data, default=str, separators=(",", ":")).encode("ascii")


def to_item(record: Any) -> ContextItem:
    return decode_record({"item": json.loads(bytes(record)), "vec": ""})[0]


class ItemCache:
    """Decoded records by (tenant id, log position), least recently used first out. Records
    are immutable and never deleted, so a cached one can never be stale."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, int], ContextItem] = OrderedDict()
        self._lock = threading.Lock()

    def missing(self, tid: int, positions: Iterable[int]) -> list[int]:
        with self._lock:
            return [p for p in positions if (tid, p) not in self._items]

    def decode(self, tid: int, pos: int, record: Any) -> ContextItem:
        key = (tid, pos)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item
        if record is None:
            raise StoreError(f"record {pos} of tenant {tid} vanished while it was read; retry")
        item = to_item(record)
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item
