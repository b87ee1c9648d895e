"""Test fakes for tiered-context users and our own tests. Never the product's defaults.

```python
from tiered_context import TieredContext
from tiered_context.testing import HashEmbedder
ctx = TieredContext(session_id="t", embedder=HashEmbedder())  # no model load, deterministic
```
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import numpy as np

from tiered_context.core import ContextItem, terms

__all__ = ["HashEmbedder", "FailingCompressor"]


class HashEmbedder:
    """Bag-of-terms hashed into `dim` buckets: texts sharing words get similar vectors."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for term in terms(text):
                out[row, int(hashlib.md5(term.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


class FailingCompressor:
    """A compressor that always raises: proves a failed compression loses nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        self.calls += 1
        raise RuntimeError("compressor unavailable (test fake)")

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        await asyncio.sleep(0)
        return self.compress(items, ratio)
