"""`MemoryConfig`: everything a memory was built with, as one frozen value.

`TieredContext(...)` turns its keyword arguments into a `MemoryConfig` once; the memory
keeps it as `ctx.config`. "The same memory for another session, user or generation" is
made from that value (`ctx.sibling(session_id=...)`, `ctx.reset()`), never rebuilt field
by field, so no adapter can drop a setting (a summarizer, a scoring preset, a callback).

    >>> config = MemoryConfig(budget=Budget(max_tokens=2000), compaction="inline")
    >>> a = TieredContext(config=config, session_id="a")
    >>> b = a.sibling(session_id="b")        # same settings, same store, its own history
    >>> b.config is a.config
    True

The components (store, embedder, counter, ...) are shared objects: a config resolved by a
memory names the store it opened, so siblings share one archive (one journal, one
embedded Qdrant). Values left `None` take the offline defaults when the first memory
resolves the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tiered_context.core._budget import Budget, LadderEvent
from tiered_context.core._compress import SelfInformationCompressor
from tiered_context.core._forms import Compressor
from tiered_context.core._durable import read_json, write_json_atomic
from tiered_context.core._embed import Embedder, WordLlamaEmbedder
from tiered_context.core._enums import Compaction, Compression, StoreKind
from tiered_context.core._scoring import ScoringConfig
from tiered_context.core._store import ColdStore, LocalColdStore
from tiered_context.core._summarize import ExtractiveSummarizer, Summarizer, SummaryConfig
from tiered_context.core._tokens import TokenCounter
from tiered_context.errors import ConfigError, DependencyError

__all__ = ["MemoryConfig"]

#: The file in a memory directory that records how it was created (its store kind).
LAYOUT_FILE = "memory.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryConfig:
    """The settings of a memory (see `TieredContext` for what each one does).

    `path` or `store` (not both) says where the archive lives: neither, in memory;
    `path`, a directory on disk whose store kind (`store_kind`: ``"journal"``, the JSONL
    journal in the core, the default, or ``"qdrant"``, embedded Qdrant from the `[qdrant]`
    extra) is recorded in ``memory.json`` when the directory is created and read back ever
    after: a memory never changes format because a package was installed.
    """

    path: Path | None = None
    store: ColdStore | None = None
    store_kind: StoreKind | None = None  # None: what the directory recorded, else journal
    budget: Budget = Budget()
    counter: TokenCounter | None = None
    embedder: Embedder | None = None
    compressor: Compressor | None = None
    scoring: ScoringConfig | None = None
    compaction: Compaction = Compaction.BACKGROUND
    compression: Compression = Compression.ALL
    summarizer: Summarizer | None = None
    summary: SummaryConfig = SummaryConfig()
    on_event: Callable[[LadderEvent], None] | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, Budget)):
            raise ConfigError(f"budget must be a Budget or a positive int number of tokens, got {budget!r}")
        if isinstance(budget, int):
            object.__setattr__(self, "budget", Budget(max_tokens=budget))
        for name, enum in (("compaction", Compaction), ("compression", Compression), ("store_kind", StoreKind)):
            value = getattr(self, name)
            if value is None and name == "store_kind":
                continue
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                raise ConfigError(f"{name} must be one of {[e.value for e in enum]}, got {value!r}") from None
        if not isinstance(self.summary, SummaryConfig):
            raise ConfigError(f"summary must be a SummaryConfig, got {type(self.summary).__name__}")

    def replace(self, **changes: Any) -> "MemoryConfig":
        """A copy with `changes` (validated like the original)."""
        return replace(self, **changes)

    @property
    def resolved(self) -> bool:
        """True when every component is chosen (what a memory's `config` always is)."""
        return all(getattr(self, f) is not None for f in ("store", "counter", "embedder", "compressor", "summarizer", "scoring"))

    def resolve(self) -> "MemoryConfig":
        """Fill every default (open the store for `path`); a resolved config is returned as is."""
        if self.resolved:
            return self
        if self.store is not None and self.path is not None:
            raise ConfigError("pass either path= (the default store on disk) or store=, not both")
        counter = self.counter or TokenCounter()
        return replace(
            self,
            store=self.store or _open_store(self.path, self.store_kind),
            counter=counter,
            embedder=self.embedder or WordLlamaEmbedder(),
            compressor=self.compressor or SelfInformationCompressor(counter),
            scoring=self.scoring or ScoringConfig(),
            # the default summarizer embeds sentences with WordLlama whatever the memory's
            # embedder: centrality is a small part of its score, and a slow embedder would
            # slow every fold
            summarizer=self.summarizer or ExtractiveSummarizer(counter=counter),
        )

    def __repr__(self) -> str:
        """Short: the settings that differ from the defaults, components by type name."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == f.default:
                continue
            if f.name == "budget":
                text = f"{value.max_tokens} tok"
            elif isinstance(value, Enum):
                text = repr(value.value)
            elif f.name == "path":
                text = repr(str(value))
            else:
                text = type(value).__name__
            shown.append(f"{f.name}={text}")
        return f"MemoryConfig({', '.join(shown)})"



def _open_store(path: Path | None, kind: StoreKind | None) -> ColdStore:
    """The store of a memory directory, of the kind recorded in it (a new one: `kind`,
    default journal), and the record written when it was missing."""
    if path is None:
        return LocalColdStore()
    layout = read_json(path / LAYOUT_FILE, what="memory layout record") or {}
    recorded = layout.get("store")
    if recorded not in {k.value for k in StoreKind}:
        recorded = _infer_kind(path)  # made before the record existed, or the record was damaged
    if recorded is not None and kind is not None and kind is not StoreKind(recorded):
        raise ConfigError(f"{path} holds a {recorded!r} memory; open it with store_kind={recorded!r} (or leave it unset)")
    chosen = StoreKind(recorded) if recorded else (kind or StoreKind.JOURNAL)
    store = LocalColdStore(path) if chosen is StoreKind.JOURNAL else _plugin(chosen)(path)
    if layout.get("store") != chosen.value:
        write_json_atomic(path / LAYOUT_FILE, {"format": 1, "store": chosen.value})
    return store


def _plugin(kind: StoreKind) -> Callable[[Path], ColdStore]:
    """The factory a package registered for `kind` (entry point group ``tiered_context.stores``)."""
    found = [e for e in entry_points(group="tiered_context.stores") if e.name == kind.value]
    if not found:
        raise DependencyError(f"store_kind={kind.value!r} needs its extra: pip install \"tiered-context[{kind.value}]\"")
    try:
        return found[0].load()
    except ImportError as exc:
        raise DependencyError(f"store_kind={kind.value!r} needs its extra: pip install \"tiered-context[{kind.value}]\" "
                              f"({exc})") from exc


def _infer_kind(path: Path) -> str | None:
    if (path / "archive.jsonl").exists():
        return StoreKind.JOURNAL.value
    if (path / "qdrant").exists():
        return StoreKind.QDRANT.value
    return None
