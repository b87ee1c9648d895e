"""A Model Context Protocol server over a `ContextScope` tree.

Any MCP client (Claude Desktop, an IDE, an agent framework's MCP adapter) gets a
budgeted memory with multi-agent scopes::

    tiered-context mcp --path ./memdir                 # stdio (the client starts it)
    tiered-context mcp --path ./memdir --http 8765     # streamable HTTP on 127.0.0.1:8765/mcp
    python -m tiered_context.mcp --path ./memdir       # the same, without the CLI

Tools: ``remember`` (write a block), ``recall`` (assembled context for a query under a
budget), ``feedback`` (which recalled items an answer used), ``fork_scope``,
``diff_scope``, ``merge_scope`` and ``retire``. Resources: ``tiered://scopes`` (every
scope), ``tiered://scopes/{scope}/blocks`` (a scope's visible blocks with version,
relevance score and token count) and ``tiered://scopes/{scope}/blocks/{key}`` (every
version of one block). With ``--path`` the tree is saved after every change
(``scopes.json``, written atomically) and reloaded on start.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tiered_context.core.assembler import AssembledContext
from tiered_context.core.blocks import ContextBlock
from tiered_context.core.embed import Embedder
from tiered_context.core.scope import ContextScope
from tiered_context.errors import missing_extra

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError
except ImportError as exc:  # pragma: no cover
    raise missing_extra("mcp", "mcp") from exc

__all__ = ["ScopeService", "build_server"]

SNAPSHOT = "scopes.json"


@contextmanager
def _expected(kind: type[Exception]) -> Iterator[None]:
    """Our own errors (which say what to change) reach the client as tool / resource
    errors with their message; anything else stays a crash the server logs."""
    from tiered_context.errors import TieredContextError

    try:
        yield
    except (TieredContextError, ValueError, KeyError) as exc:
        raise kind(str(exc)) from exc


def _block_info(block: ContextBlock) -> dict[str, Any]:
    return {"key": block.key, "version": block.version, "kind": block.kind.value, "scope": block.scope,
            "tokens": block.tokens, "relevance": block.relevance, "retired": block.retired, "shared": block.shared,
            "content_hash": block.content_hash, "role": block.role, "content": block.content,
            "metadata": dict(block.metadata)}


def _scope_info(scope: ContextScope) -> dict[str, Any]:
    return {"name": scope.name, "parent": scope.parent.name if scope.parent else None, "task": scope.task,
            "version": scope.version, "base_version": scope.base_version, "blocks": len(scope.blocks()),
            "own_blocks": len(scope.own_blocks), "tokens": scope.tokens}


class ScopeService:
    """The state behind the server: one tenant's scope tree, its last recall per scope
    (for `feedback`), and the snapshot on disk. Usable without MCP (tests, other servers)."""

    def __init__(self, *, tenant: str = "default", path: str | Path | None = None, embedder: Embedder | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self._last: dict[str, AssembledContext] = {}
        file = self.path / SNAPSHOT if self.path is not None else None
        if file is not None and file.exists():
            data = json.loads(file.read_text())
            if data["tenant"] != tenant:
                from tiered_context.core.blocks import TenantError

                raise TenantError(f"{file} holds tenant {data['tenant']!r}'s scopes, not {tenant!r}; "
                                  "pass --tenant with the owner or another --path")
            self.root = ContextScope.restore(data, embedder=embedder)
        else:
            self.root = ContextScope.root(tenant=tenant, embedder=embedder)

    def scope(self, name: str) -> ContextScope:
        return self.root.open(name, tenant=self.root.tenant)

    def save(self) -> None:
        """Write the tree to ``<path>/scopes.json`` (temp file + rename: never half-written)."""
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (SNAPSHOT + ".tmp")
        tmp.write_text(json.dumps(self.root.snapshot()))
        os.replace(tmp, self.path / SNAPSHOT)

    # -- operations (each tool is one of these) -------------------------------------------
    def remember(self, text: str, *, scope: str = "root", role: str = "user", key: str | None = None,
                 kind: str = "turn", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        with self._lock:
            block = self.scope(scope).add(text, role=role, key=key, kind=kind, metadata=metadata)
            self.save()
            return _block_info(block)

    def recall(self, query: str, *, budget: int = 1000, scope: str = "root") -> dict[str, Any]:
        with self._lock:
            out = self.scope(scope).assemble(query, budget=budget)
            self._last[scope] = out
        items = [{"id": i.id, "block_key": i.metadata.get("block_key"), "version": i.metadata.get("block_version"),
                  "tier": i.tier.value, "value": out.report.scores.get(i.origin_ids[0], {}).get("value")}
                 for i in out.items]
        return {"text": out.text, "tokens": out.tokens, "budget": budget, "items": items}

    def feedback(self, used: list[str], *, scope: str = "root") -> dict[str, Any]:
        with self._lock:
            out = self._last.get(scope)
            if out is None:
                raise ValueError(f"no recall in scope {scope!r} yet; call recall first, then feedback with its item ids")
            self.scope(scope).feedback(out, used)
            return {"scope": scope, "used": len(used), "shown": len(out.items)}

    def fork_scope(self, name: str, *, parent: str = "root", task: str = "") -> dict[str, Any]:
        with self._lock:
            child = self.scope(parent).fork(name, task=task)
            self.save()
            return _scope_info(child)

    def diff_scope(self, scope: str) -> dict[str, Any]:
        with self._lock:
            return self.scope(scope).diff().as_dict()

    def merge_scope(self, scope: str, *, on_conflict: str = "raise") -> dict[str, Any]:
        with self._lock:
            child = self.scope(scope)
            if child.parent is None:
                raise ValueError(f"scope {scope!r} is the root; merge a child scope into its parent")
            result = child.parent.merge(child.diff(), on_conflict=on_conflict)
            child.rebase()
            self.save()
            return {"into": child.parent.name, "applied": list(result.applied), "kept": list(result.kept),
                    "overwritten": list(result.overwritten), "rebased": result.rebased, "version": result.version}

    def retire(self, key: str, *, scope: str = "root") -> dict[str, Any]:
        with self._lock:
            block = self.scope(scope).retire(key)
            self.save()
            return _block_info(block)

    def scopes(self) -> list[dict[str, Any]]:
        return [_scope_info(s) for s in self.root._tree.scopes.values()]

    def blocks(self, scope: str) -> list[dict[str, Any]]:
        return [_block_info(b) for b in self.scope(scope).blocks()]

    def history(self, scope: str, key: str) -> list[dict[str, Any]]:
        return [_block_info(b) for b in self.scope(scope).history(key)]


def build_server(service: ScopeService) -> MCPServer:
    """An `MCPServer` exposing `service` (tools and resources, see the module docstring)."""
    server = MCPServer(
        name="tiered-context",
        instructions="Budgeted, scoped memory: remember blocks, recall context for a query under a token "
                     "budget, fork a scope per sub-agent and merge its diff back.",
    )

    @server.tool()
    def remember(text: str, scope: str = "root", role: str = "user", key: str | None = None, kind: str = "turn",
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store `text` as a block in `scope` (kind: turn | summary | fact); returns the block."""
        with _expected(ToolError):
            return service.remember(text, scope=scope, role=role, key=key, kind=kind, metadata=metadata)

    @server.tool()
    def recall(query: str, budget: int = 1000, scope: str = "root") -> dict[str, Any]:
        """The context for `query` from `scope`, at most `budget` tokens, with the items in it."""
        with _expected(ToolError):
            return service.recall(query, budget=budget, scope=scope)

    @server.tool()
    def feedback(used: list[str], scope: str = "root") -> dict[str, Any]:
        """Which item ids of the last recall in `scope` the answer used (learned ranking)."""
        with _expected(ToolError):
            return service.feedback(used, scope=scope)

    @server.tool()
    def fork_scope(name: str, parent: str = "root", task: str = "") -> dict[str, Any]:
        """A child scope of `parent` for a sub-agent: it sees the parent's shared blocks, writes its own."""
        with _expected(ToolError):
            return service.fork_scope(name, parent=parent, task=task)

    @server.tool()
    def diff_scope(scope: str) -> dict[str, Any]:
        """What `scope` added, updated and retired since it forked (blocks, not a history copy)."""
        with _expected(ToolError):
            return service.diff_scope(scope)

    @server.tool()
    def merge_scope(scope: str, on_conflict: str = "raise") -> dict[str, Any]:
        """Merge `scope`'s diff into its parent; on_conflict: raise | ours | theirs."""
        with _expected(ToolError):
            return service.merge_scope(scope, on_conflict=on_conflict)

    @server.tool()
    def retire(key: str, scope: str = "root") -> dict[str, Any]:
        """Hide block `key` in `scope` (a new, retired version; nothing is deleted)."""
        with _expected(ToolError):
            return service.retire(key, scope=scope)

    @server.resource("tiered://scopes", mime_type="application/json")
    def scopes() -> str:
        """Every scope: parent, task, version, block and token counts."""
        return json.dumps(service.scopes())

    @server.resource("tiered://scopes/{scope}/blocks", mime_type="application/json")
    def blocks(scope: str) -> str:
        """The visible blocks of `scope` with version, relevance score and token count."""
        with _expected(ResourceError):
            return json.dumps(service.blocks(scope))

    @server.resource("tiered://scopes/{scope}/blocks/{key}", mime_type="application/json")
    def block_history(scope: str, key: str) -> str:
        """Every version of block `key` as `scope` knows it, oldest first."""
        with _expected(ResourceError):
            return json.dumps(service.history(scope, key))

    return server
