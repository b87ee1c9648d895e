"""LangChain: `TieredContextMiddleware` against `SummarizationMiddleware` and `trim_messages`.

    python -m tiered_context.evals.bench_langchain --turns 300 --budget 1500 --out out/bench_langchain

One scripted conversation (user turns with planted facts, assistant replies, a tool call
every 7th turn), replayed through real `create_agent` graphs (checkpointer, fake chat
model) with each strategy at the same token budget, then asked about every fact:

- **overhead**: the strategy's own time per model call on the same growing history,
  outside the graph (``wrap_model_call`` with a no-op handler; ``before_model`` with a
  fake summariser, summary calls included; ``trim_messages`` with LangChain's approximate
  counter, as its docs use it): mean, p50, p95 and the ratios.
- **agent**: per model call, the exact tokens the model received (core `TokenCounter`:
  messages, tool calls, tool schemas) and the wall time per `invoke`; extra model calls
  (summaries); which facts the model saw when asked.

The fake summariser is a stand-in for an LLM: it keeps the first sentence of each of the
last 12 user messages it is given (the previous summary counts as one of them). Facts
surviving it say more about the fake than about a real model; the structural points
(summaries replace the state; a summary is re-summarised; an error propagates) do not
depend on it. Numbers are wall-clock on whatever machine runs this.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Exchange",
    "Fact",
    "ScriptedConversation",
    "make_conversation",
    "scripted_model",
    "TrimMessagesMiddleware",
    "extractive_summarizer",
    "AgentRun",
    "run_agent",
    "bench_overhead",
    "run",
    "main",
]

SYSTEM_PROMPT = "You are a concise travel assistant for a team trip to Portugal."
FACTS = [
    ("Our Lisbon launch moved to 3 May because of the supplier delay.", "When is the Lisbon launch?", "3 May"),
    ("For the record, my badge number is 88231.", "What is my badge number?", "88231"),
    ("Maria's flight lands in Porto at 14:05 on Friday.", "When does Maria's flight land?", "14:05"),
    ("The office wifi password is tram-42, keep it handy.", "What is the office wifi password?", "tram-42"),
    ("We booked the hotel Casa Azul near the river.", "Which hotel did we book?", "Casa Azul"),
    ("The total travel budget is 18,400 euros.", "What is the total travel budget?", "18,400"),
    ("Ines Duarte is our contact at the Lisbon office.", "Who is our contact at the Lisbon office?", "Ines Duarte"),
    ("Jonas is allergic to peanuts, tell the caterer.", "What is Jonas allergic to?", "peanuts"),
]
_TOPICS = ["museums", "trams", "pastries", "fado concerts", "the hotel breakfast", "metro strikes", "beach days",
           "the river cruise", "tile workshops", "the castle tour", "rooftop bars", "the fish market"]
_CITIES = ["Lisbon", "Porto", "Sintra", "Cascais", "Coimbra", "Braga", "Faro", "Evora"]


@dataclass(frozen=True)
class Exchange:
    user: str
    assistant: str
    tool_city: str | None = None  # a weather lookup before the answer


@dataclass(frozen=True)
class Fact:
    turn: int
    statement: str
    question: str
    answer: str


@dataclass(frozen=True)
class ScriptedConversation:
    exchanges: list[Exchange]
    facts: list[Fact]


def make_conversation(turns: int = 200, *, seed: int = 0, facts: int = len(FACTS)) -> ScriptedConversation:
    """A deterministic trip-planning chat with `facts` planted across the first 80% of it."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(2, max(3, int(turns * 0.8))), k=min(facts, max(1, int(turns * 0.8) - 2))))
    planted = {slot: FACTS[n] for n, slot in enumerate(slots)}
    exchanges, kept = [], []
    for t in range(turns):
        topic, other = rng.choice(_TOPICS), rng.choice(_TOPICS)
        if t in planted:
            statement, question, answer = planted[t]
            kept.append(Fact(t, statement, question, answer))
            exchanges.append(Exchange(statement, "Noted, I have written that down."))
        elif t % 7 == 3:
            city = rng.choice(_CITIES)
            exchanges.append(Exchange(f"Can you check the weather in {city} for our {topic} day?",
                                      f"The forecast for {city} looks fine for {topic}; pack a light jacket.", city))
        else:
            exchanges.append(Exchange(
                f"Turn {t}: some thoughts about {topic} and {other}; the group keeps debating whether it fits the schedule.",
                f"Good point about {topic}. I would keep {other} as an optional afternoon plan."))
    return ScriptedConversation(exchanges, kept)


def lookup_weather_tool():
    from langchain_core.tools import tool

    @tool
    def lookup_weather(city: str) -> str:
        """Current weather and a 3-day forecast for a city."""
        return f"{city}: 22 degrees, sunny, light wind; tomorrow 20 degrees with clouds; then rain likely."

    return lookup_weather


def scripted_model(conv: ScriptedConversation):
    """A `RecordingChatModel` that replays the script: set ``model.turn`` before each invoke."""
    from langchain_core.messages import AIMessage, HumanMessage

    from tiered_context.langchain.testing import RecordingChatModel

    state = {"turn": 0, "calls": 0}

    def respond(messages):
        state["calls"] += 1
        t = state["turn"]
        if t >= len(conv.exchanges):  # questions at the end
            return "Let me check what I know."
        ex = conv.exchanges[t]
        if ex.tool_city and isinstance(messages[-1], HumanMessage):
            return AIMessage(content="", tool_calls=[{"name": "lookup_weather", "args": {"city": ex.tool_city},
                                                      "id": f"call_{t}"}])
        return ex.assistant

    model = RecordingChatModel(respond=respond)
    return model, state


def extractive_summarizer(calls: list[int]) -> Callable[[list[Any]], str]:
    """The fake LLM summariser described in the module docstring (counts its calls)."""
    from langchain_core.messages import HumanMessage

    def summarize(messages: list[Any]) -> str:
        calls.append(len(messages))
        users = [m for m in messages if isinstance(m, HumanMessage)][-12:]
        firsts = []
        for m in users:
            text = m.text.replace("Here is a summary of the conversation to date:", "").strip()
            firsts.append(" ".join(text.split(". ")[0].split()[:20]))
        return "; ".join(firsts)

    return summarize


def _approx_counter():
    from langchain_core.messages.utils import count_tokens_approximately

    return count_tokens_approximately


def TrimMessagesMiddleware(max_tokens: int, *, token_counter: Callable | None = None):  # noqa: N802 - a class factory
    """`trim_messages(strategy="last", start_on="human")` per model call, as an
    `AgentMiddleware` (the budget minus the system prompt and tool schemas)."""
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import trim_messages

    from tiered_context import TokenCounter
    from tiered_context.langchain._convert import MessageCounter

    exact = MessageCounter(TokenCounter())

    class _Trim(AgentMiddleware):
        def __init__(self) -> None:
            super().__init__()
            self.max_tokens = max_tokens
            self.token_counter = token_counter or _approx_counter()

        def _trim(self, request):
            fixed = (exact.message(request.system_message) if request.system_message else 0) + exact.tools(request.tools)
            kept = trim_messages(request.messages, max_tokens=max(1, max_tokens - fixed - 3), strategy="last",
                                 token_counter=self.token_counter, start_on="human", allow_partial=False)
            return request.override(messages=kept)

        def wrap_model_call(self, request, handler):
            return handler(self._trim(request))

        async def awrap_model_call(self, request, handler):
            return await handler(self._trim(request))

    return _Trim()


@dataclass
class AgentRun:
    name: str
    tokens_per_call: list[int] = field(default_factory=list)
    seconds_per_invoke: list[float] = field(default_factory=list)
    model_calls: int = 0
    summary_calls: int = 0
    state_messages: int = 0
    facts_seen: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        tok = self.tokens_per_call
        sec = self.seconds_per_invoke
        return {
            "strategy": self.name,
            "model_calls": self.model_calls,
            "summary_calls": self.summary_calls,
            "tokens_per_call_mean": round(statistics.mean(tok), 1) if tok else 0,
            "tokens_per_call_max": max(tok) if tok else 0,
            "tokens_total": sum(tok),
            "ms_per_invoke_p50": round(1000 * statistics.median(sec), 2) if sec else 0,
            "state_messages_at_end": self.state_messages,
            "facts_seen": sum(self.facts_seen.values()),
            "facts": len(self.facts_seen),
        }


def _strategies(budget: int, embedder: Any, summary_calls: list[int], model: Any) -> dict[str, Callable[[], list[Any]]]:
    from langchain.agents.middleware import SummarizationMiddleware

    from tiered_context.langchain import TieredContextMiddleware

    return {
        "tiered": lambda: [TieredContextMiddleware(max_tokens=budget, embedder=embedder, compaction="inline")],
        "summarization": lambda: [SummarizationMiddleware(model, trigger=("tokens", budget), keep=("messages", 10),
                                                          summarizer=extractive_summarizer(summary_calls))],
        "trim_messages": lambda: [TrimMessagesMiddleware(budget)],
        "none": lambda: [],
    }


def run_agent(name: str, conv: ScriptedConversation, *, budget: int = 1500, embedder: Any = None,
              progress: Callable[[int], None] | None = None) -> AgentRun:
    """Replay `conv` through `create_agent` with strategy `name`, then ask every fact."""
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver

    from tiered_context import TokenCounter
    from tiered_context.langchain._convert import MessageCounter

    tool = lookup_weather_tool()
    model, script = scripted_model(conv)
    summary_calls: list[int] = []
    middleware = _strategies(budget, embedder, summary_calls, model)[name]()
    agent = create_agent(model, tools=[tool], system_prompt=SYSTEM_PROMPT, middleware=middleware,
                         checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": f"bench-{name}"}}
    counter = MessageCounter(TokenCounter())
    tool_tokens = counter.tools([tool])
    out = AgentRun(name)
    questions = [(f.question, f.answer) for f in conv.facts]
    for t, text in enumerate([e.user for e in conv.exchanges] + [q for q, _ in questions]):
        script["turn"] = t
        before = len(model.calls)
        started = time.perf_counter()
        agent.invoke({"messages": [HumanMessage(text)]}, cfg)
        out.seconds_per_invoke.append(time.perf_counter() - started)
        for call in model.calls[before:]:
            out.tokens_per_call.append(counter.messages(call) + tool_tokens)
        if t >= len(conv.exchanges):
            q, answer = questions[t - len(conv.exchanges)]
            out.facts_seen[answer] = answer in model.last_text
        if progress is not None:
            progress(t)
    out.model_calls = len(model.calls)
    out.summary_calls = len(summary_calls)
    out.state_messages = len(agent.get_state(cfg).values["messages"])
    return out


def _history(conv: ScriptedConversation) -> list[Any]:
    """The full message list of `conv` as an agent would have stored it, with ids."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    msgs: list[Any] = []
    for t, ex in enumerate(conv.exchanges):
        msgs.append(HumanMessage(ex.user, id=f"h{t}"))
        if ex.tool_city:
            msgs.append(AIMessage(content="", id=f"c{t}", tool_calls=[{"name": "lookup_weather", "args": {"city": ex.tool_city}, "id": f"call_{t}"}]))
            msgs.append(ToolMessage(f"{ex.tool_city}: 22 degrees, sunny, light wind; tomorrow 20 degrees with clouds; then rain likely.",
                                    tool_call_id=f"call_{t}", id=f"r{t}"))
        msgs.append(AIMessage(ex.assistant, id=f"a{t}"))
    return msgs


def _stats(samples: Sequence[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"mean_ms": round(1000 * statistics.mean(s), 3), "p50_ms": round(1000 * s[len(s) // 2], 3),
            "p95_ms": round(1000 * s[min(len(s) - 1, int(len(s) * 0.95))], 3), "calls": len(s)}


def bench_overhead(conv: ScriptedConversation, *, budget: int = 1500, embedder: Any = None) -> dict[str, dict[str, float]]:
    """Each strategy's own time per model call on the same growing history (no graph)."""
    from langchain.agents.middleware import ModelRequest, ModelResponse, SummarizationMiddleware
    from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, SystemMessage
    from langgraph.graph.message import REMOVE_ALL_MESSAGES

    from tiered_context.langchain import TieredContextMiddleware

    history = _history(conv)
    points = [i + 1 for i, m in enumerate(history) if isinstance(m, HumanMessage)]  # a model call after each user turn
    tool = lookup_weather_tool()
    model, _ = scripted_model(conv)
    system = SystemMessage(SYSTEM_PROMPT)
    tiered = TieredContextMiddleware(max_tokens=budget, embedder=embedder, compaction="inline")
    summary_calls: list[int] = []
    summ = SummarizationMiddleware(model, trigger=("tokens", budget), keep=("messages", 10),
                                   summarizer=extractive_summarizer(summary_calls))
    trim = TrimMessagesMiddleware(budget)
    reply = ModelResponse(result=[AIMessage("ok")])
    times: dict[str, list[float]] = {"tiered": [], "summarization": [], "trim_messages": []}
    state: list[Any] = []
    seen = 0
    for end in points:
        request = ModelRequest(model=model, messages=history[:end], system_message=system, tools=[tool])
        started = time.perf_counter()
        tiered.wrap_model_call(request, lambda r: reply)
        times["tiered"].append(time.perf_counter() - started)

        state = state + history[seen:end]
        seen = end
        started = time.perf_counter()
        update = summ.before_model({"messages": state}, None)
        times["summarization"].append(time.perf_counter() - started)
        if update:
            new = update["messages"]
            assert isinstance(new[0], RemoveMessage) and new[0].id == REMOVE_ALL_MESSAGES
            state = list(new[1:])

        started = time.perf_counter()
        trim._trim(request)
        times["trim_messages"].append(time.perf_counter() - started)
    out = {name: _stats(samples) for name, samples in times.items()}
    out["summarization"]["summary_calls"] = len(summary_calls)
    for other in ("summarization", "trim_messages"):
        out[f"ratio_tiered_over_{other}"] = {
            "mean": round(out["tiered"]["mean_ms"] / max(out[other]["mean_ms"], 1e-9), 2),
            "p50": round(out["tiered"]["p50_ms"] / max(out[other]["p50_ms"], 1e-9), 2),
        }
    return out


def run(turns: int = 300, budget: int = 1500, *, seed: int = 0, embedder: Any = None) -> dict[str, Any]:
    conv = make_conversation(turns, seed=seed)
    started = time.perf_counter()
    overhead = bench_overhead(conv, budget=budget, embedder=embedder)
    agents = {name: run_agent(name, conv, budget=budget, embedder=embedder).summary()
              for name in ("tiered", "summarization", "trim_messages", "none")}
    return {"turns": turns, "budget": budget, "seed": seed, "facts": len(conv.facts), "overhead": overhead,
            "agents": agents, "seconds": round(time.perf_counter() - started, 1)}


def to_markdown(result: dict[str, Any]) -> str:
    o = result["overhead"]
    lines = [f"# LangChain strategies: {result['turns']} turns, budget {result['budget']} tokens, "
             f"{result['facts']} facts", "",
             "## Per-call overhead (same growing history, no graph)", "",
             "| strategy | mean ms | p50 ms | p95 ms | calls |", "|---|---|---|---|---|"]
    for name in ("tiered", "summarization", "trim_messages"):
        s = o[name]
        lines.append(f"| {name} | {s['mean_ms']} | {s['p50_ms']} | {s['p95_ms']} | {s['calls']} |")
    lines += ["", f"tiered / summarization: mean {o['ratio_tiered_over_summarization']['mean']}x, "
                  f"p50 {o['ratio_tiered_over_summarization']['p50']}x; tiered / trim_messages: mean "
                  f"{o['ratio_tiered_over_trim_messages']['mean']}x, p50 {o['ratio_tiered_over_trim_messages']['p50']}x "
                  f"(summary calls: {o['summarization']['summary_calls']})", "",
              "## Agents (create_agent + InMemorySaver, exact tokens per model call)", "",
              "| strategy | model calls | summary calls | mean tokens/call | max tokens/call | ms/invoke p50 | facts seen |",
              "|---|---|---|---|---|---|---|"]
    for s in result["agents"].values():
        lines.append(f"| {s['strategy']} | {s['model_calls']} | {s['summary_calls']} | {s['tokens_per_call_mean']} | "
                     f"{s['tokens_per_call_max']} | {s['ms_per_invoke_p50']} | {s['facts_seen']}/{s['facts']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--budget", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json and results.md")
    args = parser.parse_args(argv)
    result = run(args.turns, args.budget, seed=args.seed)
    md = to_markdown(result)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        (args.out / "results.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


