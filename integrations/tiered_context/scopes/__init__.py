"""Multi-agent scopes: a child agent sees its parent's shared blocks read-only, works in its
own scope, and hands back a diff (blocks added or retired), not a copy.

```python
from tiered_context.scopes import ContextScope

root = ContextScope(tenant="acme")
child = root.child("researcher")
```

Built only on the public `tiered_context.core` interfaces (`tests/unit/test_layout.py`
checks it); the modules here are private.
"""

from tiered_context.scopes._blocks import BlockKind, ContextBlock, MergeResult, OnConflict, ScopeDiff
from tiered_context.scopes._routing import ScopeRouter
from tiered_context.scopes._scope import ContextScope

__all__ = [
    "BlockKind",
    "ContextBlock",
    "ContextScope",
    "MergeResult",
    "OnConflict",
    "ScopeDiff",
    "ScopeRouter",
]
