"""Many workers, one memory: puts/s and search / assemble latency for 1, 2 and 4 worker
processes on PostgreSQL, beside the embedded default, as a markdown table.

    python -m tiered_context.evals.bench_workers                       # pgserver, all defaults
    python -m tiered_context.evals.bench_workers --workers 1,2,4 --puts 300 --queries 60 \\
        --sessions 8 --preload 1000 --out out/workers
    python -m tiered_context.evals.bench_workers --dsn postgresql://app@db/bench   # your server

What runs: `--sessions` sessions are preloaded with `--preload` turns each (LoCoMo turns when
``../shared/data/locomo`` is there, else synthetic sentences), once, into a template
database; each row gets a fresh copy. Then `W` worker processes (``spawn``), each with its
own `PostgresColdStore` and one `TieredContext` per session it serves (session ``i`` is
served by worker ``i % W``: the current facade numbers turns itself, so a session has one
writer), all start together and

- **puts/s**: each worker puts `--puts` turns, one `TieredContext.put` each (token count,
  WordLlama embedding, a durable write acknowledged by the store; background compaction
  on), round-robin over its sessions; the rate is all puts over the wall time of the
  slowest worker;
- **search**: `store.search(session, question, vector, limit=200)` (what `assemble` asks
  of the store at budget 2000), `--queries` per worker over the sessions, all workers at
  once: p50 / p95 in ms;
- **assemble**: `TieredContext.assemble(question, budget=2000)` the same way.

``--exact`` adds the same rows for ``PostgresColdStore(hnsw=False)`` (no HNSW index to
maintain on each put; every dense search an exact scan of the tenant).

``--threads N`` (default 8) measures one process instead: N threads putting into ONE
`TieredContext` (``put`` per turn, `--puts` per thread) in memory, on the durable journal
(``path=``, ``store_kind="journal"``) and on embedded Qdrant (``store_kind="qdrant"``): the
durable rows against the in-memory one show what a durable write costs when writers share
it (group commits); ``--threads 0`` skips them. Two rates: until the last put returned, and
sustained, until the ladder's background compaction those puts started was done too. Each
store runs twice: with the ladder off (a budget the puts never fill: the put path and its
durable write alone) and on (the default budget: the puts also start compaction, whose amount
depends on timing: a slower row leaves the worker more turns to compress before they are
pruned). Every row first puts the same turns into a
throwaway in-memory memory, so that all rows start with the same warm caches (the texts'
tokens, surprisal and facts are cached by text: the row measured first would otherwise pay
for them alone, and the others look faster than they are).

The embedded default (``TieredContext(path=...)``: the durable journal, one process per
directory) and the in-memory `LocalColdStore` run the same load with one worker. Numbers
are wall clock on the machine that runs it: the workers and PostgreSQL share its cores.
Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run", "table", "thread_table"]

_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "locomo"
_BUDGET, _LIMIT = 2000, 200


# -- text ------------------------------------------------------------------------------------
def _texts(n: int, seed: int = 11) -> tuple[list[tuple[str, str]], list[str]]:
    """`n` (speaker, text) turns and some questions: LoCoMo when available, else synthetic."""
    turns: list[tuple[str, str]] = []
    questions: list[str] = []
    files = sorted(_DATA.glob("*.json")) if _DATA.is_dir() else []
    if files:
        from tiered_context.evals.datasets import load_locomo

        for conv in load_locomo(files[0]):
            turns.extend((t.speaker, t.text) for t in conv.turns)
            questions.extend(q.text for q in conv.questions)
    if not turns:
        rng = random.Random(seed)
        words = ("launch budget tram museum badge pastry hotel river design review invoice garden piano ticket "
                 "meeting vendor server backup laptop office coffee bakery train flight visa passport contract "
                 "deadline audit report salary doctor dentist concert festival football tennis violin camera").split()
        for i in range(2000):
            turns.append(("user" if i % 2 else "assistant",
                          " ".join(rng.choice(words) for _ in range(rng.randint(6, 30))) + f" ({i})."))
        questions = [f"What about the {rng.choice(words)} and the {rng.choice(words)}?" for _ in range(200)]
    out = [turns[i % len(turns)] for i in range(n)]
    return out, questions


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- one worker process --------------------------------------------------------------------------
def _open_store(kind: str, target: str) -> Any:
    if kind.startswith("postgres"):
        from tiered_context.postgres import PostgresColdStore

        return PostgresColdStore(target, max_size=2, hnsw=kind != "postgres-exact")
    if kind == "memory":
        from tiered_context import LocalColdStore

        return LocalColdStore()
    return None  # embedded: TieredContext(path=...)


def _worker(kind: str, target: str, index: int, workers: int, sessions: list[str], puts: int, queries: int,
            preload: int, barrier: Any, results: Any) -> None:
    try:
        from tiered_context import TieredContext
        from tiered_context import WordLlamaEmbedder
        from tiered_context.core import normalize

        embedder = WordLlamaEmbedder()
        store = _open_store(kind, target)
        mine = [s for i, s in enumerate(sessions) if i % workers == index]
        if kind == "memory":  # nothing is shared in memory: this worker preloads its own sessions
            turns, _ = _texts(preload)
            for s in mine:
                ctx = TieredContext(session_id=s, store=store, embedder=embedder)
                ctx.put_many([{"text": t, "role": "user" if k % 2 else "assistant", "metadata": {"speaker": sp}}
                              for k, (sp, t) in enumerate(turns)])
                ctx.flush()  # close() would close the shared store
        if kind == "embedded":  # the default on disk: one directory, one process
            contexts = {s: TieredContext(session_id=s, path=target, embedder=embedder) for s in mine[:1]}
            mine, store = mine[:1], contexts[mine[0]].store
        else:
            contexts = {s: TieredContext(session_id=s, store=store, embedder=embedder) for s in mine}
        turns, questions = _texts(preload + puts * workers)
        fresh = turns[preload + index * puts:preload + (index + 1) * puts]
        rng = random.Random(index)
        barrier.wait()
        t0 = time.perf_counter()
        for k, (speaker, text) in enumerate(fresh):
            contexts[mine[k % len(mine)]].put(text, role="user" if k % 2 else "assistant", metadata={"speaker": speaker})
        put_s = time.perf_counter() - t0
        barrier.wait()
        search_ms, assemble_ms = [], []
        for k in range(queries):
            question, session = rng.choice(questions), mine[k % len(mine)]
            vector = normalize(embedder.embed([question]))[0]
            t = time.perf_counter()
            store.search(session, question, vector, limit=_LIMIT)
            search_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            contexts[session].assemble(question, budget=_BUDGET)
            assemble_ms.append((time.perf_counter() - t) * 1000)
        for ctx in contexts.values():
            ctx.flush()
        if kind != "embedded":
            store.close()
        else:
            next(iter(contexts.values())).close()
        results.put({"index": index, "puts": len(fresh), "put_s": put_s, "search_ms": search_ms,
                     "assemble_ms": assemble_ms})
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        barrier.abort()
        results.put({"index": index, "error": repr(exc)})


def _run_workers(kind: str, target: str, workers: int, sessions: list[str], puts: int, queries: int,
                 preload: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kind, target, i, workers, sessions, puts, queries, preload, barrier, results))
             for i in range(workers)]
    for p in procs:
        p.start()
    got = [results.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [g["error"] for g in got if "error" in g]
    if errors:
        raise RuntimeError(f"{kind} with {workers} workers failed: {errors}")
    search = [x for g in got for x in g["search_ms"]]
    assemble = [x for g in got for x in g["assemble_ms"]]
    total = sum(g["puts"] for g in got)
    return {"store": kind, "workers": workers, "puts": total, "puts_per_s": total / max(g["put_s"] for g in got),
            "search_p50_ms": _pct(search, 0.5), "search_p95_ms": _pct(search, 0.95),
            "assemble_p50_ms": _pct(assemble, 0.5), "assemble_p95_ms": _pct(assemble, 0.95)}


# -- preload ------------------------------------------------------------------------------------
def _preload_postgres(uri: str, sessions: list[str], preload: int) -> None:
    from tiered_context import TieredContext
    from tiered_context import WordLlamaEmbedder
    from tiered_context.postgres import PostgresColdStore

    store, embedder = PostgresColdStore(uri), WordLlamaEmbedder()
    turns, _ = _texts(preload)
    for s in sessions:
        ctx = TieredContext(session_id=s, store=store, embedder=embedder)
        for k in range(0, len(turns), 250):
            ctx.put_many([{"text": t, "role": "user" if (k + j) % 2 else "assistant", "metadata": {"speaker": sp}}
                          for j, (sp, t) in enumerate(turns[k:k + 250])])
        ctx.flush()  # close() would close the shared store
    store.close()


def _preload_embedded(path: str, session: str, preload: int) -> None:
    from tiered_context import TieredContext
    from tiered_context import WordLlamaEmbedder

    turns, _ = _texts(preload)
    ctx = TieredContext(session_id=session, path=path, embedder=WordLlamaEmbedder())
    for k in range(0, len(turns), 250):
        ctx.put_many([{"text": t, "role": "user" if (k + j) % 2 else "assistant", "metadata": {"speaker": sp}}
                      for j, (sp, t) in enumerate(turns[k:k + 250])])
    ctx.close()


def _thread_puts(kind: str, threads: int, puts: int, *, ladder: bool = True) -> dict[str, Any]:
    """`threads` threads, `puts` puts each, into one `TieredContext` (see the docstring);
    `ladder=False`: a budget the puts never fill, so no compaction runs (the put path alone)."""
    import threading

    from tiered_context import Budget, TieredContext

    turns, _ = _texts(threads * puts)
    warm = TieredContext(session_id="bench-threads-warm-up")  # the same caches for every row
    for k in range(0, len(turns), 500):
        warm.put_many([{"text": t, "metadata": {"speaker": sp}} for sp, t in turns[k:k + 500]])
    warm.close()
    tmp = tempfile.mkdtemp(prefix="tc-bench-threads-")
    try:
        kw: dict[str, Any] = {} if kind == "memory" else {"path": tmp, "store_kind": kind}
        if not ladder:
            kw["budget"] = Budget(max_tokens=1 << 30)
        ctx = TieredContext(session_id="bench-threads", **kw)
        ctx.put("warm up: the embedder, the tokenizer and the store are loaded before timing")
        start = threading.Barrier(threads + 1)

        def writer(k: int) -> None:
            start.wait()
            for i in range(puts):
                speaker, text = turns[k * puts + i]
                ctx.put(text, id=f"t{k}-{i}", metadata={"speaker": speaker})

        pool = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - began
        ctx.flush()  # the ladder's background compaction the puts left behind
        drained = time.perf_counter() - began
        ctx.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = threads * puts
    return {"store": kind, "ladder": ladder, "threads": threads, "puts_per_s": n / seconds, "sustained_per_s": n / drained}


def thread_table(rows: list[dict[str, Any]]) -> str:
    """puts/s: until the last put returned; sustained: until the background compaction they
    started was done too (a faster row leaves more of it behind the clock)."""
    lines = ["| one process, one memory | ladder | threads | puts/s | of in-memory | sustained puts/s | of in-memory |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next((b for b in rows if b["store"] == "memory" and b.get("ladder", True) == r.get("ladder", True)), None)
        shares = [f"{r[k] / base[k]:.2f}" if base else "" for k in ("puts_per_s", "sustained_per_s")]
        lines.append(f"| {r['store']} | {'on' if r.get('ladder', True) else 'off'} | {r['threads']} | {r['puts_per_s']:.0f} | "
                     f"{shares[0]} | {r['sustained_per_s']:.0f} | {shares[1]} |")
    return "\n".join(lines) + "\n"


def _drop_vector_indexes(uri: str) -> None:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'tiered_context_items_hnsw_%%'"):
            conn.execute(f'DROP INDEX "{name}"')


class _Server:
    """The PostgreSQL to measure: `--dsn`, else pgserver in a temporary directory."""

    def __init__(self, dsn: str | None) -> None:
        self._tmp = None
        self._server = None
        if dsn is not None:
            self.admin = dsn
            return
        try:
            import pgserver
        except ImportError as exc:
            raise SystemExit("pass --dsn postgresql://... or pip install pgserver (PostgreSQL 16 + pgvector in a wheel)") from exc
        import logging

        logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command it runs
        self._tmp = tempfile.mkdtemp(prefix="tc-bench-pg-")
        self._server = pgserver.get_server(Path(self._tmp) / "pgdata", cleanup_mode="stop")
        self.admin = self._server.get_uri()

    def database(self, name: str, template: str | None = None) -> str:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return make_conninfo(**{**conninfo_to_dict(self.admin), "dbname": name})

    def close(self) -> None:
        if self._server is not None:
            self._server.cleanup()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


# -- the run --------------------------------------------------------------------------------------
def run(*, workers: list[int], puts: int, queries: int, sessions: int, preload: int, dsn: str | None = None,
        embedded: bool = True, exact: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every row (see the module docstring); returns one dict per row."""
    names = [f"bench-session-{i}" for i in range(sessions)]
    rows: list[dict[str, Any]] = []

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    if embedded:
        tmp = tempfile.mkdtemp(prefix="tc-bench-embedded-")
        try:
            say(f"embedded default: preloading {preload} turns")
            _preload_embedded(tmp, names[0], preload)
            rows.append({**_run_workers("embedded", tmp, 1, names[:1], puts, queries, preload),
                         "note": "path= (the journal); one process per directory"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say("in memory")
        rows.append({**_run_workers("memory", "", 1, names[:1], puts, queries, preload),
                     "note": "LocalColdStore; nothing shared between processes"})
    server = _Server(dsn)
    try:
        template = "tc_bench_template"
        uri = server.database(template)
        say(f"postgres: preloading {sessions} sessions x {preload} turns")
        _preload_postgres(uri, names, preload)
        kinds = ["postgres"] + (["postgres-exact"] if exact else [])
        for kind in kinds:
            for w in workers:
                uri = server.database(f"tc_bench_{w}", template=template)
                if kind == "postgres-exact":
                    _drop_vector_indexes(uri)
                say(f"{kind}: {w} worker(s)")
                note = f"{sessions} sessions, each served by one worker"
                if kind == "postgres-exact":
                    note += "; hnsw=False (no vector index to maintain; exact scans)"
                rows.append({**_run_workers(kind, uri, w, names, puts, queries, preload), "note": note})
    finally:
        server.close()
    return rows


def table(rows: list[dict[str, Any]], *, preload: int, sessions: int) -> str:
    lines = [f"Puts and queries with {preload} turns preloaded per session ({sessions} sessions on Postgres); "
             f"search limit {_LIMIT}, assemble budget {_BUDGET}.", "",
             "| store | workers | puts/s | search p50 ms | search p95 ms | assemble p50 ms | assemble p95 ms | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['store']} | {r['workers']} | {r['puts_per_s']:.0f} | {r['search_p50_ms']:.1f} | "
                     f"{r['search_p95_ms']:.1f} | {r['assemble_p50_ms']:.1f} | {r['assemble_p95_ms']:.1f} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiered_context.evals.bench_workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (comma separated)")
    parser.add_argument("--puts", type=int, default=300, help="puts per worker")
    parser.add_argument("--queries", type=int, default=60, help="searches and assemblies per worker")
    parser.add_argument("--sessions", type=int, default=8, help="sessions on Postgres")
    parser.add_argument("--preload", type=int, default=1000, help="turns preloaded per session")
    parser.add_argument("--dsn", default=None, help="an existing PostgreSQL with pgvector (default: pgserver)")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded and in-memory rows")
    parser.add_argument("--exact", action="store_true", help="also measure PostgresColdStore(hnsw=False)")
    parser.add_argument("--threads", type=int, default=8, help="threads putting into one memory (0: skip)")
    parser.add_argument("--only-threads", action="store_true", help="only the --threads rows (no Postgres)")
    parser.add_argument("--out", type=Path, default=Path("out/workers"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.threads > 0:
        threaded = [_thread_puts(kind, args.threads, args.puts, ladder=ladder)
                    for ladder in (False, True) for kind in ("memory", "journal", "qdrant")]
        md = thread_table(threaded)
        (args.out / "threads.json").write_text(json.dumps(threaded, indent=2))
        (args.out / "threads.md").write_text(md)
        print(md)
    if args.only_threads:
        return 0
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    rows = run(workers=workers, puts=args.puts, queries=args.queries, sessions=args.sessions, preload=args.preload,
               dsn=args.dsn, embedded=not args.no_embedded, exact=args.exact)
    md = table(rows, preload=args.preload, sessions=args.sessions)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    (args.out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
