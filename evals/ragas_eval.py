"""RAGAS metrics over the eval's assembled contexts, as extra rows of the results.

`RagasCollector` is an `on_assembly` observer of `run_eval`: each assembly becomes a RAGAS
`SingleTurnSample` (``user_input`` = the question, ``retrieved_contexts`` = the assembled
context split into its lines, one turn per line, ``reference_contexts`` = the text of the
evidence turns, ``reference`` = the gold answer). `RagasCollector.rows` then scores, per
(dataset, strategy, budget), the metrics that need no LLM:

* ``ragas:non_llm_context_recall``: share of evidence turns matched by some context line
  (RAGAS' `NonLLMContextRecall`: normalised Levenshtein similarity > 0.5);
* ``ragas:non_llm_context_precision_with_reference``: average precision of the context
  lines against the evidence (how high the relevant lines rank; the baselines render in
  chronological order, so this mostly measures how much of the context is evidence);
* ``ragas:string_present``: the gold answer occurs verbatim in the context (questions with
  an answer only).

and, with ``judge=`` (a LangChain chat model, a LlamaIndex LLM or a RAGAS LLM), the judge
first answers each question from the context, then RAGAS' LLM metrics grade it:
``ragas:faithfulness``, ``ragas:answer_correctness`` (factuality only unless
``judge_embeddings=`` is given) and ``ragas:llm_context_precision_with_reference``
(samples whose judge output cannot be parsed are left out and counted in ``judge_errors``).

Rows look like the eval's: ``recall`` is the metric's mean over the scored samples with its
bootstrap CI, ``questions`` the samples scored, ``sampled_from`` the assemblies seen,
``seconds`` the time RAGAS took on that metric, latencies those of the sampled assemblies.

Cost and sampling: RAGAS wraps every string comparison in a callback group (~40 us each;
a 300-line context against 2 evidence turns is ~600 comparisons per metric), so the
collector's similarity measure calls RAGAS' own scorer directly for the inner comparisons
(about 8x faster, same numbers), and keeps a seeded uniform sample (reservoir) of at most
`sample` assemblies per (dataset, strategy, budget), 100 by default; ``sample=None`` keeps
all of them (memory: every kept context stays in RAM until `rows`). RAGAS runs with its
telemetry off (``RAGAS_DO_NOT_TRACK=true`` is set when this module is imported).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import multiprocessing
import os
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiered_context.errors import missing_extra
from tiered_context.evals.retention import bootstrap_ci

os.environ["RAGAS_DO_NOT_TRACK"] = "true"  # before ragas is imported anywhere: no telemetry

__all__ = ["DEFAULT_SAMPLE", "RagasCollector", "sample_of"]

log = logging.getLogger("tiered_context.evals.ragas")
#: The metrics an LLM judge scores (a sample it fails on is left out and counted).
_JUDGED = frozenset({"faithfulness", "answer_correctness", "llm_context_precision_with_reference"})
#: Assemblies kept per (dataset, strategy, budget) by default.
DEFAULT_SAMPLE = 100
_ANSWER_PROMPT = ("Answer the question using only the context. Answer in one short sentence; "
                  "say \"unknown\" if the context does not say.\n\nContext:\n{context}\n\n"
                  "Question: {question}\nAnswer:")


@functools.cache
def _ragas() -> Any:
    """Import ragas (1-2 s) once, its deprecation chatter silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import ragas
            import ragas.metrics  # noqa: F401
    except ImportError as exc:
        raise missing_extra("ragas", "evals") from exc
    return ragas


def _metric(name: str, **kwargs: Any) -> Any:
    """A RAGAS single-turn metric by class name (the 0.4 names, without the warning)."""
    _ragas()
    import ragas.metrics as metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(metrics, name)(**kwargs)


@functools.cache
def _direct_similarity() -> type:
    """`NonLLMStringSimilarity` whose public scorer skips the per-call callback group."""
    base = type(_metric("NonLLMStringSimilarity"))

    class DirectStringSimilarity(base):  # type: ignore[misc, valid-type]
        async def single_turn_ascore(self, sample: Any, callbacks: Any = None, timeout: Any = None) -> float:
            return await self._single_turn_ascore(sample, callbacks)

    return DirectStringSimilarity


def sample_of(assembly: Any) -> Any:
    """The RAGAS `SingleTurnSample` of one eval assembly (see the module docstring)."""
    lines = [line for line in assembly.context.splitlines() if line.strip()]
    return _ragas().SingleTurnSample(
        user_input=assembly.question, retrieved_contexts=lines or [""],
        reference_contexts=list(assembly.evidence_texts), reference=assembly.answer or None)


@dataclass
class _Kept:
    sample: Any
    tokens: int
    latency_ms: float


def _wrap_judge(judge: Any) -> Any:
    """A RAGAS LLM from a LangChain chat model, a LlamaIndex LLM or a RAGAS LLM."""
    _ragas()
    from ragas.llms import BaseRagasLLM, LangchainLLMWrapper, LlamaIndexLLMWrapper

    if isinstance(judge, BaseRagasLLM):
        return judge
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from langchain_core.language_models import BaseLanguageModel
            if isinstance(judge, BaseLanguageModel):
                return LangchainLLMWrapper(judge)
        except ImportError:
            pass
        try:
            from llama_index.core.llms import LLM
            if isinstance(judge, LLM):
                return LlamaIndexLLMWrapper(judge)
        except ImportError:
            pass
    raise TypeError(f"judge must be a LangChain chat model, a LlamaIndex LLM or a ragas BaseRagasLLM, "
                    f"not {type(judge).__name__}: pass e.g. judge=ChatOpenAI(model=...)")


def _wrap_embeddings(embeddings: Any) -> Any:
    _ragas()
    from ragas.embeddings import BaseRagasEmbeddings, LangchainEmbeddingsWrapper, LlamaIndexEmbeddingsWrapper

    if isinstance(embeddings, BaseRagasEmbeddings):
        return embeddings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(embeddings, "embed_documents"):
            return LangchainEmbeddingsWrapper(embeddings)
        return LlamaIndexEmbeddingsWrapper(embeddings)


class RagasCollector:
    """Collects the eval's assemblies and turns them into RAGAS rows (module docstring).

    ``collector = RagasCollector(); run_eval(..., on_assembly=collector);
    rows += collector.rows()``.
    """

    def __init__(self, judge: Any = None, *, judge_embeddings: Any = None,
                 sample: int | None = DEFAULT_SAMPLE, seed: int = 0) -> None:
        if sample is not None and sample < 1:
            raise ValueError(f"sample must be a positive number of assemblies or None (all), not {sample}")
        self.judge = None if judge is None else _wrap_judge(judge)
        self.judge_embeddings = None if judge_embeddings is None else _wrap_embeddings(judge_embeddings)
        self.sample = sample
        self._rng = random.Random(seed)
        self._kept: dict[tuple[str, str, int], list[_Kept]] = defaultdict(list)
        self._seen: dict[tuple[str, str, int], int] = defaultdict(int)

    def __call__(self, assembly: Any) -> None:
        """Keep `assembly` (reservoir sampling per group); those without evidence text
        cannot be scored against references and are skipped."""
        if not assembly.evidence_texts:
            return
        key = (assembly.dataset, assembly.strategy, int(assembly.budget))
        self._seen[key] += 1
        bucket, seen = self._kept[key], self._seen[key]
        if self.sample is None or len(bucket) < self.sample:
            bucket.append(self._keep(assembly))
        elif (slot := self._rng.randrange(seen)) < self.sample:
            bucket[slot] = self._keep(assembly)  # built only when kept: most are not

    @staticmethod
    def _keep(assembly: Any) -> _Kept:
        return _Kept(sample_of(assembly), int(assembly.tokens), float(assembly.latency_ms))

    def _metrics(self) -> list[tuple[str, Any, Callable[[Any], bool]]]:
        """(row name, metric, which samples it applies to)."""
        everyone: Callable[[Any], bool] = lambda s: True  # noqa: E731
        answered: Callable[[Any], bool] = lambda s: bool(s.reference)  # noqa: E731
        similarity = _direct_similarity()
        recall = _metric("NonLLMContextRecall")
        recall._distance_measure = similarity()  # its public setter would wrap it in the slow one
        out = [("non_llm_context_recall", recall, everyone),
               ("non_llm_context_precision_with_reference",
                _metric("NonLLMContextPrecisionWithReference", distance_measure=similarity()), everyone),
               ("string_present", _metric("StringPresence"), answered)]
        if self.judge is not None:
            correctness = ({"embeddings": self.judge_embeddings} if self.judge_embeddings is not None
                           else {"weights": [1.0, 0.0]})
            out += [("faithfulness", _metric("Faithfulness", llm=self.judge), answered),
                    ("answer_correctness", _metric("AnswerCorrectness", llm=self.judge, **correctness), answered),
                    ("llm_context_precision_with_reference",
                     _metric("LLMContextPrecisionWithReference", llm=self.judge), answered)]
        return out

    async def _answer(self, sample: Any) -> Any:
        """The judge's answer from the context, as the sample's ``response``."""
        from langchain_core.prompt_values import StringPromptValue

        prompt = _ANSWER_PROMPT.format(context="\n".join(sample.retrieved_contexts), question=sample.user_input)
        result = await self.judge.agenerate_text(StringPromptValue(text=prompt))
        return sample.model_copy(update={"response": result.generations[0][0].text.strip()})

    async def arows(self) -> list[dict[str, Any]]:
        """Score every kept sample; one row per (dataset, strategy, budget, metric)."""
        metrics = self._metrics()
        return [row for key in self._kept for row in await self._group(key, metrics)]

    async def _group(self, key: tuple[str, str, int], metrics: list[tuple[str, Any, Callable[[Any], bool]]]
                     ) -> list[dict[str, Any]]:
        """The rows of one (dataset, strategy, budget) group."""
        dataset, strategy, budget = key
        kept = self._kept[key]
        rows: list[dict[str, Any]] = []
        samples = [k.sample for k in kept]
        if self.judge is not None:
            samples = [await self._answer(s) if s.reference else s for s in samples]
        for name, metric, applies in metrics:
            picked = [(s, k) for s, k in zip(samples, kept) if applies(s)]
            if not picked:
                continue
            start = time.perf_counter()
            scores, errors = [], 0
            for s, _ in picked:
                # string presence reads the context as the "response"
                scored = s.model_copy(update={"response": "\n".join(s.retrieved_contexts)}) \
                    if name == "string_present" else s
                try:
                    scores.append(float(await metric.single_turn_ascore(scored)))
                except Exception:
                    if name not in _JUDGED:
                        raise  # the LLM-free metrics do not fail on good input: a bug
                    errors += 1  # a judge's unparsable output costs one sample, not the run
                    log.warning("RAGAS %s failed on %r", name, s.user_input, exc_info=True)
            seconds = time.perf_counter() - start
            values = [v for v in scores if not np.isnan(v)]
            if not values:
                log.warning("RAGAS %s scored no sample of %s/%s/%s (%d judge errors): no row",
                            name, dataset, strategy, budget, errors)
                continue
            low, high = bootstrap_ci(values)
            p50, p95 = np.percentile([k.latency_ms for _, k in picked], [50, 95])
            rows.append({
                "dataset": dataset, "strategy": strategy, "budget": budget,
                "category": f"ragas:{name}", "recall": round(float(np.mean(values)), 4),
                "ci_low": round(low, 4), "ci_high": round(high, 4), "questions": len(values),
                "mean_tokens": round(float(np.mean([k.tokens for _, k in picked])), 1),
                "seconds": round(seconds, 3), "latency_p50_ms": round(float(p50), 3),
                "latency_p95_ms": round(float(p95), 3), "sampled_from": self._seen[(dataset, strategy, budget)],
                **({"judge_errors": errors} if errors else {}),
            })
        return rows

    def rows(self, jobs: int = 1) -> list[dict[str, Any]]:
        """`arows` from sync code (in a worker thread when an event loop is running).

        `jobs` > 1 scores the groups in that many forked processes (LLM-free metrics
        only: a judge stays in this process); the rows are the same, in the same order.
        """
        if jobs > 1 and self.judge is None and len(self._kept) > 1:
            global _FORKED
            _FORKED = self
            try:
                context = multiprocessing.get_context("fork")
                with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
                    return [row for rows in pool.map(_group_in_worker, list(self._kept)) for row in rows]
            finally:
                _FORKED = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arows())
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.arows()).result()

    def samples(self) -> list[Any]:
        """Every kept sample, as a list ready for ``ragas.EvaluationDataset(samples=...)``."""
        return [k.sample for kept in self._kept.values() for k in kept]

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._kept.values())

    def __repr__(self) -> str:
        return f"RagasCollector({len(self)} samples kept of {sum(self._seen.values())}, judge={self.judge is not None})"


_FORKED: RagasCollector | None = None  # the collector a forked worker scores from


def _group_in_worker(key: tuple[str, str, int]) -> list[dict[str, Any]]:
    collector = _FORKED
    assert collector is not None
    return asyncio.run(collector._group(key, collector._metrics()))
