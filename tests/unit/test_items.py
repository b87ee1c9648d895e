"""`ContextItem`: immutability, content coercion, validation, ids, provenance, repr."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone

import pytest

from tiered_context import ContextItem, InputError, Role, Tier
from tiered_context.core import coerce_text


def test_item_is_immutable() -> None:
    item = ContextItem.create("We moved the launch to 3 May.", timestamp=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.text = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.tier = Tier.L2  # type: ignore[misc]
    with pytest.raises(TypeError):
        item.metadata["k"] = "v"  # type: ignore[index]


def test_metadata_is_copied_not_aliased() -> None:
    meta = {"speaker": "Ana"}
    item = ContextItem.create("hello", metadata=meta, timestamp=1.0)
    meta["speaker"] = "Bob"
    assert item.metadata["speaker"] == "Ana"


def test_evolve_returns_a_new_item_and_keeps_the_old() -> None:
    item = ContextItem.create("hello", timestamp=1.0)
    later = item.evolve(tier=Tier.L2, tokens=5)
    assert (item.tier, item.tokens) == (Tier.L1, 0)
    assert (later.tier, later.tokens, later.id) == (Tier.L2, 5, item.id)


def test_defaults_and_role_values() -> None:
    item = ContextItem.create("hi", role=Role.ASSISTANT, timestamp=1.0)
    assert item.role == "assistant"
    assert item.tier == Tier.L1 and not item.is_derived and not item.pinned
    assert ContextItem.create("hi", role="critic", timestamp=1.0).role == "critic"  # custom roles kept


def test_utf8_bytes_are_decoded() -> None:
    assert ContextItem.create("café ☕".encode(), timestamp=1.0).text == "café ☕"


def test_invalid_utf8_bytes_become_replacement_characters() -> None:
    item = ContextItem.create(b"ok \xff\xfe done", timestamp=1.0)
    assert item.text.startswith("ok ") and item.text.endswith(" done")
    assert "\ufffd" in item.text
    assert ContextItem.create(bytearray(b"\xc3("), timestamp=1.0).text == "\ufffd("


def test_multimodal_parts_keep_text_and_placeholder_images() -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        "and a plain string part",
    ]
    item = ContextItem.create(content, timestamp=1.0)
    lines = item.text.split("\n")
    assert lines == ["What is in this picture?", "[image_url]", "and a plain string part"]
    assert "base64" not in item.text


def test_part_without_type_or_text_gets_generic_placeholder() -> None:
    assert coerce_text([{"source": "x"}]) == "[text]"


@pytest.mark.parametrize("content", [object(), 42, None, {"role": "user"}, 3.5])
def test_non_text_content_is_an_input_error_that_says_what_to_pass(content: object) -> None:
    with pytest.raises(InputError) as err:
        ContextItem.create(content, timestamp=1.0)
    message = str(err.value)
    assert type(content).__name__ in message
    assert "pass str" in message


def test_unsupported_part_type_is_an_input_error() -> None:
    with pytest.raises(InputError, match="content part of type int"):
        ContextItem.create(["ok", 7], timestamp=1.0)


def test_input_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ContextItem.create(object(), timestamp=1.0)


@pytest.mark.parametrize("ts", [math.inf, -math.inf, math.nan])
def test_non_finite_timestamp_is_rejected(ts: float) -> None:
    with pytest.raises(InputError, match="finite"):
        ContextItem.create("hello", timestamp=ts)
    with pytest.raises(InputError, match="finite"):
        ContextItem(id="x", text="hello", timestamp=ts)


@pytest.mark.parametrize("ts", ["2024-01-01", True, [1]])
def test_timestamp_of_wrong_type_is_rejected(ts: object) -> None:
    with pytest.raises(InputError, match="timestamp"):
        ContextItem.create("hello", timestamp=ts)  # type: ignore[arg-type]


def test_datetime_timestamps_are_accepted() -> None:
    when = datetime(2024, 5, 3, 12, 0, tzinfo=timezone.utc)
    item = ContextItem.create("launch day", timestamp=when)
    assert item.timestamp == when.timestamp()
    assert isinstance(item.timestamp, float)


def test_default_timestamp_is_now() -> None:
    import time

    before = time.time()
    item = ContextItem.create("now")
    assert before <= item.timestamp <= time.time()


def test_metadata_with_circular_reference_is_rejected() -> None:
    meta: dict = {}
    meta["self"] = meta
    with pytest.raises(InputError, match="JSON-serialisable"):
        ContextItem.create("hello", metadata=meta, timestamp=1.0)


def test_metadata_with_non_string_keys_is_rejected() -> None:
    with pytest.raises(InputError, match="JSON-serialisable"):
        ContextItem.create("hello", metadata={"nested": {(1, 2): "tuple key"}}, timestamp=1.0)


def test_ids_are_deterministic_from_content() -> None:
    a = ContextItem.create("same text", role="user", timestamp=10.0, metadata={"k": 1})
    b = ContextItem.create("same text", role="user", timestamp=10.0, metadata={"k": 1})
    assert a.id == b.id and a.id.startswith("it_")
    assert a == b
    others = {
        ContextItem.create("other text", role="user", timestamp=10.0, metadata={"k": 1}).id,
        ContextItem.create("same text", role="assistant", timestamp=10.0, metadata={"k": 1}).id,
        ContextItem.create("same text", role="user", timestamp=11.0, metadata={"k": 1}).id,
        ContextItem.create("same text", role="user", timestamp=10.0, metadata={"k": 2}).id,
    }
    assert a.id not in others and len(others) == 4


def test_explicit_id_is_kept() -> None:
    assert ContextItem.create("x", id="turn-17", timestamp=1.0).id == "turn-17"


def test_empty_id_is_rejected() -> None:
    with pytest.raises(InputError, match="id"):
        ContextItem(id="", text="x")


def test_text_must_be_str_on_direct_construction() -> None:
    with pytest.raises(InputError, match="ContextItem.create"):
        ContextItem(id="x", text=b"bytes")  # type: ignore[arg-type]


def test_origin_ids_of_original_and_derived_items() -> None:
    original = ContextItem.create("the original", timestamp=1.0)
    assert original.origin_ids == (original.id,)
    derived = ContextItem.create(
        "summary", role=Role.SUMMARY, timestamp=1.0, source_ids=["a", "b"], tier=Tier.L2
    )
    assert derived.is_derived
    assert derived.source_ids == ("a", "b") and isinstance(derived.source_ids, tuple)
    assert derived.origin_ids == ("a", "b")


def test_tier_is_coerced_from_string() -> None:
    assert ContextItem(id="x", text="y", tier="L3").tier is Tier.L3  # type: ignore[arg-type]


def test_repr_is_short_and_useful() -> None:
    item = ContextItem.create("We moved the Lisbon launch to 3 May, after the review.", timestamp=1.0)
    text = repr(item)
    assert item.id in text and "user" in text and "L1" in text and "tok" in text
    assert "..." in text and len(text) < 140
    derived = item.evolve(id="d", source_ids=(item.id,), tier=Tier.L2)
    assert "from=1" in repr(derived)


def test_items_are_hashable() -> None:
    item = ContextItem.create("hello", timestamp=1.0)
    assert len({item, item}) == 1
