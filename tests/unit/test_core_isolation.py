"""The core imports with every framework and heavy extra blocked; the tests never reach the network."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

BLOCKED = ("langchain", "langchain_core", "llama_index", "qdrant_client", "llmlingua", "torch", "transformers")

_PRELUDE = textwrap.dedent(
    f"""
    import sys
    BLOCKED = {BLOCKED!r}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked by the core isolation test: {{name}}")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    """
)


def run_isolated(body: str) -> subprocess.CompletedProcess:
    code = _PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks() -> None:
    result = run_isolated(
        """
        try:
            import langchain_core
        except ImportError as exc:
            assert "blocked" in str(exc), exc
            print("BLOCKED")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "BLOCKED" in result.stdout


def test_core_imports_and_works_without_frameworks() -> None:
    result = run_isolated(
        """
        import tiered_context
        from tiered_context.testing import HashEmbedder

        ctx = tiered_context.TieredContext(session_id="iso", embedder=HashEmbedder(), compaction="inline")
        ctx.put("You are terse.", role="system", pinned=True)
        ctx.put("We moved the Lisbon launch to 3 May.")
        for i in range(20):
            ctx.put(f"filler turn {i} about the weather")
        out = ctx.assemble("When is the Lisbon launch?", budget=100)
        assert "3 May" in out.text and out.tokens <= 100, out.text
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("CORE-OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "CORE-OK" in result.stdout


def test_default_embedder_works_without_frameworks() -> None:
    result = run_isolated(
        """
        from tiered_context import TieredContext, WordLlamaEmbedder

        ctx = TieredContext(session_id="iso", compaction="inline")
        assert isinstance(ctx.embedder, WordLlamaEmbedder)
        ctx.put("We moved the Lisbon launch to 3 May.")
        ctx.put("The cat sat on the mat.")
        out = ctx.assemble("When is the Lisbon launch?", budget=50)
        assert "3 May" in out.text, out.text
        print("DEFAULT-OK")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "DEFAULT-OK" in result.stdout


# -- the conftest network guard ----------------------------------------------------------
@pytest.mark.parametrize("address", [("203.0.113.7", 80), ("example.com", 443), ("10.0.0.1", 8080), ("2001:db8::1", 443)])
def test_network_guard_blocks_non_loopback(address: tuple) -> None:
    with pytest.raises(RuntimeError, match="test tried to reach the network"):
        socket.create_connection(address, timeout=1)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeError, match="test tried to reach the network"):
            sock.connect(address)
        with pytest.raises(RuntimeError, match="test tried to reach the network"):
            sock.connect_ex(address)


def test_network_guard_allows_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            conn, _ = server.accept()
            conn.close()
        with socket.create_connection(("localhost", port), timeout=2):
            conn, _ = server.accept()
            conn.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX on this platform")
def test_network_guard_allows_unix_sockets(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = server.accept()
            conn.close()


def test_offline_env_is_set() -> None:
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"
