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

from tiered_context._lazy import lazy_exports

#: public name -> the module that defines it. Modules load on first use, so importing
#: this package needs only langchain-core, not every other extra.
_EXPORTS = {
    "CallReport": "_middleware",
    "LangChainEmbedder": "_embeddings",
    "Placement": "_middleware",
    "GraphStoreColdStore": "_graph_store",
    "ScopedSubagent": "_subagents",
    "SubagentResult": "_subagents",
    "TieredChatMessageHistory": "_history",
    "TieredContextMiddleware": "_middleware",
    "TieredDocumentCompressor": "_compressor",
    "TieredEmbeddings": "_embeddings",
    "TieredRetriever": "_retriever",
    "TieredSemanticCache": "_cache",
    "TieredSummaryMemory": "_classic",
    "budgeted_history": "_history",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
