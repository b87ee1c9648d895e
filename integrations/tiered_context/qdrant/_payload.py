"""ContextItem <-> Qdrant payload, and JSON-safe payload values.

Qdrant payloads are JSON. Metadata values that JSON cannot hold are stored as their
`str()` (datetimes, sets, custom objects), tuples and sets become lists, non-finite
floats become strings ("nan", "inf"), non-string keys become strings. This matches the
in-process journal (`json.dumps(..., default=str)`), so both stores return the same
metadata for the same input.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

from tiered_context.core import ContextItem, Tier, search_text, terms

__all__ = ["doc_terms", "from_payload", "json_safe", "payload_terms", "PAYLOAD_TERMS", "to_payload"]

_MAX_DEPTH = 32


def json_safe(value: Any, _depth: int = 0) -> Any:
    """`value` with everything JSON cannot represent turned into strings / lists."""
    if _depth > _MAX_DEPTH:
        return str(value)
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((json_safe(v, _depth + 1) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return json_safe(value.item(), _depth + 1)
        except Exception:  # noqa: BLE001 - fall back to str below
            pass
    return str(value)


def to_payload(tenant: str, item: ContextItem, length: int) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "id": item.id,
        "text": item.text,
        "role": item.role,
        "timestamp": float(item.timestamp),
        "tokens": int(item.tokens),
        "tier": item.tier.value,
        "importance": float(item.importance) if math.isfinite(item.importance) else 0.0,
        "pinned": bool(item.pinned),
        "metadata": json_safe(dict(item.metadata)),
        "source_ids": list(item.source_ids),
        "seq": int(item.seq),
        "form": "derived" if item.is_derived else "original",  # keyword: edge cannot match bools
        "len": int(length),
    }


def from_payload(payload: Mapping[str, Any]) -> ContextItem:
    return ContextItem(
        id=payload["id"], text=payload["text"], role=payload["role"], timestamp=payload["timestamp"],
        tokens=payload["tokens"], tier=Tier(payload["tier"]), importance=payload["importance"],
        pinned=payload["pinned"], metadata=dict(payload.get("metadata") or {}),
        source_ids=tuple(payload.get("source_ids") or ()), seq=payload["seq"],
    )


def doc_terms(item: ContextItem) -> list[str]:
    """What BM25 indexes of `item`: the core's `search_text` (speaker, then text)."""
    return terms(search_text(item))


def payload_terms(payload: Mapping[str, Any]) -> list[str]:
    """`doc_terms` of a stored point from its "id", "text" and "metadata" fields alone
    (`PAYLOAD_TERMS`: a scroll for terms reads only these)."""
    return doc_terms(ContextItem(id=payload["id"], text=payload["text"], metadata=payload.get("metadata") or {}))


PAYLOAD_TERMS = ["id", "text", "metadata"]
