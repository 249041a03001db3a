"""The embedded HTTP API (CONTRACT §5, §9): a plain WSGI app served by waitress in a thread.

The app knows nothing of stores or schedulers: it calls an :class:`ApiBackend` (the daemon's is
``service.DaemonBackend``). Tokens and signatures are compared in constant time and never logged;
request bodies are refused by their announced length before a byte of them is read.

Shape: one table of routes (:data:`ROUTES`: path pattern, who may call it, a handler per
method); handlers take a :class:`Request` and return a :class:`Response` or raise; every error —
:class:`ApiError` for the protocol's own (401, 405, 413, 415), the backend's
:class:`~watcher.errors.WatcherError` codes otherwise — becomes its JSON answer in one place,
:func:`error_response`. The 405 answers and their ``Allow`` headers come from the table.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from watcher.errors import JobError, WatcherError
from watcher.layout import is_manifest_key

MAX_BODY = 16 * 1024 * 1024
MAX_EVENT_BODY = 1024 * 1024
SIGNATURE_HEADER = "HTTP_X_BZ_EVENT_NOTIFICATION_SIGNATURE"
_STATUS = {
    200: "200 OK",
    202: "202 Accepted",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    302: "302 Found",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    411: "411 Length Required",
    413: "413 Payload Too Large",
    415: "415 Unsupported Media Type",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


class ApiBackend(Protocol):
    requests_prefix: str
    watch_bucket: str | None

    def submit(self, raw: bytes) -> Any: ...  # .job_id, .target; raises JobError

    def job_status(self, job_id: str) -> dict | None: ...

    def ready(self) -> bool: ...

    def wake(self, keys: list[str]) -> None: ...

    # CONTRACT §9; each raises a WatcherError whose code picks the answer (see STATUS_BY_CODE)
    def list_jobs(self, *, state: str | None, limit: str | None, cursor: str | None) -> dict: ...

    def retry(self, job_id: str) -> dict: ...

    def download_url(self, job_id: str) -> str: ...

    def cancel(self, job_id: str) -> dict: ...


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


class ApiError(Exception):
    """An answer of the HTTP protocol itself (401, 405, 411, 413, 415, 400 on a bad request)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = tuple(headers)


# The backend's error codes as HTTP statuses; any other JobError is the client's fault (400),
# any other WatcherError ours (500).
STATUS_BY_CODE = {
    "not_found": 404,
    "conflict": 409,
    "id_conflict": 409,
    "bad_request": 400,
    "storage_error": 503,
    "access_denied": 503,
}


def error_response(exc: Exception) -> Response:
    """The one place an error becomes an answer: ``{"error": {"code", "message"}}``."""
    if isinstance(exc, ApiError):
        return Response.error(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, WatcherError):
        status = STATUS_BY_CODE.get(exc.code, 400 if isinstance(exc, JobError) else 500)
        return Response.error(status, exc.code, exc.message)
    raise exc


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(document, ensure_ascii=False).encode()
        return cls(status, body, "application/json", tuple(headers))

    @classmethod
    def error(
        cls, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        return cls.json(status, {"error": {"code": code, "message": message}}, headers)


@dataclasses.dataclass(frozen=True)
class Request:
    environ: dict
    method: str
    path: str
    params: dict[str, str]  # from the route's {placeholders}

    def header(self, name: str) -> str | None:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"))

    def _query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.environ.get("QUERY_STRING", ""), keep_blank_values=True)

    def query(self, name: str) -> str | None:
        found = self._query().get(name)
        return found[-1] if found else None

    def query_names(self) -> list[str]:
        return list(self._query())

    def body(self, limit: int) -> bytes:
        """The body, refused on its announced length before any of it is read."""
        length = self.environ.get("CONTENT_LENGTH") or ""
        if not length.strip():
            if self.environ.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked":
                return b""
            data = self.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, "too_large", f"the body is larger than {limit} bytes")
            return data
        try:
            size = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", "unreadable Content-Length") from None
        if size > limit:
            raise ApiError(413, "too_large", f"the body is larger than {limit} bytes")
        return self.environ["wsgi.input"].read(size)


Handler = Callable[[Request], Response]


@dataclasses.dataclass(frozen=True)
class Route:
    pattern: str  # "/jobs/{job_id}/retry": a {name} matches one non-empty path segment
    auth: str  # "none" | "bearer" | "b2" (the webhook checks its own signature)
    methods: dict[str, Handler]

    def match(self, path: str) -> dict[str, str] | None:
        want = self.pattern.split("/")
        got = path.split("/")
        if len(want) != len(got):
            return None
        params = {}
        for pattern, segment in zip(want, got, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not segment:
                    return None
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params


def find_route(routes: list[Route], path: str) -> tuple[Route, dict[str, str]] | None:
    """The first route whose pattern matches ``path`` (pure)."""
    for route in routes:
        params = route.match(path)
        if params is not None:
            return route, params
    return None


UNAUTHORIZED = ApiError(
    401,
    "unauthorized",
    "a valid bearer token is required",
    [("WWW-Authenticate", 'Bearer realm="b2-zip-watcher"')],
)


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

    def healthz(request: Request) -> Response:
        return Response.json(200, {"status": "ok"})

    def readyz(request: Request) -> Response:
        ready = backend.ready()
        return Response.json(200 if ready else 503, {"ready": ready})

    def post_job(request: Request) -> Response:
        content_type = request.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type != "application/json" and not content_type.endswith("+json"):
            raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
        submitted = backend.submit(request.body(max_body))
        location = f"/jobs/{submitted.job_id}"
        status = 200 if getattr(submitted, "existing", False) else 202
        return Response.json(
            status,
            {"job_id": submitted.job_id, "target": submitted.target, "status_url": location},
            [("Location", location)],
        )

    def get_job(request: Request) -> Response:
        status = backend.job_status(request.params["job_id"])
        if status is None:
            raise ApiError(404, "not_found", "no such job")
        return Response.json(200, status)

    def list_jobs(request: Request) -> Response:
        unknown = set(request.query_names()) - {"state", "limit", "next"}
        if unknown:
            raise ApiError(400, "bad_request", "unknown query parameter; use state, limit, next")
        page = backend.list_jobs(
            state=request.query("state"), limit=request.query("limit"), cursor=request.query("next")
        )
        return Response.json(200, page)

    def accepted(job_id: str, target: str) -> Response:
        location = f"/jobs/{job_id}"
        return Response.json(
            202,
            {"job_id": job_id, "target": target, "status_url": location},
            [("Location", location)],
        )

    def retry_job(request: Request) -> Response:
        job_id = request.params["job_id"]
        return accepted(job_id, backend.retry(job_id)["target"])

    def cancel_job(request: Request) -> Response:
        job_id = request.params["job_id"]
        return accepted(job_id, backend.cancel(job_id)["target"])

    def download(request: Request) -> Response:
        url = backend.download_url(request.params["job_id"])
        return Response.json(
            302, {"status": "found"}, [("Location", url), ("Cache-Control", "no-store")]
        )

    def get_metrics(request: Request) -> Response:
        if metrics is None:
            raise ApiError(404, "not_found", "no metrics in this process")
        body, content_type = metrics.render()
        return Response(200, body, content_type)

    def b2_events(request: Request) -> Response:
        body = request.body(MAX_EVENT_BODY)
        if not signature_ok(
            request.header("X-Bz-Event-Notification-Signature"), body, b2_event_secret or ""
        ):
            raise ApiError(401, "unauthorized", "bad or missing event signature")
        events = parse_events(body)
        if isinstance(events, str):
            raise ApiError(400, "bad_request", events)
        fresh = [e for e in events if not e.get("eventId") or seen.first_time(e["eventId"])]
        keys = manifest_keys(fresh, backend.requests_prefix, backend.watch_bucket)
        if keys:
            backend.wake(keys)
        return Response.json(200, {"accepted": len(keys), "ignored": len(events) - len(keys)})

    routes = [
        Route("/healthz", "none", {"GET": healthz}),
        Route("/readyz", "none", {"GET": readyz}),
        Route("/", "bearer", {"POST": post_job}),
        Route("/jobs", "bearer", {"POST": post_job, "GET": list_jobs}),
        Route("/jobs/{job_id}", "bearer", {"GET": get_job, "DELETE": cancel_job}),
        Route("/jobs/{job_id}/retry", "bearer", {"POST": retry_job}),
        Route("/jobs/{job_id}/download", "bearer", {"GET": download}),
        Route("/metrics", "bearer", {"GET": get_metrics}),
    ]
    if b2_event_secret:
        routes.append(Route("/b2-events", "b2", {"POST": b2_events}))

    def authorized(environ: dict) -> bool:
        return shared_secret is not None and bearer_ok(
            environ.get("HTTP_AUTHORIZATION"), shared_secret
        )

    def dispatch(environ: dict) -> Response:
        """Route, then authenticate, then check the method (so a wrong method leaks nothing)."""
        method = environ["REQUEST_METHOD"]
        path = request_path(environ)
        found = find_route(routes, path)
        if found is None:
            raise ApiError(404, "not_found", "no such route")
        route, params = found
        if route.auth == "bearer" and not authorized(environ):
            raise UNAUTHORIZED
        handler = route.methods.get(method)
        if handler is None:
            allowed = ", ".join(route.methods)
            raise ApiError(405, "method_not_allowed", f"use {allowed}", [("Allow", allowed)])
        return handler(Request(environ, method, path, params))

    def app(environ: dict, start_response: Callable) -> list:
        started = time.monotonic()
        try:
            response = dispatch(environ)
        except (ApiError, WatcherError) as exc:
            response = error_response(exc)
        except Exception:
            log.exception("http_handler_crashed")
            response = Response.error(500, "internal_error", "see the daemon's log")
        start_response(
            _STATUS[response.status],
            [
                ("Content-Type", response.content_type),
                ("Content-Length", str(len(response.body))),
                *response.headers,
            ],
        )
        log.info(
            "http_request",
            method=environ.get("REQUEST_METHOD"),
            path=request_path(environ)[:200],
            status=response.status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return [response.body]

    return app


# waitress reads each connection asynchronously and hands only complete requests to its worker
# threads, so slow or idle connections cost a file descriptor, not a thread. What made /healthz
# time out behind 100-300 slow-header connections was waitress's default connection_limit (100):
# past it, waitress stops accepting. We allow CONNECTION_LIMIT (the soft descriptor limit is
# raised towards the hard one to afford it, see _connection_limit) and close connections idle for
# CHANNEL_TIMEOUT seconds.
# What waitress does NOT allow: looking at the headers (the Bearer token) before the body is read.
# It buffers every body up to max_request_body_size (in memory up to inbuf_overflow, then in a
# temporary file) before the app is called, and answers "Expect: 100-continue" by itself. So an
# unauthenticated 16 MiB body is refused only after it was received; the buffering is bounded by
# max_request_body_size (the manifest limit + 1 KiB) per connection, and a body that trickles in
# is dropped once it stalls for CHANNEL_TIMEOUT.
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT = 20


class HttpServer:
    """waitress in a background thread; ``port`` 0 picks a free port (see ``.port``)."""

    def __init__(self, app: Callable, host: str, port: int, *, threads: int = 8) -> None:
        from waitress.server import create_server

        self._server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            connection_limit=_connection_limit(),
            channel_timeout=CHANNEL_TIMEOUT,
            backlog=1024,
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


def _connection_limit() -> int:
    """CONNECTION_LIMIT, or less when the descriptor limit (raised towards the hard limit
    first) cannot hold it with 200 to spare for the S3 connection pool and the rest."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = CONNECTION_LIMIT + 1024
        if soft != resource.RLIM_INFINITY and soft < wanted:
            raised = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    except (ImportError, OSError, ValueError):
        return 100
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(100, min(CONNECTION_LIMIT, soft - 200))
