"""Issues 13 and 14, LangChain side: what the model receives is a valid, honest
conversation under the budget (the contract of `core.conversation`), and user / thread /
session ids are separate namespace fields that never cross. Real `create_agent` graphs,
`RunnableWithMessageHistory` and fake chat models; property tests over random histories."""

from __future__ import annotations

import json
import uuid
import warnings

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langgraph")
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import ModelRequest  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, convert_to_openai_messages  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder  # noqa: E402
from langchain_core.runnables.history import RunnableWithMessageHistory  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from tiered_context import TokenCounter  # noqa: E402
from tiered_context import MemoryConfig  # noqa: E402
from tiered_context import ContextItem  # noqa: E402
from tiered_context import LocalColdStore  # noqa: E402
from tiered_context.errors import BudgetError, ConfigError  # noqa: E402
from tiered_context.langchain._convert import MessageCounter, message_to_item  # noqa: E402
from tiered_context.langchain import TieredChatMessageHistory  # noqa: E402
from tiered_context.langchain import TieredContextMiddleware  # noqa: E402
from tiered_context.langchain.testing import RecordingChatModel, tool_sequence_errors  # noqa: E402
from tiered_context.testing import HashEmbedder  # noqa: E402

BIG = "Quarterly figures by region and product line, with notes on hiring and logistics. " * 700  # ~10k tokens


@tool
def fetch(name: str) -> str:
    """Fetch a report by name."""
    return BIG


def _prompt_tokens(messages, tools=()) -> int:
    counter = TokenCounter()
    schemas = sum(counter.count(json.dumps(convert_to_openai_tool(t), ensure_ascii=False, default=str)) + 3 for t in tools)
    return counter.count_messages([convert_to_openai_messages(m) for m in messages]) + schemas


def _earlier(n: int = 100) -> list:
    out = []
    for i in range(n):
        text = f"Earlier message {i}: trams, museums, pastries and the hotel breakfast menu."
        out.append(HumanMessage(text) if i % 2 == 0 else AIMessage(f"Noted {i}."))
    return out


def _roles_alternate(messages) -> bool:
    sides = []
    for m in messages:
        if isinstance(m, SystemMessage):
            continue
        side = "assistant" if isinstance(m, AIMessage) else "user"
        if isinstance(m, ToolMessage) and sides and sides[-1] == "tool":
            continue
        sides.append("tool" if isinstance(m, ToolMessage) else side)
    norm = ["user" if s in ("user", "tool") else s for s in sides]
    return bool(norm) and norm[0] == "user" and all(a != b for a, b in zip(norm, norm[1:]))


# -- issue 14: the reproduction -----------------------------------------------------------
@pytest.mark.parametrize("alternate", [False, True])
def test_the_request_survives_a_huge_tool_result(alternate):
    request = HumanMessage("Fetch the q3 report and tell me the headline number.", id="the-request")
    model = RecordingChatModel(responses=[
        AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"name": "q3"}, "id": "call_q3"}]), "Done."])
    mw = TieredContextMiddleware(max_tokens=1500, embedder=HashEmbedder(), compaction="inline", alternate_roles=alternate)
    agent = create_agent(model, tools=[fetch], middleware=[mw], checkpointer=InMemorySaver())
    agent.invoke({"messages": [*_earlier(100), request]}, {"configurable": {"thread_id": "repro"}})
    assert len(model.calls) == 2
    second = model.calls[1]
    assert any(isinstance(m, HumanMessage) and m.id == request.id and m.content == request.content for m in second)
    assert tool_sequence_errors(second) == []
    body = [m for m in second if not isinstance(m, SystemMessage)]
    assert isinstance(body[0], HumanMessage)
    assert _prompt_tokens(second, [fetch]) <= 1500
    cut = next(m for m in second if isinstance(m, ToolMessage))
    assert cut.content.endswith("archived]") and len(cut.content) < len(BIG)
    assert mw.last_call.truncated_tool_results == 1
    if alternate:
        assert _roles_alternate(second)


def test_runs_of_one_role_alternate_when_asked():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=800, embedder=HashEmbedder(), compaction="inline", alternate_roles=True)
    agent = create_agent(model, tools=[], middleware=[mw], checkpointer=InMemorySaver())
    eight = [HumanMessage(f"Speaker {i}: a point about the launch plan number {i}.") for i in range(8)]
    agent.invoke({"messages": [AIMessage("Welcome!"), *eight]}, {"configurable": {"thread_id": "runs"}})
    agent.invoke({"messages": [HumanMessage("And what about the budget?")]}, {"configurable": {"thread_id": "runs"}})
    assert _roles_alternate(model.calls[-1])
    assert "And what about the budget?" in model.calls[-1][-1].text


# -- issue 14: recalled history is ONE labelled block -------------------------------------------
def _long_thread(mw, model, thread="block", turns=40):
    agent = create_agent(model, tools=[], system_prompt="Be brief.", middleware=[mw], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": thread}}
    for i in range(turns):
        text = "My badge number is 88231." if i == 3 else f"Filler {i}: trams, pastries and the hotel breakfast menu."
        agent.invoke({"messages": [HumanMessage(text, name="Bob")]}, cfg)
    agent.invoke({"messages": [HumanMessage("What is my badge number?")]}, cfg)
    return model.calls[-1]


@pytest.mark.parametrize("where", ["message", "system"])
def test_recalled_history_is_one_labelled_block(where):
    model = RecordingChatModel(responses=["Noted."])
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline", working_set_tokens=150,
                                 context_placement=where)
    sent = _long_thread(mw, model)
    blocks = [m for m in sent if "<recalled_context>" in m.text]
    assert len(blocks) == 1
    block = blocks[0]
    assert isinstance(block, SystemMessage if where == "system" else HumanMessage)
    if where == "message":
        assert block is sent[1] and block.additional_kwargs["lc_source"] == "tiered_context"
    lines = block.text.split("<recalled_context>")[1].split("</recalled_context>")[0].strip().splitlines()
    assert lines[0].startswith("Earlier conversation, recalled (not new messages)")  # the label says what it is
    body = lines[1:]
    assert body[0].startswith("[")  # a date header: every line is under its date
    for line in body[1:]:
        assert line.startswith("[") or line.split(":", 1)[0].rstrip("*") in ("Bob", "assistant", "summary")
    assert any(line.startswith("Bob: My badge number is 88231.") for line in body)
    assert any(line.startswith("Bob*: ") for line in body)  # compressed lines say so
    # only the verbatim tail is sent as real messages; none of them is a rewrite
    tail = [m for m in sent if m is not block and not isinstance(m, SystemMessage)]
    assert all(m.text == "Noted." or m.text.startswith("Filler") or m.text.startswith("What is") for m in tail)
    assert _prompt_tokens(sent) <= 400


def test_rewrite_in_place_is_an_option():
    model = RecordingChatModel(responses=["Noted."])
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline", working_set_tokens=150,
                                 rewrite_in_place=True)
    sent = _long_thread(mw, model, thread="inplace")
    assert "88231" in "\n".join(m.text for m in sent)
    assert _prompt_tokens(sent) <= 400 and tool_sequence_errors(sent) == []


def test_feedback_takes_the_report_explicitly():
    reports = []
    model = RecordingChatModel(responses=["Noted."])
    mw = TieredContextMiddleware(max_tokens=300, embedder=HashEmbedder(), compaction="inline", on_call=reports.append)
    _long_thread(mw, model, thread="fb", turns=12)
    report = reports[-1]
    assert report.assembled is not None and report.thread == "fb"
    mw.feedback(report, used=[report.assembled.items[0].id])
    with pytest.raises(ConfigError, match="CallReport"):
        mw.feedback(report.assembled, used=[])


# -- issue 14: RunnableWithMessageHistory budgets in the standard recipe --------------------------
def test_runnable_with_message_history_budgets_without_helpers():
    histories: dict[str, TieredChatMessageHistory] = {}

    def get_history(session_id):
        return histories.setdefault(session_id, TieredChatMessageHistory(
            session_id, max_tokens=200, embedder=HashEmbedder(), compaction="inline"))

    model = RecordingChatModel(responses=["Noted."])
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), MessagesPlaceholder("history"), ("human", "{question}")])
    bot = RunnableWithMessageHistory(prompt | model, get_history, input_messages_key="question", history_messages_key="history")
    cfg = {"configurable": {"session_id": "u1"}}
    for i in range(40):
        bot.invoke({"question": f"Filler {i}: trams, pastries and the hotel breakfast."}, cfg)
    history_part = model.calls[-1][1:-1]
    assert 0 < _prompt_tokens(history_part) <= 200 + 3
    assert len(histories["u1"].all_messages) == 80  # the full history stays reachable
    assert len(histories["u1"].messages) < 80


# -- issue 13: ids, tenancy, clear --------------------------------------------------------
def _history(session, **kw):
    kw.setdefault("embedder", HashEmbedder())
    return TieredChatMessageHistory(session, compaction="inline", **kw)


def test_team_general_works_including_clear():
    h = _history("team#general")
    h.add_messages([HumanMessage("The standup moved to 9:30."), AIMessage("ok")])
    h.clear()
    assert h.all_messages == [] and h.context.generation == 1
    h.add_messages([HumanMessage("fresh")])
    assert [m.text for m in h.all_messages] == ["fresh"]


def test_clear_uses_the_core_generation_and_keeps_every_setting():
    events = []
    config = MemoryConfig(store=LocalColdStore(), embedder=HashEmbedder(), compaction="inline", on_event=events.append)
    h = TieredChatMessageHistory("victim", config=config)
    before = h.context.config
    h.add_messages([HumanMessage("My PIN is 4242."), AIMessage("ok")])
    h.clear()
    assert h.context.config is before  # summarizer, summary config, scoring, compression, on_event: the same value
    assert not [i for i in h.context.store.items("victim") if "lc_clear" in i.metadata]  # no marker in the session
    assert not [k for k in getattr(h.context.store, "_items", {}) if str(k).endswith("#g1")]
    # a session named like the old generation scheme is another session
    intruder = TieredChatMessageHistory("victim#g1", context=h.context.sibling(session_id="victim#g1"))
    assert intruder.all_messages == []
    reopened = TieredChatMessageHistory("victim", config=h.context.config)
    assert reopened.context.generation == 1 and reopened.all_messages == []


def test_a_legacy_clear_layout_still_opens():
    """The release before wrote a clear as an lc_clear marker item in the session and the
    new generation under the raw key "<id>#g<n>": such an archive opens as it was."""
    store, embedder = LocalColdStore(), HashEmbedder()
    old = [HumanMessage("before the clear", id="m1"), AIMessage("ok", id="m2")]
    new = [HumanMessage("after the clear", id="m3"), AIMessage("fine", id="m4")]

    def put(key, messages, extra=()):
        items = [message_to_item(m, timestamp=1.7e9 + n).evolve(seq=n) for n, m in enumerate(messages)] + list(extra)
        store.add(key, items, embedder.embed([i.text for i in items]))

    marker = ContextItem.create("[history cleared: generation 1]", role="system", metadata={"lc_clear": 1},
                                id="lc-clear:1").evolve(seq=2)
    put("legacy", old, [marker])
    put("legacy#g1", new)
    h = TieredChatMessageHistory("legacy", config=MemoryConfig(store=store, embedder=embedder, compaction="inline"))
    assert [m.text for m in h.all_messages] == ["after the clear", "fine"]
    assert h.context.generation == 1
    h.clear()
    assert h.all_messages == []
    again = TieredChatMessageHistory("legacy", config=h.context.config)
    assert again.all_messages == [] and again.context.generation == 2


HOSTILE = ["a#b", "a~1", "a/b", "a%2Fb", "a\x00b", "a\nb", "x" * 10_000, "victim#summaries", "victim#state", "..", " "]


@pytest.mark.parametrize("session", HOSTILE)
def test_hostile_session_ids_are_accepted_and_isolated(session):
    victim = _history("victim")
    victim.add_messages([HumanMessage("The vault code is 5150."), AIMessage("ok")])
    victim.clear()
    victim.add_messages([HumanMessage("The new vault code is 6160.")])
    other = TieredChatMessageHistory(session, context=victim.context.sibling(session_id=session))
    assert other.all_messages == []
    assert "5150" not in str(other.budgeted_messages("vault code")) and "6160" not in str(other.budgeted_messages("vault"))
    other.add_messages([HumanMessage("planted line")])
    other.clear()
    assert [m.text for m in victim.all_messages] == ["The new vault code is 6160."]


@pytest.mark.parametrize("bad", ["", "x" * 20_000, "\ud800", 17])
def test_unusable_ids_are_refused_clearly(bad):
    with pytest.raises(ConfigError, match="session_id"):
        TieredChatMessageHistory(bad, embedder=HashEmbedder())


def test_user_and_thread_never_cross_in_the_middleware():
    model = RecordingChatModel(responses=["ok"])
    mw = TieredContextMiddleware(max_tokens=400, embedder=HashEmbedder(), compaction="inline")
    alice = create_agent(model, tools=[], middleware=[mw], checkpointer=InMemorySaver())
    # the intruders' graph state is their own (LangGraph keys its checkpoints by thread
    # only); what could cross is the middleware's archive, which they share
    intruders = create_agent(model, tools=[], middleware=[mw], checkpointer=InMemorySaver())

    def say(agent, text, thread, user=None):
        configurable = {"thread_id": thread, **({"user_id": user} if user else {})}
        agent.invoke({"messages": [HumanMessage(text)]}, {"configurable": configurable})

    say(alice, "Alice's secret is 7301.", thread="b/c", user="a")  # user "a", thread "b/c"
    say(alice, "filler", thread="b/c", user="a")
    for user, thread in (("a/b", "c"), (None, "b/c"), (None, "a/b/c"), ("a", "b"), ("a#b", "c")):
        say(intruders, "What is the secret?", thread=thread, user=user)
        say(intruders, "What is the secret? Tell me.", thread=thread, user=user)
        assert "7301" not in model.last_text, (user, thread)
    say(alice, "What is the secret?", thread="b/c", user="a")
    assert "7301" in model.last_text
    ctx_a, ctx_anon = mw.context_for("b/c", user_id="a"), mw.context_for("b/c")
    assert ctx_a.namespace.key != ctx_anon.namespace.key
    assert ctx_a.namespace.user == "a" and ctx_a.namespace.session == "b/c"
    with pytest.raises(ConfigError):
        mw.context_for("t", user_id="\ud800")


def test_the_middleware_adopts_a_thread_of_the_joined_layout():
    store, embedder = LocalColdStore(), HashEmbedder()
    item = message_to_item(HumanMessage("Legacy fact: the wifi is tram-42.", id="old1"), timestamp=1.7e9).evolve(seq=0)
    store.add("alice/trip", [item], embedder.embed([item.text]))  # the previous release's key for (alice, trip)
    mw = TieredContextMiddleware(max_tokens=400, store=store, embedder=embedder, compaction="inline")
    assert [i.text for i in mw.context_for("trip", user_id="alice").working_set] == [item.text]
    assert len(mw.context_for("trip")) == 0  # the thread without a user is not alice's


def test_config_is_one_value_for_every_thread():
    config = MemoryConfig(embedder=HashEmbedder(), compaction="inline")
    mw = TieredContextMiddleware(max_tokens=300, config=config)
    a, b = mw.context_for("t1", user_id="u"), mw.context_for("t2")
    assert a.config is b.config
    with pytest.raises(ConfigError, match="not both"):
        TieredContextMiddleware(max_tokens=300, config=config, embedder=HashEmbedder())


def test_subagent_budget_is_a_deprecated_alias():
    from tiered_context.scopes import ContextScope
    from tiered_context.langchain import ScopedSubagent

    root = ContextScope.root(tenant="t", embedder=HashEmbedder())
    agent = create_agent(RecordingChatModel(responses=["ok"]), tools=[])
    with pytest.warns(DeprecationWarning, match="max_tokens"):
        old = ScopedSubagent(agent, parent=root, name="w", budget=300)
    assert old.max_tokens == 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = ScopedSubagent(agent, parent=root, name="w2", max_tokens=300)
        result = new.invoke("hello")
    assert result is new.last and result.prompt_tokens <= 300


# -- property tests: the contract and the budget over random histories ------------------------
_IMAGE = {"type": "image", "url": "https://example.invalid/plan.png"}


@st.composite
def conversations(draw):
    msgs: list = []
    n_call = 0
    for k in range(draw(st.integers(0, 24))):
        kind = draw(st.sampled_from(["user", "user", "assistant", "loop", "image", "system"]))
        if kind == "loop":
            ids = [f"c{n_call + j}" for j in range(draw(st.integers(1, 2)))]
            n_call += len(ids)
            msgs.append(AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"name": i}, "id": i} for i in ids], id=f"m{k}"))
            for i in ids:
                size = draw(st.sampled_from([1, 30, 600]))
                msgs.append(ToolMessage(content="result " * size, tool_call_id=i, id=f"r{i}"))
        elif kind == "image":
            msgs.append(HumanMessage(content=[{"type": "text", "text": f"look {k}"}, _IMAGE], id=f"m{k}"))
        elif kind == "system":
            msgs.append(SystemMessage(f"Note {k} for the assistant.", id=f"m{k}"))
        else:
            words = draw(st.integers(1, 60))
            cls = HumanMessage if kind == "user" else AIMessage
            msgs.append(cls(f"{kind} {k}: " + "word " * words, id=f"m{k}"))
    request = HumanMessage("the current request: " + "please " * draw(st.integers(1, 20)), id="request")
    msgs.append(request)
    for r in range(draw(st.integers(0, 2))):
        ids = [f"live{r}_{j}" for j in range(draw(st.integers(1, 2)))]
        msgs.append(AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"name": i}, "id": i} for i in ids], id=f"l{r}"))
        for i in ids:
            msgs.append(ToolMessage(content=draw(st.sampled_from(["ok", "data " * 400, BIG])), tool_call_id=i, id=f"r{i}"))
    system = draw(st.sampled_from([None, "You are brief.", "You are a careful assistant. " * 10]))
    return msgs, system


_MW: dict[tuple, TieredContextMiddleware] = {}


def _mw(budget, alternate, where):
    key = (budget, alternate, where)
    if key not in _MW:
        _MW[key] = TieredContextMiddleware(max_tokens=budget, embedder=HashEmbedder(), compaction="inline",
                                           alternate_roles=alternate, context_placement=where)
    return _MW[key]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conversations(), st.sampled_from([300, 700, 1500, 3000]), st.booleans(), st.sampled_from(["message", "system"]))
def test_middleware_contract_on_random_histories(conv, budget, alternate, where):
    messages, system = conv
    mw = _mw(budget, alternate, where)
    model = RecordingChatModel(responses=["ok"])
    thread = uuid.uuid4().hex
    request = ModelRequest(model=model, messages=messages, system_message=SystemMessage(system) if system else None,
                           tools=[fetch])
    seen = []
    mc = MessageCounter(TokenCounter())
    required = (mc.message(request.system_message) if system else 0) + _prompt_tokens([], [fetch]) + 3 \
        + sum(mc.message(m) for m in messages[messages.index(next(m for m in messages if m.id == "request")):]
              if not isinstance(m, ToolMessage)) + 20 * sum(isinstance(m, ToolMessage) for m in messages[-4:])
    try:
        # twice: the second call sees the first one's history archived
        for _ in range(2):
            prepared, _report = mw._prepare(request, None, thread)
            seen.append(prepared)
    except BudgetError:
        assert required > budget
        return
    prepared = seen[-1]
    sent = ([prepared.system_message] if prepared.system_message is not None else []) + list(prepared.messages)
    assert _prompt_tokens(sent, [fetch]) <= budget
    assert tool_sequence_errors(sent) == []
    body = [m for m in prepared.messages if not isinstance(m, SystemMessage)]
    assert body and isinstance(body[0], HumanMessage)
    req = next(m for m in messages if m.id == "request")
    # verbatim: the message itself, or (alternate_roles) a merged user turn that holds it whole, last
    assert any(m is req or (isinstance(m, HumanMessage) and m.text.endswith(req.content)) for m in prepared.messages)
    live = messages[messages.index(req):]
    for m in live:
        if isinstance(m, AIMessage):  # the tool loop in progress, verbatim
            assert any(x is m or (x.tool_calls and {c["id"] for c in m.tool_calls} <= {c["id"] for c in x.tool_calls})
                       for x in prepared.messages if isinstance(x, AIMessage))
    assert sum("<recalled_context>" in (m.text or "") for m in sent) <= 1
    if alternate:
        assert _roles_alternate(prepared.messages)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(conversations(), st.sampled_from([300, 800, 2000]), st.booleans())
def test_history_views_keep_the_contract_on_random_histories(conv, budget, alternate):
    messages, _ = conv
    h = TieredChatMessageHistory(uuid.uuid4().hex, max_tokens=budget, embedder=HashEmbedder(), compaction="inline",
                                 alternate_roles=alternate)
    h.add_messages(messages)
    view = h.messages  # the budgeted view for the latest user message
    assert _prompt_tokens(view) - 3 <= budget
    assert tool_sequence_errors(view) == []
    body = [m for m in view if not isinstance(m, SystemMessage)]
    assert not body or isinstance(body[0], HumanMessage)
    if alternate:
        assert not body or _roles_alternate(body)
    assert len(h.all_messages) == len(messages)


def test_runnable_with_message_history_without_a_history_key_stores_each_message_once():
    """Without history_messages_key RunnableWithMessageHistory prepends `history.messages`
    to the input and cuts that many off again on exit: the budgeted view must be stable."""
    histories: dict[str, TieredChatMessageHistory] = {}
    model = RecordingChatModel(responses=["Noted."])
    bot = RunnableWithMessageHistory(model, lambda sid: histories.setdefault(sid, TieredChatMessageHistory(
        sid, max_tokens=150, embedder=HashEmbedder())))
    cfg = {"configurable": {"session_id": "s"}}
    for i in range(25):
        bot.invoke([HumanMessage(f"Filler {i}: trams, pastries and the hotel breakfast.")], cfg)
        assert _prompt_tokens(model.calls[-1][:-1]) <= 150 + 3
    texts = [m.text for m in histories["s"].all_messages]
    assert len(texts) == 50 and len(set(texts[::2])) == 25  # every question once, no duplicated history


@st.composite
def userless(draw):
    """Histories with no user message at all: an agent loop started by a tool call."""
    msgs: list = []
    for k in range(draw(st.integers(1, 5))):
        ids = [f"u{k}_{j}" for j in range(draw(st.integers(1, 2)))]
        msgs.append(AIMessage(content="", tool_calls=[{"name": "fetch", "args": {"name": i}, "id": i} for i in ids], id=f"a{k}"))
        for i in ids:
            msgs.append(ToolMessage(content=draw(st.sampled_from(["ok", "data " * 300, BIG])), tool_call_id=i, id=f"r{i}"))
        if draw(st.booleans()):
            msgs.append(AIMessage(f"step {k} done: " + "word " * draw(st.integers(1, 40)), id=f"s{k}"))
    system = draw(st.sampled_from([None, "You are brief."]))
    return msgs, system


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(userless(), st.sampled_from([300, 1500]), st.booleans(), st.sampled_from(["message", "system"]))
def test_a_history_without_a_user_message_leads_with_a_labelled_context_message(conv, budget, alternate, where):
    """The contract cannot make the first turn the user's without inventing one: a labelled
    context message (OPENER_NOTE, user role) says there is no user message and leads."""
    from tiered_context.core import OPENER_NOTE

    messages, system = conv
    mw = _mw(budget, alternate, where)
    request = ModelRequest(model=RecordingChatModel(responses=["ok"]), messages=messages,
                           system_message=SystemMessage(system) if system else None, tools=[fetch])
    prepared, _ = mw._prepare(request, None, uuid.uuid4().hex)
    sent = ([prepared.system_message] if prepared.system_message is not None else []) + list(prepared.messages)
    assert _prompt_tokens(sent, [fetch]) <= budget
    assert tool_sequence_errors(sent) == []
    body = [m for m in prepared.messages if not isinstance(m, SystemMessage)]
    assert isinstance(body[0], HumanMessage) and (OPENER_NOTE in body[0].text or "<recalled_context>" in body[0].text)
    assert not any(isinstance(m, HumanMessage) and m.text == OPENER_NOTE for m in body[1:])
    if alternate:
        assert _roles_alternate(prepared.messages)
    h = TieredChatMessageHistory(uuid.uuid4().hex, max_tokens=budget, embedder=HashEmbedder(), compaction="inline",
                                 alternate_roles=alternate, context_placement=where)
    h.add_messages(messages)
    view = [m for m in h.messages if not isinstance(m, SystemMessage)]
    assert not view or isinstance(view[0], HumanMessage)
    assert tool_sequence_errors(h.messages) == []
