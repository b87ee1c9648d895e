"""`LMAttentionScorer` (and `LMSurprisalScorer`) with your own transformers model: a tiny random GPT-2 built here
(eager attention), so the path runs offline in CI without the SmolLM2 file."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiered_context import ContextItem, SelfInformationCompressor, TokenCounter  # noqa: E402
from tiered_context.errors import ConfigError  # noqa: E402
from tiered_context.lm_importance import LMAttentionScorer  # noqa: E402

TEXT = ("Jon said the interview at Gucci in Milan went really well and he starts the fashion "
        "internship on 3 May, which is honestly so exciting for him and for all of us.")
COUNTER = TokenCounter()


def _tiny(attn: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = dict.fromkeys(["<unk>", "<s>", "</s>", *TEXT.lower().replace(",", " ,").replace(".", " .").split()])
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=1, eos_token_id=2)
    config._attn_implementation = attn
    return GPT2LMHeadModel(config).eval(), tok


@pytest.fixture(scope="module")
def scorer() -> LMAttentionScorer:
    model, tok = _tiny("eager")
    return LMAttentionScorer(model=model, tokenizer=tok)


def test_word_scores_from_your_own_model(scorer: LMAttentionScorer) -> None:
    words = TEXT.split()
    bits = scorer.word_bits(words)
    assert len(bits) == len(words) and all(math.isfinite(b) and b >= 0.0 for b in bits)
    assert len(set(bits)) > 1  # attention differs across words
    assert scorer.word_bits(words) == bits  # cached, same answer
    assert "LMAttentionScorer(GPT2LMHeadModel" in repr(scorer) and scorer.backend == "transformers"


def test_as_the_compressors_scorer(scorer: LMAttentionScorer) -> None:
    item = ContextItem.create(TEXT, id="t1").evolve(tokens=COUNTER.count(TEXT))
    (form,) = SelfInformationCompressor(COUNTER, scorer=scorer).compress([item], 0.5)
    assert form.source_ids == ("t1",) and form.tokens < item.tokens
    for protected in ("Jon", "Gucci", "Milan", "3", "May"):
        assert protected in form.text.split()


def test_bad_setups_say_what_to_change() -> None:
    model, tok = _tiny("eager")
    with pytest.raises(ConfigError, match="together"):
        LMAttentionScorer(model=model)
    sdpa, tok = _tiny("sdpa")  # a fused kernel returns no attention weights
    with pytest.raises(ConfigError, match="attn_implementation='eager'"):
        LMAttentionScorer(model=sdpa, tokenizer=tok).word_bits(TEXT.split())


def test_surprisal_from_your_own_model_too() -> None:
    from tiered_context.lm_importance import LMSurprisalScorer

    model, tok = _tiny("sdpa")  # log-probabilities need no attention weights
    scorer = LMSurprisalScorer(model=model, tokenizer=tok)
    bits = scorer.word_bits(TEXT.split())
    assert scorer.backend == "transformers" and len(bits) == len(TEXT.split()) and min(bits) > 0.0
