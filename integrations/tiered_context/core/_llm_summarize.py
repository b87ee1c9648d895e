"""`LLMSummarizer`: progressive summaries written by a model the user already has.

Any LlamaIndex `LLM`, LangChain chat model (or LLM), or a plain callable ``prompt -> text``
(each framework imported only to recognise its own objects). Incremental (the previous
summary plus only the new items), hierarchical (summaries of summaries get the merge
prompt), bounded (`timeout` per call, `retries` with exponential backoff, then
`SummaryError`). The reply goes through `make_summary`, so an empty or not-shorter
summary is rejected and the originals are kept. Importable from
`tiered_context.core._summarize` too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from tiered_context.core._items import ContextItem, Role
from tiered_context.core._render import render
from tiered_context.core._summarize import SummaryError, make_summary
from tiered_context.core._tokens import TokenCounter
from tiered_context.errors import ConfigError

__all__ = ["HIERARCHY_PROMPT", "PROMPT", "LLMSummarizer"]

log = logging.getLogger("tiered_context")


PROMPT = """You maintain the running summary of a long conversation.
{previous}New messages (oldest first, with date headers):
{transcript}

Write the updated summary{merge}. Keep every name, number, date, decision and commitment exactly as
written, say who said what and when (use the dates above), and drop small talk. Write at most {words}
words of plain text. Reply with the summary only."""

HIERARCHY_PROMPT = """Below are summaries of consecutive parts of a long conversation, oldest first.
{previous}{transcript}

Merge them into one shorter summary. Keep every name, number, date, decision and commitment exactly as
written, and who said what and when. Write at most {words} words of plain text. Reply with the summary only."""


class LLMSummarizer:
    """Summaries written by a model you already have: a LlamaIndex `LLM`, a LangChain chat
    model (or LLM), or any callable ``prompt -> text``.

    Setup and use::

        from llama_index.llms.openai import OpenAI                # or any LlamaIndex LLM
        summarizer = LLMSummarizer(OpenAI(model="gpt-4o-mini"), timeout=30)
        # or: LLMSummarizer(ChatOpenAI(model="gpt-4o-mini"))      # any LangChain chat model
        ctx = TieredContext(session_id="s1", summarizer=summarizer)

    Incremental: the prompt holds the previous summary and only the new items.
    Hierarchical: items that are summaries get the merge prompt. Each call gets
    `timeout` seconds and `retries` more attempts after ``backoff * 2**n`` seconds; then
    `SummaryError`. An empty or not-shorter reply raises `SummaryRejected` (not retried).
    """

    def __init__(
        self,
        llm: Any,
        *,
        counter: TokenCounter | None = None,
        max_words: int = 250,
        timeout: float | None = 60.0,
        retries: int = 2,
        backoff: float = 1.0,
        prompt: str = PROMPT,
        hierarchy_prompt: str = HIERARCHY_PROMPT,
    ) -> None:
        if retries < 0 or backoff < 0 or (timeout is not None and timeout <= 0):
            raise ConfigError("retries and backoff must be >= 0 and timeout > 0 (or None)")
        self._call, self._acall, self.kind = _adapt(llm)
        self.llm = llm
        self.counter = counter or TokenCounter()
        self.max_words, self.timeout, self.retries, self.backoff = max_words, timeout, retries, backoff
        self.prompt, self.hierarchy_prompt = prompt, hierarchy_prompt
        self.failures = 0  # calls that failed (each retry counts)

    def build_prompt(self, items: Sequence[ContextItem], previous: ContextItem | None) -> str:
        merging = any(i.role == Role.SUMMARY.value for i in items)
        before = f"Summary so far:\n{previous.text}\n\n" if previous is not None else ""
        template = self.hierarchy_prompt if merging else self.prompt
        return template.format(previous=before, transcript=render(sorted(items, key=lambda i: (i.timestamp, i.seq))),
                               merge=" (the summary so far plus the new messages)" if previous else "",
                               words=self.max_words)

    def summarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        prompt = self.build_prompt(items, previous)
        for attempt in range(self.retries + 1):
            try:
                text = self._with_timeout(prompt)
                break
            except Exception as exc:  # the model failed or timed out: back off, retry, then give up
                self._failed(attempt, exc)
                time.sleep(self.backoff * 2**attempt)
        return make_summary(text, items, previous, counter=self.counter, method=f"llm:{self.kind}")

    async def asummarize(self, items: Sequence[ContextItem], previous: ContextItem | None = None) -> ContextItem:
        prompt = self.build_prompt(items, previous)
        for attempt in range(self.retries + 1):
            try:
                text = await asyncio.wait_for(self._acall(prompt), self.timeout)
                break
            except Exception as exc:
                self._failed(attempt, exc)
                await asyncio.sleep(self.backoff * 2**attempt)
        return make_summary(text, items, previous, counter=self.counter, method=f"llm:{self.kind}")

    def _failed(self, attempt: int, exc: BaseException) -> None:
        self.failures += 1
        what = "timed out" if isinstance(exc, (FutureTimeout, asyncio.TimeoutError)) else f"failed: {exc!r}"
        if attempt >= self.retries:
            log.warning("summary call %s; giving up after %d attempts, history unchanged", what, attempt + 1)
            raise SummaryError(f"the summary model {what} ({attempt + 1} attempts); the history is unchanged. "
                               "Check the model, or raise timeout= / retries=") from exc
        log.info("summary call %s; retrying in %.1fs", what, self.backoff * 2**attempt)

    def _with_timeout(self, prompt: str) -> str:
        if self.timeout is None:
            return self._call(prompt)
        # a daemon thread per call: a model that never answers is abandoned after `timeout`
        # and can hold neither close() nor the interpreter's exit (a pool's thread would)
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self._call(prompt))
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)

        threading.Thread(target=run, name="tiered-summary", daemon=True).start()
        return future.result(timeout=self.timeout)

    def __repr__(self) -> str:
        return f"LLMSummarizer({self.kind}: {type(self.llm).__name__}, timeout={self.timeout}, retries={self.retries})"


def _adapt(llm: Any) -> tuple[Callable[[str], str], Callable[[str], Any], str]:
    """(sync call, async call, kind) for a model, recognised by its shape, never by
    importing a framework: ``complete``/``acomplete`` returning an object with ``.text``
    (a LlamaIndex LLM), ``invoke``/``ainvoke`` returning a message or a str (a LangChain
    chat model or LLM), or a plain callable ``prompt -> text``."""
    if callable(getattr(llm, "complete", None)) and callable(getattr(llm, "acomplete", None)):
        async def acomplete(prompt: str) -> str:
            return getattr(await llm.acomplete(prompt), "text", None)

        return (lambda prompt: getattr(llm.complete(prompt), "text", None)), acomplete, "llama_index"
    if callable(getattr(llm, "invoke", None)) and callable(getattr(llm, "ainvoke", None)):
        async def ainvoke(prompt: str) -> str:
            return _content(await llm.ainvoke(prompt))

        return (lambda prompt: _content(llm.invoke(prompt))), ainvoke, "langchain"
    if callable(llm):
        async def acall(prompt: str) -> str:
            result = llm(prompt)
            return await result if asyncio.iscoroutine(result) else result

        return llm, acall, "callable"  # what it returns is checked by make_summary: text or rejected
    raise ConfigError(
        f"cannot summarize with {type(llm).__name__}: pass a LlamaIndex LLM, a LangChain chat model "
        "or LLM, or a callable prompt -> text"
    )


def _content(message: Any) -> str:
    """Text of a LangChain reply: a str (LLMs) or a message whose content is str or blocks."""
    if isinstance(message, str) or message is None:
        return message
    content = getattr(message, "content", message)
    if isinstance(content, list):
        return "".join(b if isinstance(b, str) else str(b.get("text", "")) for b in content
                       if isinstance(b, str) or (isinstance(b, dict) and b.get("type", "text") == "text"))
    return str(content)
