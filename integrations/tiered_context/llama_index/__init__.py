"""LlamaIndex adapters of tiered-context: ``pip install "tiered-context[llama-index]"``.

```python
from tiered_context.llama_index import TieredMemory

memory = TieredMemory.from_defaults(token_limit=2000, session_id="s1")
agent.run("...", memory=memory)  # FunctionAgent, AgentWorkflow, chat engines
```

`SemanticCacheLLM` also needs ``tiered-context[qdrant]``.
"""

from __future__ import annotations

from tiered_context._lazy import lazy_exports

#: public name -> the module that defines it. Modules load on first use, so importing
#: this package needs only llama-index-core, not every other extra.
_EXPORTS = {
    "CompressionPostprocessor": "_postprocessors",
    "LlamaIndexEmbedder": "_embeddings",
    "MediaTokens": "_convert",
    "MemoryView": "_select",
    "PriorityPostprocessor": "_postprocessors",
    "ScopedAgentWorkflow": "_workflow",
    "ScopedWorkflowMemory": "_workflow",
    "SemanticCacheLLM": "_cache",
    "TieredAssemblyEvent": "_instrumentation",
    "TieredCompressionEvent": "_instrumentation",
    "TieredEmbedding": "_embeddings",
    "TieredFactBlock": "_blocks",
    "TieredLadderEvent": "_instrumentation",
    "TieredMemory": "_memory",
    "TieredMemoryBlock": "_blocks",
    "TieredRetriever": "_retriever",
    "TokenBudgetPostprocessor": "_postprocessors",
    "WorkflowScopes": "_workflow",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
