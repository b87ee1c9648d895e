"""``tiered-context mcp``: a Model Context Protocol server for a scoped, budgeted memory.

Needs the `mcp` package (``pip install "tiered-context[mcp]"``). The CLI wires
`add_arguments` / `run` as its ``mcp`` subcommand; ``python -m tiered_context.mcp`` runs
the same thing. See `tiered_context.mcp._server` for the tools and resources.

Over HTTP (``--http PORT``, always on 127.0.0.1) the server can require a bearer token:
``--token`` or, better (a command line is visible to other local users), the environment
variable ``TIERED_CONTEXT_MCP_TOKEN``. Clients then send ``Authorization: Bearer <token>``;
anything else gets 401. Over stdio the client owns the pipe and no token is used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["add_arguments", "run", "main", "package_version"]

_TOKEN_ENV = "TIERED_CONTEXT_MCP_TOKEN"  # = tiered_context.mcp._server.TOKEN_ENV (importing it needs the extra)


def package_version() -> str:
    """The installed distribution's version (``tiered-context``); from a source tree that
    was never installed, the package's own ``__version__``; else ``"0+unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tiered-context")
    except PackageNotFoundError:
        try:
            from tiered_context import __version__
        except ImportError:  # pragma: no cover - a half-installed package
            return "0+unknown"
        return str(__version__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's options to `parser` (a subcommand's parser or a fresh one)."""
    parser.add_argument("--path", default=None, help="directory that keeps the scopes (scopes.json); default: memory only")
    parser.add_argument("--tenant", default="default", help="the tenant this server's scopes belong to")
    parser.add_argument("--http", type=int, default=None, metavar="PORT",
                        help="serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio")
    parser.add_argument("--token", default=None,
                        help=f"HTTP only: require 'Authorization: Bearer TOKEN' (default: ${_TOKEN_ENV} if set; "
                             "prefer the variable, a command line is visible to other local users)")
    parser.add_argument("--max-request-mb", type=float, default=16.0, metavar="MB",
                        help="HTTP only: the largest request body accepted, in MiB (default 16)")
    parser.add_argument("--version", action="version", version=f"tiered-context {package_version()}")


def _token(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(token, error): --token wins over the environment; an empty token is an error, not
    "no token" (a deployment that meant to set one must not run open)."""
    given = getattr(args, "token", None)
    source = "--token"
    if given is None:
        given, source = os.environ.get(_TOKEN_ENV), _TOKEN_ENV
    if given is None:
        return None, None
    if not given.strip():
        return None, f"{source} is set but empty; give the token or unset {source} to serve without one"
    return given.strip(), None


def run(args: argparse.Namespace) -> int:
    """Serve until the client disconnects (stdio) or the process is stopped (HTTP)."""
    import anyio

    from tiered_context.mcp._server import ScopeService, build_server, serve_http

    token, problem = _token(args) if args.http is not None else (None, None)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.http is not None and not 0 < args.http < 65536:
        print(f"--http takes a port in 1..65535, got {args.http}", file=sys.stderr)
        return 2
    max_mb = getattr(args, "max_request_mb", 16.0)
    if not max_mb > 0:
        print(f"--max-request-mb must be positive, got {max_mb}", file=sys.stderr)
        return 2
    server = build_server(ScopeService(tenant=args.tenant, path=args.path))
    if args.http is not None:
        anyio.run(lambda: serve_http(server, port=args.http, token=token, max_request_bytes=int(max_mb * 1024 * 1024)))
    else:
        if getattr(args, "token", None) is not None:
            print("note: --token applies to --http only; over stdio the client owns the pipe", file=sys.stderr)
        anyio.run(server.run_stdio_async)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiered_context.mcp", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
