"""The `tiered-context` command line.

    tiered-context eval --data-locomo locomo10.json --data-qmsum qmsum/val \\
        --budgets 1000,2000 --strategies recency,bm25,tiered --out out/eval

`bench` times ingest and assembly (see `tiered_context.evals.bench_speed`).
`eval` measures evidence recall at token budgets (see `tiered_context.evals.retention`),
writes ``results.json`` and ``results.md`` into ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = ["main"]

T = TypeVar("T")


def _csv(kind: Callable[[str], T], flag: str) -> Callable[[str], list[T]]:
    """An argparse type: a comma-separated list of `kind`, with an error naming `flag`."""

    def parse(raw: str) -> list[T]:
        try:
            items = [kind(part.strip()) for part in raw.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{flag} takes a comma-separated list, got {raw!r}") from exc
        if not items:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiered-context", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evidence recall vs token budget (LoCoMo, QMSum, JSONL)",
                        description="Evidence recall at token budgets; at least one --data-* flag.")
    ev.add_argument("--data-locomo", type=Path, metavar="PATH", help="LoCoMo JSON file")
    ev.add_argument("--data-qmsum", type=Path, metavar="DIR", help="QMSum split directory")
    ev.add_argument("--data-jsonl", type=Path, metavar="PATH",
                    help="your own conversations, one JSON per line (see evals/datasets.py)")
    ev.add_argument("--budgets", type=_csv(int, "--budgets"), default=[500, 1000, 2000, 4000],
                    help="comma-separated token budgets (default: 500,1000,2000,4000)")
    ev.add_argument("--strategies", type=_csv(str, "--strategies"),
                    default=["recency", "bm25", "tiered"],
                    help="comma-separated strategies (default: recency,bm25,tiered)")
    ev.add_argument("--out", type=Path, default=Path("out/eval"), help="output directory")
    ev.add_argument("--limit-conversations", type=int, metavar="N",
                    help="only the first N conversations of each data set")
    ev.add_argument("--limit-questions", type=int, metavar="N",
                    help="only the first N questions of each conversation")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.set_defaults(subparser=ev)  # usage errors then show the `eval` usage
    be = sub.add_parser("bench", help="ingest rate and assembly latency",
                        description="Speed benchmarks on real conversation text (evals/bench_speed.py).")
    be.add_argument("--data-locomo", type=Path, metavar="PATH", required=True, help="LoCoMo JSON file")
    be.add_argument("--data-qmsum", type=Path, metavar="DIR", help="QMSum split directory (more text for big N)")
    be.add_argument("--items", type=_csv(int, "--items"), default=[1000, 10000],
                    help="store sizes for the assembly latency (default: 1000,10000)")
    be.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    be.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    be.set_defaults(subparser=be)
    return parser


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tiered_context.evals import datasets
    from tiered_context.evals.bench_speed import run_bench, write_bench

    if not args.data_locomo.is_file():
        parser.error(f"--data-locomo {args.data_locomo}: not found; fix the path given to --data-locomo")
    if args.data_qmsum is not None and not args.data_qmsum.is_dir():
        parser.error(f"--data-qmsum {args.data_qmsum}: not a directory; fix the path given to --data-qmsum")
    extra = datasets.load_qmsum(args.data_qmsum) if args.data_qmsum else []
    rows = run_bench(datasets.load_locomo(args.data_locomo), extra, sizes=args.items, progress=not args.no_progress)
    json_path, md_path = write_bench(rows, args.out)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tiered_context.evals import datasets
    from tiered_context.evals.retention import run_eval, write_reports
    from tiered_context.evals.strategies import STRATEGIES

    sources = {
        "locomo": (args.data_locomo, "--data-locomo", datasets.load_locomo, Path.is_file),
        "qmsum": (args.data_qmsum, "--data-qmsum", datasets.load_qmsum, Path.is_dir),
        "jsonl": (args.data_jsonl, "--data-jsonl", datasets.load_jsonl, Path.is_file),
    }
    if all(path is None for path, *_ in sources.values()):
        parser.error("give at least one data set: --data-locomo PATH, --data-qmsum DIR "
                     "or --data-jsonl PATH")
    for path, flag, _, exists in sources.values():
        if path is not None and not exists(path):
            what = "a directory" if exists is Path.is_dir else "a file"
            parser.error(f"{flag} {path}: not found or not {what}; fix the path given to {flag}")
    if any(b <= 0 for b in args.budgets):
        parser.error("--budgets must be positive token counts, e.g. --budgets 500,1000")
    unknown = [s for s in args.strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(STRATEGIES)}")
    factories = {name: STRATEGIES[name] for name in args.strategies}
    for name, factory in factories.items():
        try:
            factory()  # fail now, not after an hour of baselines
        except ImportError as exc:
            parser.error(f"--strategies {name}: {exc}")

    data = {
        name: datasets.limit(load(path), conversations_max=args.limit_conversations,
                             questions_max=args.limit_questions)
        for name, (path, _, load, _) in sources.items() if path is not None
    }
    rows = run_eval(data, factories, args.budgets, progress=not args.no_progress)
    json_path, md_path = write_reports(rows, args.out)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tiered-context` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "eval":
        return _eval(args, args.subparser)
    if args.command == "bench":
        return _bench(args, args.subparser)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
