"""`TokenCounter`: exact offline counts, model lookup, truncation, whole-message accounting."""

from __future__ import annotations

import json

import pytest
import quicktok
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiered_context import ConfigError, TokenCounter
from tiered_context.core._tokens import IMAGE_TOKENS, MESSAGE_OVERHEAD, NAME_OVERHEAD
from tiered_context.core import REPLY_PRIMING

SAMPLES = [
    "hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "We moved the Lisbon launch to 3 May 2024 (see ticket #4521).",
    "日本語のテキストと emoji 😀🚀",
    "def f(x):\n    return {'a': [1, 2, 3]}\n",
]


@pytest.fixture(scope="module")
def cl100k() -> TokenCounter:
    return TokenCounter()


@pytest.fixture(scope="module")
def o200k() -> TokenCounter:
    return TokenCounter("o200k_base")


# -- exact counts ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoding, text, ids",
    [
        # reference ids, as tiktoken produces them
        ("cl100k_base", "hello world", [15339, 1917]),
        ("cl100k_base", "Hello, world!", [9906, 11, 1917, 0]),
        ("o200k_base", "hello world", [24912, 2375]),
        ("o200k_base", "Hello, world!", [13225, 11, 2375, 0]),
    ],
)
def test_hand_known_counts(encoding: str, text: str, ids: list[int]) -> None:
    counter = TokenCounter(encoding)
    assert counter.count(text) == len(ids)
    assert list(quicktok.get_encoding(encoding).encode_ordinary(text)) == ids


def test_known_sentence_counts(cl100k: TokenCounter, o200k: TokenCounter) -> None:
    fox = "The quick brown fox jumps over the lazy dog."
    assert cl100k.count(fox) == 10
    assert o200k.count(fox) == 10
    assert cl100k.count("😀 emoji") == 3
    assert o200k.count("😀 emoji") == 2  # o200k has a bigger vocabulary


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("text", SAMPLES)
def test_counts_equal_quicktok(encoding: str, text: str) -> None:
    enc = quicktok.get_encoding(encoding)
    assert TokenCounter(encoding).count(text) == len(enc.encode_ordinary(text))


def test_empty_text_is_zero(cl100k: TokenCounter) -> None:
    assert cl100k.count("") == 0


def test_special_token_text_is_counted_as_ordinary_text(cl100k: TokenCounter) -> None:
    assert cl100k.count("<|endoftext|>") > 1  # never the single special id


def test_count_many_equals_count_on_both_paths(cl100k: TokenCounter) -> None:
    few = SAMPLES[:3]
    many = SAMPLES * 5  # > 16: the batched path
    assert cl100k.count_many(few) == [cl100k.count(t) for t in few]
    assert cl100k.count_many(many) == [cl100k.count(t) for t in many]
    assert cl100k.count_many([]) == []


# -- construction ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, encoding",
    [("gpt-4o", "o200k_base"), ("gpt-4o-mini", "o200k_base"), ("GPT-4o-2024-08-06", "o200k_base"),
     ("gpt-4", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("o1-mini", "o200k_base")],
)
def test_for_model(model: str, encoding: str) -> None:
    counter = TokenCounter.for_model(model)
    assert counter.name == encoding
    assert repr(counter) == f"TokenCounter({encoding!r})"


def test_unknown_model_is_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="from_tokenizer") as err:
        TokenCounter.for_model("my-private-model")
    assert "my-private-model" in str(err.value)


def test_unknown_encoding_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown encoding 'p50k_nope'"):
        TokenCounter("p50k_nope")


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        TokenCounter("nope")


def test_from_tokenizer_with_a_callable() -> None:
    counter = TokenCounter.from_tokenizer(lambda text: text.split(), name="words")
    assert counter.name == "words"
    assert counter.count("one two three") == 3
    assert counter.count("") == 0
    assert counter.count_many(["a b", "c"] * 10) == [2, 1] * 10
    assert counter.count_message({"role": "user", "content": "a b c"}) == MESSAGE_OVERHEAD + 1 + 3


def test_from_tokenizer_with_an_encode_object() -> None:
    class Tok:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(i) for i in ids)

    counter = TokenCounter.from_tokenizer(Tok())
    assert counter.name == "Tok"
    assert counter.count("abc") == 3
    assert counter.truncate("abcdefghij", 5, marker="~") == "abcd~"


def test_from_tokenizer_rejects_non_callables() -> None:
    with pytest.raises(ConfigError, match="callable"):
        TokenCounter.from_tokenizer(42)  # type: ignore[arg-type]


def test_from_tokenizer_rejects_an_encoding_name() -> None:
    with pytest.raises(ConfigError):
        TokenCounter.from_tokenizer("cl100k_base")  # type: ignore[arg-type]


# -- truncation -----------------------------------------------------------------------
def test_truncate_keeps_short_text_and_marks_cut_text(cl100k: TokenCounter) -> None:
    assert cl100k.truncate("hello world", 10) == "hello world"
    long = "word " * 100
    cut = cl100k.truncate(long, 10)
    assert cut.endswith(" […]") and cl100k.count(cut) <= 10
    assert long.startswith(cut[: -len(" […]")])


def test_truncate_to_zero(cl100k: TokenCounter) -> None:
    assert cl100k.count(cl100k.truncate("word " * 50, 0)) == 0


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=400
) | st.lists(st.sampled_from(["launch", " ", "😀", "日本", "é", "\n", "1234", "🚀🚀", "the"]), max_size=200).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, max_tokens=st.integers(0, 80), marker=st.sampled_from([" […]", "", " [truncated]"]))
def test_truncate_never_exceeds_max_tokens(cl100k: TokenCounter, text: str, max_tokens: int, marker: str) -> None:
    out = cl100k.truncate(text, max_tokens, marker=marker)
    assert cl100k.count(out) <= max_tokens
    if cl100k.count(text) <= max_tokens:
        assert out == text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT, max_tokens=st.integers(0, 40))
def test_truncate_without_decoder_never_exceeds_max_tokens(text: str, max_tokens: int) -> None:
    enc = quicktok.get_encoding("o200k_base")
    counter = TokenCounter.from_tokenizer(enc.encode_ordinary)  # a bare callable: no decode
    out = counter.truncate(text, max_tokens)
    assert counter.count(out) <= max_tokens
    marker = " […]"
    body = out[: -len(marker)] if out.endswith(marker) and out != text else out
    assert text.startswith(body)


def test_truncate_returns_a_prefix_of_the_text(cl100k: TokenCounter) -> None:
    for text in ("😀" * 50, "日本語のテキスト" * 20):
        for n in range(1, 15):
            out = cl100k.truncate(text, n)
            body = out[: -len(" […]")] if out.endswith(" […]") else out
            assert text.startswith(body), (n, out)


# -- messages -------------------------------------------------------------------------
TOOL_CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "C"})},
}


def test_plain_message_is_text_plus_framing(cl100k: TokenCounter) -> None:
    message = {"role": "user", "content": "hello world"}
    assert cl100k.count_message(message) == MESSAGE_OVERHEAD + cl100k.count("user") + 2


def test_name_is_counted(cl100k: TokenCounter) -> None:
    plain = {"role": "user", "content": "hi"}
    named = {**plain, "name": "ana"}
    assert cl100k.count_message(named) == cl100k.count_message(plain) + NAME_OVERHEAD + cl100k.count("ana")


def test_tool_calls_count_name_and_arguments(cl100k: TokenCounter) -> None:
    bare = {"role": "assistant", "content": None}
    with_call = {**bare, "tool_calls": [TOOL_CALL]}
    fn = TOOL_CALL["function"]
    expected = cl100k.count(fn["name"]) + cl100k.count(fn["arguments"]) + MESSAGE_OVERHEAD
    assert cl100k.count_message(with_call) == cl100k.count_message(bare) + expected
    two_calls = {**bare, "tool_calls": [TOOL_CALL, TOOL_CALL]}
    assert cl100k.count_message(two_calls) == cl100k.count_message(bare) + 2 * expected


def test_message_with_tool_calls_costs_more_than_without(cl100k: TokenCounter) -> None:
    text = {"role": "assistant", "content": "Let me check the weather."}
    assert cl100k.count_message({**text, "tool_calls": [TOOL_CALL]}) > cl100k.count_message(text)


def test_tool_call_arguments_as_dict_are_counted_as_json(cl100k: TokenCounter) -> None:
    args = {"city": "Paris", "days": 3}
    langchain_style = {"role": "assistant", "content": "", "tool_calls": [{"name": "forecast", "args": args}]}
    expected = cl100k.count("forecast") + cl100k.count(json.dumps(args, ensure_ascii=False)) + MESSAGE_OVERHEAD
    base = cl100k.count_message({"role": "assistant", "content": ""})
    assert cl100k.count_message(langchain_style) == base + expected


def test_tool_call_id_is_counted(cl100k: TokenCounter) -> None:
    result = {"role": "tool", "content": "22C and sunny"}
    with_id = {**result, "tool_call_id": "call_abc123"}
    assert cl100k.count_message(with_id) == cl100k.count_message(result) + cl100k.count("call_abc123")


def test_image_parts_cost_image_tokens() -> None:
    counter = TokenCounter(image_tokens=100)
    text_only = {"role": "user", "content": [{"type": "text", "text": "what is this?"}]}
    with_image = {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "image", "source": {"data": "AAAA"}},
    ]}
    assert counter.count_message(with_image) == counter.count_message(text_only) + 2 * 100
    assert TokenCounter().image_tokens == IMAGE_TOKENS


def test_thinking_is_counted(cl100k: TokenCounter) -> None:
    plain = {"role": "assistant", "content": "ok"}
    thought = "let me think about the launch date carefully"
    assert cl100k.count_message({**plain, "thinking": thought}) == cl100k.count_message(plain) + cl100k.count(thought)
    assert cl100k.count_message({**plain, "reasoning_content": thought}) == cl100k.count_message(plain) + cl100k.count(thought)
    block = {"role": "assistant", "content": [{"type": "thinking", "thinking": thought}, {"type": "text", "text": "ok"}]}
    assert cl100k.count_message(block) == cl100k.count_message(plain) + cl100k.count(thought)


def test_other_blocks_are_counted_as_json(cl100k: TokenCounter) -> None:
    block = {"type": "tool_use", "id": "t1", "input": {"q": "weather"}}
    message = {"role": "assistant", "content": [block]}
    base = cl100k.count_message({"role": "assistant", "content": None})
    assert cl100k.count_message(message) == base + cl100k.count(json.dumps(block, ensure_ascii=False))


def test_bytes_content_is_counted(cl100k: TokenCounter) -> None:
    assert cl100k.count_message({"role": "user", "content": b"hello world"}) == cl100k.count_message(
        {"role": "user", "content": "hello world"}
    )


def test_count_messages_adds_reply_priming(cl100k: TokenCounter) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "content": "22C", "tool_call_id": "call_abc123"},
    ]
    assert cl100k.count_messages(messages) == sum(cl100k.count_message(m) for m in messages) + REPLY_PRIMING
    assert cl100k.count_messages([]) == REPLY_PRIMING


def test_openai_cookbook_example(cl100k: TokenCounter) -> None:
    # OpenAI cookbook: [{"role": "user", "content": "hi"}] -> 3 framing + 1 role + 1 text + 3 priming
    assert cl100k.count_messages([{"role": "user", "content": "hi"}]) == 8
