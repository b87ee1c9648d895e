"""The MCP server, driven by the `mcp` package's own client over stdio (a subprocess)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402


def _params(path: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HOME")}
    return StdioServerParameters(command=sys.executable, args=["-m", "tiered_context.mcp", "--path", str(path)],
                                 env=env, cwd=str(path))


def _data(result) -> dict | list:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        data = result.structured_content
        return data.get("result", data) if set(data) == {"result"} else data
    return json.loads(result.content[0].text)


async def _session_run(path: Path, body) -> None:
    async with stdio_client(_params(path)) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            await body(session)


def test_all_tools_and_resources_over_stdio(tmp_path: Path) -> None:
    async def body(s: ClientSession) -> None:
        tools = {t.name for t in (await s.list_tools()).tools}
        assert {"remember", "recall", "feedback", "fork_scope", "diff_scope", "merge_scope", "retire"} <= tools

        launch = _data(await s.call_tool("remember", {"text": "The Lisbon launch moved to 3 May.", "key": "launch"}))
        assert launch["version"] == 1 and launch["tokens"] > 0
        _data(await s.call_tool("remember", {"text": "Ana leads design; Bruno runs marketing."}))
        child = _data(await s.call_tool("fork_scope", {"name": "dates", "task": "launch dates"}))
        assert child["parent"] == "root" and child["blocks"] == 2
        _data(await s.call_tool("remember", {"text": "The venue is booked for 3 May.", "scope": "dates"}))
        _data(await s.call_tool("retire", {"key": "launch", "scope": "dates"}))

        recalled = _data(await s.call_tool("recall", {"query": "when is the venue booked?", "budget": 200, "scope": "dates"}))
        assert 0 < recalled["tokens"] <= 200 and "venue" in recalled["text"] and "Lisbon" not in recalled["text"]
        used = [recalled["items"][0]["id"]]
        assert _data(await s.call_tool("feedback", {"used": used, "scope": "dates"}))["used"] == 1

        diff = _data(await s.call_tool("diff_scope", {"scope": "dates"}))
        assert diff["base_version"] == 2 and len(diff["added"]) == 1 and [b["key"] for b in diff["retired"]] == ["launch"]
        merged = _data(await s.call_tool("merge_scope", {"scope": "dates"}))
        assert merged["into"] == "root" and set(merged["applied"]) == {"launch", diff["added"][0]["key"]}

        scopes = json.loads((await s.read_resource("tiered://scopes")).contents[0].text)
        assert {x["name"] for x in scopes} == {"root", "dates"}
        blocks = json.loads((await s.read_resource("tiered://scopes/root/blocks")).contents[0].text)
        assert {"version", "relevance", "tokens"} <= set(blocks[0]) and len(blocks) == 2  # launch retired
        history = json.loads((await s.read_resource("tiered://scopes/root/blocks/launch")).contents[0].text)
        assert [h["version"] for h in history] == [1, 2] and history[-1]["retired"]

        bad = await s.call_tool("recall", {"query": "x", "scope": "nope"})
        assert bad.is_error and "fork it first" in bad.content[0].text

    anyio.run(_session_run, tmp_path, body)
    assert (tmp_path / "scopes.json").exists()

    async def reopened(s: ClientSession) -> None:  # the tree survives a restart
        scopes = json.loads((await s.read_resource("tiered://scopes")).contents[0].text)
        assert {x["name"] for x in scopes} == {"root", "dates"}

    anyio.run(_session_run, tmp_path, reopened)


def test_conflicting_merges_report_the_keys(tmp_path: Path) -> None:
    async def body(s: ClientSession) -> None:
        _data(await s.call_tool("remember", {"text": "Budget is 10k.", "key": "budget"}))
        for name in ("a", "b"):
            _data(await s.call_tool("fork_scope", {"name": name}))
        _data(await s.call_tool("remember", {"text": "Budget is 12k.", "key": "budget", "scope": "a"}))
        _data(await s.call_tool("remember", {"text": "Budget is 15k.", "key": "budget", "scope": "b"}))
        _data(await s.call_tool("merge_scope", {"scope": "a"}))
        conflict = await s.call_tool("merge_scope", {"scope": "b"})
        assert conflict.is_error and "budget" in conflict.content[0].text
        theirs = _data(await s.call_tool("merge_scope", {"scope": "b", "on_conflict": "theirs"}))
        assert theirs["overwritten"] == ["budget"]

    anyio.run(_session_run, tmp_path, body)


def test_streamable_http_on_loopback(tmp_path: Path) -> None:
    """The CLI's HTTP mode, with the token taken from TIERED_CONTEXT_MCP_TOKEN."""
    import socket
    import subprocess
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = _params(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tiered_context.mcp", "--http", str(port)],
                            env={**os.environ, **(params.env or {}), "TIERED_CONTEXT_MCP_TOKEN": "env-token"},
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:  # waits for the subprocess to start listening (not synchronisation between requests)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.2)

        async def body() -> None:
            url = f"http://127.0.0.1:{port}/mcp"
            async with httpx2.AsyncClient(timeout=30) as raw:
                assert (await raw.post(url, json=_INIT, headers=_ACCEPT)).status_code == 401
                wrong = await raw.post(url, json=_INIT, headers={**_ACCEPT, "Authorization": "Bearer env-tokem"})
                assert wrong.status_code == 401
            async with _client(url, "env-token") as (s, init):
                assert init.server_info.version == importlib.metadata.version("tiered-context")
                _data(await s.call_tool("remember", {"text": "The Lisbon launch moved to 3 May."}))
                out = _data(await s.call_tool("recall", {"query": "When is the launch?", "budget": 100}))
                assert "3 May" in out["text"] and out["tokens"] <= 100

        anyio.run(body)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- issue 13 item 9: token, version, damaged snapshot, no stall ---------------------------
import importlib.metadata  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from functools import partial  # noqa: E402

import httpx2  # noqa: E402
import numpy as np  # noqa: E402

from tiered_context.testing import HashEmbedder  # noqa: E402

BIG = 1_000_000  # characters: a text at least this long counts as "the big remember"


class GatedEmbedder:
    """HashEmbedder, except that embedding a big text announces itself (`started`) and
    then waits for `release`: the test decides when the big remember may finish."""

    dim = 64

    def __init__(self) -> None:
        self.inner = HashEmbedder(self.dim)
        self.started, self.release = threading.Event(), threading.Event()
        self.big_calls = 0
        self.released_in_time: bool | None = None

    def embed(self, texts):
        if any(len(t) >= BIG for t in texts):
            self.big_calls += 1
            self.started.set()
            self.released_in_time = self.release.wait(timeout=60)
            return np.ones((len(texts), self.dim), dtype=np.float32)
        return self.inner.embed(texts)

    async def aembed(self, texts):
        return self.embed(texts)


def _service(path: Path | None = None, embedder=None):
    from tiered_context.mcp._server import ScopeService

    return ScopeService(path=path, embedder=embedder or HashEmbedder(64))


@asynccontextmanager
async def _http(service, *, token: str | None = None):
    """The service's MCP server over HTTP in this process, on a socket bound to 127.0.0.1
    and listening before the server starts (clients connect at once, no waiting loop)."""
    from tiered_context.mcp._server import build_server, http_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    web = http_server(build_server(service), token=token, log_level="warning")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(web.serve, sockets=[sock]))
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
            finally:
                web.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def _client(url: str, token: str | None = None):
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as s:
                yield s, await s.initialize()


_INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_bearer_token_is_required_when_set() -> None:
    async def main() -> None:
        async with _http(_service(), token="s3cret-token") as url:
            async with httpx2.AsyncClient(timeout=30) as raw:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-tokenX"},
                                {"Authorization": "Basic s3cret-token"}, {"Authorization": "s3cret-token"},
                                {"Authorization": "Bearer"}):
                    r = await raw.post(url, json=_INIT, headers={**_ACCEPT, **headers})
                    assert r.status_code == 401, (headers, r.status_code)
                    assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["error"] == "invalid_token"
            async with _client(url, token="s3cret-token") as (s, _):
                _data(await s.call_tool("remember", {"text": "The Lisbon launch moved to 3 May."}))
                assert "3 May" in _data(await s.call_tool("recall", {"query": "launch", "budget": 100}))["text"]

    anyio.run(main)


def test_bearer_auth_compares_the_whole_token() -> None:
    from tiered_context.mcp._server import BearerAuth

    auth = BearerAuth(lambda *a: None, "abc")
    assert auth.allows(b"Bearer abc") and auth.allows(b"bearer abc")
    assert not any(auth.allows(h) for h in (None, b"", b"Bearer", b"Bearer ab", b"Bearer abcd", b"Token abc", b"abc"))
    with pytest.raises(ValueError):
        BearerAuth(lambda *a: None, "  ")


def test_server_reports_the_package_version(tmp_path: Path) -> None:
    expected = importlib.metadata.version("tiered-context")

    async def main() -> None:
        async with _http(_service()) as url:  # no token: open (loopback only)
            async with _client(url) as (s, init):
                assert init.server_info.name == "tiered-context" and init.server_info.version == expected
                info = json.loads((await s.read_resource("tiered://server")).contents[0].text)
                assert info == {"name": "tiered-context", "version": expected, "tenant": "default"}

    anyio.run(main)
    out = subprocess.run([sys.executable, "-m", "tiered_context.mcp", "--version"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **(_params(tmp_path).env or {})})
    assert out.returncode == 0 and out.stdout.strip() == f"tiered-context {expected}"


def test_version_falls_back_without_distribution_metadata(monkeypatch) -> None:
    import tiered_context
    from tiered_context.mcp import package_version

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert package_version() == tiered_context.__version__


def test_empty_token_refuses_to_start_open(tmp_path: Path) -> None:
    env = {**os.environ, **(_params(tmp_path).env or {}), "TIERED_CONTEXT_MCP_TOKEN": " "}
    out = subprocess.run([sys.executable, "-m", "tiered_context.mcp", "--http", "1"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2 and "TIERED_CONTEXT_MCP_TOKEN is set but empty" in out.stderr


@pytest.mark.parametrize("damage", ["truncated", "not-json", "wrong-shape", "empty"])
def test_damaged_scopes_json_is_set_aside(tmp_path: Path, caplog, damage: str) -> None:
    good = _service(tmp_path)
    good.remember("The Lisbon launch moved to 3 May.", key="launch")
    good.fork_scope("dates")
    raw = (tmp_path / "scopes.json").read_bytes()
    assert json.loads(raw)["tenant"] == "default"  # written as JSON by write_json_atomic
    damaged = {"truncated": raw[: len(raw) // 2], "not-json": b"\x00\xff garbage", "empty": b"",
               "wrong-shape": json.dumps({"tenant": "default", "scopes": [{"name": "root"}]}).encode()}[damage]
    (tmp_path / "scopes.json").write_bytes(damaged)
    with caplog.at_level("WARNING", logger="tiered_context"):
        service = _service(tmp_path)
    assert [s["name"] for s in service.scopes()] == ["root"]  # started empty
    assert (tmp_path / "scopes.json.damaged-0").read_bytes() == damaged and not (tmp_path / "scopes.json").exists()
    assert any("scopes.json" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    service.remember("A new start.")
    assert json.loads((tmp_path / "scopes.json").read_text())["scopes"][0]["name"] == "root"
    assert [s["name"] for s in _service(tmp_path).scopes()] == ["root"]  # and it reopens


def test_another_tenants_snapshot_is_still_refused(tmp_path: Path) -> None:
    from tiered_context.errors import TenantError
    from tiered_context.mcp._server import ScopeService

    _service(tmp_path).remember("x")
    with pytest.raises(TenantError, match="--tenant"):
        ScopeService(tenant="other", path=tmp_path, embedder=HashEmbedder(64))
    assert not list(tmp_path.glob("*.damaged-*"))  # not damage: the file stays


def test_server_starts_over_a_truncated_scopes_json(tmp_path: Path) -> None:
    (tmp_path / "scopes.json").write_text('{"tenant": "default", "scopes": [{"name": "ro')
    errlog = tmp_path / "stderr.log"

    async def main() -> None:
        with errlog.open("w") as err:
            async with stdio_client(_params(tmp_path), errlog=err) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    scopes = json.loads((await s.read_resource("tiered://scopes")).contents[0].text)
                    assert [x["name"] for x in scopes] == ["root"]
                    _data(await s.call_tool("remember", {"text": "After the damage."}))

    anyio.run(main)
    assert (tmp_path / "scopes.json.damaged-0").exists()
    assert json.loads((tmp_path / "scopes.json").read_text())["tenant"] == "default"
    assert "damaged" in errlog.read_text()


def test_a_big_remember_does_not_stall_another_clients_recall(tmp_path: Path) -> None:
    """Client A remembers ~3 MB; while its embedding is held (the gate), client B's recall
    must complete. The gate opens only after B's answer: a remember that blocked the event
    loop or held the tree's lock would leave B waiting and the gate would time out."""
    gate = GatedEmbedder()
    service = _service(tmp_path, embedder=gate)
    big = "Quarterly figures, line by line. " * 100_000
    assert len(big) >= BIG and len(json.dumps({"text": big})) > 3 * 1024 * 1024

    async def main() -> None:
        async with _http(service, token="t") as url:
            async with _client(url, "t") as (a, _), _client(url, "t") as (b, _):
                _data(await b.call_tool("remember", {"text": "The Lisbon launch moved to 3 May."}))
                done: dict[str, object] = {}

                async def remember_big() -> None:
                    done["big"] = _data(await a.call_tool("remember", {"text": big, "key": "figures"}))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(remember_big)
                    assert await anyio.to_thread.run_sync(partial(gate.started.wait, 60))  # A is mid-remember
                    with anyio.fail_after(60):
                        out = _data(await b.call_tool("recall", {"query": "When is the launch?", "budget": 100}))
                    assert "3 May" in out["text"] and "big" not in done and not gate.release.is_set()
                    gate.release.set()  # now let A finish
                assert gate.released_in_time is True  # the gate was opened by us, not by its timeout
                assert done["big"]["key"] == "figures" and done["big"]["tokens"] > 100_000
                blocks = json.loads((await b.read_resource("tiered://scopes")).contents[0].text)
                assert blocks[0]["blocks"] == 2

    anyio.run(main)
    assert gate.big_calls == 1  # embedded once, before the lock; the write reused the vector
    saved = json.loads((tmp_path / "scopes.json").read_text())
    assert any(b["content"] == big for b in saved["scopes"][0]["own"]["figures"])
