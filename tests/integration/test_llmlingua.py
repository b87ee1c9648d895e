"""`LLMLinguaCompressor` with tiny models built from configs in the test: fully offline.

LLMLingua-2 gets a 1-layer BERT token classifier, LLMLingua a 1-layer GPT-2; both are
random (the test is about the code path, provenance and the offline guarantees, not
about which words a trained model keeps). Skipped when the `llmlingua` extra is missing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("llmlingua")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tiered_context import Budget, ContextItem, Tier, TieredContext, TokenCounter  # noqa: E402
from tiered_context.errors import ConfigError, DependencyError  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

WORDS = ("the a of and to in we moved lisbon launch may after security review team budget office hello world "
         "is was it i you meeting notes caroline went support group yesterday for on at with this that").split()
TEXT = ("We moved the Lisbon launch to 3 May 2024 after the security review, and the team budget meeting "
        "notes were in the office with Caroline.")


def _wordpiece(directory: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *".,!?'", *(f"##{c}" for c in chars)]
    ids = {t: i for i, t in enumerate(dict.fromkeys(vocab))}
    tk = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tk.decoder = decoders.WordPiece()
    tok = BertTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(directory)
    return len(ids)


@pytest.fixture(scope="module")
def tiny_llmlingua2(tmp_path_factory) -> Path:
    """A random 1-layer BERT token classifier. LLMLingua-2 recognises its tokenizer family
    by name, so the directory is named like the multilingual BERT it imitates."""
    from transformers import BertConfig, BertForTokenClassification

    directory = tmp_path_factory.mktemp("models") / "tiny-llmlingua-2-bert-base-multilingual-cased"
    size = _wordpiece(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, architectures=["BertForTokenClassification"])
    BertForTokenClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A random 1-layer GPT-2 with a word-level tokenizer, for LLMLingua (v1)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    vocab = {t: i for i, t in enumerate(dict.fromkeys(["<unk>", "<s>", "</s>", *WORDS, *"0123456789.,!?"]))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=1, eos_token_id=2, architectures=["GPT2LMHeadModel"])
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def item(text: str = TEXT, **meta) -> ContextItem:
    return ContextItem.create(text, id="it-1", role="user", timestamp=1_714_000_000, metadata={"dia_id": "D1:1", **meta})


def test_llmlingua2_compresses_with_provenance_offline(tiny_llmlingua2: Path) -> None:
    from tiered_context.llmlingua import LLMLinguaCompressor

    compressor = LLMLinguaCompressor(tiny_llmlingua2, version=2)
    original = item()
    (form,) = compressor.compress([original], ratio=0.5)
    counter = TokenCounter()
    assert form.source_ids == ("it-1",) and form.tier == Tier.L2 and form.id != original.id
    assert form.metadata == original.metadata and form.role == original.role and form.timestamp == original.timestamp
    assert 0 < form.tokens == counter.count(form.text) < counter.count(original.text)
    assert "3" in form.text and "2024" in form.text  # digits are always kept
    assert asyncio.run(compressor.acompress([original], 0.5))[0].text == form.text  # deterministic
    short = ContextItem.create("ok thanks", id="s")
    assert compressor.compress([short], 0.5)[0].text == "ok thanks"  # under min_tokens: verbatim


def test_llmlingua1_with_a_tiny_causal_lm(tiny_causal_lm: Path) -> None:
    from tiered_context.llmlingua import LLMLinguaCompressor

    compressor = LLMLinguaCompressor(tiny_causal_lm, version=1)
    (form,) = compressor.compress([item()], ratio=0.4)
    assert form.source_ids == ("it-1",)
    assert 0 < form.tokens < TokenCounter().count(TEXT)


def test_as_the_memorys_compressor(tiny_llmlingua2: Path) -> None:
    from tiered_context.llmlingua import LLMLinguaCompressor

    ctx = TieredContext(session_id="ll", embedder=HashEmbedder(), compaction="inline", budget=Budget(max_tokens=60),
                        compressor=LLMLinguaCompressor(tiny_llmlingua2))
    for i in range(16):
        ctx.put(f"Turn {i}: the team moved the Lisbon budget meeting to {i} May after the security review.")
    l2 = [w for w in ctx.working_set if w.tier == Tier.L2]
    assert l2 and all(len(w.source_ids) == 1 for w in l2)
    assert len(ctx) == 16 and ctx.assemble("Lisbon budget", budget=120).tokens <= 120


def test_a_missing_model_is_not_downloaded(tmp_path: Path) -> None:
    from tiered_context.llmlingua import LLMLinguaCompressor

    with pytest.raises(ConfigError, match="offline"):  # the conftest would also refuse the network
        LLMLinguaCompressor("microsoft/llmlingua-2-xlm-roberta-large-meetingbank-not-cached")
    with pytest.raises(ConfigError, match="bert-base-multilingual-cased"):
        LLMLinguaCompressor(tmp_path)  # a directory whose name LLMLingua-2 cannot read


def test_no_tiktoken_file_is_a_clear_error(monkeypatch, tiny_llmlingua2: Path) -> None:
    import tiered_context.llmlingua as mod

    monkeypatch.setattr(mod, "_tiktoken_dir", lambda cache: None)
    with pytest.raises(DependencyError, match="cl100k_base"):
        mod.LLMLinguaCompressor(tiny_llmlingua2)


def test_offline_resources_come_from_installed_wheels(tmp_path: Path) -> None:
    from tiered_context.llmlingua import offline_resources

    found = offline_resources(tmp_path)
    assert found["tiktoken"] is not None
    assert (found["tiktoken"] / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").is_file()
