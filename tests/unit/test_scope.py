"""ContextBlock, ContextScope (fork / diff / merge / conflicts / tenancy) and ScopeRouter."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tiered_context.scopes import BlockKind, ContextBlock, ContextScope, ScopeDiff, ScopeRouter
from tiered_context.errors import ConfigError, InputError, MergeConflict, ScopeError, TenantError
from tiered_context.testing import HashEmbedder


@pytest.fixture
def root() -> ContextScope:
    scope = ContextScope.root(tenant="acme", embedder=HashEmbedder())
    scope.add("The Lisbon launch moved to 3 May.", key="launch")
    scope.add("Ana leads design and Bruno runs marketing.", key="team")
    return scope


# -- blocks -----------------------------------------------------------------------------
def test_block_is_immutable_and_versioned() -> None:
    b = ContextBlock.create("Budget is 10k.", tenant="t", scope="s")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.content = "x"  # type: ignore[misc]
    b2 = b.revise("Budget is 12k.")
    assert (b2.key, b2.version) == (b.key, 2) and b2.content_hash != b.content_hash
    gone = b2.retire()
    assert gone.version == 3 and gone.retired and gone.content == b2.content
    assert ContextBlock.from_dict(b2.as_dict()) == b2
    item = b2.to_item(seq=4)
    assert item.id == b2.id == f"{b.key}@2" and item.metadata["block_version"] == 2 and item.seq == 4
    assert "v2" in repr(b2)


def test_block_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="non-empty"):
        ContextBlock.create("  ", tenant="t", scope="s")
    with pytest.raises(InputError, match="kind must be one of"):
        ContextBlock.create("x", tenant="t", scope="s", kind="opinion")
    with pytest.raises(InputError, match="tenant"):
        ContextBlock.create("x", tenant="", scope="s")


# -- fork, visibility, writes -----------------------------------------------------------------
def test_child_sees_parent_shared_blocks_read_only_and_writes_to_itself(root: ContextScope) -> None:
    root.add("Board salary discussion.", key="secret", shared=False)
    child = root.fork("dates", task="launch dates")
    assert {b.key for b in child.blocks()} == {"launch", "team"}  # private block not inherited
    child.add("The venue is booked for 3 May.", key="venue")
    child.update("launch", "The Lisbon launch moved to 5 May.")
    assert root.get("venue") is None and root.get("launch").content.endswith("3 May.")  # parent untouched
    assert child.get("launch").version == 2 and child.history("launch")[0].version == 1
    root.add("Parent news after the fork.", key="late")
    assert child.get("late") is None  # based on the version it forked from
    child.rebase()
    assert child.get("late") is not None and child.get("venue") is not None


def test_diff_holds_only_what_changed(root: ContextScope) -> None:
    child = root.fork("w")
    assert not child.diff()
    child.add("New fact.", key="fact", kind=BlockKind.FACT)
    child.add("Scratch note.", key="scratch")
    child.retire("scratch")  # added then retired: not in the diff
    child.update("team", "Ana leads design; Chen runs marketing.")
    child.retire("launch")
    d = child.diff()
    assert d.base_version == root.version == 2 and (d.scope, d.parent, d.tenant) == ("w", "root", "acme")
    assert [b.key for b in d.added] == ["fact"] and [b.key for b in d.updated] == ["team"]
    assert [b.key for b in d.retired] == ["launch"] and d.tokens > 0
    assert ScopeDiff.from_dict(d.as_dict()) == d
    result = root.merge(d)
    assert set(result.applied) == {"fact", "team", "launch"} and not result.rebased
    assert root.get("launch") is None and root.get("launch", include_retired=True).retired
    assert root.get("team").content.startswith("Ana leads design; Chen") and root.get("fact").kind == BlockKind.FACT


def test_same_key_changed_in_two_children_conflicts(root: ContextScope) -> None:
    a, b = root.fork("a"), root.fork("b")
    a.update("launch", "Launch on 5 May.")
    b.update("launch", "Launch on 9 May.")
    b.add("Unrelated note from b.", key="note")
    root.merge(a.diff())
    with pytest.raises(MergeConflict) as info:
        root.merge(b.diff())
    assert info.value.keys == ["launch"] and "on_conflict" in str(info.value)
    assert root.get("note") is None  # a failed merge applies nothing
    ours = root.merge(b.diff(), on_conflict="ours")
    assert ours.kept == ("launch",) and root.get("launch").content == "Launch on 5 May." and root.get("note")
    theirs = root.merge(b.diff(), on_conflict="theirs")
    assert theirs.overwritten == ("launch",) and root.get("launch").content == "Launch on 9 May."
    with pytest.raises(ConfigError, match="on_conflict"):
        root.merge(b.diff(), on_conflict="newest")


def test_stale_diff_without_overlap_is_rebased(root: ContextScope) -> None:
    a, b = root.fork("a"), root.fork("b")
    a.add("From a.", key="ka")
    b.add("From b.", key="kb")
    root.merge(a.diff())
    result = root.merge(b.diff())  # based on version 2, parent is at 3: no common key
    assert result.rebased and result.applied == ("kb",) and root.get("ka") and root.get("kb")


def test_identical_changes_in_two_children_do_not_conflict(root: ContextScope) -> None:
    a, b = root.fork("a"), root.fork("b")
    for child in (a, b):
        child.update("launch", "Launch on 5 May.")
    root.merge(a.diff())
    assert root.merge(b.diff()).applied == ("launch",)
    assert root.get("launch").version == 2


def test_diff_for_another_parent_or_from_a_root_is_refused(root: ContextScope) -> None:
    child = root.fork("c")
    grandchild = child.fork("g")
    grandchild.add("deep", key="deep")
    with pytest.raises(ScopeError, match="made against scope 'c'"):
        root.merge(grandchild.diff())
    with pytest.raises(ScopeError, match="root"):
        root.diff()
    with pytest.raises(ScopeError, match="already exists"):
        root.fork("c")


# -- tenancy ------------------------------------------------------------------------------------
def test_a_child_cannot_read_another_tenants_scope(root: ContextScope) -> None:
    other = ContextScope.root(tenant="globex", embedder=HashEmbedder())
    other.add("Globex secret.", key="s")
    with pytest.raises(TenantError, match="tenant 'acme'"):
        root.fork("spy", tenant="globex")
    with pytest.raises(TenantError):
        other.open("root", tenant="acme")
    spy = other.fork("child")
    spy.add("copied", key="c")
    with pytest.raises(TenantError, match="cannot merge"):
        root.merge(dataclasses.replace(spy.diff(), parent="root"))
    with pytest.raises(TenantError):
        root.write(other.get("s"))
    with pytest.raises(TenantError, match="several tenants"):
        ScopeRouter([root.fork("x", task="t"), spy], threshold=0.3)
    assert isinstance(TenantError("x"), PermissionError)


# -- assembly -------------------------------------------------------------------------------------
def test_assemble_packs_visible_blocks_under_budget(root: ContextScope) -> None:
    child = root.fork("dates")
    for n in range(30):
        child.add(f"Filler remark number {n} about the weather and lunch.", key=f"f{n}")
    child.retire("team")
    out = child.assemble("When is the Lisbon launch?", budget=60)
    assert out.tokens <= 60
    keys = {i.metadata["block_key"] for i in out.items}
    assert "launch" in keys and "team" not in keys
    child.feedback(out, [out.items[0].id])  # learns without error
    big = child.assemble("Lisbon launch", budget=5000)
    assert "team" not in {i.metadata["block_key"] for i in big.items} and len(big.items) == 31
    with pytest.raises(ConfigError):
        child.assemble("q", budget=0)


def test_summary_blocks_compete_as_summaries(root: ContextScope) -> None:
    root.add("Summary: the launch is in Lisbon in May; Ana and Bruno lead.", kind="summary",
             source_ids=("launch@1", "team@1"), key="sum")
    out = root.assemble("Who leads and where is the launch?", budget=400)
    assert out.tokens <= 400 and out.items


def test_async_twins(root: ContextScope) -> None:
    async def go() -> None:
        child = root.fork("async")
        block = await child.aadd("Async note about the launch.")
        out = await child.aassemble("launch", budget=200)
        assert block.id in {i.id for i in out.items}
        assert (await root.amerge(child.diff())).applied == (block.key,)

    asyncio.run(go())


def test_snapshot_restores_the_tree(root: ContextScope) -> None:
    child = root.fork("w", task="dates")
    child.add("Child block.", key="cb")
    again = ContextScope.restore(root.snapshot(), embedder=HashEmbedder())
    w = again.open("w", tenant="acme")
    assert w.get("cb").content == "Child block." and w.task == "dates" and w.base_version == child.base_version
    assert again.merge(w.diff()).applied == ("cb",)
    assert "ContextScope('w'" in repr(w) and "parent='root'" in repr(w)


# -- routing ----------------------------------------------------------------------------------------
def test_router_sends_blocks_to_the_relevant_scopes(root: ContextScope) -> None:
    dates = root.fork("dates", task=["when is the launch date", "which day is the venue booked"])
    people = root.fork("people", task="who leads design and marketing team members")
    router = ScopeRouter([dates, people], threshold=0.3, neighbours=0)
    routed = router.route("The launch date is the 3rd, venue booked that day.", key="d1")
    assert set(routed) == {"dates"} and 0.3 <= routed["dates"].relevance <= 1
    routed = router.route("Chen joined the design team as lead.")
    assert "people" in routed and "dates" not in routed
    fallback = router.route("Completely unrelated zebra.")  # best scope gets it: nothing lost
    assert len(fallback) == 1
    scores = router.scores("launch date")
    assert scores["dates"] > scores["people"]
    assert "ScopeRouter(['dates', 'people']" in repr(router)
    drop = ScopeRouter([dates], threshold=0.9, fallback="drop", neighbours=0)
    assert drop.route("zebra zebra") == {}


def test_router_brings_the_neighbours_of_a_relevant_block(root: ContextScope) -> None:
    dates = root.fork("dates", task="when is the launch date")
    other = root.fork("other", task="zebra migration patterns")
    router = ScopeRouter([dates, other], threshold=0.3, neighbours=1)
    out = router.route_many(["Did you hear the news?", "The launch date is the 3rd.", "Yes, noted."],
                            options=[{"key": "a"}, {"key": "b"}, {"key": "c"}])
    assert {b.key for b in dates.own_blocks} == {"a", "b", "c"}
    assert "dates" in out[0] and "dates" in out[2]
    with pytest.raises(ConfigError, match="one mapping per content"):
        router.route_many(["x"], options=[])


def test_router_validates_its_configuration(root: ContextScope) -> None:
    with pytest.raises(ConfigError, match="no task"):
        ScopeRouter([root.fork("blank")])
    with pytest.raises(ConfigError, match="at least one scope"):
        ScopeRouter([])
    with pytest.raises(ConfigError, match="threshold"):
        ScopeRouter([root.fork("t", task="x")], threshold=2)
