"""Answer survival under per-item compression: the eval's rows, and why answers are lost.

**The rows** (`answer_survival`, called by `retention.run_eval` for strategies with a
per-item ``compressor``): for LoCoMo single-hop questions whose gold answer appears in an
evidence turn (compared after SQuAD normalisation: lower case, no punctuation, no
articles), that turn is compressed at 2x and 3x; the row (``category="answer_survival"``, ``budget=0``) gives
as ``recall`` the fraction whose answer survives: every term of the answer (the BM25
terms: stop words and punctuation aside, light stemming) is still in the compressed
turn, in order. ``strict_recall`` asks for the whole normalised answer string,
``compression_ratio`` is the achieved ratio (original / compressed tokens of those
turns) and ``target_ratio`` the one asked for.

**The breakdown** (`analyse`, the command line)::

    python -m tiered_context.evals.survival --data-locomo ../shared/data/locomo/locomo_dev5.json

For the same cases, per ratio: the token shares of the evidence turns by word class
(the compressor's drop order: filler/function/glue words and punctuation first, then
evaluative and generic words, then content words by surprisal; protected words never):
how much room a ratio leaves; survival by kind of answer: *long* (4+ terms),
*evaluative* (a generic word such as "awesome", "happy", "times" among its terms),
*other*; survival when the compressor is told which sentence holds the answer
(`SentenceOracle`: the bound of a perfect query-free sentence picker); and up to
``--examples`` lost answers with their compressed turn. Word classes
follow the compressor's lexicons (`core.facts`); names are approximated as capitalised
words that do not open a sentence. ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiered_context import ContextItem, SelfInformationCompressor
from tiered_context.core._facts import _FILLERS, _FUNCTION, _GENERIC, _GLUE, _HEDGES
from tiered_context.core._importance import APOSTROPHES, DIGIT, PROTECTED_WORDS, PUNCT, surprisal_model
from tiered_context.core import terms
from tiered_context.evals.datasets import Conversation, Question, Turn, load_locomo
from tiered_context.evals.retention import bootstrap_ci
from tiered_context.evals.strategies import counter

__all__ = ["CLASSES", "SURVIVAL_CATEGORY", "SURVIVAL_RATIOS", "SentenceOracle", "analyse", "answer_survival", "main",
           "render", "survival_cases", "word_class"]

#: Kept share of tokens for the answer-survival rows: 2x and 3x compression.
SURVIVAL_RATIOS = (0.5, 1 / 3)
#: The LoCoMo category whose answers are looked for verbatim in the evidence (single-hop).
SURVIVAL_CATEGORY = "4"

CLASSES = ("protected", "content", "evaluative", "function", "punctuation")
_GENERIC_TERMS = frozenset(terms(" ".join(_GENERIC)))
_WORD = re.compile(r"\S+")


def _normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, punctuation to spaces, no articles."""
    text = text.lower().replace("’", "'")
    text = text.translate(_PUNCT_TO_SPACE)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation + "‘’“”"})


def _in_order(needle: list[str], hay: list[str]) -> bool:
    it = iter(hay)
    return all(any(w == h for h in it) for w in needle)


def survival_cases(conversations: Sequence[Conversation]) -> list[tuple[Question, list[Turn]]]:
    """The single-hop questions whose normalised answer is in an evidence turn, with
    those turns: the cases of the answer-survival rows."""
    cases = []
    for conv in conversations:
        turns = {t.id: t for t in conv.turns}
        for q in conv.questions:
            if q.category != SURVIVAL_CATEGORY or not q.answer or not _normalize(q.answer):
                continue
            wanted = f" {_normalize(q.answer)} "
            hits = [turns[e] for e in q.evidence if e in turns and wanted in f" {_normalize(turns[e].text)} "]
            if hits:
                cases.append((q, hits))
    return cases


def answer_survival(conversations: Sequence[Conversation], compressor: Any,
                    ratio: float) -> dict[str, Any] | None:
    """The answer-survival row fields for one compressor at one ratio (None if no
    question qualifies): see the module docstring."""
    cases = [(q.answer, hits) for q, hits in survival_cases(conversations)]
    if not cases:
        return None
    start = time.perf_counter()
    loose, strict, original, kept = [], [], 0, 0
    for answer, hits in cases:
        items = [ContextItem.create(t.text, id=f"survival:{t.id}", timestamp=t.timestamp,
                                    metadata={"speaker": t.speaker}) for t in hits]
        items = [i.evolve(tokens=counter().count(i.text)) for i in items]
        forms = compressor.compress(items, ratio)
        original += sum(i.tokens for i in items)
        kept += sum(counter().count(f.text) for f in forms)
        want_terms, want = terms(answer), f" {_normalize(answer)} "
        loose.append(float(any(_in_order(want_terms, terms(f.text)) for f in forms)))
        strict.append(float(any(want in f" {_normalize(f.text)} " for f in forms)))
    low, high = bootstrap_ci(loose)
    return {
        "budget": 0, "category": "answer_survival", "recall": round(float(np.mean(loose)), 4),
        "ci_low": round(low, 4), "ci_high": round(high, 4), "questions": len(cases),
        "mean_tokens": round(kept / len(cases), 1), "seconds": round(time.perf_counter() - start, 3),
        "compression_ratio": round(original / max(kept, 1), 3), "target_ratio": round(1 / ratio, 2),
        "strict_recall": round(float(np.mean(strict)), 4),
    }


def word_class(word: str, opens_sentence: bool) -> str:
    """The class of one whitespace-separated word, as the compressor would drop it."""
    core = word.strip(PUNCT)
    if not core:
        return "punctuation"
    lower = core.lower().translate(APOSTROPHES)
    if DIGIT.search(core) or lower in PROTECTED_WORDS or (core[0].isupper() and not opens_sentence):
        return "protected"
    if lower in _FILLERS or lower in _HEDGES or lower in _FUNCTION or lower in _GLUE:
        return "function"
    return "evaluative" if lower in _GENERIC else "content"


def _shares(texts: Sequence[str]) -> dict[str, float]:
    count = counter()
    tokens = dict.fromkeys(CLASSES, 0)
    for text in texts:
        opens = True
        for word in _WORD.findall(text):
            tokens[word_class(word, opens)] += count.count(" " + word)
            opens = word[-1] in ".!?"
    total = sum(tokens.values()) or 1
    return {k: round(v / total, 4) for k, v in tokens.items()}


def _kind(answer: str) -> str:
    wanted = terms(answer)
    if len(wanted) >= 4:
        return "long"
    return "evaluative" if any(t in _GENERIC_TERMS for t in wanted) else "other"


class SentenceOracle:
    """A `WordScorer` that knows the answer: unigram bits, plus `bonus` for every word of
    a sentence holding an answer term. It bounds what picking the right sentence alone
    would give a query-free compressor (a diagnostic, never a product scorer)."""

    def __init__(self, answer: str, bonus: float = 20.0) -> None:
        self.wanted = frozenset(terms(answer))
        self.bonus = bonus

    def word_bits(self, words: Sequence[str]) -> list[float]:
        model = surprisal_model("en")
        bits: list[float] = []
        sentence: list[str] = []
        for n, word in enumerate(words):
            sentence.append(word)
            if word[-1:] in ".!?" or n == len(words) - 1:
                lift = self.bonus if self.wanted & set(terms(" ".join(sentence))) else 0.0
                bits += [model(w.strip(PUNCT).lower().translate(APOSTROPHES)) + lift for w in sentence]
                sentence = []
        return bits


def analyse(conversations: Sequence[Conversation], compressor: Any = None,
            ratios: Sequence[float] = SURVIVAL_RATIOS, examples: int = 0) -> dict[str, Any]:
    """The breakdown (see the module docstring) as a dict: ``shares`` and, per ratio,
    ``by_kind`` ({kind: [survived, cases]}) and ``lost`` examples."""
    compressor = compressor or SelfInformationCompressor(counter())
    cases = survival_cases(conversations)
    texts = list({t.id: t.text for _, hits in cases for t in hits}.values())
    out: dict[str, Any] = {"cases": len(cases), "shares": _shares(texts), "ratios": {}}
    for ratio in ratios:
        by_kind: dict[str, list[int]] = {"long": [0, 0], "evaluative": [0, 0], "other": [0, 0]}
        lost, oracle = [], 0
        for q, hits in cases:
            items = [ContextItem.create(t.text, id=t.id).evolve(tokens=counter().count(t.text)) for t in hits]
            forms = compressor.compress(items, ratio)
            kept = any(_in_order(terms(q.answer or ""), terms(f.text)) for f in forms)
            tally = by_kind[_kind(q.answer or "")]
            tally[0] += kept
            tally[1] += 1
            if not kept and len(lost) < examples:
                lost.append({"answer": q.answer, "compressed": forms[0].text})
            told = SelfInformationCompressor(counter(), scorer=SentenceOracle(q.answer or "")).compress(items, ratio)
            oracle += any(_in_order(terms(q.answer or ""), terms(f.text)) for f in told)
        out["ratios"][f"{1 / ratio:.0f}x"] = {"by_kind": by_kind, "lost": lost, "sentence_oracle": oracle}
    return out


def render(result: dict[str, Any]) -> str:
    """The breakdown as markdown tables."""
    lines = [f"{result['cases']} single-hop answers found verbatim in their evidence turn.", "",
             "| word class | share of the evidence turns' tokens |", "|---|---|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in result["shares"].items()]
    lines += ["", "| ratio | kind of answer | survived | cases |", "|---|---|---|---|"]
    for ratio, part in result["ratios"].items():
        for kind, (kept, n) in part["by_kind"].items():
            lines.append(f"| {ratio} | {kind} | {kept / max(n, 1):.1%} | {n} |")
        lines.append(f"| {ratio} | all, told which sentence holds the answer | "
                     f"{part['sentence_oracle'] / max(result['cases'], 1):.1%} | {result['cases']} |")
        for ex in part["lost"]:
            lines.append(f"\n{ratio} lost *{ex['answer']}*: {ex['compressed']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-locomo", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=0, help="print up to N lost answers per ratio")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = analyse(load_locomo(args.data_locomo), examples=args.examples)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
