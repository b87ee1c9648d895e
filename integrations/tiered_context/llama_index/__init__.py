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
    "CompressionPostprocessor": "postprocessors",
    "LlamaIndexEmbedder": "embeddings",
    "MediaTokens": "_convert",
    "MemoryView": "_select",
    "PriorityPostprocessor": "postprocessors",
    "ScopedAgentWorkflow": "workflow",
    "ScopedWorkflowMemory": "workflow",
    "SemanticCacheLLM": "cache",
    "TieredAssemblyEvent": "instrumentation",
    "TieredCompressionEvent": "instrumentation",
    "TieredEmbedding": "embeddings",
    "TieredFactBlock": "blocks",
    "TieredLadderEvent": "instrumentation",
    "TieredMemory": "memory",
    "TieredMemoryBlock": "blocks",
    "TieredRetriever": "retriever",
    "TokenBudgetPostprocessor": "postprocessors",
    "WorkflowScopes": "workflow",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
