"""Text that is not prose: JSON compressed by structure, code and unspaced scripts detected.

The self-information compressor prunes words; that would break JSON, code and text in
scripts written without spaces between words (Chinese, Japanese, Thai). These helpers
tell such text apart and shorten JSON by its structure instead: null and empty fields
dropped, then long arrays and strings shortened with a marker ("… 12 more").
"""

from __future__ import annotations

import json
import re
from typing import Any

from tiered_context.core._tokens import TokenCounter

__all__ = ["compress_json", "looks_like_code", "mostly_unspaced", "parse_json"]

#: Scripts written without spaces between words: word pruning would cut words apart.
UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
_CODE_LINE = re.compile(r"^\s{4,}\S|^\t|[;{}]\s*$|^\s*(?:def|class|import|from|return|function|const|let|var|if|for|while)\b.*[:({=]|=>|::|#include")


def mostly_unspaced(text: str) -> bool:
    """Whether over a third of `text` is in a script written without spaces."""
    return bool(UNSPACED.search(text)) and len(UNSPACED.findall(text)) * 3 > len(text)


def compress_json(text: str, value: Any, target: int, counter: TokenCounter) -> str:
    """`value` (parsed from `text`) without null / empty fields, then with long arrays and
    strings shortened until it fits `target` tokens; `text` itself if nothing got shorter."""
    value = _drop_empty(value)
    out = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if counter.count(out) <= target:
        return out
    for items, chars in ((8, 400), (4, 200), (2, 120), (1, 60)):
        out = json.dumps(_shorten(value, items, chars), ensure_ascii=False, separators=(",", ":"))
        if counter.count(out) <= target:
            break
    return out if counter.count(out) < counter.count(text) else text


def parse_json(text: str) -> Any:
    """`text` parsed as JSON, or None if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def looks_like_code(text: str) -> bool:
    """Whether a third or more of the (2+) non-blank lines look like code."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) < 2:
        return False
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) * 3 >= len(lines)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def _shorten(value: Any, items: int, chars: int) -> Any:
    if isinstance(value, dict):
        return {k: _shorten(v, items, chars) for k, v in value.items()}
    if isinstance(value, list):
        head = [_shorten(v, items, chars) for v in value[:items]]
        return head + [f"… {len(value) - items} more"] if len(value) > items else head
    if isinstance(value, str) and len(value) > chars:
        return value[:chars] + "…"
    return value
