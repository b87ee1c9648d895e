"""`TieredSummaryMemory`: the classic `ConversationSummaryMemory` signature, tiered inside.

```python
from langchain_classic.chains import ConversationChain
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from tiered_context.langchain._classic import TieredSummaryMemory

memory = TieredSummaryMemory(llm=llm, max_token_limit=1000, return_messages=True)
prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), MessagesPlaceholder("history"),
                                           ("human", "{input}")])
chain = ConversationChain(llm=llm, memory=memory, prompt=prompt)
```
With ``return_messages=True`` give the chain a chat prompt with a ``MessagesPlaceholder``
(ConversationChain's default prompt is a string template: messages would be pasted into
it as Python reprs, as with the classic classes); with the default string prompt keep
``return_messages=False``.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage, SystemMessage, get_buffer_string
    from pydantic import ConfigDict, model_validator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_classic.memory.chat_memory import BaseChatMemory
        from langchain_classic.memory.utils import get_prompt_input_key
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-classic", "langchain") from exc

from tiered_context.core import Budget, Compaction, LLMSummarizer, MemoryConfig
from tiered_context.langchain._embeddings import as_embedder
from tiered_context.langchain._history import TieredChatMessageHistory, query_text

__all__ = ["TieredSummaryMemory"]


class TieredSummaryMemory(BaseChatMemory):
    """Drop-in for ``ConversationSummaryMemory`` / ``ConversationSummaryBufferMemory``.

    Setup (the same keywords as the classic classes)::

        memory = TieredSummaryMemory(llm=llm, max_token_limit=1000, return_messages=True)
        memory = TieredSummaryMemory(llm=llm, chat_memory=old_history)   # imports its messages
        memory = TieredSummaryMemory(llm=llm, session_id="u1", path="./memdir")   # archived on disk

    Use: as ``memory=`` of a classic chain (``ConversationChain``, ``LLMChain``; with
    ``return_messages=True`` a chat prompt with ``MessagesPlaceholder(memory_key)``), or
    directly: ``save_context({"input": q}, {"output": a})`` then
    ``load_memory_variables({"input": next_q})["history"]``.

    Result: like ``ConversationSummaryBufferMemory``, the turns that leave the window are
    folded into a progressive summary written by ``llm`` (the core `LLMSummarizer`:
    incremental, summaries of summaries, with the package's fact check: names, numbers
    and dates the summary dropped stay verbatim), and ``moving_summary_buffer`` holds the
    live summary text. Unlike it, nothing is lost: every original stays archived and
    retrievable, and each load assembles, for the incoming input, the summary, the
    relevant earlier turns and the recent ones within ``max_token_limit`` tokens
    (counted exactly): a SystemMessage (`summary_message_cls`) with the labelled recalled
    context, then the recent turns verbatim. Without ``llm`` the offline extractive
    summarizer writes the summaries.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = None
    chat_memory: Any = None  # a TieredChatMessageHistory (built when None; other histories are imported)
    max_token_limit: int = 2000
    memory_key: str = "history"
    human_prefix: str = "Human"
    ai_prefix: str = "AI"
    summary_message_cls: type[BaseMessage] = SystemMessage
    moving_summary_buffer: str = ""
    session_id: str | None = None
    path: str | None = None
    embedder: Any = None
    #: "inline" (default here, like the classic classes: summaries are written during
    #: `save_context`) or "background" (off the hot path).
    compaction: str = "inline"

    @model_validator(mode="after")
    def _tiered_history(self) -> "TieredSummaryMemory":
        if isinstance(self.chat_memory, TieredChatMessageHistory):
            return self
        previous: BaseChatMessageHistory | None = self.chat_memory
        config = MemoryConfig(
            path=self.path, embedder=as_embedder(self.embedder), compaction=Compaction(self.compaction),
            summarizer=LLMSummarizer(self.llm) if self.llm is not None else None,
            # the window: turns beyond about max_token_limit leave it and are summarized
            budget=Budget(max_tokens=self.max_token_limit, working_set_tokens=max(64, self.max_token_limit // 2)),
        )
        tiered = TieredChatMessageHistory(self.session_id or f"memory-{uuid.uuid4().hex}", config=config,
                                          max_tokens=self.max_token_limit, context_placement="system")
        old = list(previous.messages) if previous is not None else []
        if old and not tiered.all_messages:
            tiered.add_messages(old)
        object.__setattr__(self, "chat_memory", tiered)
        self._refresh_summary()
        return self

    @property
    def history(self) -> TieredChatMessageHistory:
        return self.chat_memory  # type: ignore[return-value]

    @property
    def memory_variables(self) -> list[str]:
        return [self.memory_key]

    @property
    def buffer(self) -> str | list[BaseMessage]:
        return self.load_memory_variables({})[self.memory_key]

    def _query(self, inputs: dict[str, Any]) -> str:
        if not inputs:
            return ""
        key = self.input_key
        if key is None:
            try:
                key = get_prompt_input_key(inputs, self.memory_variables)
            except ValueError:
                return query_text({k: v for k, v in inputs.items() if k not in self.memory_variables})
        return query_text(inputs.get(key, ""))

    def save_context(self, inputs: dict[str, Any], outputs: dict[str, str]) -> None:
        """Store the exchange; turns leaving the window are summarized by ``llm``."""
        super().save_context(inputs, outputs)
        self._refresh_summary()

    async def asave_context(self, inputs: dict[str, Any], outputs: dict[str, str]) -> None:
        await super().asave_context(inputs, outputs)
        self._refresh_summary()

    def _refresh_summary(self) -> None:
        summaries = self.history.context.summaries
        object.__setattr__(self, "moving_summary_buffer", "\n\n".join(s.text for s in summaries))

    def load_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The budgeted history for this input: ``{memory_key: messages or text}``."""
        return self._format(self.history.budgeted_messages(self._query(inputs), max_tokens=self.max_token_limit))

    async def aload_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        messages = await self.history.abudgeted_messages(self._query(inputs), max_tokens=self.max_token_limit)
        return self._format(messages)

    def _format(self, messages: list[BaseMessage]) -> dict[str, Any]:
        if self.summary_message_cls is not SystemMessage:
            messages = [self.summary_message_cls(content=m.content) if isinstance(m, SystemMessage) else m for m in messages]
        if self.return_messages:
            return {self.memory_key: messages}
        return {self.memory_key: get_buffer_string(messages, human_prefix=self.human_prefix, ai_prefix=self.ai_prefix)}

    def clear(self) -> None:
        self.chat_memory.clear()
        self.moving_summary_buffer = ""
