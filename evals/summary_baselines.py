"""Summarizing memories as eval baselines: they need a summarizer LLM.

* ``langchain_summarization``: LangChain's ``SummarizationMiddleware`` (its
  ``before_model`` hook, what ``create_agent`` runs before each model call) with
  ``trigger=("tokens", budget)``, ``keep=("tokens", budget // 2)`` and our cl100k counter;
  the context is the summary message plus the preserved recent messages.
* ``llama_index_summary_memory``: LlamaIndex's ``ChatSummaryMemoryBuffer`` with
  ``token_limit=budget``: recent messages verbatim, older ones summarized by the LLM.

Give the LLM with ``tiered-context eval --summarizer MODULE:ATTR`` (a LangChain chat
model for the first, a LlamaIndex LLM for the second); without one the names are listed
but asking for them stops with a message naming the flag.

Scoring: a summary holds no turn verbatim and keeps no provenance ids, so evidence
recall credits only the verbatim messages kept beside it (the metric's definition:
content present verbatim or as a form that names its source). Judge what summaries
keep with the RAGAS LLM metrics (``--judge``). Both summaries ignore the question, so
each is made once per (conversation, budget): one LLM call, not one per question.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiered_context.evals.baselines import ChatMemoryBufferStrategy, StrategyUnavailable, _tokens
from tiered_context.evals.datasets import Question
from tiered_context.evals.strategies import STRATEGIES, Packed, counter

__all__ = ["SUMMARY_BASELINES", "LangChainSummarizationStrategy", "LlamaIndexSummaryStrategy",
           "summary_factories"]


class LlamaIndexSummaryStrategy(ChatMemoryBufferStrategy):
    """``ChatSummaryMemoryBuffer`` over the turns (LlamaIndex LLM as `llm`)."""

    name = "llama_index_summary_memory"

    def __init__(self, llm: Any) -> None:
        super().__init__()
        self._llm = llm

    @staticmethod
    def accepts(llm: Any) -> bool:
        from llama_index.core.llms import LLM

        return isinstance(llm, LLM)

    def _memory(self, budget: int) -> Any:
        from llama_index.core.memory import ChatSummaryMemoryBuffer

        memory = ChatSummaryMemoryBuffer.from_defaults(llm=self._llm, token_limit=budget,
                                                       tokenizer_fn=_tokens)
        memory.set(self._chat())
        return memory


class LangChainSummarizationStrategy(ChatMemoryBufferStrategy):
    """``SummarizationMiddleware.before_model`` over the turns (LangChain chat model)."""

    name = "langchain_summarization"

    def __init__(self, model: Any) -> None:
        super().__init__()
        from langchain_core.messages import AIMessage, HumanMessage

        self._model = model
        self._kinds = {"user": HumanMessage, "assistant": AIMessage}

    @staticmethod
    def accepts(llm: Any) -> bool:
        from langchain_core.language_models import BaseChatModel

        return isinstance(llm, BaseChatModel)

    def _count(self, messages: Any) -> int:
        return counter().count("\n".join(str(m.content) for m in messages))

    def _memory(self, budget: int) -> Any:
        from langchain.agents.middleware import SummarizationMiddleware

        return SummarizationMiddleware(self._model, trigger=("tokens", budget),
                                       keep=("tokens", budget // 2), token_counter=self._count)

    def context(self, question: Question, budget: int) -> Packed:
        if budget not in self._windows:
            conv = self._require()
            messages = [self._kinds[role](content=line, id=turn.id)
                        for turn, role, line in zip(conv.turns, self._roles, self._lines)]
            update = self._memory(budget).before_model({"messages": messages}, None)
            kept = messages if update is None else [m for m in update["messages"][1:]]
            ids = {t.id for t in conv.turns}
            parts = [(str(m.content), {m.id} if m.id in ids else set()) for m in kept]
            self._windows[budget] = self._fit(parts, budget, keep_first=update is not None)
        return self._windows[budget]


SUMMARY_BASELINES: dict[str, type[ChatMemoryBufferStrategy]] = {
    LangChainSummarizationStrategy.name: LangChainSummarizationStrategy,
    LlamaIndexSummaryStrategy.name: LlamaIndexSummaryStrategy,
}


def summary_factories(llm: Any | None) -> dict[str, Callable[[], ChatMemoryBufferStrategy]]:
    """Name -> factory for both summarizing baselines, bound to `llm` (or, without one,
    factories that raise `StrategyUnavailable` naming ``--summarizer``)."""
    def bound(cls: type[ChatMemoryBufferStrategy]) -> Callable[[], ChatMemoryBufferStrategy]:
        def factory() -> ChatMemoryBufferStrategy:
            if llm is None:
                raise StrategyUnavailable(
                    f"the {cls.name!r} strategy needs a summarizer LLM: pass --summarizer "
                    "MODULE:ATTR (a LangChain chat model or LlamaIndex LLM object)")
            if not cls.accepts(llm):  # type: ignore[attr-defined]
                raise StrategyUnavailable(
                    f"the {cls.name!r} strategy needs a "
                    f"{'LangChain chat model' if cls is LangChainSummarizationStrategy else 'LlamaIndex LLM'}"
                    f" as --summarizer, got {type(llm).__name__}")
            return cls(llm)  # type: ignore[call-arg]

        return factory

    return {name: bound(cls) for name, cls in SUMMARY_BASELINES.items()}


STRATEGIES.update(summary_factories(None))
