"""The Qdrant cold tier (L3) and the semantic LLM cache, embedded or on a server.

```python
from tiered_context import TieredContext
from tiered_context.qdrant import QdrantColdStore, SemanticCache

store = QdrantColdStore(path="./memdir")            # embedded (qdrant-edge-py), no server
ctx = TieredContext(session_id="s1", store=store)
cache = SemanticCache(store=store, tenant="user-7")  # LLM responses keyed by meaning
```

Install with ``pip install "tiered-context[qdrant]"``.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import qdrant_client  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("qdrant-client", "qdrant") from exc

from tiered_context.qdrant._engine import SCHEMA_VERSION, Engine, FusionMode
from tiered_context.qdrant._cache import CacheHit, SemanticCache
from tiered_context.qdrant._store import QdrantColdStore

__all__ = ["SCHEMA_VERSION", "CacheHit", "Engine", "FusionMode", "QdrantColdStore", "SemanticCache", "open_memory_dir"]


def open_memory_dir(path: "os.PathLike[str] | str") -> QdrantColdStore:
    """The store of a memory directory made with ``store_kind="qdrant"``: embedded Qdrant in
    ``<path>/qdrant`` (registered as the ``tiered_context.stores`` entry point ``qdrant``)."""
    return QdrantColdStore(path=Path(path) / "qdrant")
