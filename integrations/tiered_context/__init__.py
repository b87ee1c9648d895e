"""tiered-context: assemble what the model sees from a long history, under a token budget.

```python
from tiered_context import TieredContext
ctx = TieredContext(session_id="s1")
ctx.put("We moved the launch to 3 May.", role="user")
out = ctx.assemble("When is the launch?", budget=1000)
```
"""

from tiered_context.core.assembler import AssembledContext, AssemblyReport, ContextAssembler
from tiered_context.core.blocks import BlockKind, ContextBlock, MergeResult, ScopeDiff
from tiered_context.core.budget import Budget, LadderEvent, LadderLevel, ModelSize
from tiered_context.core.compress import Compressor, SelfInformationCompressor
from tiered_context.core.config import MemoryConfig
from tiered_context.core.embed import Embedder, MiniLMEmbedder, WordLlamaEmbedder
from tiered_context.core.items import ContextItem, Role, Tier
from tiered_context.core.facts import Fact, FactCheck, check_facts
from tiered_context.core.enums import StoreKind
from tiered_context.core.memory import Compaction, Compression, TieredContext
from tiered_context.core.namespace import Kind, Namespace
from tiered_context.core.routing import ScopeRouter
from tiered_context.core.scope import ContextScope
from tiered_context.core.scoring import PreferenceModel, Scorer, ScoreParts, ScoringConfig
from tiered_context.core.store import ColdStore, Hit, LocalColdStore
from tiered_context.core.summarize import (
    ExtractiveSummarizer,
    LLMSummarizer,
    Summarizer,
    SummaryConfig,
    SummaryError,
    SummaryRejected,
)
from tiered_context.core.tokens import TokenCounter
from tiered_context.errors import (
    BudgetError,
    ConfigError,
    DependencyError,
    DuplicateItemError,
    InputError,
    MergeConflict,
    ScopeError,
    StoreError,
    TenantError,
    TieredContextError,
)

__version__ = "0.1.0"

__all__ = [
    "AssembledContext",
    "AssemblyReport",
    "BlockKind",
    "Budget",
    "BudgetError",
    "ColdStore",
    "Compaction",
    "Compression",
    "Compressor",
    "ConfigError",
    "ContextAssembler",
    "ContextBlock",
    "ContextItem",
    "ContextScope",
    "DependencyError",
    "DuplicateItemError",
    "Embedder",
    "ExtractiveSummarizer",
    "Fact",
    "FactCheck",
    "Hit",
    "InputError",
    "Kind",
    "LLMSummarizer",
    "LadderEvent",
    "LadderLevel",
    "LocalColdStore",
    "MemoryConfig",
    "MergeConflict",
    "MergeResult",
    "MiniLMEmbedder",
    "ModelSize",
    "Namespace",
    "PreferenceModel",
    "Role",
    "ScopeDiff",
    "ScopeError",
    "ScopeRouter",
    "ScoreParts",
    "Scorer",
    "ScoringConfig",
    "SelfInformationCompressor",
    "StoreKind",
    "StoreError",
    "Summarizer",
    "SummaryConfig",
    "SummaryError",
    "SummaryRejected",
    "TenantError",
    "Tier",
    "TieredContext",
    "TieredContextError",
    "TokenCounter",
    "WordLlamaEmbedder",
    "__version__",
    "check_facts",
]
