"""The Qdrant cold tier, measured: retention, assembly latency, scale, semantic cache.

    python -m tiered_context.evals.bench_qdrant --out out/qdrant                 # all parts
    python -m tiered_context.evals.bench_qdrant --out out/qdrant --parts scale --sizes 10000,100000

Parts (``--parts``, comma separated):

- **retention**: evidence recall at 1k/2k tokens (LoCoMo dev5, QMSum val) through the
  real eval (`retention.run_eval`): the in-process `LocalColdStore` ("tiered") against
  `QdrantColdStore` on the edge engine with each candidate fusion ("tiered:qdrant" =
  union + the core's z-score fusion, "tiered:qdrant-rrf", "tiered:qdrant-dbsf").
  Every conversation is a tenant of one shared store directory, as in a deployment.
- **latency**: whole `assemble(budget=2000)` p50 / p95 with 10k items in one session.
- **scale**: N archived items (``--text zipf``: random unit vectors and synthetic Zipf
  words, the stress case; ``--text real``: real turns of the shared data, two per item,
  embedded by the default embedder, queried with real questions), over ``--tenants`` tenants
  (100 by default) per embedded engine: ingest rate (batches of 1,000 and single adds,
  with the background index builds that start past ``index_after``), search p95 while a
  build runs, the wait for the index of everything (``optimize(wait=True)``), then
  tenant-filtered hybrid search p50 / p95 (plus a role + time filter), disk, peak RSS,
  and the cost of reopening. Each (engine, N) runs in its own process::

      python -m tiered_context.evals.bench_qdrant --out out/qdrant --parts scale --engines edge \
          --sizes 1000000 --tenants 1
- **cache**: `SemanticCache` hit rate / false-hit rate against the similarity threshold
  on a paraphrase set generated at run time from the LoCoMo and QMSum questions.

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_cache", "bench_latency", "bench_retention", "bench_scale", "main", "qdrant_strategy"]

_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# -- retention -------------------------------------------------------------------------
def qdrant_strategy(name: str, root: str, opened: list, **store_options: Any) -> Callable[[], Any]:
    """A factory of `TieredStrategy`s whose sessions live in one Qdrant store under `root`
    (one tenant per conversation); `opened` collects the stores to close afterwards."""
    from tiered_context.evals.strategies import TieredStrategy
    from tiered_context.qdrant import QdrantColdStore

    def factory() -> Any:
        store = QdrantColdStore(root, **store_options)  # same path: one shared engine, refcounted
        opened.append(store)
        return TieredStrategy(name=name, store=store)

    return factory


def bench_retention(locomo: Path, qmsum: Path, budgets: Sequence[int] = (1000, 2000),
                    variants: Sequence[str] = ("union", "rrf", "dbsf"), local_engine: bool = False,
                    progress: bool = True) -> list[dict[str, Any]]:
    from tiered_context.evals.datasets import load_locomo, load_qmsum
    from tiered_context.evals.retention import run_eval
    from tiered_context.evals.strategies import STRATEGIES

    data = {"locomo": load_locomo(locomo), "qmsum": load_qmsum(qmsum)}
    root = tempfile.mkdtemp(prefix="bench-qdrant-")
    opened: list = []
    strategies: dict[str, Callable[[], Any]] = {"tiered": STRATEGIES["tiered"]}
    for v in variants:
        name = "tiered:qdrant" if v == "union" else f"tiered:qdrant-{v}"
        strategies[name] = qdrant_strategy(name, os.path.join(root, v), opened, fusion=v)
    if local_engine:
        strategies["tiered:qdrant-local"] = qdrant_strategy("tiered:qdrant-local", os.path.join(root, "local"),
                                                            opened, engine="local")
    try:
        rows = run_eval(data, strategies, list(budgets), progress=progress)
    finally:
        for s in opened:
            s.close()
        shutil.rmtree(root, ignore_errors=True)
    return [r for r in rows if r["category"] == "all"] + [r for r in rows if r["category"] != "all"]


# -- assembly latency ------------------------------------------------------------------
def bench_latency(locomo: Path, qmsum: Path, items: int = 10_000, questions: int = 200) -> list[dict[str, Any]]:
    """`assemble(budget=2000)` with `items` turns of real text in one session."""
    from tiered_context import LocalColdStore, TieredContext
    from tiered_context.evals.datasets import load_locomo, load_qmsum
    from tiered_context.qdrant import QdrantColdStore

    convs = load_locomo(locomo) + load_qmsum(qmsum)
    turns = [t for c in convs for t in c.turns][:items]
    qs = [q.text for c in convs for q in c.questions][:questions]
    rows = []
    for name, make in (("local (in-process)", lambda d: LocalColdStore()),
                       ("qdrant edge", lambda d: QdrantColdStore(d))):
        folder = tempfile.mkdtemp(prefix="bench-lat-")
        ctx = TieredContext(session_id="s", store=make(folder), compaction="inline")
        start = time.perf_counter()
        ctx.put_many([{"content": t.text, "timestamp": float(i), "metadata": {"speaker": t.speaker}}
                      for i, t in enumerate(turns)])
        ingest = time.perf_counter() - start
        ctx.assemble(qs[0], budget=2000)  # warm (statistics, caches)
        lat = []
        for q in qs:
            t0 = time.perf_counter()
            ctx.assemble(q, budget=2000)
            lat.append(time.perf_counter() - t0)
        ctx.close()
        shutil.rmtree(folder, ignore_errors=True)
        rows.append({"store": name, "items": len(turns), "ingest_s": round(ingest, 2),
                     "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 2),
                     "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 2)})
    return rows


# -- scale ------------------------------------------------------------------------------
_VOCAB = [f"w{i}" for i in range(30_000)]


def _zipf_words(rng: np.random.Generator, n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, n), len(_VOCAB)) - 1
    return [_VOCAB[r] for r in ranks]


class _RealText:
    """Items and queries made of real conversation turns (LoCoMo, QMSum, LongMemEval under
    `data`): each item two random turns joined (so a million texts are distinct), its
    vector the default embedder's; each query a real question of the same data."""

    def __init__(self, data: Path, rng: np.random.Generator) -> None:
        from tiered_context import WordLlamaEmbedder
        from tiered_context.evals import datasets

        convs = [*datasets.load_locomo(data / "locomo" / "locomo_dev5.json"),
                 *datasets.load_qmsum(data / "qmsum" / "train"), *datasets.load_qmsum(data / "qmsum" / "val"),
                 *datasets.load_longmemeval(data / "longmemeval" / "longmemeval_s_dev90.json")]
        self.turns = list(dict.fromkeys(t.text for c in convs for t in c.turns))
        self.questions = list(dict.fromkeys(q.text for c in convs for q in c.questions))
        self.rng, self.embedder = rng, WordLlamaEmbedder()

    def items(self, k: int) -> tuple[list[str], np.ndarray]:
        pairs = self.rng.integers(0, len(self.turns), size=(k, 2))
        texts = [f"{self.turns[a]} {self.turns[b]}" for a, b in pairs]
        return texts, self.embedder.embed(texts)

    def query(self) -> tuple[str, np.ndarray]:
        text = self.questions[int(self.rng.integers(len(self.questions)))]
        return text, self.embedder.embed([text])[0]


def _scale_one(engine: str, n: int, tenants: int, dim: int, queries: int, seed: int = 0,
               corpus: str = "zipf", keep: str | None = None) -> dict[str, Any]:
    """One (engine, N) measurement; run in a fresh process by `bench_scale`. `corpus`: "zipf"
    (random vectors, synthetic Zipf words: the stress case, common terms in most items) or
    "real" (`_RealText`: real turns and questions, the default embedder's vectors).

    `keep` (a directory): the store is built under it and kept, with the build's figures in
    ``built.json``; a later run with the same settings reuses it and measures the searches
    only (a million-item build takes most of an hour: search latency can then be measured
    again on a quiet machine)."""
    from tiered_context import ContextItem
    from tiered_context.qdrant import QdrantColdStore

    rng = np.random.default_rng(seed)
    real = _RealText(_DATA, rng) if corpus == "real" else None
    if real is not None:
        dim = real.embedder.dim

    def make(k: int) -> tuple[list[str], np.ndarray]:
        if real is not None:
            return real.items(k)
        return [" ".join(_zipf_words(rng, 12)) for _ in range(k)], rng.standard_normal((k, dim)).astype(np.float32)

    def ask() -> tuple[str, np.ndarray]:
        if real is not None:
            return real.query()
        return " ".join(_zipf_words(rng, 4)), rng.standard_normal(dim).astype(np.float32)

    per = n // tenants
    built: dict[str, Any] = {}
    if keep:
        folder = str(Path(keep) / f"{engine}-{corpus}-{n}-{tenants}")
        if (Path(folder) / "built.json").exists():
            built = json.loads((Path(folder) / "built.json").read_text())
    else:
        folder = tempfile.mkdtemp(prefix=f"bench-scale-{engine}-")
    if built:
        return {**built, **_searches(engine, folder, tenants, per, queries, ask), "reused": True}
    store = QdrantColdStore(folder, engine=engine)
    batch = 1000
    rss0 = _rss_mb()
    started = time.perf_counter()
    for t in range(tenants):  # tenant-major: how sessions grow
        for lo in range(0, per, batch):
            k = min(batch, per - lo)
            texts, vecs = make(k)
            items = [ContextItem(id=f"i{lo + j}", text=texts[j], role="user" if j % 2 else "assistant",
                                 timestamp=float(lo + j), seq=lo + j, tokens=16) for j in range(k)]
            store.add(f"tenant-{t}", items, vecs)
    ingest = time.perf_counter() - started
    # single adds (what TieredContext.put does), on one more tenant
    single = min(500, max(50, n // 200))
    t0 = time.perf_counter()
    for j in range(single):
        texts, vecs = make(1)
        store.add("tenant-single", [ContextItem(id=f"s{j}", text=texts[0], seq=j, tokens=16)], vecs)
    single_rate = single / (time.perf_counter() - t0)

    def run_queries(s: Any, **filters: Any) -> list[float]:
        lat = []
        for i in range(queries):
            tenant = f"tenant-{i % tenants}"
            text, q = ask()
            t1 = time.perf_counter()
            s.search(tenant, text, q, limit=64, **filters)
            lat.append(time.perf_counter() - t1)
        return lat

    building = store._coll is not None and getattr(store._coll, "indexing", False)
    lat_during = run_queries(store) if building else []  # a background build (past index_after) in flight
    t0 = time.perf_counter()
    store.optimize(wait=True)  # embedded: the index of everything, built in a child process
    index_s = time.perf_counter() - t0
    rss = _rss_mb()
    store.close()
    built = {
        "engine": engine, "text": corpus, "items": n, "tenants": tenants, "items_per_tenant": per, "dim": dim,
        "ingest_items_per_s": round(n / ingest, 1), "ingest_s": round(ingest, 1),
        "single_add_per_s": round(single_rate, 1),
        "search_p95_during_build_ms": _ms(lat_during, 95) if lat_during else "",
        "index_wait_s": round(index_s, 1), "disk_mb": round(_du_mb(folder), 1), "rss_mb": round(rss, 1),
        "rss_growth_mb": round(rss - rss0, 1),
    }
    if keep:
        (Path(folder) / "built.json").write_text(json.dumps(built))
    out = {**built, **_searches(engine, folder, tenants, per, queries, ask)}
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _searches(engine: str, folder: str, tenants: int, per: int, queries: int,
              ask: Callable[[], tuple[str, np.ndarray]]) -> dict[str, Any]:
    """Search latency on a built store: reopen it (time to open, first search), then
    `queries` searches and as many filtered ones (a role and the middle half of time)."""
    from tiered_context.qdrant import QdrantColdStore

    t0 = time.perf_counter()
    store = QdrantColdStore(folder, engine=engine)
    open_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    text, q = ask()
    store.search("tenant-0", text, q, limit=64)
    first = time.perf_counter() - t0

    def run_queries(**filters: Any) -> list[float]:
        lat = []
        for i in range(queries):
            text, q = ask()
            t1 = time.perf_counter()
            store.search(f"tenant-{i % tenants}", text, q, limit=64, **filters)
            lat.append(time.perf_counter() - t1)
        return lat

    try:
        lat = run_queries()
        lat_f = run_queries(roles=["user"], since=float(per // 4), until=float(3 * per // 4))
    finally:
        store.close()
    return {"search_p50_ms": _ms(lat, 50), "search_p95_ms": _ms(lat, 95),
            "filtered_p50_ms": _ms(lat_f, 50), "filtered_p95_ms": _ms(lat_f, 95),
            "reopen_s": round(open_s, 2), "first_search_after_reopen_s": round(first, 2), "queries": queries}


def bench_scale(sizes: Sequence[int], engines: Sequence[str], tenants: int = 100, dim: int = 256,
                queries: int = 200, timeout: float = 3600.0, text: str = "zipf",
                keep: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    for engine in engines:
        for n in sizes:
            cmd = [sys.executable, "-m", "tiered_context.evals.bench_qdrant", "--_one",
                   json.dumps({"engine": engine, "n": n, "tenants": min(tenants, max(1, n // 100)), "dim": dim, "text": text,
                               "keep": str(keep) if keep else None,
                               "queries": queries if engine == "edge" else min(queries, 50)})]
            started = time.perf_counter()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                row = {"engine": engine, "items": n, "error": f"did not finish in {timeout:.0f} s"}
            except subprocess.CalledProcessError as exc:
                row = {"engine": engine, "items": n, "error": exc.stderr.strip().splitlines()[-1:]}
            row["wall_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def _ms(values: Sequence[float], pct: float) -> float:
    return round(float(np.percentile(values, pct)) * 1e3, 3)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):  # peak resident set
                return int(line.split()[1]) / 1024
    return float("nan")


def _du_mb(folder: str) -> float:
    from tiered_context.core import disk_usage

    return disk_usage(Path(folder)) / 2**20


# -- semantic cache --------------------------------------------------------------------
_PREFIXES = ["Can you tell me {q}", "I'd like to know {q}", "Quick question: {q}", "Do you remember {q}",
             "{q} Thanks!", "Please remind me: {q}", "Hey, {q}"]
_SWAPS = {"what": "which", "did": "had", "when": "at what time", "why": "for what reason",
          "how": "in what way", "going": "heading", "likes": "enjoys", "like": "enjoy", "talk": "speak",
          "discuss": "talk about", "said": "mentioned", "think": "believe", "about": "regarding",
          "bought": "purchased", "get": "obtain", "people": "folks", "big": "large", "start": "begin"}


def paraphrase(question: str, rng: random.Random) -> str:
    """A meaning-preserving rewrite: a framing, a few synonym swaps, case / punctuation."""
    q = question.strip()
    words = q.split()
    out = []
    for w in words:
        core = w.strip("?,.!").lower()
        if core in _SWAPS and rng.random() < 0.6:
            rep = _SWAPS[core]
            out.append(rep.capitalize() if w[:1].isupper() else rep)
        else:
            out.append(w)
    q2 = " ".join(out)
    q2 = q2[0].lower() + q2[1:] if q2 else q2
    frame = rng.choice(_PREFIXES)
    if rng.random() < 0.3:
        q2 = q2.rstrip("?")
    return frame.format(q=q2)


def bench_cache(locomo: Path, qmsum: Path, thresholds: Sequence[float] = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93,
                                                                          0.94, 0.95, 0.96, 0.97, 0.98),
                embedders: Sequence[str] = ("wordllama",), seed: int = 0) -> list[dict[str, Any]]:
    """Cache half the questions; ask paraphrases of those (should hit the same entry) and
    the other half verbatim and paraphrased (should miss). A false hit returns the cached
    answer of a different question. Per tenant = per conversation, as in a deployment."""
    from tiered_context.evals.datasets import load_locomo, load_qmsum
    from tiered_context.qdrant import SemanticCache

    rng = random.Random(seed)
    convs = load_locomo(locomo) + load_qmsum(qmsum)
    rows = []
    for emb_name in embedders:
        embedder = _embedder(emb_name)
        folder = tempfile.mkdtemp(prefix="bench-cache-")
        cache = SemanticCache(folder, embedder=embedder, threshold=0.0001)
        probes: list[tuple[str, str, str | None]] = []  # (tenant, probe, expected cached question or None)
        for conv in convs:
            qs = list(dict.fromkeys(q.text for q in conv.questions))
            rng.shuffle(qs)
            cached, fresh = qs[: len(qs) // 2], qs[len(qs) // 2:]
            for q in cached:
                cache.update(conv.id, q, "model|t=0", f"answer to: {q}")
                probes.append((conv.id, paraphrase(q, rng), q))
            for q in fresh:
                probes.append((conv.id, q, None))
                probes.append((conv.id, paraphrase(q, rng), None))
        results = []
        for tenant, probe, expected in probes:
            hit = cache.lookup(tenant, probe, "model|t=0")
            results.append((expected, hit.prompt if hit else None, hit.similarity if hit else 0.0))
        cache.close()
        shutil.rmtree(folder, ignore_errors=True)
        positives = sum(1 for e, _, _ in results if e is not None)
        negatives = len(results) - positives
        for th in thresholds:
            tp = sum(1 for e, got, s in results if e is not None and s >= th and got == e)
            wrong = sum(1 for e, got, s in results if s >= th and got != e)
            rows.append({"embedder": emb_name, "threshold": th, "hit_rate": round(tp / max(positives, 1), 4),
                         "false_hit_rate": round(wrong / len(results), 4),
                         "false_hits_on_uncached": round(sum(1 for e, _, s in results if e is None and s >= th)
                                                         / max(negatives, 1), 4),
                         "paraphrase_probes": positives, "uncached_probes": negatives})
    return rows


def _embedder(name: str) -> Any:
    if name == "minilm":
        from tiered_context import MiniLMEmbedder

        return MiniLMEmbedder()
    from tiered_context import WordLlamaEmbedder

    return WordLlamaEmbedder()


# -- CLI --------------------------------------------------------------------------------
def _markdown(results: dict[str, list[dict[str, Any]]]) -> str:
    out = []
    for part, rows in results.items():
        if not rows:
            continue
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out += [f"### {part}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiered_context.evals.bench_qdrant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory for results.json / results.md")
    parser.add_argument("--parts", default="retention,latency,scale,cache")
    parser.add_argument("--data-locomo", type=Path, default=_DATA / "locomo" / "locomo_dev5.json")
    parser.add_argument("--data-qmsum", type=Path, default=_DATA / "qmsum" / "val")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--engines", default="edge,local")
    parser.add_argument("--tenants", type=int, default=100, help="tenants the scale part spreads N over (1: one tenant)")
    parser.add_argument("--text", choices=["zipf", "real"], default="zipf",
                        help="scale items: synthetic Zipf words + random vectors (stress), or real turns embedded")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one scale run may take")
    parser.add_argument("--keep", type=Path, help="build scale stores under DIR and keep them; a later run with "
                        "the same settings measures the searches only")
    parser.add_argument("--local-max", type=int, default=100_000, help="largest N for the (slow) local engine")
    parser.add_argument("--budgets", default="1000,2000")
    parser.add_argument("--variants", default="union,rrf,dbsf")
    parser.add_argument("--embedders", default="wordllama")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._one:
        spec = json.loads(args._one)
        print(json.dumps(_scale_one(spec["engine"], spec["n"], spec["tenants"], spec["dim"], spec["queries"],
                                    corpus=spec.get("text", "zipf"), keep=spec.get("keep"))))
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, list[dict[str, Any]]] = {}
    if "retention" in parts:
        results["retention"] = bench_retention(args.data_locomo, args.data_qmsum,
                                               [int(b) for b in args.budgets.split(",")],
                                               [v for v in args.variants.split(",") if v])
    if "latency" in parts:
        results["latency"] = bench_latency(args.data_locomo, args.data_qmsum)
    if "scale" in parts:
        sizes = [int(s) for s in args.sizes.split(",")]
        results["scale"] = []
        for engine in args.engines.split(","):
            mine = [s for s in sizes if engine != "local" or s <= args.local_max]
            results["scale"] += bench_scale(mine, [engine], tenants=args.tenants, text=args.text,
                                            timeout=args.timeout, keep=args.keep)
    if "cache" in parts:
        results["cache"] = bench_cache(args.data_locomo, args.data_qmsum,
                                       embedders=[e for e in args.embedders.split(",") if e])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
