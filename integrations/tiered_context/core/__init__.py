"""The framework-free core of tiered-context: items, tokens, budget, scoring, stores,
compression, summaries and the assembler.

Applications import from `tiered_context`; integrations (the adapters, the stores,
`tiered_context.scopes`, your own ColdStore or Embedder) are written against the names
here. Every module in this package is private (`_assembler`, `_memory`, ...): import from
`tiered_context.core`, never from a module path. The core imports only the standard
library, numpy, quicktok, wordllama and wordfreq (`tests/unit/test_layout.py` checks its
import statements).
"""

from tiered_context.core._assembler import ContextAssembler
from tiered_context.core._blas import one_blas_thread
from tiered_context.core._budget import Budget, LadderEvent, LadderLevel, ModelSize
from tiered_context.core._compress import SelfInformationCompressor
from tiered_context.core._forms import Compressor, compressed_form
from tiered_context.core._config import MemoryConfig
from tiered_context.core._conversation import (
    OPENER_NOTE,
    RECALL_NOTE,
    RECALL_TAG,
    Turn,
    current_exchange,
    enforce,
    recalled_block,
)
from tiered_context.core._durable import disk_usage, free_bytes, fsync_dir, fsync_file, move_aside, read_json, write_atomic, write_json_atomic
from tiered_context.core._embed import Embedder, MiniLMEmbedder, WordLlamaEmbedder, WrappedEmbedder, normalize
from tiered_context.core._enums import Compaction, Compression, StoreKind
from tiered_context.core._facts import Fact, FactCheck, check_facts
from tiered_context.core._importance import load_languages, self_information
from tiered_context.core._items import ContextItem, Role, Tier, coerce_text
from tiered_context.core._records import DamagedRecord, decode_record, encode_record
from tiered_context.core._lexical import BM25Index, query_terms, terms
from tiered_context.core._llm_summarize import LLMSummarizer
from tiered_context.core._meaning import same_meaning
from tiered_context.core._memory import TieredContext, apply_feedback
from tiered_context.core._namespace import Kind, Namespace, check_id
from tiered_context.core._render import day_of, header, speaker
from tiered_context.core._result import AssembledContext, AssemblyReport
from tiered_context.core._scoring import PreferenceModel, ScoreParts, Scorer, ScoringConfig
from tiered_context.core._store import ColdStore, Hit, LocalColdStore, SearchResult, SharedTwins, SignalStats, ThreadedTwins, search_text
from tiered_context.core._summarize import (
    ExtractiveSummarizer,
    Summarizer,
    SummaryConfig,
    SummaryError,
    SummaryRejected,
)
from tiered_context.core._tokens import REPLY_PRIMING, TokenCounter
from tiered_context.core._validate import check_reserved, check_role, check_text, plain_metadata, to_timestamp

__all__ = [
    "AssembledContext",
    "AssemblyReport",
    "BM25Index",
    "Budget",
    "ColdStore",
    "Compaction",
    "Compression",
    "Compressor",
    "ContextAssembler",
    "ContextItem",
    "DamagedRecord",
    "Embedder",
    "ExtractiveSummarizer",
    "Fact",
    "FactCheck",
    "Hit",
    "Kind",
    "LLMSummarizer",
    "LadderEvent",
    "LadderLevel",
    "LocalColdStore",
    "MemoryConfig",
    "MiniLMEmbedder",
    "ModelSize",
    "Namespace",
    "PreferenceModel",
    "OPENER_NOTE",
    "RECALL_NOTE",
    "RECALL_TAG",
    "REPLY_PRIMING",
    "Role",
    "ScoreParts",
    "Scorer",
    "ScoringConfig",
    "SearchResult",
    "SelfInformationCompressor",
    "SharedTwins",
    "SignalStats",
    "ThreadedTwins",
    "StoreKind",
    "Summarizer",
    "SummaryConfig",
    "SummaryError",
    "SummaryRejected",
    "Tier",
    "TieredContext",
    "TokenCounter",
    "Turn",
    "WordLlamaEmbedder",
    "WrappedEmbedder",
    "apply_feedback",
    "check_facts",
    "check_id",
    "check_reserved",
    "check_role",
    "check_text",
    "coerce_text",
    "compressed_form",
    "current_exchange",
    "day_of",
    "decode_record",
    "disk_usage",
    "free_bytes",
    "encode_record",
    "enforce",
    "fsync_dir",
    "fsync_file",
    "header",
    "load_languages",
    "move_aside",
    "normalize",
    "one_blas_thread",
    "plain_metadata",
    "query_terms",
    "read_json",
    "recalled_block",
    "same_meaning",
    "search_text",
    "self_information",
    "speaker",
    "terms",
    "to_timestamp",
    "write_atomic",
    "write_json_atomic",
]
