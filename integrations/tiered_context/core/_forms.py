"""The L2 seam: the `Compressor` protocol and the compressed forms it makes.

A compressed form is a new `ContextItem` with `source_ids=(original.id,)`, tier L2 and
the original's metadata, so it always traces back to the original, which stays in L3.
The default compressor is `core._compress.SelfInformationCompressor`; LLMLingua's is
`tiered_context.llmlingua`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tiered_context.core._items import ContextItem, Tier

__all__ = ["Compressor", "compressed_form", "form_id"]


@runtime_checkable
class Compressor(Protocol):
    """Makes shorter forms of items; returns one derived item per input, in order.

    `ratio` is the share of tokens to keep (0.5 = 2x compression). A form may come back
    no shorter than its original (nothing safe to drop); callers check `tokens`.
    """

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]: ...


def form_id(origin_id: str, ratio: float) -> str:
    """The id of the compressed form of `origin_id` at `ratio` (stable across calls)."""
    return f"{origin_id}~L2@{ratio:.2f}"


def compressed_form(item: ContextItem, text: str, tokens: int, ratio: float) -> ContextItem:
    """`item`'s compressed form: new id, L2, same metadata, `source_ids` = its origin."""
    return ContextItem(
        id=form_id(item.origin_ids[0], ratio),
        text=text,
        role=item.role,
        timestamp=item.timestamp,
        tokens=tokens,
        tier=Tier.L2,
        importance=item.importance,
        pinned=item.pinned,
        metadata=item.metadata,
        source_ids=item.origin_ids,
        seq=item.seq,
    )
