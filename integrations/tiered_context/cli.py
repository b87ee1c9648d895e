"""The `tiered-context` command line.

    tiered-context eval --data-locomo locomo10.json --data-qmsum qmsum/val \\
        --budgets 1000,2000 --strategies all --out out/eval --report out/eval
    tiered-context eval --data-longmemeval longmemeval_s_cleaned.json --budgets 1000,2000
    tiered-context eval ... --phoenix                 # trace every assembly in local Phoenix
    tiered-context eval ... --judge my_models:chat    # + LLM-judged RAGAS metrics
    tiered-context eval --data-qmsum qmsum/val --budgets 500,1000,2000 --rag-postprocessors
                                                      # + the RAG postprocessor table
    tiered-context mcp ...                            # the MCP server (tiered_context.mcp)

`bench` times ingest and assembly (see `tiered_context.evals.bench_speed`).
`eval` measures evidence recall at token budgets (see `tiered_context.evals.retention`)
for tiered-context, its ablations and the frameworks' own memories
(`tiered_context.evals.baselines`), adds the LLM-free RAGAS metrics of a sample of the
assemblies (unless ``--no-ragas``), writes ``results.json`` and ``results.md`` into
``--out`` and prints the tables; ``--report DIR`` also draws the plots and report.md.
``--rag-postprocessors`` adds the RAG postprocessor table (node postprocessors and
document compressors inside the frameworks' own query engine / retrieval chain, on the
QMSum meetings; `tiered_context.evals.rag_postprocessors`) to the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the library's INFO logs (ladder steps, summaries); default: warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evidence recall vs token budget (LoCoMo, QMSum, LongMemEval, JSONL)",
                        description="Evidence recall at token budgets; at least one --data-* flag.")
    ev.add_argument("--data-locomo", type=Path, metavar="PATH", help="LoCoMo JSON file")
    ev.add_argument("--data-qmsum", type=Path, metavar="DIR", help="QMSum split directory")
    ev.add_argument("--data-jsonl", type=Path, metavar="PATH",
                    help="your own conversations, one JSON per line (see evals/datasets.py)")
    ev.add_argument("--data-longmemeval", type=Path, metavar="PATH",
                    help="LongMemEval JSON file (longmemeval_s_cleaned.json, _oracle, _m, ...): one "
                         "history per question; abstention questions reported apart")
    ev.add_argument("--conversational", nargs="?", const="add", choices=["add", "only"],
                    help="add the conversational-query set derived from the given LoCoMo / "
                         "LongMemEval files (the latest message as the query; "
                         "evals/conversational.py says how it is built); 'only': just that set")
    ev.add_argument("--budgets", type=_csv(int, "--budgets"), default=[500, 1000, 2000, 4000],
                    help="comma-separated token budgets (default: 500,1000,2000,4000)")
    ev.add_argument("--strategies", type=_csv(str, "--strategies"),
                    default=["recency", "bm25", "tiered"],
                    help="comma-separated strategies, or 'all' (every LLM-free strategy whose "
                         "dependencies are installed; default: recency,bm25,tiered), or 'none' (no "
                         "retention rows: e.g. only the --rag-postprocessors table)")
    ev.add_argument("--llmlingua-model", metavar="PATH",
                    help="local LLMLingua(-2) model: enables the 'llmlingua' strategy")
    ev.add_argument("--summarizer", metavar="MODULE:ATTR",
                    help="a LangChain chat model or LlamaIndex LLM to import: enables the "
                         "'langchain_summarization' / 'llama_index_summary_memory' strategies")
    ev.add_argument("--report", type=Path, metavar="DIR",
                    help="also write plots and report.md into DIR (needs the 'evals' extra)")
    ev.add_argument("--phoenix", nargs="?", const="", default=None, metavar="URL",
                    help="trace every assembly in Arize Phoenix: a local server on 127.0.0.1 "
                         "(working dir under --out), or the running one at URL")
    ev.add_argument("--judge", metavar="MODULE:ATTR",
                    help="a LangChain chat model or LlamaIndex LLM to import, for the "
                         "LLM-judged RAGAS metrics")
    ev.add_argument("--rag-postprocessors", nargs="?", const="llama-index,langchain", default=None,
                    type=_csv(str, "--rag-postprocessors"), metavar="FRAMEWORKS",
                    help="also table the RAG postprocessors on the --data-qmsum meetings (chunked, top-20 "
                         "retrieved, then budgeted to each --budgets value) inside LlamaIndex's "
                         "RetrieverQueryEngine and a LangChain retrieval chain: ours against none and the "
                         "frameworks' own (evals/rag_postprocessors.py); FRAMEWORKS: llama-index, "
                         "langchain or both (default)")
    ev.add_argument("--no-ragas", action="store_true", help="skip the RAGAS metrics (skipped anyway, with a note, when ragas is not installed)")
    ev.add_argument("--out", type=Path, default=Path("out/eval"), help="output directory")
    ev.add_argument("--limit-conversations", type=int, metavar="N",
                    help="only the first N conversations of each data set")
    ev.add_argument("--limit-questions", type=int, metavar="N",
                    help="only the first N questions of each conversation")
    ev.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run strategies in N worker processes (default 1; at most your core count "
                         "keeps the latency columns honest)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.set_defaults(subparser=ev)  # usage errors then show the `eval` usage
    be = sub.add_parser("bench", help="ingest, assembly latency and compression throughput, beside LangChain / LlamaIndex",
                        description="Speed benchmarks on real conversation text (evals/bench_speed.py).")
    be.add_argument("--data-locomo", type=Path, metavar="PATH", required=True, help="LoCoMo JSON file")
    be.add_argument("--data-qmsum", type=Path, metavar="DIR", help="QMSum split directory (more text for big N)")
    be.add_argument("--data-longmemeval", type=Path, metavar="PATH",
                    help="LongMemEval JSON file: its first history is the long-ingest workload "
                         "(default: ~115k tokens of the LoCoMo / QMSum turns, cycled)")
    be.add_argument("--items", type=_csv(int, "--items"), default=[1000, 10000],
                    help="store sizes for the assembly latency (default: 1000,10000)")
    be.add_argument("--no-frameworks", action="store_true",
                    help="leave out the LangChain / LlamaIndex rows beside tiered-context")
    be.add_argument("--no-compress", action="store_true", help="leave out the compression throughput rows")
    be.add_argument("--only-ingest", action="store_true",
                    help="only tiered-context's ingest rows (one put per turn, long histories): to iterate on the put path")
    be.add_argument("--llmlingua", metavar="MODEL",
                    help="local LLMLingua model (path or cached name): its throughput beside ours")
    be.add_argument("--out", type=Path, default=Path("out/bench"), help="output directory")
    be.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    be.set_defaults(subparser=be)
    # `tiered-context mcp ...` is parsed by tiered_context.mcp itself (see _mcp); this entry
    # only lists it in the help.
    sub.add_parser("mcp", help="serve a tiered-context memory over MCP (the 'mcp' extra)",
                   add_help=False)
    return parser


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tiered_context.evals import datasets
    from tiered_context.evals.bench_speed import run_bench, write_bench

    if not args.data_locomo.is_file():
        parser.error(f"--data-locomo {args.data_locomo}: not found; fix the path given to --data-locomo")
    if args.data_qmsum is not None and not args.data_qmsum.is_dir():
        parser.error(f"--data-qmsum {args.data_qmsum}: not a directory; fix the path given to --data-qmsum")
    extra = datasets.load_qmsum(args.data_qmsum) if args.data_qmsum else []
    long_histories: list[Any] = []
    if args.data_longmemeval is not None:
        if not args.data_longmemeval.is_file():
            parser.error(f"--data-longmemeval {args.data_longmemeval}: not found; fix the path given to --data-longmemeval")
        long_histories = [c.turns for c in datasets.load_longmemeval(args.data_longmemeval) if c.turns][:4]
    rows = run_bench(datasets.load_locomo(args.data_locomo), extra, sizes=args.items, progress=not args.no_progress,
                     frameworks=not args.no_frameworks,
                     locomo_path=None if args.no_compress else args.data_locomo,
                     qmsum_path=None if args.no_compress else args.data_qmsum, llmlingua=args.llmlingua,
                     long_histories=long_histories, only_ingest=args.only_ingest)
    json_path, md_path = write_bench(rows, args.out)
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


def _optional(module: str, extra: str, flag: str, parser: argparse.ArgumentParser) -> Any:
    """Import `module` for `flag`, or stop with a usage error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        parser.error(f"{flag} needs {module} ({exc}); install it with "
                     f"pip install 'tiered-context[{extra}]'")


def _import_object(spec: str, flag: str, parser: argparse.ArgumentParser) -> Any:
    """The object named by ``MODULE:ATTR`` (``ATTR`` may be dotted)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        parser.error(f"{flag} takes MODULE:ATTR (e.g. {flag} my_models:judge), got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        parser.error(f"{flag} {spec}: cannot import it ({exc}); the module must be importable "
                     "from the current directory or the Python path")
    return obj


def _factories(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Callable[[], Any]]:
    """Strategy name -> factory for ``--strategies``; every factory is tried once, so a
    missing dependency fails now, not after an hour of baselines."""
    from tiered_context.evals.baselines import StrategyUnavailable, llmlingua_factory
    from tiered_context.evals.strategies import STRATEGIES, llm_free
    from tiered_context.evals.summary_baselines import summary_factories

    strategies = dict(STRATEGIES)
    strategies["llmlingua"] = llmlingua_factory(args.llmlingua_model)
    if args.summarizer:
        strategies.update(summary_factories(_import_object(args.summarizer, "--summarizer", parser)))
    wanted = list(args.strategies)
    if wanted == ["none"]:
        return {}
    if "all" in wanted:
        wanted.remove("all")
        extra = [n for n in llm_free() if n not in wanted]
        if args.llmlingua_model and "llmlingua" not in wanted:
            extra.append("llmlingua")
        # with --summarizer, the summarizing baseline of the LLM's framework
        extra += [n for n in ("langchain_summarization", "llama_index_summary_memory")
                  if args.summarizer and n not in wanted]
        wanted += extra
        implicit = set(extra)
    else:
        implicit = set()
    unknown = [s for s in wanted if s not in strategies]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)}; choose from "
                     f"all, {', '.join(strategies)}")
    factories = {}
    for name in dict.fromkeys(wanted):
        try:
            strategies[name]()
        except (ImportError, StrategyUnavailable) as exc:
            if name in implicit:  # `all` means: whose dependencies are installed
                print(f"--strategies all: skipping {name}: {exc}", file=sys.stderr)
                continue
            parser.error(f"--strategies {name}: {exc}")
        factories[name] = strategies[name]
    return factories


def _observers(args: argparse.Namespace, parser: argparse.ArgumentParser,
               stack: contextlib.ExitStack) -> tuple[Any, Any]:
    """(RAGAS collector or None, Phoenix observer or None) for this run."""
    collector = observer = None
    if not args.no_ragas and not args.judge and importlib.util.find_spec("ragas") is None:
        print('RAGAS metrics skipped: ragas is not installed (pip install "tiered-context[evals]")',
              file=sys.stderr)
    elif not args.no_ragas:
        ragas = _optional("tiered_context.evals.ragas_eval", "evals", "RAGAS (on by default; "
                          "--no-ragas skips it; without the evals extra it is skipped)", parser)
        judge = _import_object(args.judge, "--judge", parser) if args.judge else None
        collector = ragas.RagasCollector(judge=judge)
    elif args.judge:
        parser.error("--judge scores RAGAS metrics: drop --no-ragas or drop --judge")
    if args.phoenix is not None:
        phoenix = _optional("tiered_context.evals.phoenix", "evals", "--phoenix", parser)
        observer = stack.enter_context(phoenix.phoenix_session(args.out, args.phoenix or None))
    return collector, observer


def _eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tiered_context.evals import datasets
    from tiered_context.evals.retention import fan_out, run_eval, write_reports

    sources = {
        "locomo": (args.data_locomo, "--data-locomo", datasets.load_locomo, Path.is_file),
        "qmsum": (args.data_qmsum, "--data-qmsum", datasets.load_qmsum, Path.is_dir),
        "jsonl": (args.data_jsonl, "--data-jsonl", datasets.load_jsonl, Path.is_file),
        "longmemeval": (args.data_longmemeval, "--data-longmemeval", datasets.load_longmemeval, Path.is_file),
    }
    if all(path is None for path, *_ in sources.values()):
        parser.error("give at least one data set: --data-locomo PATH, --data-qmsum DIR, "
                     "--data-longmemeval PATH or --data-jsonl PATH")
    for path, flag, _, exists in sources.values():
        if path is not None and not exists(path):
            what = "a directory" if exists is Path.is_dir else "a file"
            parser.error(f"{flag} {path}: not found or not {what}; fix the path given to {flag}")
    if any(b <= 0 for b in args.budgets):
        parser.error("--budgets must be positive token counts, e.g. --budgets 500,1000")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    factories = _factories(args, parser)
    rag = _rag_frameworks(args, parser)
    if not factories and rag is None:
        parser.error("--strategies none leaves nothing to run: add --rag-postprocessors or choose strategies")
    report = _optional("tiered_context.evals.report", "evals", "--report", parser) if args.report else None

    data = {
        name: datasets.limit(load(path), conversations_max=args.limit_conversations,
                             questions_max=args.limit_questions)
        for name, (path, _, load, _) in sources.items() if path is not None
    }
    if args.conversational:
        from tiered_context.evals.conversational import conversational_queries

        sources_for_queries = [c for name in ("locomo", "longmemeval") for c in data.get(name, [])]
        if not sources_for_queries:
            parser.error("--conversational derives its queries from --data-locomo and/or --data-longmemeval; give one")
        if args.conversational == "only":
            data.clear()
        data["conversational"] = conversational_queries(sources_for_queries)
    if "longmemeval" in data:  # abstention questions have no evidence turn: a table of their own
        kept, abstention = datasets.split_abstention(data["longmemeval"])
        data["longmemeval"] = kept
        if abstention:
            data["longmemeval:abstention"] = abstention
    with contextlib.ExitStack() as stack:
        collector, observer = _observers(args, parser, stack)
        rows = run_eval(data, factories, args.budgets, progress=not args.no_progress,
                        on_assembly=fan_out(collector, observer), jobs=args.jobs) if factories else []
        if collector is not None:
            rows += collector.rows(jobs=args.jobs)
        if observer is not None:
            observer.log_results(rows)
            print(f"Phoenix: {getattr(observer, 'url', args.phoenix)}")
    rag_rows = _rag_rows(args, rag, data.get("qmsum", []),
                         ragas=not args.no_ragas and importlib.util.find_spec("ragas") is not None)
    json_path, md_path = _write(rows, rag_rows, args.out, write_reports)
    rows = rows + rag_rows
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path}\nwrote {md_path}")
    if report is not None:
        print(f"wrote {report.write_report(rows, args.report)}")
    return 0


def _rag_frameworks(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str] | None:
    """The frameworks of ``--rag-postprocessors`` (None when not asked), checked now."""
    if args.rag_postprocessors is None:
        return None
    if args.data_qmsum is None:
        parser.error("--rag-postprocessors runs on QMSum meetings: give --data-qmsum DIR")
    known = ("llama-index", "langchain")
    unknown = [f for f in args.rag_postprocessors if f not in known]
    if unknown:
        parser.error(f"--rag-postprocessors: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    for framework in args.rag_postprocessors:
        module = "llama_index.core" if framework == "llama-index" else "langchain_classic"
        _optional(module, "evals", f"--rag-postprocessors {framework}", parser)
    return list(dict.fromkeys(args.rag_postprocessors))


def _rag_rows(args: argparse.Namespace, frameworks: list[str] | None, meetings: Sequence[Any], *,
              ragas: bool) -> list[dict[str, Any]]:
    """The RAG postprocessor rows (`tiered_context.evals.rag_postprocessors`), or []."""
    if not frameworks:
        return []
    from tiered_context.evals.rag_postprocessors import eval_rows

    print(f"RAG postprocessors: {len(meetings)} QMSum meetings, budgets {', '.join(map(str, args.budgets))}, "
          f"{' + '.join(frameworks)}", file=sys.stderr)
    return eval_rows(meetings, args.budgets, frameworks=frameworks, ragas=ragas)


def _write(rows: list[dict[str, Any]], rag_rows: list[dict[str, Any]], out: Path,
           write_reports: Callable[..., tuple[Path, Path]]) -> tuple[Path, Path]:
    """``results.json`` (every row) and ``results.md`` (the retention tables, then the RAG
    postprocessor table)."""
    json_path, md_path = write_reports(rows, out)
    if rag_rows:
        import json

        from tiered_context.evals.rag_postprocessors import render_markdown

        json_path.write_text(json.dumps(rows + rag_rows, indent=2) + "\n", encoding="utf-8")
        text = md_path.read_text(encoding="utf-8")
        md_path.write_text((text.rstrip("\n") + "\n\n" if text.strip() else "") + render_markdown(rag_rows),
                           encoding="utf-8")
    return json_path, md_path


def _mcp(argv: Sequence[str]) -> int:
    """``tiered-context mcp ...``: parsed and run by `tiered_context.mcp` (the 'mcp' extra)."""
    parser = argparse.ArgumentParser(prog="tiered-context mcp",
                                     description="Serve a tiered-context memory over MCP.")
    mcp = _optional("tiered_context.mcp", "mcp", "tiered-context mcp", parser)
    mcp.add_arguments(parser)
    return int(mcp.run(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tiered-context` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mcp"]:
        return _mcp(argv[1:])
    if argv[:2] == ["bench", "workers"]:  # many worker processes on one memory (Postgres), beside the embedded default
        from tiered_context.evals.bench_workers import main as bench_workers

        return bench_workers(argv[2:])
    parser = _parser()
    args = parser.parse_args(argv)
    # quiet by default: a dependency that configures the root logger at INFO must not turn
    # every ladder step of a long run into a line
    logging.getLogger("tiered_context").setLevel(logging.INFO if args.verbose else logging.WARNING)
    if args.command == "eval":
        return _eval(args, args.subparser)
    if args.command == "bench":
        return _bench(args, args.subparser)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse guards
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
