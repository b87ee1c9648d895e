"""The cold tier (L3) in PostgreSQL with pgvector, shared by any number of worker processes.

```python
from tiered_context import TieredContext
from tiered_context.postgres import PostgresColdStore

store = PostgresColdStore("postgresql://app@db/app")    # creates its tables on first use
ctx = TieredContext(session_id="thread-42", store=store)
```

On LangGraph, `tiered_context.langchain.GraphStoreColdStore(postgres_store)` runs this
store on the ``PostgresStore``'s own connection. Install with
``pip install "tiered-context[postgres]"``.
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from tiered_context.errors import missing_extra

    raise missing_extra("psycopg", "postgres") from exc

from tiered_context.postgres._schema import SCHEMA_VERSION
from tiered_context.postgres._store import PostgresColdStore

__all__ = ["SCHEMA_VERSION", "PostgresColdStore"]
