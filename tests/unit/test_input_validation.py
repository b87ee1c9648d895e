"""Issue 13.5: bad input is refused at the door, and cannot break the room.

The door is `ContextItem.create` (every `put` and adapter goes through it): timestamps,
ids, roles, text and metadata are checked there and refused with an `InputError` that
says what to pass, never a raw RecursionError / TypeError / AttributeError. Behind it,
records an older release archived unchecked are skipped by `assemble` and named in
`report.skipped`; they never break an assembly.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiered_context import ConfigError, ContextItem, InputError, LocalColdStore, TieredContext
from tiered_context.core import _validate as items_module, day_of, normalize
from tiered_context.core._render import render
from tiered_context.testing import HashEmbedder

T0 = 1_714_000_000  # 2024-04-24, POSIX seconds


def make(**kwargs) -> ContextItem:
    return ContextItem.create(kwargs.pop("text", "hello"), **{"timestamp": T0, **kwargs})


# -- timestamps --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "unit"),
    [
        (1_714_000_000_000, "milliseconds"),  # JavaScript Date.now()
        (1.714e12, "milliseconds"),
        (1_714_000_000_000_000, "microseconds"),
        (1_714_000_000_000_000_000, "nanoseconds"),  # time.time_ns()
    ],
)
def test_ms_us_ns_epochs_are_converted_to_seconds_and_the_unit_is_logged(
    value: float, unit: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(items_module, "_converted_units", set())
    with caplog.at_level(logging.WARNING, logger="tiered_context"):
        item = make(timestamp=value)
        make(timestamp=value)  # the conversion is logged once per unit
    assert item.timestamp == pytest.approx(T0, abs=1e-3)
    assert [r.getMessage() for r in caplog.records if unit in r.getMessage()] != []
    assert len([r for r in caplog.records if unit in r.getMessage()]) == 1
    assert day_of(item) == "2024-04-24"


@pytest.mark.parametrize("value", [0, 1.0, 17, -1.5, T0, 253_402_300_799, -62_135_596_800])
def test_seconds_from_year_1_to_9999_are_kept_as_given(value: float) -> None:
    assert make(timestamp=value).timestamp == value


@pytest.mark.parametrize(
    "value",
    [
        253_402_300_800,  # 10000-01-01 as seconds
        -62_135_596_801,  # before 0001-01-01
        5e11,  # year 17814 as seconds, 1985 as ms: ambiguous, refused
        1e21,  # not an epoch in any unit
        10**5000,  # more digits than Python will print
    ],
    ids=["year-10000", "year-0", "ambiguous-5e11", "1e21", "10**5000"],
)
def test_timestamps_outside_years_1_to_9999_are_refused_saying_what_to_pass(value: float) -> None:
    with pytest.raises(InputError, match="seconds") as err:
        make(timestamp=value)
    assert "time.time()" in str(err.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused(value: float) -> None:
    with pytest.raises(InputError, match="finite"):
        make(timestamp=value)


@pytest.mark.parametrize("value", [True, False, "1714000000", b"1", [T0], {"t": T0}, date(2024, 5, 3), object()])
def test_non_numeric_timestamps_are_refused_saying_what_to_pass(value: object) -> None:
    with pytest.raises(InputError, match="POSIX seconds .* or a datetime"):
        make(timestamp=value)


def test_datetimes_are_accepted_aware_exactly_and_naive_as_local_time() -> None:
    aware = datetime(2024, 5, 3, 12, 0, tzinfo=timezone.utc)
    assert make(timestamp=aware).timestamp == aware.timestamp()
    assert make(timestamp=aware.astimezone(timezone(timedelta(hours=-7)))).timestamp == aware.timestamp()
    naive = datetime(2024, 5, 3, 12, 0)
    assert make(timestamp=naive).timestamp == naive.timestamp()  # Python's rule: naive = local time
    first = make(timestamp=datetime(1, 1, 1, tzinfo=timezone.utc))
    last = make(timestamp=datetime.max.replace(tzinfo=timezone.utc))
    assert first.timestamp == items_module.MIN_TIMESTAMP and day_of(last) == "9999-12-31"
    with pytest.raises(InputError, match="outside years 1..9999"):  # 0000-12-31 in UTC
        make(timestamp=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))


# -- ids, roles, text --------------------------------------------------------------------
@pytest.mark.parametrize("value", [5, 1.5, b"turn-1", ("a",), "", uuid.UUID(int=1)])
def test_non_string_or_empty_ids_are_refused(value: object) -> None:
    with pytest.raises(InputError, match="id must be a non-empty str"):
        make(id=value)
    with pytest.raises(InputError, match=r"source_ids\[0\]"):
        make(source_ids=(value,))


@pytest.mark.parametrize("value", [5, None, "", b"user", ["user"]])
def test_non_string_roles_are_refused(value: object) -> None:
    with pytest.raises(InputError, match="role must be a non-empty str"):
        make(role=value)


@pytest.mark.parametrize("where", ["text", "id", "role", "metadata value", "metadata key", "nested metadata"])
def test_lone_surrogates_are_refused_wherever_they_are(where: str) -> None:
    bad = "ok \ud83d half an emoji"
    kwargs = {
        "text": {"text": bad},
        "id": {"id": bad},
        "role": {"role": bad},
        "metadata value": {"metadata": {"note": bad}},
        "metadata key": {"metadata": {bad: 1}},
        "nested metadata": {"metadata": {"a": [{"b": bad}]}},
    }[where]
    with pytest.raises(InputError, match="lone surrogate") as err:
        make(**kwargs)
    if where == "nested metadata":
        assert "metadata['a'][0]['b']" in str(err.value)


@pytest.mark.parametrize(
    "text",
    ["nul \x00 inside", "bell \x07 and escape \x1b[31m", "RTL \u202egnp.exe", "עברית ومرحبا", "emoji 🚀👩‍👩‍👧",
     "combining e\u0301", "private \ue000 and last \U0010fffd", "zero\u200bwidth"],
)
def test_any_valid_unicode_is_accepted_and_assembles(hash_ctx: TieredContext, text: str) -> None:
    item = hash_ctx.put(text, timestamp=T0, metadata={"speaker": "Ana \u202e", "note": text})
    assert item.text == text
    out = hash_ctx.assemble(text, budget=200)
    assert item.id in {i.id for i in out.items} and not out.report.skipped


# -- metadata ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({"tool_call_ids": 12345}, "tool_call_ids"),
        ({"tool_call_ids": "call_1"}, "tool_call_ids"),  # a str, not a list of str
        ({"tool_call_ids": [1, 2]}, "tool_call_ids"),
        ({"tool_call_ids": ["ok", None]}, "tool_call_ids"),
        ({"tool_call_id": 7}, "tool_call_id"),
        ({"tool_call_id": ["call_1"]}, "tool_call_id"),
        ({"speaker": {"first": "Ana"}}, "speaker"),
        ({"name": 3}, "name"),
        ({"first_seq": "3"}, "first_seq"),
        ({"last_seq": True}, "last_seq"),
        ({"lc_message": "not a dict"}, "lc_message"),
    ],
)
def test_reserved_metadata_keys_are_type_checked(metadata: dict, key: str) -> None:
    with pytest.raises(InputError, match=f"metadata\\['{key}'\\] must be") as err:
        make(metadata=metadata)
    assert "got" in str(err.value)


def test_well_typed_reserved_keys_are_accepted() -> None:
    item = make(metadata={"tool_call_ids": ("c1", "c2"), "tool_call_id": None, "speaker": "Ana", "first_seq": 3})
    assert item.metadata["tool_call_ids"] == ("c1", "c2") and item.metadata["speaker"] == "Ana"


def _nested(levels: int, container: str) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = {"k": value} if container == "dict" else [value]
    return value


@pytest.mark.parametrize("container", ["dict", "list"])
def test_deep_metadata_is_refused_naming_the_path(container: str) -> None:
    make(metadata={"deep": _nested(30, container)})  # 31 levels with metadata itself: fine
    for levels in (40, 5000):  # 5000: past Python's recursion limit
        with pytest.raises(InputError, match="deeper than 32 levels") as err:
            make(metadata={"deep": _nested(levels, container)})
        assert str(err.value).startswith("metadata['deep']")


def test_circular_metadata_is_refused_naming_the_path() -> None:
    loop: dict = {"a": 1}
    loop["self"] = loop
    with pytest.raises(InputError, match=r"metadata\['x'\]\['self'\] contains itself"):
        make(metadata={"x": loop})
    ring: list = [1]
    ring.append([ring])
    with pytest.raises(InputError, match="circular"):
        make(metadata={"ring": ring})
    shared = {"v": 1}  # the same object twice is not a cycle
    assert make(metadata={"a": shared, "b": [shared, shared]}).metadata["b"] == [{"v": 1}, {"v": 1}]


@pytest.mark.parametrize("key", [1, None, 2.5, ("a", "b"), b"k"])
def test_non_string_metadata_keys_are_refused_naming_the_path(key: object) -> None:
    with pytest.raises(InputError, match=r"metadata\['outer'\] has a key of type .* keys are str"):
        make(metadata={"outer": {key: "v"}})


def test_metadata_that_is_not_plain_data_is_refused_or_stored_as_the_archive_stores_it() -> None:
    when = datetime(2024, 5, 3, tzinfo=timezone.utc)
    item = make(metadata={"when": when, "n": np.int64(3), "f": np.float32(0.5), "tags": {"b", "a"},
                          "id": uuid.UUID(int=1), "pair": (1, 2)})
    assert item.metadata == {"when": str(when), "n": 3, "f": 0.5, "tags": ["a", "b"],
                             "id": str(uuid.UUID(int=1)), "pair": (1, 2)}
    assert type(item.metadata["n"]) is int
    with pytest.raises(InputError, match="bytes"):
        make(metadata={"blob": b"\x00\x01"})
    with pytest.raises(InputError, match="beyond 64 bits"):
        make(metadata={"big": 2**64})
    with pytest.raises(InputError, match="metadata must be a dict"):
        make(metadata=[("a", 1)])

    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(InputError, match=r"metadata\['h'\] \(Hostile\) cannot be stored"):
        make(metadata={"h": Hostile()})


def test_importance_must_be_a_finite_number() -> None:
    for value in (math.nan, math.inf, "high", True):
        with pytest.raises(InputError, match="importance"):
            make(importance=value)


def test_checked_applies_the_door_to_an_item_built_directly() -> None:
    raw = ContextItem(id="old", text="hi", timestamp=1.7e12, metadata={"k": 1}, seq=4, tokens=2)
    assert raw.checked().timestamp == pytest.approx(1.7e9) and raw.checked().seq == 4
    with pytest.raises(InputError, match="tool_call_ids"):
        ContextItem(id="old", text="hi", metadata={"tool_call_ids": 12345}).checked()


# -- behind the door: old archives may already hold poison ------------------------------
def _poison() -> list[ContextItem]:
    """Records as the previous release could archive them, bypassing today's door."""
    return [
        ContextItem(id="old-tools", text="Lisbon launch: the tool call", timestamp=T0 + 10,
                    metadata={"tool_call_ids": 12345}, seq=90),
        ContextItem(id="old-speaker", text="Lisbon launch: said by nobody", timestamp=T0 + 20,
                    metadata={"speaker": "\udc80"}, seq=91),
        ContextItem(id="old-text", text="Lisbon launch \ud800 half a pair", timestamp=T0 + 30, seq=92),
    ]


def _tenant(ctx: TieredContext) -> str:
    namespace = getattr(ctx, "namespace", None)
    return namespace.key if namespace is not None else ctx.session_id


def test_poisoned_records_in_the_store_are_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    store = LocalColdStore()
    ctx = TieredContext(session_id="victim", embedder=HashEmbedder(), store=store, compaction="inline")
    good = [ctx.put(f"Lisbon launch update {n}: moved to {n + 1} May.", timestamp=T0 + 100 + n) for n in range(3)]
    poison = _poison()
    # an old record with a millisecond timestamp: not poison any more, rendered without a date
    ms = ContextItem(id="old-ms", text="Lisbon launch, stamped by Date.now()", timestamp=1.7e12, seq=93)
    store.add(_tenant(ctx), [*poison, ms], normalize(HashEmbedder().embed(["Lisbon launch"] * 4)))

    with caplog.at_level(logging.DEBUG, logger="tiered_context"):
        out = ctx.assemble("Lisbon launch", budget=1000)
        again = ctx.assemble("When is the Lisbon launch?", budget=1000)

    assert {i.id for i in good} | {"old-ms"} <= {i.id for i in out.items}
    assert set(out.report.skipped) == {p.id for p in poison} == set(again.report.skipped)
    assert "tool_call_ids" in out.report.skipped["old-tools"]
    assert "surrogate" in out.report.skipped["old-speaker"] and "surrogate" in out.report.skipped["old-text"]
    assert all(len(reason) <= 200 and "\n" not in reason for reason in out.report.skipped.values())
    assert "55840" not in out.text and "Date.now()" in out.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "old-" in r.getMessage()]
    assert sorted(r.args[0] for r in warnings) == sorted(p.id for p in poison)  # once each, not per assembly
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    ctx.close()


def test_poisoned_records_in_a_reopened_archive_do_not_break_assemble(tmp_path) -> None:
    path = tmp_path / "archive"
    first = LocalColdStore(path)
    ctx = TieredContext(session_id="s", embedder=HashEmbedder(), store=first, compaction="inline")
    good = ctx.put("We moved the Lisbon launch to 3 May.", timestamp=T0)
    tenant = _tenant(ctx)
    ctx.close()
    first.close()  # a store passed in is the caller's to close
    store = LocalColdStore(path)  # as the previous release wrote them: at the next sequence numbers
    store.add(tenant, [p.evolve(seq=1 + n) for n, p in enumerate(_poison()[:2])],
              normalize(HashEmbedder().embed(["Lisbon launch"] * 2)))
    store.close()

    reopened = TieredContext(session_id="s", embedder=HashEmbedder(), path=path, compaction="inline")
    out = reopened.assemble("Lisbon launch", budget=500)
    assert good.id in {i.id for i in out.items}
    assert set(out.report.skipped) == {"old-tools", "old-speaker"}
    reopened.put("And the Porto launch is on 9 May.", timestamp=T0 + 60)
    assert "Porto" in reopened.assemble("Porto launch", budget=500).text
    reopened.close()


def test_a_query_with_a_lone_surrogate_is_an_input_error(hash_ctx: TieredContext) -> None:
    hash_ctx.put("We moved the Lisbon launch to 3 May.", timestamp=T0)
    with pytest.raises(InputError, match="query holds a lone surrogate"):
        hash_ctx.assemble("launch \ud800?", budget=200)


def test_put_runs_the_door_on_items_built_directly(hash_ctx: TieredContext) -> None:
    with pytest.raises(InputError, match="tool_call_ids"):
        hash_ctx.put(ContextItem(id="raw", text="a tool call", metadata={"tool_call_ids": 12345}))
    assert hash_ctx.put(ContextItem(id="ms", text="stamped in ms", timestamp=1.7e12)).timestamp == 1.7e9
    for metadata in (5, [1], "a=1"):
        with pytest.raises(InputError, match="metadata must be a dict"):
            hash_ctx.put_many([{"content": "x", "metadata": metadata}])


def test_render_survives_timestamps_no_date_can_hold() -> None:
    items = [ContextItem(id=f"t{n}", text=f"line {n}", timestamp=ts, seq=n)
             for n, ts in enumerate([0.0, T0, 1.7e12, 1.7e18, -1e15])]
    text = render(items)
    assert text.count("[") == 1 and "line 4" in text  # only the real date gets a header


# -- budgets -----------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [1000.0, True, False, 0, -5, "1000", math.nan])
def test_assemble_budget_must_be_a_positive_int(hash_ctx: TieredContext, budget: object) -> None:
    hash_ctx.put("We moved the Lisbon launch to 3 May.", timestamp=T0)
    with pytest.raises(ConfigError, match="budget must be a positive int"):
        hash_ctx.assemble("launch", budget=budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [1000.0, True, "1000"])
def test_memory_budget_must_be_a_budget_or_positive_int(budget: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        TieredContext(session_id="b", embedder=HashEmbedder(), budget=budget)  # type: ignore[arg-type]


# -- the property: refused at the door, or assembles -------------------------------------
_chars = st.characters(codec=None, categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co"])
_text = st.text(_chars, max_size=40)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text)
_key = st.one_of(st.sampled_from(["tool_call_ids", "tool_call_id", "speaker", "name", "first_seq", "note"]),
                 _text, _text, st.integers())  # mostly str keys, so most examples get past the door
_metadata = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_key, inner, max_size=3),
                         max_leaves=12)
_timestamp = st.one_of(st.none(), st.floats(), st.integers(min_value=-(10**21), max_value=10**21),
                       st.datetimes(timezones=st.just(timezone.utc)))


def test_any_input_is_refused_with_input_error_or_assembles() -> None:
    ctx = TieredContext(session_id="property", embedder=HashEmbedder(), compaction="inline")

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=_text, metadata=st.dictionaries(_key, _metadata, max_size=4), timestamp=_timestamp,
           role=st.one_of(st.sampled_from(["user", "assistant", "tool"]), _text))
    def check(text: str, metadata: dict, timestamp: object, role: str) -> None:
        try:
            item = ctx.put(text, metadata=metadata, timestamp=timestamp, role=role)
        except InputError:
            return
        out = ctx.assemble(text or "anything", budget=300)
        assert not out.report.skipped  # whatever the door lets in, the room can hold
        assert out.tokens <= 300 and item.id

    check()
    ctx.close()
