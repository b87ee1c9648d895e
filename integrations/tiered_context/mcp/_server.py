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
version of one block), ``tiered://server`` (name, version, tenant). The server reports
the package version in its MCP server info.

With ``--path`` the tree is saved after every change (``scopes.json``, through
`tiered_context.core._durable.write_json_atomic`) and reloaded on start; a truncated or
damaged ``scopes.json`` is moved aside to ``scopes.json.damaged-N`` with a warning and the
server starts with an empty tree instead of refusing to start.

HTTP binds 127.0.0.1 only. ``--token`` (or ``TIERED_CONTEXT_MCP_TOKEN``) makes every
request carry ``Authorization: Bearer <token>`` (401 otherwise, compared in constant
time). Every tool runs on a worker thread and a ``remember`` counts and embeds its text
before taking the tree's lock, so one client's multi-megabyte write does not hold up
another client's ``recall``. (The HTTP side lives in `tiered_context.mcp._http`.)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from tiered_context.core import AssembledContext, Embedder, TokenCounter, move_aside, read_json, write_json_atomic
from tiered_context.scopes import ContextBlock, ContextScope
from tiered_context.errors import TenantError, TieredContextError, missing_extra
from tiered_context.mcp import package_version
from tiered_context.mcp._http import (  # noqa: F401 - the HTTP side, re-exported from here as before
    DEFAULT_MAX_REQUEST_BYTES,
    TOKEN_ENV,
    ASGIApp,
    BearerAuth,
    http_app,
    http_server,
    serve_http,
)

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError
except ImportError as exc:  # pragma: no cover
    raise missing_extra("mcp", "mcp") from exc

__all__ = ["BearerAuth", "ScopeService", "TOKEN_ENV", "build_server", "http_app", "http_server", "package_version",
           "serve_http"]

log = logging.getLogger("tiered_context")

SNAPSHOT = "scopes.json"


@contextmanager
def _expected(kind: type[Exception]) -> Iterator[None]:
    """Our own errors (which say what to change) reach the client as tool / resource
    errors with their message; anything else stays a crash the server logs."""
    try:
        yield
    except (TieredContextError, ValueError, KeyError) as exc:
        raise kind(str(exc)) from exc


class _PrimedEmbedder:
    """The tree's embedder, able to embed a text *before* the tree's lock is taken.

    `ContextScope.write` embeds under the tree lock, which every `recall` also takes; a
    multi-megabyte ``remember`` would hold it for the whole embedding. `primed(text)`
    embeds outside that lock and keeps the vector until the write has used it.
    """

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self._ready: dict[str, list[Any]] = {}  # text -> [vector, users]
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.inner.dim

    @contextmanager
    def primed(self, text: str) -> Iterator[None]:
        vector = np.asarray(self.inner.embed([text]))[0]
        with self._lock:
            entry = self._ready.setdefault(text, [vector, 0])
            entry[1] += 1
        try:
            yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._ready.pop(text, None)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            ready = [self._ready.get(t) for t in texts]
        if all(r is not None for r in ready) and ready:
            return np.stack([r[0] for r in ready])
        missing = [i for i, r in enumerate(ready) if r is None]
        fresh = np.asarray(self.inner.embed([texts[i] for i in missing]))
        if len(missing) == len(texts):
            return fresh
        out = np.zeros((len(texts), fresh.shape[1]), dtype=fresh.dtype)
        for row, i in enumerate(missing):
            out[i] = fresh[row]
        for i, r in enumerate(ready):
            if r is not None:
                out[i] = r[0]
        return out

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return await anyio.to_thread.run_sync(self.embed, texts)


_PREVIEW = 200  # characters of content a write's receipt echoes back


def _block_info(block: ContextBlock, *, full: bool = True) -> dict[str, Any]:
    """A block as JSON. `full=False` (the receipt of a write) echoes a preview and the
    length instead of the content: a client that sent megabytes does not get them back
    (they would also exceed common clients' 1 MiB limit on one server-sent event)."""
    info = {"key": block.key, "version": block.version, "kind": block.kind.value, "scope": block.scope,
            "tokens": block.tokens, "relevance": block.relevance, "retired": block.retired, "shared": block.shared,
            "content_hash": block.content_hash, "role": block.role, "metadata": dict(block.metadata)}
    if full or len(block.content) <= _PREVIEW:
        info["content"] = block.content
    else:
        info["preview"], info["chars"] = block.content[:_PREVIEW], len(block.content)
    return info


def _scope_info(scope: ContextScope) -> dict[str, Any]:
    return {"name": scope.name, "parent": scope.parent.name if scope.parent else None, "task": scope.task,
            "version": scope.version, "base_version": scope.base_version, "blocks": len(scope.blocks()),
            "own_blocks": len(scope.own_blocks), "tokens": scope.tokens}


class ScopeService:
    """The state behind the server: one tenant's scope tree, its last recall per scope
    (for `feedback`), and the snapshot on disk. Usable without MCP (tests, other servers).

    Thread-safe, and built so one client's big write does not hold up another's read:
    a ``remember`` counts and embeds its text before it takes any lock, holds the lock
    only to add the block and take a snapshot, and writes the snapshot after releasing
    it (``scopes.json`` through `write_json_atomic`; a newer snapshot is never replaced
    by an older one). A damaged ``scopes.json`` is moved aside (``scopes.json.damaged-N``)
    with a warning and the service starts empty, never refusing to open.
    """

    def __init__(self, *, tenant: str = "default", path: str | Path | None = None, embedder: Embedder | None = None,
                 counter: TokenCounter | None = None) -> None:
        from tiered_context.core import WordLlamaEmbedder

        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()  # the tree's structure and `_last`; held briefly
        self._save_lock = threading.Lock()  # orders snapshot writes
        self._taken = self._saved = 0  # snapshot sequence numbers: taken, on disk
        self._last: dict[str, AssembledContext] = {}
        self._embedder = _PrimedEmbedder(embedder or WordLlamaEmbedder())
        self._counter = counter or TokenCounter()
        self.root = self._load(tenant) or ContextScope.root(tenant=tenant, embedder=self._embedder,
                                                             counter=self._counter)

    def _load(self, tenant: str) -> ContextScope | None:
        if self.path is None:
            return None
        file = self.path / SNAPSHOT
        data = read_json(file, what="MCP scope snapshot")  # damaged JSON: moved aside, None
        if data is None:
            return None
        owner = data.get("tenant")
        if isinstance(owner, str) and owner != tenant:
            raise TenantError(f"{file} holds tenant {owner!r}'s scopes, not {tenant!r}; "
                              "pass --tenant with the owner or another --path")
        try:
            return ContextScope.restore(data, embedder=self._embedder, counter=self._counter)
        except (TieredContextError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            aside = move_aside(file)  # valid JSON, not a scope tree: keep it for inspection
            log.warning("the MCP scope snapshot at %s is damaged (%s: %s); moved it to %s and started with an "
                        "empty scope tree", file, type(exc).__name__, exc, aside.name)
            return None

    def scope(self, name: str) -> ContextScope:
        return self.root.open(name, tenant=self.root.tenant)

    # -- persistence ----------------------------------------------------------------------
    def _snapshot(self) -> tuple[int, dict[str, Any]] | None:
        """The tree as data, numbered (call with `_lock` held: the tree does not change meanwhile)."""
        if self.path is None:
            return None
        self._taken += 1
        return self._taken, self.root.snapshot()

    def _persist(self, snapshot: tuple[int, dict[str, Any]] | None) -> None:
        """Write a snapshot outside `_lock` (serialising megabytes must not block readers);
        one that a newer write already covers is skipped."""
        if snapshot is None:
            return
        number, data = snapshot
        with self._save_lock:
            if number <= self._saved:
                return
            write_json_atomic(self.path / SNAPSHOT, data)
            self._saved = number

    def save(self) -> None:
        """Write the tree to ``<path>/scopes.json`` atomically (temp file, fsync, rename)."""
        with self._lock:
            snapshot = self._snapshot()
        self._persist(snapshot)

    # -- operations (each tool is one of these) -------------------------------------------
    def remember(self, text: str, *, scope: str = "root", role: str = "user", key: str | None = None,
                 kind: str = "turn", metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        target = self.scope(scope)
        block = ContextBlock.create(text, tenant=self.root.tenant, scope=target.name, key=key, kind=kind, role=role,
                                    metadata=metadata)
        block = block.evolve(tokens=self._counter.count(block.content))  # the heavy work, before any lock
        with self._embedder.primed(block.content):
            with self._lock:
                stored = target.write(block)
                snapshot = self._snapshot()
        self._persist(snapshot)
        return _block_info(stored, full=False)

    def recall(self, query: str, *, budget: int = 1000, scope: str = "root") -> dict[str, Any]:
        out = self.scope(scope).assemble(query, budget=budget)  # takes the tree's lock itself
        with self._lock:
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
            info, snapshot = _scope_info(child), self._snapshot()
        self._persist(snapshot)
        return info

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
            snapshot = self._snapshot()
        self._persist(snapshot)
        return {"into": child.parent.name, "applied": list(result.applied), "kept": list(result.kept),
                "overwritten": list(result.overwritten), "rebased": result.rebased, "version": result.version}

    def retire(self, key: str, *, scope: str = "root") -> dict[str, Any]:
        with self._lock:
            block = self.scope(scope).retire(key)
            snapshot = self._snapshot()
        self._persist(snapshot)
        return _block_info(block, full=False)

    def scopes(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_scope_info(s) for s in self.root._tree.scopes.values()]

    def blocks(self, scope: str) -> list[dict[str, Any]]:
        return [_block_info(b) for b in self.scope(scope).blocks()]

    def history(self, scope: str, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_block_info(b) for b in self.scope(scope).history(key)]


async def _off_loop(kind: type[Exception], fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking service call on a worker thread: the event loop keeps serving other
    clients while one ``remember`` counts, embeds and writes megabytes."""
    with _expected(kind):
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


def build_server(service: ScopeService, *, version: str | None = None) -> MCPServer:
    """An `MCPServer` exposing `service` (tools and resources, see the module docstring).
    It reports `version` (default: the installed package's) in its server info."""
    version = version or package_version()
    server = MCPServer(
        name="tiered-context",
        version=version,
        instructions="Budgeted, scoped memory: remember blocks, recall context for a query under a token "
                     "budget, fork a scope per sub-agent and merge its diff back.",
    )

    @server.tool()
    async def remember(text: str, scope: str = "root", role: str = "user", key: str | None = None, kind: str = "turn",
                       metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store `text` as a block in `scope` (kind: turn | summary | fact); returns the block
        (its content, or for a long text a preview and its length)."""
        return await _off_loop(ToolError, service.remember, text, scope=scope, role=role, key=key, kind=kind,
                               metadata=metadata)

    @server.tool()
    async def recall(query: str, budget: int = 1000, scope: str = "root") -> dict[str, Any]:
        """The context for `query` from `scope`, at most `budget` tokens, with the items in it."""
        return await _off_loop(ToolError, service.recall, query, budget=budget, scope=scope)

    @server.tool()
    async def feedback(used: list[str], scope: str = "root") -> dict[str, Any]:
        """Which item ids of the last recall in `scope` the answer used (learned ranking)."""
        return await _off_loop(ToolError, service.feedback, used, scope=scope)

    @server.tool()
    async def fork_scope(name: str, parent: str = "root", task: str = "") -> dict[str, Any]:
        """A child scope of `parent` for a sub-agent: it sees the parent's shared blocks, writes its own."""
        return await _off_loop(ToolError, service.fork_scope, name, parent=parent, task=task)

    @server.tool()
    async def diff_scope(scope: str) -> dict[str, Any]:
        """What `scope` added, updated and retired since it forked (blocks, not a history copy)."""
        return await _off_loop(ToolError, service.diff_scope, scope)

    @server.tool()
    async def merge_scope(scope: str, on_conflict: str = "raise") -> dict[str, Any]:
        """Merge `scope`'s diff into its parent; on_conflict: raise | ours | theirs."""
        return await _off_loop(ToolError, service.merge_scope, scope, on_conflict=on_conflict)

    @server.tool()
    async def retire(key: str, scope: str = "root") -> dict[str, Any]:
        """Hide block `key` in `scope` (a new, retired version; nothing is deleted)."""
        return await _off_loop(ToolError, service.retire, key, scope=scope)

    @server.resource("tiered://server", mime_type="application/json")
    def server_info() -> str:
        """This server: name, package version and the tenant its scopes belong to."""
        return json.dumps({"name": "tiered-context", "version": version, "tenant": service.root.tenant})

    @server.resource("tiered://scopes", mime_type="application/json")
    async def scopes() -> str:
        """Every scope: parent, task, version, block and token counts."""
        return json.dumps(await _off_loop(ResourceError, service.scopes))

    @server.resource("tiered://scopes/{scope}/blocks", mime_type="application/json")
    async def blocks(scope: str) -> str:
        """The visible blocks of `scope` with version, relevance score and token count."""
        return json.dumps(await _off_loop(ResourceError, service.blocks, scope))

    @server.resource("tiered://scopes/{scope}/blocks/{key}", mime_type="application/json")
    async def block_history(scope: str, key: str) -> str:
        """Every version of block `key` as `scope` knows it, oldest first."""
        return json.dumps(await _off_loop(ResourceError, service.history, scope, key))

    return server
