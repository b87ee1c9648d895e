"""A Qdrant server stand-in for tests: qdrant-client's local mode (``QdrantLocal``) behind
Qdrant's REST API on 127.0.0.1, serving the requests `QdrantColdStore(url=...)` sends.

No Qdrant server can be installed on the test machines. This serves the *real* REST client
(httpx, the JSON request and response models, ``update_mode``, ``ordering``, filters)
from any number of processes, as one Qdrant node would: every request is applied under one
lock, so the node is linearizable (a single-node Qdrant applies a shard's updates in order,
and ``wait=true`` returns once applied). What it is not: a cluster (replicas, shard
transfers, read consistency), Qdrant's own filter and HNSW code, or its payload indexes.

    server = RestServer(); server.start(); url = server.url   # http://127.0.0.1:<port>
    server.hold.append(predicate)   # a request matching it waits until server.release()
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

from qdrant_client import models as qm
from qdrant_client.local.qdrant_local import QdrantLocal

__all__ = ["RestServer"]

_C = r"/collections/(?P<name>[^/]+)"


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    return value


class RestServer:
    def __init__(self) -> None:
        self.local = QdrantLocal(location=":memory:", force_disable_check_same_thread=True)
        self.lock = threading.Lock()
        #: predicates over (method, path, body); a matching request waits for `released`
        self.hold: list[Callable[[str, str, dict], bool]] = []
        self.held = threading.Event()  # set when a request is being held
        self.released = threading.Event()
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                status, payload = server.handle(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "RestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()
        self.local.close()

    def release(self) -> None:
        self.hold.clear()
        self.released.set()

    # -- the REST API --------------------------------------------------------------------------
    def handle(self, method: str, raw: str, body: Any) -> tuple[int, Any]:
        url = urlparse(raw)
        path = url.path
        if any(h(method, path, body or {}) for h in list(self.hold)):
            self.held.set()
            self.released.wait()
        try:
            with self.lock:
                self.requests.append((method, path))
                result = self._route(method, path, body or {}, parse_qs(url.query))
            return 200, {"result": _dump(result), "status": "ok", "time": 0.0}
        except KeyError as exc:
            return 404, {"status": {"error": f"Not found: {exc}"}, "time": 0.0}
        except (ValueError, AssertionError) as exc:
            return 400, {"status": {"error": f"Bad request: {exc}"}, "time": 0.0}

    def _route(self, method: str, path: str, body: dict, query: dict) -> Any:
        local = self.local
        for pattern, verb, fn in (
            (rf"{_C}/exists", "GET", lambda n: qm.CollectionExistence(exists=local.collection_exists(n))),
            (rf"{_C}", "GET", lambda n: local.get_collection(n)),
            (rf"{_C}", "PUT", lambda n: local.create_collection(n, **_create(body))),
            (rf"{_C}", "DELETE", lambda n: local.delete_collection(n)),
            (rf"{_C}/index", "PUT", lambda n: _update()),  # local mode has no payload indexes
            (rf"{_C}/points", "PUT", lambda n: local.upsert(n, qm.PointsList(**body).points,
                                                            update_filter=_flt(body.get("update_filter")),
                                                            update_mode=body.get("update_mode"))),
            (rf"{_C}/points", "POST", lambda n: local.retrieve(n, body["ids"], with_payload=body.get("with_payload", True),
                                                             with_vectors=body.get("with_vector", False))),
            (rf"{_C}/points/vectors", "PUT", lambda n: local.update_vectors(n, qm.UpdateVectors(**body).points)),
            (rf"{_C}/points/delete", "POST", lambda n: local.delete(n, _selector(body))),
            (rf"{_C}/points/payload", "POST", lambda n: local.set_payload(n, body["payload"], _selector(body))),
            (rf"{_C}/points/scroll", "POST", lambda n: _scroll(local, n, qm.ScrollRequest(**body))),
            (rf"{_C}/points/count", "POST", lambda n: local.count(n, count_filter=qm.CountRequest(**body).filter,
                                                                   exact=True)),
            (rf"{_C}/points/query/batch", "POST", lambda n: local.query_batch_points(
                n, qm.QueryRequestBatch(**body).searches)),
        ):
            match = re.fullmatch(pattern, path)
            if match and method == verb:
                return fn(match.group("name"))
        raise KeyError(f"{method} {path}")


def _update() -> Any:
    return qm.UpdateResult(operation_id=0, status=qm.UpdateStatus.COMPLETED)


def _flt(value: Any) -> Any:
    return None if value is None else qm.Filter(**value)


def _selector(body: dict) -> Any:
    if "filter" in body and body["filter"] is not None:
        return qm.FilterSelector(filter=qm.Filter(**body["filter"]))
    return qm.PointIdsList(points=body["points"])


def _create(body: dict) -> dict[str, Any]:
    req = qm.CreateCollection(**body)
    return {"vectors_config": req.vectors, "sparse_vectors_config": req.sparse_vectors, "metadata": req.metadata}


def _scroll(local: QdrantLocal, name: str, req: Any) -> Any:
    points, offset = local.scroll(name, scroll_filter=req.filter, limit=req.limit or 10, offset=req.offset,
                                  with_payload=req.with_payload if req.with_payload is not None else True,
                                  with_vectors=req.with_vector if req.with_vector is not None else False,
                                  order_by=req.order_by)
    return qm.ScrollResult(points=points, next_page_offset=offset)
