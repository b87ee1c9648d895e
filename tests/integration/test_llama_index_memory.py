"""`TieredMemory` against real LlamaIndex message types: budget, bundles, retrieval,
sessions, generations, persistence, serialisation, async twins."""

from __future__ import annotations

import asyncio
import pickle

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import (  # noqa: E402
    AudioBlock,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms import MockLLM  # noqa: E402

from tiered_context import ConfigError, LocalColdStore  # noqa: E402
from tiered_context.llama_index._convert import tool_call_ids, tool_result_id  # noqa: E402
from tiered_context.llama_index import TieredMemory  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

NEEDLE = "We moved the Lisbon launch to 3 May, after the security review."


def make(token_limit: int = 400, **kwargs) -> TieredMemory:
    kwargs.setdefault("embedder", HashEmbedder())
    kwargs.setdefault("compaction", "inline")
    return TieredMemory.from_defaults(token_limit=token_limit, **kwargs)


def long_history(memory: TieredMemory, turns: int = 60, tools_every: int = 5) -> None:
    memory.put(ChatMessage(role="system", content="You are a travel assistant."))
    memory.put(ChatMessage(role="user", content=NEEDLE))
    memory.put(ChatMessage(role="assistant", content="Noted: the Lisbon launch is on 3 May."))
    for i in range(turns):
        memory.put(ChatMessage(role="user", content=f"Filler question {i} about lunch, coffee and the weather."))
        if i % tools_every == 0:
            memory.put(ChatMessage(role="assistant", blocks=[
                ToolCallBlock(tool_call_id=f"call-{i}", tool_name="weather", tool_kwargs={"city": "Paris", "day": i}),
            ]))
            memory.put(ChatMessage(role="tool", content=f"Sunny, {20 + i % 7} degrees.", additional_kwargs={"tool_call_id": f"call-{i}"}))
        memory.put(ChatMessage(role="assistant", content=f"Filler answer {i}: nothing special."))


def has_evidence(messages: list[ChatMessage]) -> bool:
    return any("Lisbon" in (m.content or "") and "3 May" in (m.content or "") for m in messages[:-1])


def assert_well_formed(messages: list[ChatMessage]) -> None:
    """No orphaned tool result, every call followed by all its results, user first."""
    calls_seen: set[str] = set()
    for i, m in enumerate(messages):
        if m.role == MessageRole.TOOL:
            assert tool_result_id(m) in calls_seen, f"orphaned tool message at {i}"
        calls_seen.update(tool_call_ids(m))
    for i, m in enumerate(messages):
        for call in tool_call_ids(m):
            later = {tool_result_id(x) for x in messages[i + 1 :] if x.role == MessageRole.TOOL}
            assert call in later, f"call {call} without its result"
    first = next(m for m in messages if m.role != MessageRole.SYSTEM)
    assert first.role == MessageRole.USER


def test_get_fits_budget_keeps_latest_and_retrieves_old_evidence():
    memory = make(300)
    long_history(memory)
    memory.put(ChatMessage(role="user", content="When is the Lisbon launch?"))
    out = memory.get()
    assert memory.count_tokens(out) <= 300
    texts = [m.content for m in out]
    assert texts[-1] == "When is the Lisbon launch?"
    assert has_evidence(out), "the relevant old turn comes back (verbatim or compressed)"
    assert out[0].role == MessageRole.SYSTEM  # pinned
    assert_well_formed(out)
    assert memory.history_tokens > 4 * memory.count_tokens(out)
    assert len(memory.get_all()) == 3 + 60 * 2 + 12 * 2 + 1


def test_get_input_steers_retrieval():
    memory = make(200)
    long_history(memory)
    memory.put(ChatMessage(role="user", content="thanks"))
    assert has_evidence(memory.get(input="Lisbon launch date"))
    assert has_evidence(memory.get(input=ChatMessage(role="user", content="Lisbon launch?")))


@pytest.mark.parametrize("limit", [60, 90, 150, 250, 400])
def test_tool_bundles_never_split_at_any_budget(limit):
    memory = make(limit)
    long_history(memory, turns=30, tools_every=2)
    memory.put(ChatMessage(role="user", content="What was the weather on day 4?"))
    out = memory.get()
    assert memory.count_tokens(out) <= limit
    assert out[-1].content == "What was the weather on day 4?"
    assert_well_formed(out)


def test_current_tool_turn_is_verbatim_and_never_starts_with_a_tool_message():
    memory = make(120)
    long_history(memory, turns=10)
    memory.put(ChatMessage(role="user", content="Weather in Paris?"))
    call = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="now", tool_name="weather", tool_kwargs={"city": "Paris"})])
    result = ChatMessage(role="tool", content="Rain, 12 degrees.", additional_kwargs={"tool_call_id": "now"})
    memory.put_messages([call, result])
    out = memory.get(input="Weather in Paris?")
    assert out[-2:] == [call, result]
    assert_well_formed(out)


def test_latest_message_longer_than_limit_comes_back_alone():
    memory = make(50)
    memory.put(ChatMessage(role="user", content="short"))
    memory.put(ChatMessage(role="user", content="word " * 200))
    out = memory.get()
    assert len(out) == 1 and out[0].content.startswith("word word")


def test_token_counts_include_tool_calls_thinking_and_media():
    memory = make(1000)
    counter = memory.counter
    plain = memory.count_tokens([ChatMessage(role="assistant", content="ok")])
    call = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="c1", tool_name="search", tool_kwargs={"query": "word " * 50})])
    assert memory.count_tokens([call]) > counter.count("word " * 50)
    thinking = ChatMessage(role="assistant", blocks=[ThinkingBlock(content="let me reason about this carefully"), TextBlock(text="ok")])
    assert memory.count_tokens([thinking]) == plain + counter.count("let me reason about this carefully")
    image = ChatMessage(role="user", blocks=[ImageBlock(url="http://example.com/a.png"), TextBlock(text="ok")])
    assert memory.count_tokens([image]) == memory.count_tokens([ChatMessage(role="user", content="ok")]) + counter.image_tokens
    audio = ChatMessage(role="user", blocks=[AudioBlock(url="http://example.com/a.mp3")])
    doc = ChatMessage(role="user", blocks=[DocumentBlock(url="http://example.com/a.pdf", document_mimetype="application/pdf")])
    assert memory.count_tokens([audio]) >= 256 and memory.count_tokens([doc]) >= 2048
    kwargs_call = ChatMessage(role="assistant", content="", additional_kwargs={
        "tool_calls": [{"id": "x", "type": "function", "function": {"name": "search", "arguments": '{"q": "Lisbon launch"}'}}]})
    assert memory.count_tokens([kwargs_call]) > plain
    assert tool_call_ids(kwargs_call) == ["x"]


def test_messages_round_trip_with_blocks_and_kwargs():
    memory = make(2000)
    msg = ChatMessage(role="assistant", additional_kwargs={"foo": {"bar": [1, 2]}}, blocks=[
        TextBlock(text="Here"), ThinkingBlock(content="hmm", additional_information={"signature": "abc"}),
        ImageBlock(image=b"\x89PNG....", image_mimetype="image/png"),
        ToolCallBlock(tool_call_id="c9", tool_name="lookup", tool_kwargs={"id": 7}),
    ])
    memory.put(ChatMessage(role="user", content="show me"))
    memory.put(msg)
    memory.put(ChatMessage(role="tool", content="found", additional_kwargs={"tool_call_id": "c9", "name": "lookup"}))
    assert memory.get_all()[1] == msg
    assert memory.get()[1] == msg


def test_multimodal_message_is_stored_and_costs_its_image():
    memory = make(100)
    memory.put(ChatMessage(role="user", blocks=[TextBlock(text="what is in this picture?"), ImageBlock(url="http://example.com/cat.png")]))
    out = memory.get()
    assert isinstance(out[0].blocks[1], ImageBlock)
    assert memory.count_tokens(out) >= memory.counter.image_tokens


def test_initial_token_count():
    memory = make(100)
    memory.put(ChatMessage(role="user", content="hello there"))
    assert len(memory.get(initial_token_count=10)) == 1
    with pytest.raises(ValueError, match="Initial token count exceeds token limit"):
        memory.get(initial_token_count=101)


def test_sessions_are_isolated_on_a_shared_store():
    store = LocalColdStore()
    a = make(300, session_id="alice", store=store)
    b = make(300, session_id="bob", store=store)
    a.put(ChatMessage(role="user", content="My locker code is 4471."))
    b.put(ChatMessage(role="user", content="I like green tea."))
    b.put(ChatMessage(role="user", content="What is my locker code?"))
    assert all("4471" not in (m.content or "") for m in b.get())
    assert [m.content for m in a.get_all()] == ["My locker code is 4471."]
    again = make(300, session_id="alice", store=store)  # same session, same store: resumed
    assert [m.content for m in again.get_all()] == ["My locker code is 4471."]


def test_chat_store_key_is_the_session_and_chat_store_is_refused():
    memory = TieredMemory.from_defaults(chat_store_key="k1", embedder=HashEmbedder())
    assert memory.session_id == "k1" and memory.context.session_id == "k1"
    with pytest.raises(ConfigError, match="path="):
        TieredMemory.from_defaults(chat_store=object())


def test_from_defaults_llm_sets_the_limit_like_chat_memory_buffer():
    memory = TieredMemory.from_defaults(llm=MockLLM(), embedder=HashEmbedder())
    assert memory.token_limit == int(MockLLM().metadata.context_window * 0.75)
    assert TieredMemory.from_defaults(llm=MockLLM(), token_limit=500, embedder=HashEmbedder()).token_limit == 500


def test_set_extends_or_starts_a_new_generation_and_reset_empties():
    memory = make(500)
    first = [ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="b")]
    memory.set(first)
    memory.set(first + [ChatMessage(role="user", content="c")])  # an extension: one put
    assert [m.content for m in memory.get_all()] == ["a", "b", "c"]
    assert memory.generation == 0
    memory.set([ChatMessage(role="user", content="x")])
    assert [m.content for m in memory.get_all()] == ["x"]
    assert memory.generation == 1 and memory.context.session_id == memory.session_id
    assert NEEDLE not in str(memory.get())
    memory.reset()
    assert memory.get_all() == [] and memory.get() == []
    memory.reset()  # already empty: the generation is reused
    assert memory.generation == 2


def test_nothing_is_deleted_by_reset():
    store = LocalColdStore()
    memory = make(300, session_id="s", store=store)
    memory.put(ChatMessage(role="user", content=NEEDLE))
    memory.reset()
    assert memory.get_all() == []
    assert [i.text for i in store.items("s")] == [NEEDLE]


def test_persistence_on_disk_resumes_history_and_generation(tmp_path):
    memory = make(300, session_id="p", path=tmp_path)
    memory.put(ChatMessage(role="user", content="old"))
    memory.reset()
    memory.put(ChatMessage(role="user", content=NEEDLE))
    memory.close()
    reopened = make(300, session_id="p", path=tmp_path)
    assert [m.content for m in reopened.get_all()] == [NEEDLE]
    reopened.reset()
    reopened.close()
    assert make(300, session_id="p", path=tmp_path).get_all() == []


def test_serialisation_round_trips():
    memory = make(300, session_id="ser")
    memory.put(ChatMessage(role="user", content=NEEDLE))
    for clone in (
        TieredMemory.from_string(memory.to_string()),
        TieredMemory.from_dict(memory.to_dict()),
        pickle.loads(pickle.dumps(memory)),
    ):
        assert clone.token_limit == 300 and clone.session_id == "ser"
        assert [m.content for m in clone.get_all()] == [NEEDLE]


def test_async_twins_are_native_and_agree_with_sync():
    memory = make(250)
    long_history(memory, turns=20)

    async def run():
        await memory.aput(ChatMessage(role="user", content="When is the Lisbon launch?"))
        got = await memory.aget()
        assert got == memory.get()
        await memory.aput_messages([ChatMessage(role="assistant", content="3 May.")])
        assert (await memory.aget_all())[-1].content == "3 May."
        await memory.aset([ChatMessage(role="user", content="fresh")])
        assert [m.content for m in await memory.aget_all()] == ["fresh"]
        await memory.areset()
        assert await memory.aget() == []

    asyncio.run(run())
    for name in ("aget", "aput", "aput_messages", "aset", "areset", "aget_all"):
        assert name in TieredMemory.__dict__, f"{name} must not fall back to BaseMemory's thread wrapper"


def test_compaction_ladder_keeps_gets_within_budget():
    memory = make(150, working_set_tokens=200)
    long_history(memory, turns=10)
    for i in range(30):
        memory.put(ChatMessage(role="user", content=(
            f"Turn {i}: we talked at length about the quarterly planning offsite, which venue might suit "
            "the team, whether the catering should be vegetarian, and how the agenda could be shorter.")))
    memory.put(ChatMessage(role="user", content="When is the Lisbon launch?"))
    tiers = {i.tier.value for i in memory.context.working_set}
    assert "L2" in tiers, "the working set was compacted"
    out = memory.get()
    assert memory.count_tokens(out) <= 150
    assert_well_formed(out)


def test_select_and_feedback_take_the_result_explicitly():
    memory = make(300)
    long_history(memory, turns=10)
    memory.put(ChatMessage(role="user", content="When is the Lisbon launch?"))
    view = memory.select()
    assert view.messages == memory.get()
    out = view.assembled
    assert out is not None and out.report.scores and memory.last_assembled is not None
    memory.feedback(view, [out.items[0].id])
    memory.feedback(out, used=[out.items[0].id])
    with pytest.raises(TypeError, match="select"):
        memory.feedback([out.items[0].id], [])


def test_context_factory_configures_the_core_for_every_generation():
    from tiered_context import TieredContext

    store = LocalColdStore()
    made = []

    def factory(session_id: str) -> TieredContext:
        made.append(session_id)
        return TieredContext(session_id=session_id, store=store, embedder=HashEmbedder(), compaction="inline")

    memory = TieredMemory.from_defaults(token_limit=200, session_id="f", context_factory=factory)
    memory.put(ChatMessage(role="user", content=NEEDLE))
    memory.reset()  # the factory's memory resets itself: every setting kept
    memory.put(ChatMessage(role="user", content="again"))
    assert made == ["f"] and [m.content for m in memory.get_all()] == ["again"]
    assert memory.generation == 1 and memory.context.store is store
    with pytest.raises(ConfigError, match="context_factory"):
        TieredMemory.from_defaults(context_factory=factory, store=store)
    with pytest.raises(ValueError, match="session_id"):  # a ConfigError, wrapped by pydantic
        TieredMemory.from_defaults(session_id="g", context_factory=lambda t: TieredContext(session_id="other", embedder=HashEmbedder()))


# -- issue 13: one state model (ids, generations, the legacy layout) ----------------------
HOSTILE = ["victim~1", "victim#summaries", "victim#state", "a/b", "50%", "tab\tand\x00nul", "é 🙂", "x" * 10_000, "[1,null]"]


def test_a_session_named_like_a_legacy_generation_never_reads_the_victim():
    store = LocalColdStore()
    victim = make(300, session_id="victim", store=store)
    victim.put(ChatMessage(role="user", content=NEEDLE))
    victim.reset()
    victim.put(ChatMessage(role="user", content="the victim's second generation"))
    for sid in ("victim~1", "victim~0", "victim#g1"):
        attacker = make(300, session_id=sid, store=store)
        assert attacker.get_all() == [] and NEEDLE not in str(attacker.get(input="Lisbon launch"))
    assert [m.content for m in make(300, session_id="victim", store=store).get_all()] == ["the victim's second generation"]


@pytest.mark.parametrize("sid", HOSTILE)
def test_hostile_ids_are_accepted_and_stay_apart(sid):
    store = LocalColdStore()
    plain = make(300, session_id="victim", store=store)
    plain.put(ChatMessage(role="user", content=NEEDLE))
    other = make(300, session_id=sid, store=store)
    other.put(ChatMessage(role="user", content=f"secret of {sid[:20]}"))
    other.reset()
    other.put(ChatMessage(role="user", content="after reset"))
    assert [m.content for m in make(300, session_id=sid, store=store).get_all()] == ["after reset"]
    assert [m.content for m in make(300, session_id="victim", store=store).get_all()] == [NEEDLE]


@pytest.mark.parametrize("bad", ["", "\ud800", "y" * 20_000])
def test_ids_that_cannot_be_stored_are_refused_clearly(bad):
    with pytest.raises((ConfigError, ValueError), match="session_id"):
        make(300, session_id=bad)


def test_reset_uses_the_core_generation_and_writes_no_sidecar(tmp_path):
    memory = make(300, session_id="s", path=tmp_path)
    memory.put(ChatMessage(role="user", content="old"))
    memory.reset()
    assert memory.generation == 1 and memory.context.generation == 1
    memory.close()
    assert not (tmp_path / "tiered_memory_sessions.json").exists()
    reopened = make(300, session_id="s", path=tmp_path)
    assert reopened.generation == 1 and reopened.get_all() == []


def test_config_is_one_value_shared_by_generations():
    from tiered_context import MemoryConfig

    config = MemoryConfig(store=LocalColdStore(), embedder=HashEmbedder(), compaction="inline", compression="off")
    memory = TieredMemory.from_defaults(token_limit=300, session_id="c", config=config)
    memory.put(ChatMessage(role="user", content="x"))
    memory.reset()
    assert memory.context.config.compression.value == "off" and memory.context.store is config.store
    with pytest.raises(ConfigError, match="config"):
        TieredMemory.from_defaults(config=config, store=LocalColdStore())


def _legacy_archive(path, sidecar: bytes | None):
    """An archive as the release before namespaces wrote it: generation n of session "s"
    under the raw key "s~n", the current one in the sidecar."""
    from tiered_context.core import normalize
    from tiered_context.llama_index._convert import messages_to_items

    store = LocalColdStore(path)
    for key, texts in (("s", ["generation zero"]), ("s~1", ["legacy one", "legacy one, answer"]), ("s~2", [NEEDLE])):
        items = [i.evolve(seq=k, tokens=5) for k, i in enumerate(messages_to_items(
            [ChatMessage(role="user", content=t) for t in texts], first_position=0))]
        store.add(key, items, normalize(HashEmbedder().embed([i.text for i in items])))
    store.close()
    if sidecar is not None:
        (path / "tiered_memory_sessions.json").write_bytes(sidecar)


@pytest.mark.parametrize("sidecar, current", [
    (b'{"s": 2}', [NEEDLE]), (None, [NEEDLE]), (b'{"s": 3}', []),  # 3: a reset just before the upgrade
    (b'{"s": ', [NEEDLE]), (b"", [NEEDLE]), (b"\x00\xff", [NEEDLE]), (b"[1, 2]", [NEEDLE]),  # damaged: the archive decides
])
def test_archives_of_the_previous_release_still_open(tmp_path, sidecar, current):
    _legacy_archive(tmp_path, sidecar)
    memory = make(300, session_id="s", path=tmp_path)
    assert [m.content for m in memory.get_all()] == current
    memory.put(ChatMessage(role="user", content="new"))
    memory.close()
    reopened = make(300, session_id="s", path=tmp_path)  # migrated once: no second copy
    assert [m.content for m in reopened.get_all()] == current + ["new"]
    reopened.reset()
    assert reopened.get_all() == []
    assert [i.text for i in reopened.store.items("s~1")] == ["legacy one", "legacy one, answer"]  # nothing deleted
    reopened.close()
    if sidecar not in (None, b'{"s": 2}', b'{"s": 3}'):
        assert list(tmp_path.glob("tiered_memory_sessions.json.damaged-*"))
    assert make(300, session_id="s~1", path=tmp_path).get_all() == []  # never the legacy key
