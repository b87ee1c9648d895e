"""Evidence coverage through the drop-ins against the core's `assemble` on the same messages.

Issue 14: what a drop-in hands the model (recalled block + verbatim tail + the question)
must keep the evidence the core keeps, within one point. For each question of a
conversation, each adapter gets the same history and the question as the current user
message, with the same token budget; a question's coverage is the share of its evidence
turns present in what the model would receive (verbatim or as a 1:1 compressed form,
as `AssembledContext.covered` counts them for the core). LLM-free and deterministic
(inline compaction)::

    python -m tiered_context.evals.dropin_coverage --data-locomo ../shared/data/locomo/locomo_dev5.json \
        --conversation 0 --budgets 1000,2000

One function per adapter (`core_coverage`, `langchain_coverage`; the LlamaIndex side adds
`llama_index_coverage` with the same signature and registers it in `ADAPTERS`).
No text of the data set is written anywhere: only ids and figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tiered_context.evals.datasets import Conversation, Question, load_locomo

__all__ = ["core_coverage", "langchain_coverage", "llama_index_coverage", "ADAPTERS", "main"]

#: budget -> mean evidence coverage over the questions with evidence
Coverage = dict[int, float]


def _questions(conv: Conversation, limit: int | None) -> list[Question]:
    qs = [q for q in conv.questions if q.evidence]
    return qs[:limit] if limit else qs


def _role(conv: Conversation, speaker: str) -> str:
    return "assistant" if conv.speakers and speaker == conv.speakers[1] else "user"


def core_coverage(conv: Conversation, budgets: Sequence[int], *, limit: int | None = None, **options: Any) -> Coverage:
    """The core: every turn `put` (speaker, timestamp, dia_id), `assemble(question, budget)`."""
    from tiered_context import TieredContext

    ctx = TieredContext(session_id="core", compaction="inline", **options)
    for t in conv.turns:
        ctx.put(t.text, role=_role(conv, t.speaker), timestamp=t.timestamp,
                metadata={"dia_id": t.id, "speaker": t.speaker})
    ctx.flush()
    out: Coverage = {}
    for budget in budgets:
        recalls = []
        for q in _questions(conv, limit):
            covered = ctx.assemble(q.text, budget=budget).covered("dia_id")
            recalls.append(len(covered & set(q.evidence)) / len(q.evidence))
        out[budget] = sum(recalls) / len(recalls)
    ctx.close()
    return out


def langchain_coverage(conv: Conversation, budgets: Sequence[int], *, limit: int | None = None,
                       placement: str = "message", **options: Any) -> Coverage:
    """`TieredContextMiddleware` (the `create_agent` drop-in): the turns as HumanMessage /
    AIMessage (``name`` = speaker, ``additional_kwargs["timestamp"]``), the question as the
    current user message, one `wrap_model_call` per question with ``max_tokens=budget``;
    coverage from the messages the model receives (verbatim tail) and the recalled block."""
    from langchain.agents.middleware import ModelRequest
    from langchain_core.messages import AIMessage, HumanMessage

    from tiered_context.langchain import TieredContextMiddleware
    from tiered_context.langchain.testing import RecordingChatModel

    history = []
    for t in conv.turns:
        cls = AIMessage if _role(conv, t.speaker) == "assistant" else HumanMessage
        history.append(cls(content=t.text, name=t.speaker, id=t.id, additional_kwargs={"timestamp": t.timestamp}))
    dia_of = {f"lc:{m.id}": m.id for m in history}
    model = RecordingChatModel(responses=["ok"])
    out: Coverage = {}
    for budget in budgets:
        reports: list[Any] = []
        mw = TieredContextMiddleware(max_tokens=budget, compaction="inline", context_placement=placement,
                                     on_call=reports.append, **options)
        recalls = []
        for n, q in enumerate(_questions(conv, limit)):
            question = HumanMessage(q.text, id=f"question-{n}")
            request = ModelRequest(model=model, messages=[*history, question], tools=[])
            sent: list[Any] = []
            mw.wrap_model_call(request, lambda r: sent.append(r))
            report = reports[-1]
            assert report.tokens <= budget
            covered = {m.id for m in sent[0].messages if m.id in {h.id for h in history}}
            for item in report.recalled:
                if len(item.origin_ids) == 1 and item.origin_ids[0] in dia_of:
                    covered.add(dia_of[item.origin_ids[0]])
            recalls.append(len(covered & set(q.evidence)) / len(q.evidence))
        mw.close()
        out[budget] = sum(recalls) / len(recalls)
    return out


def llama_index_coverage(conv: Conversation, budgets: Sequence[int], *, limit: int | None = None,
                         in_place: bool = False, **options: Any) -> Coverage:
    """`TieredMemory` (the LlamaIndex drop-in): the turns as ChatMessages (``name`` = the
    speaker in ``additional_kwargs``), one memory per budget (``token_limit=budget``);
    per question, what a chat engine sends: ``memory.get(input=question,
    initial_token_count=<the question message>)`` plus the question. Coverage from the
    verbatim messages and the 1:1 lines of the recall block (`MemoryView.shown`)."""
    from llama_index.core.base.llms.types import ChatMessage

    from tiered_context.llama_index import TieredMemory

    history = [ChatMessage(role=_role(conv, t.speaker), content=t.text, additional_kwargs={"name": t.speaker})
               for t in conv.turns]
    ids = [t.id for t in conv.turns]
    out: Coverage = {}
    for budget in budgets:
        memory = TieredMemory.from_defaults(token_limit=budget, session_id=f"li-{budget}", compaction="inline",
                                            in_place=in_place, **options)
        memory.put_messages(history)
        memory.context.flush()
        recalls = []
        for q in _questions(conv, limit):
            question = ChatMessage(role="user", content=q.text)
            view = memory.select(q.text, initial_token_count=memory.count_tokens([question]))
            assert view.tokens + memory.count_tokens([question]) <= budget
            covered = {ids[p] for p in view.shown}
            recalls.append(len(covered & set(q.evidence)) / len(q.evidence))
        memory.close()
        out[budget] = sum(recalls) / len(recalls)
    return out


ADAPTERS: dict[str, Callable[..., Coverage]] = {"core": core_coverage, "langchain": langchain_coverage,
                                                "llama_index": llama_index_coverage}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-locomo", required=True)
    parser.add_argument("--conversation", type=int, default=0, help="index of the conversation in the file")
    parser.add_argument("--budgets", default="1000,2000")
    parser.add_argument("--adapters", default=",".join(ADAPTERS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions (default: all)")
    args = parser.parse_args(argv)
    conv = load_locomo(args.data_locomo)[args.conversation]
    budgets = [int(b) for b in args.budgets.split(",")]
    rows = {}
    for name in args.adapters.split(","):
        start = time.perf_counter()
        rows[name] = ADAPTERS[name](conv, budgets, limit=args.limit)
        print(f"{name}: " + ", ".join(f"{b}: {v:.3f}" for b, v in rows[name].items())
              + f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    n = len(_questions(conv, args.limit))
    print(json.dumps({"conversation": conv.id, "questions": n, "turns": len(conv.turns), "coverage": rows}, indent=1))
    if "core" in rows:
        for name, cov in rows.items():
            if name != "core":
                print(" ".join(f"{name} - core @ {b}: {100 * (cov[b] - rows['core'][b]):+.1f} points" for b in budgets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
