"""The HTTP side of the MCP server: `BearerAuth` (the bearer-token ASGI middleware) and
the streamable-HTTP app and `uvicorn` server around an `MCPServer`, on 127.0.0.1 only.

``--token`` (or ``TIERED_CONTEXT_MCP_TOKEN``) makes every request carry
``Authorization: Bearer <token>`` (401 otherwise, compared in constant time). The tools
and resources are `_server`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["ASGIApp", "BearerAuth", "DEFAULT_MAX_REQUEST_BYTES", "TOKEN_ENV", "http_app", "http_server", "serve_http"]

#: The environment variable that holds the HTTP bearer token (``--token`` overrides it).
TOKEN_ENV = "TIERED_CONTEXT_MCP_TOKEN"
#: Largest HTTP request body accepted by default: room for a multi-megabyte ``remember``.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


# -- HTTP ----------------------------------------------------------------------------------
ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
                   Awaitable[None]]


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>``.

    A missing, malformed or wrong token gets ``401`` with ``WWW-Authenticate: Bearer``
    before the request reaches MCP. Tokens are compared in constant time (over their
    SHA-256 digests, so not even the length leaks). Lifespan events pass through.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("the bearer token must be a non-empty string")
        self.app = app
        self._digest = hashlib.sha256(token.strip().encode("utf-8")).digest()

    def allows(self, authorization: bytes | None) -> bool:
        scheme, _, credentials = (authorization or b"").strip().partition(b" ")
        offered = hashlib.sha256(credentials.strip()).digest()
        matches = hmac.compare_digest(offered, self._digest)  # always compared: no early exit on the scheme
        return matches and scheme.lower() == b"bearer"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            authorization = next((v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"), None)
            if not self.allows(authorization):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps({"error": "invalid_token",
                                   "error_description": "send 'Authorization: Bearer <token>' with the token this "
                                                        f"server was started with (--token or {TOKEN_ENV})"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"www-authenticate", b'Bearer realm="tiered-context"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer, *, token: str | None = None,
             max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> ASGIApp:
    """The streamable-HTTP ASGI app at ``/mcp``, behind `BearerAuth` when `token` is set."""
    app = server.streamable_http_app(host="127.0.0.1", max_request_body_size=max_request_bytes)
    return BearerAuth(app, token) if token is not None else app


def http_server(server: MCPServer, *, port: int = 0, token: str | None = None,
                max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, log_level: str = "info") -> Any:
    """A `uvicorn.Server` for `server` on 127.0.0.1:`port` (`http_app`: ``/mcp``, bearer
    token when given). ``await web.serve()`` runs it; ``web.should_exit = True`` stops it."""
    import uvicorn

    config = uvicorn.Config(http_app(server, token=token, max_request_bytes=max_request_bytes), host="127.0.0.1",
                            port=port, log_level=log_level, lifespan="on")
    return uvicorn.Server(config)


async def serve_http(server: MCPServer, *, port: int = 0, token: str | None = None,
                     max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, sockets: list[Any] | None = None,
                     log_level: str = "info") -> None:
    """Serve `server` over streamable HTTP on 127.0.0.1 (never another interface) until
    stopped. `sockets`: already bound listening sockets to use instead of `port`."""
    for sock in sockets or ():
        host = sock.getsockname()[0]
        if host != "127.0.0.1":
            raise ValueError(f"the MCP server listens on 127.0.0.1 only; got a socket bound to {host}")
    web = http_server(server, port=port, token=token, max_request_bytes=max_request_bytes, log_level=log_level)
    await web.serve(sockets=sockets)
