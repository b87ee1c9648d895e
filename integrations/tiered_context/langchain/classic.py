"""`TieredSummaryMemory`: the classic `ConversationSummaryMemory` signature, tiered inside.

```python
from langchain_classic.chains import ConversationChain
from tiered_context.langchain.classic import TieredSummaryMemory

memory = TieredSummaryMemory(llm=llm, max_token_limit=1000, return_messages=True)
chain = ConversationChain(llm=llm, memory=memory)
```
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

from tiered_context.langchain.history import TieredChatMessageHistory, query_text

__all__ = ["TieredSummaryMemory"]


class TieredSummaryMemory(BaseChatMemory):
    """Drop-in for ``ConversationSummaryMemory`` / ``ConversationSummaryBufferMemory``.

    Setup (the same keywords as the classic classes)::

        memory = TieredSummaryMemory(llm=llm, max_token_limit=1000, return_messages=True)
        memory = TieredSummaryMemory(llm=llm, chat_memory=old_history)   # imports its messages
        memory = TieredSummaryMemory(session_id="u1", path="./memdir")   # archived on disk

    Use: as ``memory=`` of a classic chain (``ConversationChain``, ``LLMChain``), or
    directly: ``save_context({"input": q}, {"output": a})`` then
    ``load_memory_variables({"input": next_q})["history"]``.

    Result: instead of a running summary that overwrites the turns it summarises, each
    load assembles, for the incoming input, the most relevant earlier turns (verbatim or
    compressed) within ``max_token_limit`` tokens, counted exactly. No LLM call is made
    when saving or loading; ``llm`` is accepted for signature compatibility (and kept on
    the instance), and ``moving_summary_buffer`` stays empty because nothing is ever
    summarised away: every turn stays retrievable.
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

    @model_validator(mode="after")
    def _tiered_history(self) -> "TieredSummaryMemory":
        if isinstance(self.chat_memory, TieredChatMessageHistory):
            return self
        previous: BaseChatMessageHistory | None = self.chat_memory
        tiered = TieredChatMessageHistory(self.session_id or f"memory-{uuid.uuid4().hex}", max_tokens=self.max_token_limit,
                                          path=self.path, embedder=self.embedder)
        old = list(previous.messages) if previous is not None else []
        if old and not tiered.messages:
            tiered.add_messages(old)
        object.__setattr__(self, "chat_memory", tiered)
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

    def _format(self, messages: list[BaseMessage]) -> dict[str, Any]:
        if self.return_messages:
            return {self.memory_key: messages}
        return {self.memory_key: get_buffer_string(messages, human_prefix=self.human_prefix, ai_prefix=self.ai_prefix)}

    def load_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The budgeted history for this input: ``{memory_key: messages or text}``."""
        return self._format(self.history.budgeted_messages(self._query(inputs), max_tokens=self.max_token_limit))

    async def aload_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        messages = await self.history.abudgeted_messages(self._query(inputs), max_tokens=self.max_token_limit)
        return self._format(messages)

    def clear(self) -> None:
        self.chat_memory.clear()
        self.moving_summary_buffer = ""
