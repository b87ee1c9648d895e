"""Compressed forms of any candidate at assembly: more evidence in a small budget,
provenance and coverage kept, top hits verbatim, computed once per item, failure-safe."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tiered_context import (
    Budget,
    ContextAssembler,
    ContextItem,
    LocalColdStore,
    Scorer,
    SelfInformationCompressor,
    SummaryConfig,
    Tier,
    TieredContext,
    TokenCounter,
)
from tiered_context.core import normalize
from tiered_context.testing import FailingCompressor, HashEmbedder

T0 = 1_714_000_000
COUNTER = TokenCounter()


def history(ctx: TieredContext, n: int = 200) -> list[ContextItem]:
    out = []
    for i in range(n):
        text = (f"Well, honestly, I think that the Lisbon office spent about {i * 37} euros on item {i} "
                f"and it was really quite a lot of money for what we actually got back then, to be fair.")
        out.append(ctx.put(text, timestamp=T0 + 600 * i, metadata={"dia_id": f"D{i}"}))
    return out


def memory(mode: str, compressor=None) -> TieredContext:
    return TieredContext(session_id="ca", embedder=HashEmbedder(), compaction="inline", budget=Budget(max_tokens=200),
                         compression=mode, compressor=compressor, summary=SummaryConfig(enabled=False))


def test_compressed_candidates_cover_more_evidence() -> None:
    full, off = memory("all"), memory("off")
    history(full)
    history(off)
    query = "Lisbon office euros spent on item"
    with_forms = full.assemble(query, budget=400)
    without = off.assemble(query, budget=400)
    assert with_forms.tokens <= 400 and without.tokens <= 400
    assert len(with_forms.covered("dia_id")) > 1.3 * len(without.covered("dia_id"))
    forms = [i for i in with_forms.items if i.is_derived]
    assert forms and all(len(f.source_ids) == 1 and f.tier == Tier.L2 for f in forms)
    for form in forms:  # every form resolves to its stored original and keeps the numbers
        (original,) = full.store.get("ca", form.source_ids)
        assert form.metadata["dia_id"] == original.metadata["dia_id"]
        assert [w for w in original.text.split() if w.isdigit()] == [w for w in form.text.split() if w.isdigit()]
    assert with_forms.report.compression_ratio > 1.2


def test_the_best_hits_stay_verbatim() -> None:
    ctx = memory("all")
    items = history(ctx)
    out = ctx.assemble("How much did the Lisbon office spend on item 117?", budget=300)
    best = sorted(out.report.scores, key=lambda o: -out.report.scores[o]["value"])[:2]
    by_origin = {i.origin_ids[0]: i for i in out.items}
    assert items[117].id in by_origin and not by_origin[items[117].id].is_derived
    for origin in best:
        if origin in by_origin:
            assert not by_origin[origin].is_derived


class Counting:
    def __init__(self) -> None:
        self.inner = SelfInformationCompressor(COUNTER)
        self.items: list[str] = []

    def compress(self, items: Sequence[ContextItem], ratio: float) -> list[ContextItem]:
        self.items.extend(i.id for i in items)
        return self.inner.compress(items, ratio)

    async def acompress(self, items, ratio):  # pragma: no cover
        return self.compress(items, ratio)


def test_forms_are_computed_once_per_item() -> None:
    compressor = Counting()
    ctx = memory("all", compressor)
    history(ctx, 120)
    ladder = len(compressor.items)
    for _ in range(3):
        ctx.assemble("Lisbon office item euros", budget=300)
    assembly = compressor.items[ladder:]
    assert assembly and len(assembly) == len(set(assembly))  # cached after the first time


def test_a_failing_compressor_costs_compression_not_the_assembly() -> None:
    ctx = memory("all", FailingCompressor())
    history(ctx, 120)
    out = ctx.assemble("Lisbon office item euros", budget=300)
    assert out.tokens <= 300 and out.items and not any(i.is_derived for i in out.items)


def summary_item(sources: Sequence[str], text: str) -> ContextItem:
    return ContextItem(id="sum_x", text=text, role="summary", timestamp=T0 + 10, tier=Tier.L3, tokens=COUNTER.count(text),
                       importance=0.9, metadata={"summary_level": 1, "last_seq": 1, "fact_check": {"facts": 3, "kept": 2}},
                       source_ids=tuple(sources))


def test_a_summary_never_covers_its_sources_and_never_sits_beside_them() -> None:
    store, embedder = LocalColdStore(), HashEmbedder()
    assembler = ContextAssembler(counter=COUNTER, embedder=embedder, store=store, scorer=Scorer())
    olds = [ContextItem(id=f"o{i}", text=f"Ana adopted a greyhound called Biscuit in {2019 + i}.", timestamp=T0 + i,
                        seq=i, tokens=12, importance=0.9, metadata={"dia_id": f"D{i}"}) for i in range(2)]
    others = [ContextItem(id=f"x{i}", text=f"Small talk number {i} about the weather and lunch.", timestamp=T0 + 100 + i,
                          seq=2 + i, tokens=12, metadata={"dia_id": f"X{i}"}) for i in range(20)]
    store.add("t", olds + others, normalize(embedder.embed([o.text for o in olds + others])))
    summary = summary_item(["o0", "o1"], "Ana adopted the greyhound Biscuit.")
    store.add("t#s", [summary], normalize(embedder.embed([summary.text])))
    # the sources fit: they win, and the summary stays out
    out = assembler.assemble("t", "greyhound Biscuit", budget=200, summaries=[summary], summary_tenant="t#s")
    ids = [i.id for i in out.items]
    assert {"o0", "o1"} <= set(ids) and "sum_x" not in ids
    # the sources are not among the candidates (no query, empty working set): the summary
    # stands in for them, reports its fact check and covers none of them
    tiny = assembler.assemble("t", "", budget=100, summaries=[summary], summary_tenant="t#s")
    assert [i.id for i in tiny.items] == ["sum_x"]
    assert tiny.report.fact_checks == {"sum_x": {"facts": 3, "kept": 2}}
    assert tiny.covered("dia_id") == set()
    assert tiny.report.provenance["sum_x"] == ("o0", "o1")


def test_compression_ratio_setting_is_validated() -> None:
    from tiered_context import ConfigError

    with pytest.raises(ConfigError, match="compression_ratio"):
        ContextAssembler(counter=COUNTER, embedder=HashEmbedder(), store=LocalColdStore(), scorer=Scorer(),
                         compression_ratio=0.0)
