"""LangChain adapters of tiered-context: ``pip install "tiered-context[langchain]"``.

```python
from langchain.agents import create_agent
from tiered_context.langchain import TieredContextMiddleware

agent = create_agent(model, tools, middleware=[TieredContextMiddleware(max_tokens=2000)])
```

`TieredSemanticCache` also needs ``tiered-context[qdrant]``; `TieredSummaryMemory` needs
``langchain-classic``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it. Modules load on first use, so importing
#: this package needs only langchain-core, not every other extra.
_EXPORTS = {
    "CallReport": "middleware",
    "LangChainEmbedder": "embeddings",
    "GraphStoreColdStore": "graph_store",
    "ScopedSubagent": "subagents",
    "SubagentResult": "subagents",
    "TieredChatMessageHistory": "history",
    "TieredContextMiddleware": "middleware",
    "TieredDocumentCompressor": "compressor",
    "TieredEmbeddings": "embeddings",
    "TieredRetriever": "retriever",
    "TieredSemanticCache": "cache",
    "TieredSummaryMemory": "classic",
    "budgeted_history": "history",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
