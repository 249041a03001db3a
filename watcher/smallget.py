"""Small objects fetched lean (issue 16): one signed GET per object on a shared connection pool.

A boto3 ``get_object`` spends most of its CPU in botocore's per-call machinery (event hooks,
request serialisation, endpoint rules, response parsing), not on the wire: on a job of thousands
of small objects that machinery, not the store, was the bound. :class:`SmallGetter` sends the
same request botocore would — ``GET /<bucket>/<key>``, path-style, SigV4-signed with the client's
own credentials and region, no checksum headers (B2 refuses them) — on kept-alive connections
of its own (HTTP/1.1, TLS for https), and keeps the storage edge's rules:

* retries: connection failures, timeouts, a body cut short, 5xx and throttling answers are
  retried with backoff, as many attempts as the client's ``retries.max_attempts``; every attempt
  is one request, counted;
* timeouts: the client's ``connect_timeout`` / ``read_timeout``;
* errors: a refusal is a :class:`Refused` (status, code from the S3 error body), which the edge
  makes a botocore ``ClientError`` for :func:`watcher.store.translate_client_error`, the one
  translator: 404 is ``missing_input``, 403 ``access_denied``, 412 a
  :class:`~watcher.store.PreconditionFailed`, 501 a :class:`~watcher.store.NotImplementedByStore`;
  a 412 or 501 is never retried.

Only :class:`watcher.store.Store` uses this module (``Store.get_small``): the edge stays one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
USER_AGENT = "b2-zip-watcher (lean GET)"
# Answers worth another attempt (botocore's "standard" retry mode: transient and throttling).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
_CODE = re.compile(rb"<Code>([^<]{0,200})</Code>")
ERROR_BODY_LIMIT = 64 * 1024


class Refused(Exception):
    """The store's answer to a GET was not the object: its HTTP status and S3 error code (the
    edge turns it into the ``ClientError`` its translator knows)."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


class BodyBroken(ConnectionError):
    """A response body that broke off (a builtin ConnectionError: the edge's body errors)."""


@dataclass
class SmallObject:
    """One GET's answer: the body whole (``body``) when it is at most the caller's ``max_bytes``,
    else ``body`` is None and ``stream`` reads it (``read(n)``, ``close()``)."""

    size: int
    last_modified: datetime
    etag: str
    body: bytes | None
    stream: Any = None
    version_id: str | None = None


_NAMES = "host;x-amz-content-sha256;x-amz-date"
_NAMES_TOKEN = _NAMES + ";x-amz-security-token"


class SigV4:
    """AWS Signature Version 4 for S3 GETs with an empty body, as botocore's ``S3SigV4Auth``
    computes it (tests check the two agree), with the day's signing key kept."""

    def __init__(self, credentials: Any, region: str, service: str = "s3") -> None:
        self.credentials = credentials  # botocore Credentials (refreshable ones refresh here)
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)
        self._stamp: tuple[int, str] = (-1, "")

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret and cached[1] == day:
            return cached[2]
        key = hmac.digest(("AWS4" + secret).encode(), day.encode(), "sha256")
        for part in (self.region, self.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = (secret, day, key)
        return key

    def headers(self, host: str, path: str, now: float | None = None) -> dict[str, str]:
        """The headers of ``GET path`` (already URI-encoded) on ``host``, signed."""
        creds = self.credentials.get_frozen_credentials()
        second = int(time.time() if now is None else now)
        stamped = self._stamp  # (second, its x-amz-date): thousands of requests share a second
        if stamped[0] != second:
            stamped = self._stamp = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        stamp = stamped[1]
        day = stamp[:8]
        token = creds.token
        # the signed headers, already sorted: host < x-amz-content-sha256 < x-amz-date < -s
        signed = f"host:{host}\nx-amz-content-sha256:{EMPTY_SHA256}\nx-amz-date:{stamp}\n"
        if token:
            signed += f"x-amz-security-token:{token}\n"
        names = _NAMES_TOKEN if token else _NAMES
        canonical = f"GET\n{path}\n\n{signed}\n{names}\n{EMPTY_SHA256}"
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
        signature = hmac.digest(
            self._signing_key(creds.secret_key, day), to_sign.encode(), "sha256"
        ).hex()
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if token:
            headers["x-amz-security-token"] = token
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        headers["User-Agent"] = USER_AGENT
        return headers


def object_path(base: str, bucket: str, key: str) -> str:
    """The path-style, URI-encoded path of an object, as botocore sends (and signs) it."""
    return f"{base}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"


def error_code(body: bytes) -> str:
    found = _CODE.search(body)
    return found.group(1).decode("utf-8", "replace").strip() if found else ""


def retryable(status: int, code: str) -> bool:
    """Whether a refusal is transient (never a 412, 501, 404, 403)."""
    return status in RETRY_STATUSES or code in RETRY_CODES


_DATES: dict[str, datetime] = {}


def http_date(value: str | None) -> datetime:
    """A ``Last-Modified`` header as an aware datetime (kept: thousands of objects share few)."""
    if not value:
        return datetime.now(UTC)
    found = _DATES.get(value)
    if found is None:
        if len(_DATES) > 4096:
            _DATES.clear()
        found = _DATES[value] = parsedate_to_datetime(value).astimezone(UTC)
    return found


# -- HTTP/1.1 on kept-alive sockets ------------------------------------------------------------
# What a GET of a small object needs and no more: one request written at once, the answer's head
# parsed by splitting lines (http.client parses it with the email package: a third of the CPU
# of a small GET), the body framed by Content-Length (chunked only for error bodies).

# The most asked of one recv: below glibc's mmap threshold (128 KiB), so the buffer CPython
# allocates for it comes from the heap. A bigger one was mmapped, shrunk by mremap to what
# arrived and unmapped when freed — three system calls and fresh pages for every small GET.
RECV = 64 * 1024
HEAD_LIMIT = 64 * 1024


class _Conn:
    """One connection and the bytes received past the last answer's end."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        if not data:
            raise BodyBroken("the store closed the connection")
        return data

    def head(self) -> tuple[bytes, int, dict[str, str]]:
        """(HTTP version, status, headers with lower-case names) of the next answer."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > HEAD_LIMIT:
                raise BodyBroken("an answer's head without an end")
            buf += self._recv(RECV)
        lines = buf[:end].split(b"\r\n")
        self.buf = buf[end + 4 :]
        version, _, rest = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/") or not rest[:3].isdigit():
            raise BodyBroken("not an HTTP answer")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        return version, int(rest[:3]), headers

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one)."""
        buf = self.buf
        if buf:
            self.buf = buf[n:]
            return buf[:n]
        return self._recv(min(n, RECV))

    def exactly(self, n: int) -> bytes:
        parts, have = [], 0
        while have < n:
            part = self.read(n - have)
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > HEAD_LIMIT:
                raise BodyBroken("a chunk line without an end")
            self.buf += self._recv(RECV)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def error_body(self, headers: dict[str, str]) -> bytes:
        """An error answer's body (at most :data:`ERROR_BODY_LIMIT`); the connection is not
        used again after it."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts, have = [], 0
            while have < ERROR_BODY_LIMIT:
                size = int(self.line().split(b";")[0] or b"0", 16)
                if not size:
                    break
                parts.append(self.exactly(size))
                have += size
                self.line()
            return b"".join(parts)
        length = headers.get("content-length")
        if length is not None:
            return self.exactly(min(int(length), ERROR_BODY_LIMIT))
        return self.read(ERROR_BODY_LIMIT)


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection was closed (or sent something) meanwhile."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _Pool:
    """Connections to one host, the idle ones kept (at most ``keep``), most recent first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        keep: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.address = (host, port)
        self.tls = tls
        self.keep = keep
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: list[_Conn] = []
        self.lock = threading.Lock()

    def take(self) -> _Conn:
        while True:
            with self.lock:
                conn = self.idle.pop() if self.idle else None
            if conn is None:
                break
            if not _dropped(conn.sock):
                return conn
            conn.close()
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.address[0])
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    def give_back(self, conn: _Conn) -> None:
        with self.lock:
            if len(self.idle) < self.keep:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def _reusable(version: bytes, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == b"HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


class _Held:
    """A connection as a cancel sees it while a whole body is read from it."""

    __slots__ = ("_connection",)

    def __init__(self, conn: _Conn) -> None:
        self._connection = conn


class _Stream:
    """A large answer's body, read on from its connection (given back once read to its end);
    ``_connection.sock`` is what a cancel shuts down (:func:`watcher.store._socket_of`)."""

    def __init__(self, pool: _Pool, conn: _Conn, length: int, reusable: bool) -> None:
        self._pool = pool
        self._connection: _Conn | None = conn
        self._left = length
        self._reusable = reusable

    def read(self, n: int) -> bytes:
        conn = self._connection
        if conn is None or self._left <= 0:
            return b""
        try:
            data = conn.read(min(n, self._left))
        except OSError as exc:  # BodyBroken is one; timeouts and resets too
            self.close()
            raise BodyBroken(type(exc).__name__) from None
        self._left -= len(data)
        return data

    def close(self) -> None:
        conn, self._connection = self._connection, None
        if conn is None:
            return
        if self._left == 0 and self._reusable:
            self._pool.give_back(conn)
        else:
            conn.close()


def usable_for(endpoint_url: str | None) -> bool:
    """Whether the lean path may talk to this endpoint: a plain http(s) URL reached without a
    proxy (botocore honours proxy settings; where one is set, the full client is used)."""
    if not endpoint_url:
        return False
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        return False
    proxies = urllib.request.getproxies()
    if proxies.get(parts.scheme) or proxies.get("all"):
        return bool(urllib.request.proxy_bypass(parts.hostname))
    return True


def total_attempts(retries: dict) -> int:
    """Attempts per request as botocore counts them: ``total_max_attempts``, which a client
    config's ``max_attempts`` (retries after the first) becomes; 3 without either."""
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    if "max_attempts" in retries:
        return int(retries["max_attempts"]) + 1
    return 3


class SmallGetter:
    """GETs of whole objects on one keep-alive pool of ``connections`` (thread-safe)."""

    def __init__(
        self,
        endpoint_url: str,
        credentials: Any,
        region: str,
        *,
        connections: int,
        connect_timeout: float,
        read_timeout: float,
        attempts: int,
        backoff: Callable[[int], float],
        ca_bundle: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint_url)
        default_port = 443 if parts.scheme == "https" else 80
        port = parts.port or default_port
        self.host = parts.hostname if port == default_port else f"{parts.hostname}:{port}"
        if parts.hostname and ":" in parts.hostname:  # IPv6 literal
            self.host = f"[{parts.hostname}]" + ("" if port == default_port else f":{port}")
        self.base = parts.path.rstrip("/")
        self.ca_bundle = ca_bundle
        self.signer = SigV4(credentials, region or "us-east-1")
        self.attempts = max(1, attempts)
        self.backoff = backoff
        tls = None
        if parts.scheme == "https":
            tls = ssl.create_default_context(cafile=ca_bundle)
        self.pool = _Pool(
            parts.hostname or "",
            port,
            tls=tls,
            keep=max(1, connections),
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    @staticmethod
    def _pause(seconds: float, guard: Any, where: str) -> None:
        """Back off, in slices a cancel can end (``guard.check``)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.25))
            if guard is not None:
                guard.check(where)

    def get(
        self,
        bucket: str,
        key: str,
        *,
        max_bytes: int,
        count: Callable[[], None],
        reserve: Callable[[int], None] | None = None,
        guard: Any = None,
        on_request: Callable[[int | None, float], None] | None = None,
    ) -> SmallObject:
        """``key`` whole when at most ``max_bytes`` (``reserve(size)`` is called before its body
        is read), else streaming; once the attempts are spent (or at once for a refusal that is
        not transient) raises :class:`Refused`, or the OS error of the last attempt.

        ``guard`` (the store view's ``Reads``) can cut the read off from another thread: each
        connection is registered with it while in use (``opened``/``closed``), and its ``check``
        runs before every attempt and after every failure, so no retry follows a cancel.
        ``on_request(status, ms)`` is told of every attempt (status None: no answer)."""
        path = object_path(self.base, bucket, key)
        last: Exception | None = None
        pool = self.pool
        where = f"s3://{bucket}/{key}"
        for attempt in range(self.attempts):
            if guard is not None:
                guard.check(where)
            if attempt:
                self._pause(self.backoff(attempt - 1), guard, where)
            count()
            headers = self.signer.headers(self.host, path)
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            request = f"GET {path} HTTP/1.1\r\n{lines}\r\n"
            conn: _Conn | None = None
            held: _Held | None = None
            status: int | None = None
            started = time.monotonic()
            try:
                conn = pool.take()
                if guard is not None:
                    held = guard.opened(_Held(conn))
                conn.sock.sendall(request.encode("latin-1"))
                version, status, answer = conn.head()
                if status != 200:
                    body = conn.error_body(answer)
                    code = error_code(body)
                    last = Refused(status, code or str(status))
                    if retryable(status, code):
                        continue
                    raise last
                length = answer.get("content-length")
                if length is None or not length.isdigit():
                    # S3 answers a GET with its length; anything else is not an object
                    raise BodyBroken("an answer without Content-Length")
                size = int(length)
                found = SmallObject(
                    size,
                    http_date(answer.get("last-modified")),
                    answer.get("etag", ""),
                    None,
                    version_id=answer.get("x-amz-version-id") or None,
                )
                if size > max_bytes:
                    found.stream = _Stream(pool, conn, size, _reusable(version, answer))
                    conn = None
                    return found
                if reserve is not None:
                    reserve(size)  # the caller holds the larger of its reservations
                found.body = conn.exactly(size) if size else b""
                if _reusable(version, answer):
                    pool.give_back(conn)
                    conn = None
                return found
            except OSError as exc:  # resets, timeouts, TLS failures, BodyBroken, a cancel's cut
                last = exc
                if guard is not None:
                    guard.check(where)
                continue
            finally:
                if held is not None:
                    guard.closed(held)
                if conn is not None:
                    conn.close()
                if on_request is not None:
                    on_request(status, (time.monotonic() - started) * 1000)
        assert last is not None
        raise last
