"""The embedded HTTP trigger (CONTRACT §5): a plain WSGI app served by waitress in a thread.

The app knows nothing of stores or schedulers: it calls an :class:`ApiBackend` (the daemon's is
``service.DaemonBackend``). Tokens and signatures are compared in constant time and never logged;
request bodies are refused by their announced length before a byte of them is read.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from watcher.errors import JobError, StorageError
from watcher.intake import is_manifest_key

MAX_BODY = 16 * 1024 * 1024
MAX_EVENT_BODY = 1024 * 1024
SIGNATURE_HEADER = "HTTP_X_BZ_EVENT_NOTIFICATION_SIGNATURE"
_STATUS = {
    200: "200 OK",
    202: "202 Accepted",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Payload Too Large",
    415: "415 Unsupported Media Type",
    503: "503 Service Unavailable",
}


class ApiBackend(Protocol):
    requests_prefix: str
    watch_bucket: str | None

    def submit(self, raw: bytes) -> Any: ...  # .job_id, .target; raises JobError

    def job_status(self, job_id: str) -> dict | None: ...

    def ready(self) -> bool: ...

    def wake(self, keys: list[str]) -> None: ...


class _Seen:
    """A bounded set of recent B2 event ids, so a redelivered event is a no-op."""

    def __init__(self, size: int = 4096) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._ids:
                return False
            self._ids[event_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


def bearer_ok(header: str | None, secret: str) -> bool:
    """Exactly ``Bearer <secret>``; compared in constant time over the whole header."""
    expected = f"Bearer {secret}".encode()
    return hmac.compare_digest((header or "").encode("utf-8", "surrogateescape"), expected)


def signature_ok(header: str | None, body: bytes, secret: str) -> bool:
    """Any ``v1=<hex HMAC-SHA256(body)>`` value of the (comma-separated) header matches."""
    if not header:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    matched = False
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1":
            matched |= hmac.compare_digest(value.strip().lower().encode(), expected)
    return matched


def request_path(environ: dict) -> str:
    """PATH_INFO as the client wrote it: WSGI hands it over as bytes decoded as Latin-1."""
    raw = environ.get("PATH_INFO", "") or "/"
    return raw.encode("latin-1", "replace").decode("utf-8", "replace")


MAX_EVENTS = 50
_EVENT_FIELD_TYPES = {
    "eventType": str,
    "objectName": str,
    "bucketName": str,
    "eventId": str,
    "eventTimestamp": int,
}


def parse_events(body: bytes) -> list[dict] | str:
    """The events of a B2 notification body, or why it is not one (pure).

    The envelope is ``{"events": [...]}`` with 1-50 objects; the fields B2 documents must have
    their documented types where present. Other fields are left alone: B2 may add some.
    """
    try:
        document = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        return f'expected {{"events": [...]}} with 1 to {MAX_EVENTS} events'
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            return f"events[{i}]: must be an object"
        for field, kind in _EVENT_FIELD_TYPES.items():
            value = event.get(field, kind())
            if not isinstance(value, kind) or isinstance(value, bool):
                return f"events[{i}].{field}: must be a {kind.__name__}"
    return events


def manifest_keys(events: list[dict], prefix: str, bucket: str | None = None) -> list[str]:
    """Keys of created manifests directly in the requests prefix of ``bucket`` (pure).

    Events of other buckets (a rule shared by several buckets) and of other keys are ignored.
    """
    keys = []
    for event in events:
        kind = str(event.get("eventType", ""))
        key = event.get("objectName")
        if not kind.startswith("b2:ObjectCreated:") or not isinstance(key, str):
            continue
        if bucket is not None and event.get("bucketName", bucket) != bucket:
            continue
        if is_manifest_key(key, prefix):
            keys.append(key)
    return keys


def make_app(
    *,
    shared_secret: str | None,
    b2_event_secret: str | None,
    backend: ApiBackend,
    metrics: Any = None,
    max_body: int = MAX_BODY,
    log: Any = None,
) -> Callable:
    log = log or structlog.get_logger("watcher.api")
    seen = _Seen()

    def respond(start: Callable, status: int, document: Any, headers: Iterable = ()) -> list:
        body = json.dumps(document, ensure_ascii=False).encode()
        start(
            _STATUS[status],
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
        )
        return [body]

    def error(
        start: Callable, status: int, code: str, message: str, headers: Iterable = ()
    ) -> list:
        return respond(start, status, {"error": {"code": code, "message": message}}, headers)

    def read_body(environ: dict, limit: int) -> bytes | int:
        """The body, or the status code refusing it (decided on Content-Length, before reading)."""
        length = environ.get("CONTENT_LENGTH") or ""
        if not length.strip():
            if environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
                return b""
            data = environ["wsgi.input"].read(limit + 1)
            return 413 if len(data) > limit else data
        try:
            size = int(length)
        except ValueError:
            return 400
        if size > limit:
            return 413
        return environ["wsgi.input"].read(size)

    def authorized(environ: dict) -> bool:
        return shared_secret is not None and bearer_ok(
            environ.get("HTTP_AUTHORIZATION"), shared_secret
        )

    def post_job(environ: dict, start: Callable) -> list:
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            return error(
                start, 415, "unsupported_media_type", "send Content-Type: application/json"
            )
        body = read_body(environ, max_body)
        if body == 413:
            return error(start, 413, "too_large", f"the manifest is larger than {max_body} bytes")
        if isinstance(body, int):
            return error(start, body, "bad_request", "unreadable Content-Length")
        try:
            submitted = backend.submit(body)
        except StorageError as exc:
            return error(start, 503, exc.code, exc.message)
        except JobError as exc:
            return error(start, 400, exc.code, exc.message)
        location = f"/jobs/{submitted.job_id}"
        return respond(
            start,
            202,
            {"job_id": submitted.job_id, "target": submitted.target, "status_url": location},
            [("Location", location)],
        )

    def b2_events(environ: dict, start: Callable) -> list:
        body = read_body(environ, MAX_EVENT_BODY)
        if isinstance(body, int):
            return error(start, 413 if body == 413 else 400, "bad_request", "body refused")
        if not signature_ok(environ.get(SIGNATURE_HEADER), body, b2_event_secret or ""):
            return error(start, 401, "unauthorized", "bad or missing event signature")
        events = parse_events(body)
        if isinstance(events, str):
            return error(start, 400, "bad_request", events)
        fresh = [e for e in events if not e.get("eventId") or seen.first_time(e["eventId"])]
        keys = manifest_keys(fresh, backend.requests_prefix, backend.watch_bucket)
        if keys:
            backend.wake(keys)
        return respond(start, 200, {"accepted": len(keys), "ignored": len(events) - len(keys)})

    def route(environ: dict, start: Callable) -> list:
        method = environ["REQUEST_METHOD"]
        path = request_path(environ)
        if path == "/healthz":
            return (
                respond(start, 200, {"status": "ok"})
                if method == "GET"
                else error(start, 405, "method_not_allowed", "use GET", [("Allow", "GET")])
            )
        if path == "/readyz":
            if method != "GET":
                return error(start, 405, "method_not_allowed", "use GET", [("Allow", "GET")])
            ready = backend.ready()
            return respond(start, 200 if ready else 503, {"ready": ready})
        if path == "/b2-events" and b2_event_secret:
            if method != "POST":
                return error(start, 405, "method_not_allowed", "use POST", [("Allow", "POST")])
            return b2_events(environ, start)
        known = path in ("/", "/jobs", "/metrics") or path.startswith("/jobs/")
        if not known:
            return error(start, 404, "not_found", "no such route")
        if not authorized(environ):
            return error(
                start,
                401,
                "unauthorized",
                "a valid bearer token is required",
                [("WWW-Authenticate", 'Bearer realm="b2-zip-watcher"')],
            )
        if path in ("/", "/jobs"):
            if method != "POST":
                return error(start, 405, "method_not_allowed", "use POST", [("Allow", "POST")])
            return post_job(environ, start)
        if path == "/metrics":
            if method != "GET" or metrics is None:
                return error(start, 405, "method_not_allowed", "use GET", [("Allow", "GET")])
            body, content_type = metrics.render()
            start("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return [body]
        if method != "GET":
            return error(start, 405, "method_not_allowed", "use GET", [("Allow", "GET")])
        job_id = path[len("/jobs/") :]
        try:
            status = backend.job_status(job_id)
        except StorageError as exc:
            return error(start, 503, exc.code, exc.message)
        if status is None:
            return error(start, 404, "not_found", "no such job")
        return respond(start, 200, status)

    def app(environ: dict, start_response: Callable) -> list:
        started = time.monotonic()
        seen_status: list[str] = []

        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            seen_status.append(status)
            return start_response(status, headers, exc_info)

        try:
            return route(environ, start)
        finally:
            log.info(
                "http_request",
                method=environ.get("REQUEST_METHOD"),
                path=request_path(environ)[:200],
                status=int(seen_status[0].split()[0]) if seen_status else None,
                ms=round((time.monotonic() - started) * 1000, 1),
            )

    return app


class HttpServer:
    """waitress in a background thread; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(self, app: Callable, host: str, port: int, *, threads: int = 8) -> None:
        from waitress.server import create_server

        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            channel_timeout=30,
            max_request_body_size=MAX_BODY + 1024,
            clear_untrusted_proxy_headers=True,
            ident="b2-zip-watcher",
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.effective_port

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
