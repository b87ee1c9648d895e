"""The progressive summaries a `Ladder` folds retiring history into.

Retiring originals (and a backlog too small to summarize before) are folded into the
running level-1 summary (`_fold_retiring`); a summary's facts are checked against its
inputs, and items whose facts it lost stay in L2. `fanout` sealed summaries of one level
merge into the level above (`_merge_upward`). Each summary's id derives from the span it
covers (`core.summarize.summary_id`), so a span is summarized once: an archived summary
is reused (`_stored_summaries`), also by a reopened memory replaying its history. Nothing
here deletes: a failed summary leaves the history as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tiered_context.core._embed import normalize
from tiered_context.core._facts import check_facts
from tiered_context.core._items import ContextItem
from tiered_context.errors import DuplicateItemError
from tiered_context.core._summarize import SummaryError, SummaryRejected, summary_id

__all__ = ["Summaries"]

log = logging.getLogger("tiered_context")


class Summaries:
    """The summary steps of `Ladder` (a mixin: they read and write the ladder's working
    set, frontier, backlog and kept items, taking `self.lock` where the ladder does)."""

    def _fold_retiring(self, retire: list[str]) -> tuple[dict[str, float], str, bool]:
        """Fold the originals of `retire` (and the backlog) into the running summary.

        Returns (items kept in L2 for their facts -> score, a note for the event, failed).
        Runs off the lock (an LLM call may take seconds); only this job touches summaries.
        """
        if not self.config.summary.enabled:
            return {}, "", False
        with self.lock:
            current = {o: self._working[o] for o in retire if o in self._working}
            pruned, self._pruned = self._pruned, []
        leaving = [(i.origin_ids[0], i) for i in pruned] + list(current.items())
        derived = [o for o, i in leaving if i.is_derived]
        stored = {i.id: i for i in self.config.store.get(self._items_key, derived)} if derived else {}
        originals = [stored.get(o, i) if i.is_derived else i for o, i in leaving]
        todo = sorted({i.id: i for i in self._backlog + originals if i.id not in self._summarized}.values(),
                      key=lambda i: i.seq)
        if not todo:
            return {}, "", False
        if sum(i.tokens for i in todo) < self.config.summary.min_batch_tokens:
            self._backlog = todo  # too little to summarize yet: it waits (archived, retrievable)
            return {}, "", False
        previous = next((s for s in reversed(self._frontier) if s.metadata.get("summary_level") == 1
                         and len(s.source_ids) < self.config.summary.capacity(1)), None)
        try:
            summary = self._summarize(todo, previous)
        except Exception as exc:  # SummaryError, SummaryRejected or a bug in a custom summarizer
            log.warning("summarizing %d retiring items failed; history unchanged: %s", len(todo), exc,
                        exc_info=None if isinstance(exc, SummaryError) else exc)  # a bug keeps its traceback
            self._backlog = [i for i in todo if i.id not in current]
            return {}, f"summary failed ({exc}); history unchanged, retried later", True
        self._backlog = []
        check = check_facts(todo + ([previous] if previous else []), summary)
        keep: dict[str, float] = {}
        for fact in sorted(check.high(self.config.summary.fact_threshold), key=lambda f: -f.score):
            if (fact.source_id in current and fact.source_id not in keep and fact.source_id not in self._released
                    and len(keep) < self.config.summary.max_fact_items):
                keep[fact.source_id] = fact.score
        if keep:  # the kept items stay themselves: the summary must stand for the others only
            rest = [i for i in todo if i.id not in keep]
            self._store_summary(summary)  # the draft is archived too, so a reopened memory replays it
            try:
                if not rest:
                    raise SummaryError("every retiring item holds facts worth keeping")
                summary = self._summarize(rest, previous)
                check = check_facts(rest + ([previous] if previous else []), summary)
                todo = rest
            except Exception as exc:
                log.info("no summary without the items kept for their facts (%s); they retire with the rest", exc,
                         exc_info=None if isinstance(exc, SummaryError) else exc)
                keep = {}
        summary = self._archive(summary.evolve(metadata={**summary.metadata, "fact_check": check.as_dict(),
                                                         "kept_in_l2": sorted(keep)}), previous)
        self._summarized.update(i.id for i in todo)
        note = (f"summarized {len(todo)} items into {summary.id} ({summary.tokens} tokens); "
                f"facts kept {check.kept}/{check.total}")
        if check.missing:
            note += "; missing: " + ", ".join(f.text for f in check.missing[:8])
        if keep:
            note += f"; {len(keep)} items kept in L2 for their facts"
        note += self._merge_upward()
        return keep, note, False

    def _summarize(self, items: list[ContextItem], previous: ContextItem | None) -> ContextItem:
        """A summary of `items` folded into `previous`: the archived one when these exact
        inputs were summarized before (a reopened memory replays, it does not re-ask)."""
        archived = self._stored_summaries([summary_id(items, previous)])
        if archived:
            return archived[0]
        if self._replaying:
            raise SummaryError("not archived before the memory was closed; it is made again later")
        summary = self.config.summarizer.summarize(items, previous)
        if not isinstance(summary, ContextItem) or not summary.is_derived or not summary.text.strip():
            raise SummaryRejected(f"the summarizer returned {summary!r:.80}, not a summary item with text and "
                                  "source_ids (use core.summarize.make_summary); the originals are kept")
        return summary

    def _stored_summaries(self, ids: Sequence[str]) -> list[ContextItem]:
        """Archived summaries by id, in the order of `ids`: this namespace's, then those an
        archive written before namespaces holds (only derived items: `put` can never plant one)."""
        found: dict[str, ContextItem] = {}
        for key in self._summary_keys:
            missing = [i for i in ids if i not in found]
            if not missing:
                break
            found.update((i.id, i) for i in self.config.store.get(key, missing) if i.is_derived)
        return [found[i] for i in ids if i in found]

    def _store_summary(self, summary: ContextItem) -> ContextItem:
        """Archive `summary` with its vector. Its id derives from the span it covers, so the
        span is summarized once: the archived one wins, also when another worker archived
        a different text for the same span a moment ago."""
        existing = self._stored_summaries([summary.id])
        if existing:
            return existing[0]
        try:
            self.config.store.add(self._summary_keys[0], [summary], normalize(self.config.embedder.embed([summary.text])))
        except DuplicateItemError:
            return self._stored_summaries([summary.id])[0]
        return summary

    def _archive(self, summary: ContextItem, previous: ContextItem | None) -> ContextItem:
        """Store `summary` (with its vector) and make it live in place of what it folds."""
        summary = self._store_summary(summary)
        gone = {previous.id} if previous is not None else set()
        gone.update(summary.metadata.get("children") or ())
        with self.lock:
            self._frontier = [s for s in self._frontier if s.id not in gone] + [summary]
        return summary

    def _merge_upward(self) -> str:
        """Merge `fanout` sealed summaries of one level into the level above (repeatedly)."""
        notes = []
        level = 1
        while level < 8:
            sealed = [s for s in self._frontier if s.metadata.get("summary_level") == level
                      and len(s.source_ids) >= self.config.summary.capacity(level)]
            if len(sealed) < self.config.summary.fanout:
                level += 1
                continue
            children = sealed[: self.config.summary.fanout]
            previous = next((s for s in reversed(self._frontier) if s.metadata.get("summary_level") == level + 1
                             and len(s.source_ids) < self.config.summary.capacity(level + 1)), None)
            try:
                merged = self._summarize(children, previous)
            except Exception as exc:
                log.warning("merging %d level-%d summaries failed; they stay as they are: %s", len(children), level, exc)
                notes.append(f"level-{level + 1} merge failed ({exc}); retried later")
                break
            check = check_facts(children + ([previous] if previous else []), merged)
            self._archive(merged.evolve(metadata={**merged.metadata, "fact_check": check.as_dict()}), previous)
            notes.append(f"merged {len(children)} level-{level} summaries into {merged.id}")
        return "".join(f"; {n}" for n in notes)
