"""``tiered-context mcp``: a Model Context Protocol server for a scoped, budgeted memory.

Needs the `mcp` package (``pip install "tiered-context[mcp]"``). The CLI wires
`add_arguments` / `run` as its ``mcp`` subcommand; ``python -m tiered_context.mcp`` runs
the same thing. See `tiered_context.mcp.server` for the tools and resources.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["add_arguments", "run", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to `parser` (a subcommand's parser or a fresh one)."""
    parser.add_argument("--path", default=None, help="directory that keeps the scopes (scopes.json); default: memory only")
    parser.add_argument("--tenant", default="default", help="the tenant this server's scopes belong to")
    parser.add_argument("--http", type=int, default=None, metavar="PORT",
                        help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio")


def run(args: argparse.Namespace) -> int:
    """Serve until the client disconnects (stdio) or the process is stopped (HTTP)."""
    import anyio

    from tiered_context.mcp.server import ScopeService, build_server

    server = build_server(ScopeService(tenant=args.tenant, path=args.path))
    if args.http is not None:
        if not 0 < args.http < 65536:
            print(f"--http takes a port in 1..65535, got {args.http}", file=sys.stderr)
            return 2
        anyio.run(lambda: server.run_streamable_http_async(host="127.0.0.1", port=args.http))
    else:
        anyio.run(server.run_stdio_async)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiered_context.mcp", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
