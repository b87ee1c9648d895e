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
    import socket
    import subprocess
    import time

    from mcp.client.streamable_http import streamable_http_client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    params = _params(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "tiered_context.mcp", "--http", str(port)],
                            env={**os.environ, **(params.env or {})}, cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.2)

        async def body() -> None:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    _data(await s.call_tool("remember", {"text": "The Lisbon launch moved to 3 May."}))
                    out = _data(await s.call_tool("recall", {"query": "When is the launch?", "budget": 100}))
                    assert "3 May" in out["text"] and out["tokens"] <= 100

        anyio.run(body)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
