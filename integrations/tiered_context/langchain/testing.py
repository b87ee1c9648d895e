"""A fake chat model for tests and notebooks: records every prompt it was sent.

```python
from tiered_context.langchain.testing import RecordingChatModel
model = RecordingChatModel(responses=["ok"])           # cycles through the responses
model = RecordingChatModel(respond=lambda msgs: "...")  # or answers from what it saw
agent = create_agent(model, tools=[...])                # bind_tools is accepted
model.calls[-1]                                         # the messages of the last call
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tiered_context.errors import missing_extra

try:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from pydantic import Field, PrivateAttr
except ImportError as exc:  # pragma: no cover
    raise missing_extra("langchain-core", "langchain") from exc

__all__ = ["RecordingChatModel", "tool_sequence_errors"]


class RecordingChatModel(BaseChatModel):
    """Answers from a script (or a function of the prompt) and records each prompt.

    ``responses`` are used in order and then cycled (each answer is a fresh copy, so
    message ids never collide); ``respond(messages)`` overrides them when given. A
    response may be a str or an `AIMessage` (with ``tool_calls`` to drive an agent).
    ``calls`` holds the messages of every call, ``tools`` the tools bound last.
    """

    responses: list[Any] = Field(default_factory=lambda: ["ok"])
    respond: Any = None
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    tools: list[Any] = Field(default_factory=list)
    _next: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "recording-fake-chat-model"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "RecordingChatModel":
        self.tools = list(tools)
        return self

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        if callable(self.respond):
            out = self.respond(messages)
        else:
            out = self.responses[self._next % len(self.responses)]
            self._next += 1
        if isinstance(out, str):
            return AIMessage(content=out)
        if isinstance(out, AIMessage):
            return out.model_copy(update={"id": None}, deep=True)
        raise TypeError(f"a response must be str or AIMessage, got {type(out).__name__}")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self._answer(list(messages)))])

    @property
    def last_text(self) -> str:
        """All text of the last prompt (for checking which facts the model saw)."""
        if not self.calls:
            return ""
        return "\n".join(m.text if isinstance(m.text, str) else str(m.content) for m in self.calls[-1])

    def prompts_text(self, index: int = -1) -> str:
        return "\n".join(str(m.content) for m in self.calls[index])




def tool_sequence_errors(messages: Sequence[BaseMessage]) -> list[str]:
    """What a provider would reject in `messages`: a tool message without its call
    before it, a tool call without its result, a tool message at the start."""
    from langchain_core.messages import SystemMessage, ToolMessage

    errors: list[str] = []
    open_calls: set[str] = set()
    asked: dict[str, int] = {}
    body = [m for m in messages if not isinstance(m, SystemMessage)]
    if body and isinstance(body[0], ToolMessage):
        errors.append("the first message after the system prompt is a tool message")
    for n, m in enumerate(messages):
        if isinstance(m, AIMessage):
            for c in m.tool_calls:
                asked[str(c["id"])] = n
                open_calls.add(str(c["id"]))
        elif isinstance(m, ToolMessage):
            if str(m.tool_call_id) not in asked:
                errors.append(f"tool message {n} answers {m.tool_call_id!r}, which no earlier AI message called")
            open_calls.discard(str(m.tool_call_id))
    errors += [f"tool call {c!r} (message {asked[c]}) has no result" for c in sorted(open_calls)]
    return errors
