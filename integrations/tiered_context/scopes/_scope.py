"""`ContextScope`: hierarchical context for multi-agent systems, handed back as diffs.

Agents usually pass context by copying whole histories: every worker pays for every
token the supervisor ever saw. A scope tree replaces the copies:

* a child (`fork`) sees its parent's *shared* blocks as they were when it forked (the
  parent version it is based on), read-only, plus its own;
* writes (`add`, `update`, `retire`) go to the child only;
* `diff()` is what changed since the fork (blocks added, blocks retired, summaries or
  facts updated) with the parent version it was based on, and `parent.merge(diff)`
  applies it. A key the parent changed after the fork is a conflict: `MergeConflict`
  lists the keys, or ``on_conflict="ours"`` / ``"theirs"`` resolves them. A diff from a
  stale parent version with no overlapping key is rebased (applied as is, reported);
* `assemble(query, budget)` packs the scope's visible blocks with the core's
  `ContextAssembler` (the same scoring and packer as `TieredContext`).

Setup and use::

    root = ContextScope.root(tenant="acme")                  # offline defaults
    root.add("Launch moved to 3 May.", key="launch")
    dates = root.fork("dates", task="answer questions about dates")
    dates.add("The venue is booked for 3 May.")              # only in `dates`
    out = dates.assemble("when is the launch?", budget=500)  # AssembledContext
    root.merge(dates.diff())                                 # the parent gets the new block

Every scope of a tree belongs to one tenant: forking, opening or merging across tenants
raises `TenantError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from tiered_context.core import (
    AssembledContext,
    Compressor,
    Embedder,
    Role,
    Scorer,
    ScoringConfig,
    SelfInformationCompressor,
    TokenCounter,
    WordLlamaEmbedder,
    apply_feedback,
)
from tiered_context.scopes._blocks import BlockKind, ContextBlock, MergeResult, OnConflict, ScopeDiff
from tiered_context.scopes._tree import _Tree, _View
from tiered_context.errors import ConfigError, InputError, MergeConflict, ScopeError, TenantError, positive_int

__all__ = ["ContextScope"]


class ContextScope:
    """One agent's view of shared context: its parent's shared blocks plus its own.

    Build a tree with `ContextScope.root(tenant=...)`, then `fork` a child per agent
    (optionally with a `task`, which `ScopeRouter` routes blocks by). See the module
    docstring for the whole cycle; `repr(scope)` shows its name, version and sizes.
    """

    def __init__(self, name: str, *, tree: _Tree, parent: "ContextScope | None" = None, task: str | list[str] = "") -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("a scope needs a non-empty name")
        self.name, self.parent, self.task, self._tree = name, parent, task, tree
        self.version = 0
        self._own: dict[str, list[ContextBlock]] = {}  # key -> versions written here (oldest first)
        self._changed_at: dict[str, int] = {}  # key -> this scope's version when it last changed
        with tree.lock:
            if name in tree.scopes:
                raise ScopeError(f"a scope named {name!r} already exists in this tree; pick another name")
            self.base_version = parent.version if parent is not None else 0
            self._base = parent._shared() if parent is not None else {}
            tree.scopes[name] = self
        self._view = _View(tree, name)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def root(
        cls,
        *,
        tenant: str,
        name: str = "root",
        counter: TokenCounter | None = None,
        embedder: Embedder | None = None,
        scoring: ScoringConfig | None = None,
        compressor: Compressor | None = None,
        compress: bool = True,
    ) -> "ContextScope":
        """The root of a new tree for `tenant`. `compress=False` offers originals only
        (otherwise low-ranked candidates also compete as compressed forms, as in
        `TieredContext(compression="all")`)."""
        if not tenant or not isinstance(tenant, str):
            raise ConfigError("tenant must be a non-empty string (the user / organisation the tree belongs to)")
        counter = counter or TokenCounter()
        if compress and compressor is None:
            compressor = SelfInformationCompressor(counter)
        tree = _Tree(tenant, counter, embedder or WordLlamaEmbedder(), Scorer(scoring), compressor if compress else None)
        return cls(name, tree=tree)

    def fork(self, name: str, *, task: str | list[str] = "", tenant: str | None = None) -> "ContextScope":
        """A child scope based on this scope's current version. `tenant`, when given,
        must be this tree's: a child never reads another tenant's blocks."""
        self._check_tenant(tenant, f"fork scope {name!r} from {self.name!r}")
        return ContextScope(name, tree=self._tree, parent=self, task=task)

    def open(self, name: str, *, tenant: str) -> "ContextScope":
        """The scope named `name` of this tree, for `tenant` (`TenantError` otherwise)."""
        self._check_tenant(tenant, f"open scope {name!r}")
        scope = self._tree.scopes.get(name)
        if scope is None:
            raise ScopeError(f"no scope named {name!r}; known: {sorted(self._tree.scopes)} (fork it first)")
        return scope

    @property
    def tenant(self) -> str:
        return self._tree.tenant

    @property
    def counter(self) -> TokenCounter:
        return self._tree.counter

    @property
    def children(self) -> list["ContextScope"]:
        return [s for s in self._tree.scopes.values() if s.parent is self]

    # -- writing -----------------------------------------------------------------------
    def add(
        self,
        content: Any,
        *,
        key: str | None = None,
        kind: BlockKind | str = BlockKind.TURN,
        role: str | Role = Role.USER,
        source_ids: tuple[str, ...] = (),
        relevance: float | None = None,
        shared: bool = True,
        timestamp: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ContextBlock:
        """Write a new block to this scope (a new version if `key` is already visible).
        `shared=False` keeps it out of children forked later."""
        block = ContextBlock.create(content, tenant=self.tenant, scope=self.name, key=key, kind=kind, role=role,
                                    source_ids=source_ids, relevance=relevance, shared=shared, timestamp=timestamp,
                                    metadata=metadata)
        return self.write(block)

    async def aadd(self, content: Any, **kwargs: Any) -> ContextBlock:
        """Async twin of `add` (the embedding runs in a thread)."""
        return await asyncio.to_thread(self.add, content, **kwargs)

    def write(self, block: ContextBlock) -> ContextBlock:
        """Store a ready-made block here: re-stamped with this scope, its token count and
        the next version of its key. Writing the content a key already has is a no-op."""
        if block.tenant != self.tenant:
            raise TenantError(f"block {block.key!r} belongs to tenant {block.tenant!r}, not {self.tenant!r}; "
                              "write blocks only into their own tenant's scopes")
        with self._tree.lock:
            head = self.get(block.key, include_retired=True)
            if head is not None and head.content_hash == block.content_hash and head.retired == block.retired:
                return head
            version = head.version + 1 if head is not None else block.version
            tokens = block.tokens or self.counter.count(block.content)
            block = block.evolve(scope=self.name, version=version, tokens=tokens)
            self._tree.embed([block])
            self._own.setdefault(block.key, []).append(block)
            self.version += 1
            self._changed_at[block.key] = self.version
            return block

    def update(self, key: str, content: Any, **changes: Any) -> ContextBlock:
        """A new version of the visible block `key` with new content (e.g. a summary)."""
        head = self._require(key)
        return self.write(head.revise(content, **changes))

    def retire(self, key: str) -> ContextBlock:
        """Hide block `key` from this scope (and, once merged, from the parent). Nothing
        is deleted: every version stays in `history(key)`."""
        return self.write(self._require(key).retire())

    # -- reading -----------------------------------------------------------------------
    def get(self, key: str, *, include_retired: bool = False) -> ContextBlock | None:
        """The current version of `key` as this scope sees it (None if unknown or retired)."""
        versions = self._own.get(key)
        head = versions[-1] if versions else self._base.get(key)
        if head is None or (head.retired and not include_retired):
            return None
        return head

    def history(self, key: str) -> list[ContextBlock]:
        """Every version of `key` this scope knows, oldest first (inherited one included)."""
        inherited = [self._base[key]] if key in self._base else []
        return inherited + list(self._own.get(key, []))

    def blocks(self) -> list[ContextBlock]:
        """The visible blocks: inherited (as of the fork) then own, in write order, retired left out."""
        with self._tree.lock:
            keys = list(self._base) + [k for k in self._own if k not in self._base]
            return [b for k in keys if (b := self.get(k)) is not None]

    @property
    def own_blocks(self) -> list[ContextBlock]:
        """The current blocks written in this scope (not inherited), retired left out."""
        return [v[-1] for v in self._own.values() if not v[-1].retired]

    @property
    def tokens(self) -> int:
        """Tokens of every visible block: what copying this scope's context would cost."""
        return sum(b.tokens for b in self.blocks())

    def _shared(self) -> dict[str, ContextBlock]:
        return {b.key: b for b in self.blocks() if b.shared}

    def _require(self, key: str) -> ContextBlock:
        head = self.get(key)
        if head is None:
            raise InputError(f"scope {self.name!r} has no visible block {key!r}; see scope.blocks() for the keys")
        return head

    def _check_tenant(self, tenant: str | None, action: str) -> None:
        if tenant is not None and tenant != self.tenant:
            raise TenantError(f"cannot {action}: the tree belongs to tenant {self.tenant!r}, not {tenant!r}; "
                              "a scope only ever reads its own tenant's blocks (use that tenant's root)")

    # -- assembling --------------------------------------------------------------------
    def assemble(self, query: str, *, budget: int, user_id: str | None = None) -> AssembledContext:
        """The most valuable visible blocks for `query` in at most `budget` tokens, packed
        by the core assembler (hybrid relevance, recency, importance, compressed forms)."""
        if not isinstance(query, str):
            raise InputError(f"query must be str, got {type(query).__name__}")
        positive_int("budget", budget)
        with self._tree.lock:
            self._view.sync(self.blocks())
            view = self._view
            return view.assembler.assemble(
                view.tenant, query, budget=budget, latest_seq=len(view.ids) - 1, user=user_id,
                summaries=list(view.summaries), summary_tenant=view.summary_tenant, store=view.store,
            )

    async def aassemble(self, query: str, *, budget: int, user_id: str | None = None) -> AssembledContext:
        """Async twin of `assemble` (runs in a thread)."""
        return await asyncio.to_thread(self.assemble, query, budget=budget, user_id=user_id)

    def feedback(self, assembled: AssembledContext, used: Iterable[str], *, user_id: str | None = None) -> None:
        """Which items of `assembled` an answer used: updates the tree's learned weights."""
        apply_feedback(self._tree.scorer, assembled, used, user_id)

    # -- diff and merge ------------------------------------------------------------------
    def diff(self) -> ScopeDiff:
        """What this scope changed since it forked: added, updated and retired blocks."""
        if self.parent is None:
            raise ScopeError(f"scope {self.name!r} is a root: it has no parent to diff against")
        added, updated, retired = [], [], []
        with self._tree.lock:
            for key, versions in self._own.items():
                head, base = versions[-1], self._base.get(key)
                if base is None:
                    if not head.retired:
                        added.append(head)
                elif head.retired:
                    retired.append(head)
                elif head.content_hash != base.content_hash:
                    updated.append(head)
        return ScopeDiff(scope=self.name, parent=self.parent.name, tenant=self.tenant, base_version=self.base_version,
                         added=tuple(added), updated=tuple(updated), retired=tuple(retired))

    def merge(self, diff: ScopeDiff, *, on_conflict: OnConflict | str = OnConflict.RAISE) -> MergeResult:
        """Apply a child's `diff` here. A key this scope changed after `diff.base_version`
        (e.g. merged from a sibling) is a conflict unless both sides hold the same content:
        `MergeConflict` (default), ``"ours"`` keeps this scope's block, ``"theirs"`` takes
        the diff's. A stale diff without conflicts is rebased and applied."""
        try:
            policy = OnConflict(on_conflict)
        except ValueError:
            raise ConfigError(f"on_conflict must be one of {[p.value for p in OnConflict]}, got {on_conflict!r}") from None
        if diff.tenant != self.tenant:
            raise TenantError(f"a diff of tenant {diff.tenant!r} cannot merge into tenant {self.tenant!r}'s scope")
        if diff.parent != self.name:
            raise ScopeError(f"this diff was made against scope {diff.parent!r}, not {self.name!r}; merge it there")
        with self._tree.lock:
            if diff.base_version > self.version:
                raise ScopeError(f"diff is based on version {diff.base_version} but {self.name!r} is at {self.version}")
            conflicts = set()
            for block in (*diff.added, *diff.updated, *diff.retired):
                mine = self.get(block.key, include_retired=True)
                same = mine is not None and mine.content_hash == block.content_hash and mine.retired == block.retired
                if self._changed_at.get(block.key, 0) > diff.base_version and not same:
                    conflicts.add(block.key)
            before = self.version
            if conflicts and policy == OnConflict.RAISE:
                raise MergeConflict(sorted(conflicts), scope=diff.scope, base_version=diff.base_version,
                                    parent_version=self.version)
            applied, kept = [], []
            for block in (*diff.added, *diff.updated, *diff.retired):
                if block.key in conflicts and policy == OnConflict.OURS:
                    kept.append(block.key)
                    continue
                self.write(block.evolve(metadata={**block.metadata, "merged_from": diff.scope}))
                applied.append(block.key)
            overwritten = sorted(conflicts) if policy == OnConflict.THEIRS else []
            return MergeResult(applied=tuple(applied), kept=tuple(sorted(kept)), overwritten=tuple(overwritten),
                               rebased=diff.base_version < before, version=self.version)

    async def amerge(self, diff: ScopeDiff, *, on_conflict: OnConflict | str = OnConflict.RAISE) -> MergeResult:
        """Async twin of `merge` (embedding merged content runs in a thread)."""
        return await asyncio.to_thread(self.merge, diff, on_conflict=on_conflict)

    def rebase(self) -> None:
        """Move this scope's base to its parent's current version (keeps own writes):
        call after merging a sibling to see its blocks."""
        if self.parent is None:
            return
        with self._tree.lock:
            self._base, self.base_version = self.parent._shared(), self.parent.version

    # -- persistence -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole tree as JSON-ready data (for `restore`); vectors are re-made on load."""
        scopes = []
        for s in self._tree.scopes.values():
            scopes.append({"name": s.name, "parent": s.parent.name if s.parent else None, "task": s.task,
                           "version": s.version, "base_version": s.base_version,
                           "base": [b.as_dict() for b in s._base.values()],
                           "own": {k: [b.as_dict() for b in v] for k, v in s._own.items()},
                           "changed_at": dict(s._changed_at)})
        return {"tenant": self.tenant, "scopes": scopes}

    @classmethod
    def restore(cls, data: Mapping[str, Any], **root_options: Any) -> "ContextScope":
        """Rebuild a tree from `snapshot()`; returns its root. `root_options` as `root`."""
        first, *rest = data["scopes"]
        root = cls.root(tenant=data["tenant"], name=first["name"], **root_options)
        for entry in [first, *rest]:
            scope = root if entry is first else ContextScope(
                entry["name"], tree=root._tree, parent=root._tree.scopes[entry["parent"]], task=entry["task"])
            scope._base = {b["key"]: ContextBlock.from_dict(b) for b in entry["base"]}
            scope._own = {k: [ContextBlock.from_dict(b) for b in v] for k, v in entry["own"].items()}
            scope.version, scope.base_version = entry["version"], entry["base_version"]
            scope._changed_at = {k: int(v) for k, v in entry["changed_at"].items()}
        return root

    def __repr__(self) -> str:
        parent = f", parent={self.parent.name!r}@v{self.base_version}" if self.parent else ""
        return (f"ContextScope({self.name!r}, tenant={self.tenant!r}, v{self.version}{parent}, "
                f"blocks={len(self.blocks())} (own {len(self.own_blocks)}), {self.tokens} tok)")
