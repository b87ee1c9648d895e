"""The frameworks' own memories as eval strategies, driven through their public APIs.

Each baseline sees the conversation the way a user's app would: every turn becomes one
chat message whose content is ``"{speaker}: {text}"`` (the first speaker of a dialogue
is the user, the second the assistant; many-party data is all user), put into the
framework's memory in order. The framework then decides what to keep under the token
budget, counting with the same cl100k counter the runner measures with
(`strategies.counter()`). What it returns is rendered exactly as the line baselines
render turns: message contents joined by newlines (a memory block's system message
contributes its text as is).

Coverage is the turns whose message survives: by message id for LangChain; for
LlamaIndex (whose memory blocks store message text, not ids) by locating the returned
recent window, and each batch of ``<message role=...>...</message>`` chunks that a
`VectorMemoryBlock` retrieved, as a run of consecutive rendered turns (so a repeated
short line such as "A: Yeah." names only the turn that is really there).

The budget stays hard. A framework counts its messages, not the newlines and memory
template framing around them (``ChatMemoryBuffer`` counts the contents joined by
spaces, about one token per message less than the newline-joined render), so its
output can be over under our counter; then the oldest chat-history message is dropped
(retrieved memory is kept longest, as LlamaIndex never truncates a priority-0 block),
repeatedly, until it fits. `FrameworkStrategy.trimmed` counts those drops: about 2-3%
of the messages a window holds, from its oldest end; the framework's choice is
otherwise untouched.

Settings of `llama_index_memory` (the strongest memory a LlamaIndex user builds
without an LLM): ``Memory.from_defaults(token_limit=budget,
chat_history_token_ratio=0.5, token_flush_size=128)`` and one
``VectorMemoryBlock`` (priority 0, the default, so Memory never drops it) over an
in-process vector store with the package's offline WordLlama embedder
(`TieredEmbedding`), ``retrieval_context_window=2`` (the query is the question and
the latest message, not the last five; the block reads a window of 1 as "all messages") and ``similarity_top_k`` sized so the retrieved batches
fill the half of the budget short-term memory leaves (``budget // 2 // 128``, at least
1). Flushed batches are ~117 tokens (two or three turns) so retrieval is fine grained.
All turns go in with one ``put_messages`` (the same waterfall of flushes as one
``put`` per turn, without 600 round trips through its SQL store). One memory is built
per budget, since ``token_limit`` shapes what it flushes.

`llmlingua` (only with a model: ``tiered-context eval --llmlingua-model PATH``)
compresses every turn once with LLMLinguaCompressor at 2x and keeps the most recent
compressed turns that fit: question-agnostic prompt compression of the history.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tiered_context.evals.datasets import Conversation, Question
from tiered_context.evals.strategies import STRATEGIES, Packed, RecencyStrategy, counter

__all__ = [
    "FRAMEWORK_BASELINES",
    "ChatMemoryBufferStrategy",
    "FrameworkStrategy",
    "LLMLinguaStrategy",
    "LlamaIndexMemoryStrategy",
    "StrategyUnavailable",
    "TrimMessagesStrategy",
    "llmlingua_factory",
]

#: ``llama_index_memory`` settings (see the module docstring).
MEMORY_CHAT_RATIO = 0.5
MEMORY_FLUSH_TOKENS = 64
#: tokens of one retrieved batch as measured on LoCoMo (mean 117: the flush size, the
#: message that crosses it, and the ``<message role=...>`` framing), rounded up
MEMORY_NODE_TOKENS = 128
#: `llmlingua`: share of each turn's tokens kept (2x compression)
LLMLINGUA_KEEP = 0.5

_CHUNK = re.compile(r"<message role='[^']*'>(.*?)</message>", re.DOTALL)


class StrategyUnavailable(RuntimeError):
    """A strategy that needs something this run was not given (a model, an LLM)."""


def _tokens(text: str) -> range:
    """LlamaIndex's ``tokenizer_fn``: only ``len()`` of the result is used, so a range
    of the cl100k count serves without materialising token ids."""
    return range(counter().count(text))


class FrameworkStrategy:
    """Shared machinery: the turns as lines, coverage by text, the honest budget guard."""

    name = "framework"

    def __init__(self) -> None:
        self._conv: Conversation | None = None
        self._lines: list[str] = []
        self._roles: list[str] = []
        self._ids: list[str] = []
        self._positions: dict[str, list[int]] = defaultdict(list)
        #: messages dropped by the budget guard (see the module docstring)
        self.trimmed = 0

    def ingest(self, conv: Conversation) -> None:
        self._conv = conv
        second = conv.speakers[1] if conv.speakers else None
        self._lines = [f"{t.speaker}: {t.text}" for t in conv.turns]
        self._roles = ["assistant" if t.speaker == second else "user" for t in conv.turns]
        self._ids = [t.id for t in conv.turns]
        self._positions = defaultdict(list)
        for i, line in enumerate(self._lines):
            self._positions[line].append(i)

    def _run_ids(self, lines: Sequence[str]) -> list[set[str]]:
        """The turn id of each of `lines`, a run of consecutive turns (a memory's recent
        window, or one batch a vector block stored): located as a whole, latest match
        first, so repeated short lines ("A: Yeah.") name the right turn."""
        lines = list(lines)
        if not lines:
            return []
        for start in reversed(self._positions.get(lines[0], [])):
            if self._lines[start:start + len(lines)] == lines:
                return [{self._ids[start + i]} for i in range(len(lines))]
        # not one run (should not happen): each line as its latest occurrence
        return [{self._ids[self._positions[x][-1]]} if x in self._positions else set() for x in lines]

    def _memory_ids(self, text: str) -> set[str]:
        """Turn ids in a memory-block message: each retrieved batch (batches are joined
        by a blank line) is a run of ``<message role=...>`` chunks."""
        found: set[str] = set()
        for batch in text.split("\n\n"):
            for ids in self._run_ids(_CHUNK.findall(batch)):
                found |= ids
        return found

    def _fit(self, parts: Sequence[tuple[str, set[str]]], budget: int, *,
             keep_first: bool = False) -> Packed:
        """Join `parts` (text, ids) with newlines; while over `budget`, drop the oldest
        chat message (the first part, or the second when `keep_first` protects a
        memory block), counting each drop in `trimmed`."""
        parts = list(parts)
        while True:
            text = "\n".join(p for p, _ in parts)
            tokens = counter().count(text)
            if tokens <= budget:
                covered = set().union(*(ids for _, ids in parts)) if parts else set()
                return Packed(text=text, tokens=tokens, covered=covered)
            parts.pop(1 if keep_first and len(parts) > 1 else 0)
            self.trimmed += 1

    def _require(self) -> Conversation:
        if self._conv is None:
            raise RuntimeError("call ingest(conversation) before context(question, budget)")
        return self._conv


class TrimMessagesStrategy(FrameworkStrategy):
    """LangChain's ``trim_messages(strategy="last")``: the most recent messages that fit.

    The token counter is ours, per message (content tokens plus the newline that joins
    it to the next), so the framework's sum is the rendered size up to BPE merges.
    """

    name = "langchain_trim_messages"

    def __init__(self) -> None:
        super().__init__()
        from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, trim_messages

        self._trim = trim_messages
        self._base = BaseMessage
        self._count: Callable[[Any], int] = len
        self._kinds = {"user": HumanMessage, "assistant": AIMessage}
        self._messages: list[Any] = []
        self._costs: dict[str, int] = {}

    def ingest(self, conv: Conversation) -> None:
        super().ingest(conv)
        self._messages = [self._kinds[role](content=line, id=turn.id)
                          for turn, role, line in zip(conv.turns, self._roles, self._lines)]
        newline = counter().count("\n")
        costs = counter().count_many(self._lines)
        self._costs = {m.id: c + newline for m, c in zip(self._messages, costs)}
        table = self._costs

        def count(message: Any) -> int:
            return table[message.id]

        # trim_messages treats a callable whose first parameter is annotated with the
        # BaseMessage class itself as a per-message counter (and sums it).
        count.__annotations__ = {"message": self._base, "return": int}
        self._count = count

    def context(self, question: Question, budget: int) -> Packed:
        self._require()
        kept = self._trim(self._messages, max_tokens=budget, strategy="last",
                          token_counter=self._count)
        return self._fit([(m.content, {m.id}) for m in kept], budget)


class _LlamaIndexStrategy(FrameworkStrategy):
    """Turns as LlamaIndex ``ChatMessage``s; a memory per budget, built on first use."""

    def __init__(self) -> None:
        super().__init__()
        from llama_index.core.llms import ChatMessage

        self._message = ChatMessage
        self._memories: dict[int, Any] = {}

    def ingest(self, conv: Conversation) -> None:
        super().ingest(conv)
        self._memories = {}

    def _chat(self) -> list[Any]:
        return [self._message(role=role, content=line) for role, line in zip(self._roles, self._lines)]

    def _memory(self, budget: int) -> Any:
        raise NotImplementedError

    def _text(self, message: Any) -> str:
        return message.content or ""

    def _parts(self, messages: Sequence[Any]) -> list[tuple[str, set[str]]]:
        """(text, turn ids) per message: a leading system message is a memory block's
        output, the rest is the recent window, one run of turns."""
        texts = [self._text(m) for m in messages]
        head: list[tuple[str, set[str]]] = []
        if messages and str(messages[0].role.value) == "system":
            head, texts = [(texts[0], self._memory_ids(texts[0]))], texts[1:]
        return head + list(zip(texts, self._run_ids(texts)))

    def context(self, question: Question, budget: int) -> Packed:
        self._require()
        if budget not in self._memories:
            self._memories[budget] = self._memory(budget)
        messages = self._memories[budget].get(input=question.text)
        keep_first = bool(messages) and str(messages[0].role.value) == "system"
        return self._fit(self._parts(messages), budget, keep_first=keep_first)


class ChatMemoryBufferStrategy(_LlamaIndexStrategy):
    """LlamaIndex's ``ChatMemoryBuffer``: the most recent messages within ``token_limit``
    (it starts the window on a user message, as the class does).

    ``ChatMemoryBuffer.get`` ignores ``input`` and re-tokenises the whole remaining
    history once per message it drops (quadratic: ~60 ms for a 600-turn conversation),
    so its answer, the same for every question, is computed once per (conversation,
    budget) and reused: the first question's latency carries that cost.
    """

    name = "llama_index_chat_memory_buffer"

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[int, Packed] = {}

    def ingest(self, conv: Conversation) -> None:
        super().ingest(conv)
        self._windows = {}

    def context(self, question: Question, budget: int) -> Packed:
        if budget not in self._windows:
            self._windows[budget] = super().context(question, budget)
        return self._windows[budget]

    def _memory(self, budget: int) -> Any:
        from llama_index.core.memory import ChatMemoryBuffer

        memory = ChatMemoryBuffer.from_defaults(token_limit=budget, tokenizer_fn=_tokens)
        memory.set(self._chat())
        return memory


class LlamaIndexMemoryStrategy(_LlamaIndexStrategy):
    """LlamaIndex's ``Memory`` with a ``VectorMemoryBlock``: recent turns verbatim plus
    older ones retrieved by embedding similarity to the question (settings: module
    docstring)."""

    name = "llama_index_memory"

    def __init__(self) -> None:
        super().__init__()
        from tiered_context.llama_index import TieredEmbedding

        self._embed_model = TieredEmbedding()

    def _memory(self, budget: int) -> Any:
        from llama_index.core.memory import Memory, VectorMemoryBlock

        conv = self._require()
        block = VectorMemoryBlock(
            name="retrieved", vector_store=_text_vector_store(), embed_model=self._embed_model,
            similarity_top_k=max(1, int(budget * (1 - MEMORY_CHAT_RATIO)) // MEMORY_NODE_TOKENS),
            retrieval_context_window=2,
        )
        memory = Memory.from_defaults(
            session_id=conv.id, token_limit=budget, tokenizer_fn=_tokens,
            chat_history_token_ratio=MEMORY_CHAT_RATIO, token_flush_size=MEMORY_FLUSH_TOKENS,
            memory_blocks=[block],
        )
        memory.put_messages(self._chat())
        return memory

    def _text(self, message: Any) -> str:
        # the system message holds the memory template: render its text blocks as is
        return "".join(getattr(b, "text", "") for b in message.blocks)


def _text_vector_store() -> Any:
    """An in-process LlamaIndex vector store that keeps node text.

    ``SimpleVectorStore`` keeps only embeddings (``stores_text=False``), and
    ``VectorMemoryBlock`` needs the nodes back from a query; this subclass remembers the
    nodes it is given and returns them with the similarities.
    """
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQueryResult

    class TextSimpleVectorStore(SimpleVectorStore):
        stores_text: bool = True

        def add(self, nodes: Sequence[Any], **kwargs: Any) -> list[str]:
            ids = super().add(nodes, **kwargs)
            store = self.__dict__.setdefault("_nodes", {})
            store.update({n.node_id: n for n in nodes})
            return ids

        def query(self, query: Any, **kwargs: Any) -> VectorStoreQueryResult:
            result = super().query(query, **kwargs)
            store = self.__dict__.get("_nodes", {})
            return VectorStoreQueryResult(nodes=[store[i] for i in result.ids or []],
                                          similarities=result.similarities, ids=result.ids)

    return TextSimpleVectorStore()


class LLMLinguaStrategy(RecencyStrategy):
    """LLMLingua(-2) prompt compression of the history, then the most recent turns that
    fit: every turn is compressed once per conversation to `keep` of its tokens."""

    name = "llmlingua"

    def __init__(self, model: str, *, keep: float = LLMLINGUA_KEEP, compressor: Any = None) -> None:
        super().__init__()
        if compressor is None:
            from tiered_context.llmlingua import LLMLinguaCompressor

            compressor = LLMLinguaCompressor(model)
        self._compressor = compressor
        self._keep = keep
        self._original: list[int] = []

    @property
    def compressor(self) -> Any:
        """The loaded `LLMLinguaCompressor` (the runner also measures answer survival
        with it)."""
        return self._compressor

    def ingest(self, conv: Conversation) -> None:
        super().ingest(conv)
        self._original = [int(c) for c in self._costs]
        self._lines = [f"{t.speaker}: {self._compressor.compress_text(t.text, self._keep)}"
                       for t in conv.turns]
        newline = counter().count("\n")
        self._costs = np.asarray(counter().count_many(self._lines), dtype=np.int64) + newline

    def context(self, question: Question, budget: int) -> Packed:
        packed = super().context(question, budget)
        index = {tid: i for i, tid in enumerate(self._ids)}
        kept = [index[t] for t in packed.covered]
        used = sum(int(self._costs[i]) for i in kept)
        ratio = sum(self._original[i] for i in kept) / used if used else None
        return Packed(text=packed.text, tokens=packed.tokens, covered=packed.covered,
                      compression_ratio=ratio)


def llmlingua_factory(model: str | None) -> Callable[[], LLMLinguaStrategy]:
    """The `llmlingua` factory: with a model path (or cached name) a fresh strategy per
    conversation sharing one loaded compressor; without one, a factory that raises
    `StrategyUnavailable` naming the flag to pass."""
    if not model:
        def unavailable() -> LLMLinguaStrategy:
            raise StrategyUnavailable(
                "the 'llmlingua' strategy needs a local LLMLingua model: pass "
                "--llmlingua-model PATH (e.g. a llmlingua-2-bert-base-multilingual-cased-"
                "meetingbank directory) and install the 'llmlingua' extra")

        return unavailable
    shared: dict[str, Any] = {}

    def factory() -> LLMLinguaStrategy:
        if "compressor" not in shared:
            shared["compressor"] = LLMLinguaStrategy(model).compressor
        return LLMLinguaStrategy(model, compressor=shared["compressor"])

    return factory


#: LLM-free framework baselines: name -> factory of a fresh strategy.
FRAMEWORK_BASELINES: dict[str, Callable[[], FrameworkStrategy]] = {
    TrimMessagesStrategy.name: TrimMessagesStrategy,
    ChatMemoryBufferStrategy.name: ChatMemoryBufferStrategy,
    LlamaIndexMemoryStrategy.name: LlamaIndexMemoryStrategy,
}

STRATEGIES.update(FRAMEWORK_BASELINES)
#: listed for ``--strategies``; without ``--llmlingua-model PATH`` it says so
STRATEGIES["llmlingua"] = llmlingua_factory(None)

# the summarizing baselines (they need an LLM) register themselves too
import tiered_context.evals.summary_baselines  # noqa: E402,F401
