"""The `Compressor` seam (L2) and the offline self-information compressor.

A compressed form is a new `ContextItem` with `source_ids=(original.id,)`, tier L2 and
the original's metadata, so it always traces back to the original, which stays in L3.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tiered_context.core.importance import word_surprisal
from tiered_context.core.items import ContextItem, Tier
from tiered_context.core.tokens import TokenCounter

__all__ = ["Compressor", "SelfInformationCompressor"]


@runtime_checkable
class Compressor(Protocol):
    """Makes shorter forms of items; returns one derived item per input, in order."""

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...


_PIECE = re.compile(r"`[^`]*`|\"[^\"]*\"|\S+")
_PROTECTED = re.compile(r"\d|^[A-Z]|^[`\"]")


class SelfInformationCompressor:
    """Drops the least informative words (unigram surprisal from `wordfreq`) until the
    item is `ratio` of its tokens. Numbers, capitalised names, quoted and code spans are
    never dropped; JSON and items under `min_tokens` are kept verbatim.

    >>> SelfInformationCompressor(TokenCounter()).compress([item], ratio=0.5)  # doctest: +SKIP
    """

    def __init__(self, counter: TokenCounter, *, min_tokens: int = 12) -> None:
        self.counter = counter
        self.min_tokens = min_tokens

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return [self._one(item, ratio) for item in items]

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return await asyncio.to_thread(self.compress, items, ratio)

    def _one(self, item: ContextItem, ratio: float) -> ContextItem:
        tokens = item.tokens or self.counter.count(item.text)
        text = item.text
        if tokens >= self.min_tokens and not _is_json(text):
            pieces = _PIECE.findall(text)
            keep = [True] * len(pieces)
            target = max(1, int(len(text) * ratio))
            length = sum(len(p) + 1 for p in pieces)
            order = sorted(
                (i for i, p in enumerate(pieces) if not _PROTECTED.search(p)),
                key=lambda i: word_surprisal(pieces[i].strip(".,!?;:()'").lower()),
            )
            for i in order:
                if length <= target:
                    break
                keep[i] = False
                length -= len(pieces[i]) + 1
            text = " ".join(p for p, k in zip(pieces, keep) if k)
        return ContextItem(
            id=f"{item.id}~L2",
            text=text,
            role=item.role,
            timestamp=item.timestamp,
            tokens=self.counter.count(text),
            tier=Tier.L2,
            importance=item.importance,
            pinned=item.pinned,
            metadata=item.metadata,
            source_ids=item.origin_ids,
            seq=item.seq,
        )


def _is_json(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped[:1] in ("{", "["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
