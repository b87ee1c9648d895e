"""Does attribution survive compression? Evidence recall on LoCoMo with and without
"[date] Speaker:" prefixes in the message content (issue 14, item 3).

The same conversation is fed to `TieredContext` twice: as the retention eval does
(plain text, speaker and date as metadata), and as a multi-party chat app would (the
content is ``"[2023-05-08] Caroline: text"``, nothing in metadata). Evidence recall at
the budget is compared; the target is a loss of at most 2 points with prefixes.

    python -m evals.prefix_coverage --data ../shared/data/locomo/locomo_dev5.json --budget 2000
    python -m evals.prefix_coverage ... --unprotected   # the compressor without the prefix rule
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np

__all__ = ["prefix_coverage"]


_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d\] [^:]{1,40}:(?: |$)")


def _recall(ctx: Any, conv: Any, budget: int) -> tuple[float, float]:
    """(evidence recall, share of compressed prefixed lines that kept their prefix)."""
    recalls, kept = [], []
    for q in conv.questions:
        out = ctx.assemble(q.text, budget=budget)
        covered = set(out.covered("dia_id"))
        recalls.append(len(covered & set(q.evidence)) / len(q.evidence))
        kept += [bool(_PREFIX.match(i.text)) for i in out.items if i.is_derived and i.text != ""]
    return float(np.mean(recalls)), float(np.mean(kept)) if kept else float("nan")


def prefix_coverage(conv: Any, *, budget: int = 2000) -> dict[str, float]:
    """Evidence recall of one conversation: plain (metadata) vs prefixed content."""
    from tiered_context import TieredContext

    results = {}
    for variant in ("plain", "prefixed"):
        ctx = TieredContext(session_id=f"{conv.id}-{variant}", compaction="inline")
        for turn in conv.turns:
            role = "assistant" if conv.speakers and turn.speaker == conv.speakers[1] else "user"
            if variant == "plain":
                ctx.put(turn.text, role=role, timestamp=turn.timestamp,
                        metadata={"dia_id": turn.id, "speaker": turn.speaker, "session": turn.session})
            else:
                day = datetime.fromtimestamp(turn.timestamp, tz=timezone.utc).strftime("%Y-%m-%d")
                ctx.put(f"[{day}] {turn.speaker}: {turn.text}", role=role, timestamp=turn.timestamp,
                        metadata={"dia_id": turn.id, "session": turn.session})
        ctx.flush()
        results[variant], results[f"{variant}_prefix_kept"] = _recall(ctx, conv, budget)
        ctx.close()
    return results


def main(argv: list[str] | None = None) -> None:
    from evals.datasets import load_locomo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=1)
    parser.add_argument("--unprotected", action="store_true", help="drop the compressor's prefix rule (the old behaviour)")
    args = parser.parse_args(argv)
    if args.unprotected:
        from tiered_context.core import _compress as compress

        pattern = compress._SPAN.pattern
        compress._SPAN = re.compile(pattern[pattern.index("|```") + 1:], re.S)
    for conv in load_locomo(args.data)[: args.conversations]:
        r = prefix_coverage(conv, budget=args.budget)
        print(f"{conv.id}: budget {args.budget}: plain {r['plain']:.3f}  prefixed {r['prefixed']:.3f}  "
              f"loss {100 * (r['plain'] - r['prefixed']):+.1f} points ({len(conv.questions)} questions); "
              f"compressed prefixed lines that kept '[date] Speaker:': {r['prefixed_prefix_kept']:.0%}")


if __name__ == "__main__":
    main()
