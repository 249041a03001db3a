"""A fault-injecting HTTP proxy on 127.0.0.1 between a client and the test S3 server.

Each request is forwarded upstream over a fresh connection; its response is relayed unless a
rule matches. Every matching rule counts every request; a rule fires for its ``nth`` match
(1-based) and ``times - 1`` more, or for a share of requests (``rate``, seeded); the first rule
that fires wins:

    proxy = FaultProxy(upstream_port).start()
    proxy.add(Fault("cut", method="GET", path="/bucket/big.bin", after_bytes=1 << 20))
    proxy.add(Fault("status", method="PUT", status=503, code="SlowDown", rate=0.1))

Kinds: ``status`` (answer ``status`` with an S3 error body instead of forwarding), ``cut``
(forward, then close the connection after ``after_bytes`` of the response body), ``stall``
(forward the headers and ``after_bytes`` of the body, then sleep ``seconds`` before the rest: a
store whose body hangs mid-way), ``truncate`` (announce the full length, send
``after_bytes``, then close), ``hang`` (answer nothing for ``seconds``, then close: a store that
accepts connections and never answers), ``delay`` (sleep ``seconds``, then forward: the request
reaches the store late), ``late`` (forward, then sleep ``seconds`` before answering anything:
the store acted at once, the answer comes late), ``drop`` (close the connection without
forwarding or answering), ``hold`` (keep the request until :meth:`Fault.release` — then forward
it, or drop it with ``forward=False`` — or until ``seconds`` when they are not 0;
:meth:`Fault.wait_held` waits for one to arrive). ``counts`` tallies requests by method and
query shape.

A rule picks requests by ``method``, by ``path`` (a substring of path and query) and by ``key``
(a regular expression searched in the URL-decoded path, without the query); ``header`` names a
request header that must be present (e.g. ``x-amz-copy-source`` for a CopyObject).
"""

from __future__ import annotations

import http.client
import random
import re
import socketserver
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote


class QuietServer(socketserver.ThreadingTCPServer):
    """A threaded test server that says nothing when a client hangs up mid-request (a cut read, a
    cancelled job, a killed daemon: what these tests cause on purpose). socketserver would print
    a traceback from the handler's thread; CPython 3.11 computes its caret marks with ast.parse,
    which is not safe beside pytest's own ast.parse in another thread ("AST constructor recursion
    depth mismatch" aborted a whole xdist run as an INTERNALERROR). Other errors still print."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@dataclass
class Fault:
    kind: str  # one of the kinds in the module docstring
    method: str | None = None
    path: str | None = None  # substring of the path (query included)
    key: str | None = None  # regular expression searched in the decoded path without the query
    header: str | None = None  # a request header that must be present
    nth: int = 1
    times: int = 1
    rate: float | None = None
    status: int = 500
    code: str = "InternalError"
    after_bytes: int = 0
    seconds: float = 0.0
    seen: int = 0
    fired: int = 0
    held: int = 0
    _released: threading.Event = field(default_factory=threading.Event, repr=False)
    _forward: bool = True
    _arrived: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def matches(self, method: str, path: str, headers: dict[str, str] | None = None) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is not None and self.path not in path:
            return False
        if self.key is not None and not re.search(self.key, unquote(path.partition("?")[0])):
            return False
        if self.header is not None:
            names = {name.lower() for name in (headers or {})}
            return self.header.lower() in names
        return True

    def release(self, *, forward: bool = True) -> None:
        """Let held requests (and any later ones this rule fires for) go on, or drop them."""
        self._forward = forward
        self._released.set()

    def wait_held(self, count: int = 1, timeout: float = 60.0) -> None:
        """Block until ``count`` requests are being (or have been) held by this rule."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self.held >= count, timeout):
                raise AssertionError(f"no request held by {self} within {timeout}s")

    def _hold(self) -> bool:
        """Called on the proxy thread of a held request: True to forward it, False to drop."""
        with self._arrived:
            self.held += 1
            self._arrived.notify_all()
        self._released.wait(self.seconds or None)
        return self._forward


def query_shape(method: str, path: str) -> str:
    query = path.partition("?")[2]
    names = sorted(part.partition("=")[0] for part in query.split("&") if part)
    return f"{method} {'&'.join(names)}".strip()


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _pick(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.counts[query_shape(method, path)] += 1
            self.requests.append((method, path, headers))
            chosen = None
            for fault in self.faults:  # every matching rule counts the request
                if not fault.matches(method, path, headers):
                    continue
                fault.seen += 1
                if fault.rate is not None:
                    hit = self._random.random() < fault.rate
                else:
                    hit = fault.nth <= fault.seen < fault.nth + fault.times
                if hit and chosen is None:
                    chosen = fault
            if chosen is not None:
                chosen.fired += 1
                self.fired[chosen.kind] += 1
            return chosen

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                fault = proxy._pick(self.command, self.path, headers)
                if fault is not None and fault.kind == "hang":
                    time.sleep(fault.seconds)
                    self.close_connection = True
                    return
                kind = fault.kind if fault is not None else None
                if kind == "delay":
                    time.sleep(fault.seconds)
                if (kind == "hold" and not fault._hold()) or kind == "drop":
                    self.close_connection = True
                    return
                if kind in ("delay", "hold"):
                    fault = None  # forwarded as it is, only later
                if fault is not None and fault.kind == "status":
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                        f"<Message>injected</Message></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if fault is not None and fault.kind == "late":
                    time.sleep(fault.seconds)
                    fault = None
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                announced = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", announced or str(len(data)))
                if fault is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if fault is None:
                    self.wfile.write(data)
                    return
                self.close_connection = True
                if fault.kind == "stall":
                    self.wfile.write(data[: fault.after_bytes])
                    self.wfile.flush()
                    time.sleep(fault.seconds)
                    self.wfile.write(data[fault.after_bytes :])
                    return
                self.wfile.write(data[: fault.after_bytes])
                self.wfile.flush()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        server = QuietServer(("127.0.0.1", 0), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
