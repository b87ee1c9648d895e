"""Budgets: the hard limit of an assembled context and the soft-limit ladder.

The *hard* limit (`max_tokens`) is what `assemble` never crosses. The *ladder* watches
the working set (L1 + L2, the items kept ready for every call) against
`working_set_tokens`:

| working set | what happens |
|---|---|
| >= 1.5x | alert: `on_event` callback and a `LadderEvent` in the next report |
| >= 2.0x | the oldest L1 items are compressed into L2 as one batch, off the hot path, and the oldest L2 items retire to L3, until the working set is back at 1.0x |
| >= 2.5x | emergency prune, synchronous: lowest priority first, out of the working set (still archived in L3) until below 2.0x |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from tiered_context.errors import ConfigError, positive_int

__all__ = ["Budget", "LadderEvent", "LadderLevel", "ModelSize"]


class LadderLevel(str, Enum):
    ALERT = "alert"
    COMPRESS = "compress"
    PRUNE = "prune"


@dataclass(frozen=True, slots=True, kw_only=True)
class LadderEvent:
    """One step of the ladder: which level, the working set size and what moved."""

    level: LadderLevel
    working_tokens: int
    limit_tokens: int
    item_ids: tuple[str, ...] = ()
    detail: str = ""


class ModelSize(str, Enum):
    """Context-window classes: small models get aggressive compression, large ones verbatim."""

    SMALL = "small"  # <= 32k window
    MEDIUM = "medium"  # <= 128k
    LARGE = "large"  # > 128k


_PRESETS: dict[ModelSize, dict[str, float]] = {
    # share of the window given to memory, L2 compression ratio (kept / original)
    ModelSize.SMALL: {"share": 0.25, "ratio": 0.35},
    ModelSize.MEDIUM: {"share": 0.2, "ratio": 0.5},
    ModelSize.LARGE: {"share": 0.15, "ratio": 0.7},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """How many tokens an assembled context may use, and when the working set is compacted.

    Setup and use::

        Budget(max_tokens=2000)                      # working set defaults to 2x that
        Budget.for_context_window(8192)              # small-model preset: 2048 tokens, ratio 0.35
        Budget.for_model_size("large", max_tokens=32_000)

    `compression_ratio` is the share of tokens L2 keeps of an original (0.35 keeps about
    a third). `recent_items` are the latest turns always offered verbatim.
    """

    max_tokens: int = 2000
    working_set_tokens: int | None = None
    alert_at: float = 1.5
    compress_at: float = 2.0
    prune_at: float = 2.5
    compression_ratio: float = 0.5
    recent_items: int = 2

    def __post_init__(self) -> None:
        positive_int("max_tokens", self.max_tokens)
        if self.working_set_tokens is not None and self.working_set_tokens <= 0:
            raise ConfigError("working_set_tokens must be positive (or None for 2 x max_tokens)")
        if not 1.0 <= self.alert_at <= self.compress_at <= self.prune_at:
            raise ConfigError(
                "the ladder needs 1.0 <= alert_at <= compress_at <= prune_at "
                f"(got {self.alert_at}, {self.compress_at}, {self.prune_at})"
            )
        if not 0.05 <= self.compression_ratio <= 1.0:
            raise ConfigError(f"compression_ratio must be in [0.05, 1.0], got {self.compression_ratio}")
        if self.recent_items < 0:
            raise ConfigError("recent_items must be >= 0")

    @property
    def working_limit(self) -> int:
        """The 1.0x mark of the ladder, in tokens."""
        return self.working_set_tokens or 2 * self.max_tokens

    def level(self, working_tokens: int) -> LadderLevel | None:
        """Which rung `working_tokens` stands on (None below the alert)."""
        ratio = working_tokens / self.working_limit
        if ratio >= self.prune_at:
            return LadderLevel.PRUNE
        if ratio >= self.compress_at:
            return LadderLevel.COMPRESS
        if ratio >= self.alert_at:
            return LadderLevel.ALERT
        return None

    def with_max_tokens(self, max_tokens: int) -> "Budget":
        from dataclasses import replace

        return replace(self, max_tokens=max_tokens)

    @classmethod
    def for_model_size(cls, size: ModelSize | Literal["small", "medium", "large"], *, max_tokens: int) -> "Budget":
        try:
            preset = _PRESETS[ModelSize(size)]
        except ValueError:
            choices = ", ".join(repr(m.value) for m in ModelSize)
            raise ConfigError(f"unknown model size {size!r}; use one of {choices}") from None
        return cls(max_tokens=max_tokens, compression_ratio=preset["ratio"])

    @classmethod
    def for_context_window(cls, window: int) -> "Budget":
        """The preset for a model with a `window`-token context (e.g. 8192, 32768, 131072)."""
        if window < 1024:
            raise ConfigError(f"a context window of {window} tokens is too small; pass Budget(max_tokens=...) directly")
        size = ModelSize.SMALL if window <= 32_768 else ModelSize.MEDIUM if window <= 131_072 else ModelSize.LARGE
        preset = _PRESETS[size]
        return cls(max_tokens=int(window * preset["share"]), compression_ratio=preset["ratio"])
