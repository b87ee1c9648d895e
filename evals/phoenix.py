"""Arize Phoenix for the eval: a local server on loopback, one span per assembly, and
the results as a Phoenix dataset + experiment.

    with phoenix_session(Path("out/eval")) as phoenix:
        rows = run_eval(data, strategies, budgets, on_assembly=phoenix)
        phoenix.log_results(rows)
    # browse the UI while the block runs: phoenix.url

Without `url`, the session starts ``python -m tiered_context.evals.phoenix`` (Phoenix's
own ``phoenix.server.main serve``, see `serve`) with HTTP on 127.0.0.1:<free port> and
its OTLP gRPC receiver on 127.0.0.1:<another free port> (Phoenix binds gRPC to ``[::]``
with no setting to change it, so the launcher rewrites that address to loopback before
the server starts), ``PHOENIX_WORKING_DIR=<out_dir>/phoenix`` (SQLite lives there),
telemetry off and no external resources; it stops the server on exit. With `url` it
connects to a server you run, and stops nothing.

Spans (OpenInference conventions, see `tiered_context.tracing`) go over OTLP/HTTP to the
project `PROJECT`. When LlamaIndex or LangChain is importable, their OpenInference
instrumentors are installed on the same provider for the session, so the adapters' own
spans (``TieredMemory.aget``, the middleware's ``TieredContextAssembly``) land there too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tiered_context.tracing import otlp_tracer_provider, record_assembly

__all__ = ["PROJECT", "PhoenixObserver", "PhoenixStartError", "phoenix_session", "serve"]

PROJECT = "tiered-context-eval"
#: The Phoenix dataset the result rows are uploaded to; each run adds an experiment.
DATASET = "tiered-context-eval-results"
_ROW_KEY = ("dataset", "strategy", "budget", "category")
_ROW_METRICS = ("recall", "ci_low", "ci_high", "questions", "mean_tokens", "seconds", "compression_ratio")


class PhoenixStartError(RuntimeError):
    """The local Phoenix server did not become healthy; the message carries its log tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _local_server(working_dir: Path, timeout: float) -> Iterator[tuple[str, int]]:
    """Run Phoenix on loopback until the block exits; yields its base URL and pid."""
    working_dir.mkdir(parents=True, exist_ok=True)
    port, grpc_port = _free_port(), _free_port()
    env = {**os.environ,
           "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(grpc_port),
           "PHOENIX_WORKING_DIR": str(working_dir), "PHOENIX_TELEMETRY_ENABLED": "false",
           "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false", "RAGAS_DO_NOT_TRACK": "true"}
    log_path = working_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "tiered_context.evals.phoenix"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=working_dir)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = (f"exited with code {process.returncode}" if process.poll() is not None
                         else f"not healthy after {timeout:.0f} s")
                raise PhoenixStartError(
                    f"Phoenix server at {url} {state}; log {log_path}:\n{_tail(log_path)}\n"
                    "Check that arize-phoenix is installed (pip install \"tiered-context[evals]\"), "
                    "or pass url= to use a server you run, or raise start_timeout.")
            time.sleep(0.3)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """Set environment variable `name` to `value` for the block, unless it is set."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _instrument(provider: Any) -> list[Any]:
    """Install the OpenInference instrumentors that are importable; returns them."""
    installed = []
    for module, name in (("openinference.instrumentation.llama_index", "LlamaIndexInstrumentor"),
                         ("openinference.instrumentation.langchain", "LangChainInstrumentor")):
        try:
            instrumentor = getattr(__import__(module, fromlist=[name]), name)()
        except ImportError:
            continue
        if instrumentor.is_instrumented_by_opentelemetry:  # someone else's: leave it alone
            continue
        instrumentor.instrument(tracer_provider=provider)
        installed.append(instrumentor)
    return installed


class PhoenixObserver:
    """The `on_assembly` observer: one RETRIEVER span per assembly, plus `log_results`."""

    def __init__(self, url: str, provider: Any, project: str = PROJECT, server_pid: int | None = None) -> None:
        self.url = url
        #: the process id of the server this session started (None when connected to one)
        self.server_pid = server_pid
        self.project = project
        self.provider = provider
        self.tracer = provider.get_tracer("tiered_context.evals")
        #: spans this observer recorded (what `spans` waits for)
        self.recorded = 0

    def __call__(self, assembly: Any) -> None:
        """Record `assembly` (an `evals.retention.Assembly` or anything with its fields)."""
        report = getattr(assembly, "report", None)
        record_assembly(
            self.tracer, query=assembly.question, context=assembly.context, tokens=assembly.tokens,
            report=report, latency_ms=assembly.latency_ms, compression_ratio=assembly.compression_ratio,
            extra={"dataset": assembly.dataset, "strategy": assembly.strategy, "budget": assembly.budget,
                   "conversation_id": assembly.conversation_id, "question_id": assembly.question_id,
                   "category": assembly.category, "recall": float(assembly.recall),
                   "evidence": len(assembly.evidence), "covered": len(assembly.covered)},
            name=f"assemble:{assembly.strategy}")
        self.recorded += 1

    def flush(self) -> None:
        """Send the spans still buffered (Phoenix stores them shortly after: see `spans`)."""
        self.provider.force_flush()

    def spans(self, *, timeout: float = 30.0) -> Any:
        """The project's spans as a DataFrame, once Phoenix has stored every span this
        observer recorded (it inserts them in the background, so a query right after
        `flush` can come back short) or `timeout` seconds have passed."""
        self.flush()
        deadline = time.monotonic() + timeout
        while True:
            frame = self.client().spans.get_spans_dataframe(project_identifier=self.project,
                                                             limit=max(5000, 2 * self.recorded))
            if len(frame) >= self.recorded or time.monotonic() > deadline:
                return frame
            time.sleep(0.25)

    def client(self) -> Any:
        """A `phoenix.client.Client` for this server."""
        from phoenix.client import Client

        return Client(base_url=self.url)

    def log_results(self, rows: Sequence[Mapping[str, Any]], *, dataset_name: str = DATASET,
                    experiment_name: str | None = None) -> Any:
        """Upload eval rows: the Phoenix dataset `dataset_name` holds one example per
        (dataset, strategy, budget, category) (created on first use, examples added for
        new keys), and this run becomes an experiment on it whose output per example is
        the row's figures and whose ``recall`` evaluation is the row's recall, so runs
        can be compared side by side in Phoenix's UI. Returns the experiment."""
        client = self.client()
        by_key = {tuple(str(r[k]) for k in _ROW_KEY): r for r in rows}
        try:
            dataset = client.datasets.get_dataset(dataset=dataset_name)
            known = {tuple(str(e["input"].get(k)) for k in _ROW_KEY) for e in dataset.examples}
        except Exception:  # not there yet
            dataset, known = None, set()
        fresh = [r for key, r in by_key.items() if key not in known]
        if dataset is None or fresh:
            examples = {"inputs": [{k: r[k] for k in _ROW_KEY} for r in fresh],
                        "outputs": [{k: r[k] for k in _ROW_METRICS if k in r} for r in fresh]}
            if dataset is None:
                dataset = client.datasets.create_dataset(
                    name=dataset_name, dataset_description="tiered-context eval: evidence recall per "
                    "(dataset, strategy, budget, category)", **examples)
            else:
                dataset = client.datasets.add_examples_to_dataset(dataset=dataset, **examples)

        def task(input: Mapping[str, Any]) -> dict[str, Any] | None:
            row = by_key.get(tuple(str(input.get(k)) for k in _ROW_KEY))
            return None if row is None else {k: row[k] for k in _ROW_METRICS if k in row}

        def recall(output: Mapping[str, Any] | None) -> float | None:
            return None if not output else float(output["recall"])

        name = experiment_name or f"eval {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}"
        return client.experiments.run_experiment(dataset=dataset, task=task, evaluators=[recall],
                                                  experiment_name=name, print_summary=False)


@contextlib.contextmanager
def phoenix_session(out_dir: Path, url: str | None = None, *, project: str = PROJECT,
                    start_timeout: float = 90.0) -> Iterator[PhoenixObserver]:
    """Phoenix for one eval run: see the module docstring. Yields the observer; on exit
    flushes the spans, removes the instrumentors and stops the server it started."""
    with contextlib.ExitStack() as stack:
        pid = None
        if url is None:
            working_dir = Path(out_dir) / "phoenix"
            # `import phoenix.client` imports `phoenix`, which creates its working dir
            # (~/.phoenix by default) in this process too: point it at ours meanwhile
            stack.enter_context(_env_default("PHOENIX_WORKING_DIR", str(working_dir)))
            url, pid = stack.enter_context(_local_server(working_dir, start_timeout))
        url = url.rstrip("/")
        provider = otlp_tracer_provider(f"{url}/v1/traces", project=project)
        stack.callback(provider.shutdown)
        for instrumentor in _instrument(provider):
            stack.callback(instrumentor.uninstrument)
        observer = PhoenixObserver(url, provider, project, server_pid=pid)
        try:
            yield observer
        finally:
            provider.force_flush()


def serve() -> None:
    """Phoenix's ``serve`` with its gRPC receiver bound to 127.0.0.1 instead of ``[::]``
    (the host comes from ``PHOENIX_HOST``; the HTTP server honours it already)."""
    from grpc.aio import _server

    def _loopback(method: Any) -> Any:
        def bind(self: Any, address: str, *args: Any) -> Any:
            host = os.environ.get("PHOENIX_HOST", "127.0.0.1")
            return method(self, address.replace("[::]:", f"{host}:", 1), *args)
        return bind

    _server.Server.add_insecure_port = _loopback(_server.Server.add_insecure_port)  # type: ignore[method-assign]
    _server.Server.add_secure_port = _loopback(_server.Server.add_secure_port)  # type: ignore[method-assign]
    from phoenix.server.main import main

    sys.argv = [sys.argv[0], "serve"]
    main()


if __name__ == "__main__":
    serve()
