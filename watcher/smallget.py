"""Small objects fetched lean (issue 16): one signed GET per object on a shared connection pool.

A boto3 ``get_object`` spends most of its CPU in botocore's per-call machinery (event hooks,
request serialisation, endpoint rules, response parsing), not on the wire: on a job of thousands
of small objects that machinery, not the store, was the bound. :class:`SmallGetter` sends the
same request botocore would — ``GET /<bucket>/<key>``, path-style, SigV4-signed with the client's
own credentials and region, no checksum headers (B2 refuses them) — on a urllib3 pool, and
keeps the storage edge's rules:

* retries: connection failures, timeouts, a body cut short, 5xx and throttling answers are
  retried with backoff, as many attempts as the client's ``retries.max_attempts``; every attempt
  is one request, counted;
* timeouts: the client's ``connect_timeout`` / ``read_timeout``;
* errors: a refusal is a :class:`Refused` (status, code from the S3 error body), which the edge
  makes a botocore ``ClientError`` for :func:`watcher.store.translate_client_error`, the one
  translator: 404 is
  ``missing_input``, 403 ``access_denied``, 412 a :class:`~watcher.store.PreconditionFailed`, 501
  a :class:`~watcher.store.NotImplementedByStore`; a 412 or 501 is never retried.

Only :class:`watcher.store.Store` uses this module (``Store.get_small``): the edge stays one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

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


class SigV4:
    """AWS Signature Version 4 for S3 GETs with an empty body, as botocore's ``S3SigV4Auth``
    computes it (tests check the two agree), with the day's signing key kept."""

    def __init__(self, credentials: Any, region: str, service: str = "s3") -> None:
        self.credentials = credentials  # botocore Credentials (refreshable ones refresh here)
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, signing key)

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
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = ";".join(headers)  # already sorted: host < x-amz-content-sha256 < x-amz-date < -s
        canonical = "\n".join(
            (
                "GET",
                path,
                "",
                "".join(f"{k}:{v}\n" for k, v in headers.items()),
                names,
                EMPTY_SHA256,
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            ("AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), "sha256"
        ).hexdigest()
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


class _Stream:
    """A large answer's body, read on: urllib3's failures become the edge's body errors."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def read(self, n: int) -> bytes:
        try:
            return self._response.read(n)
        except (Urllib3Error, OSError) as exc:
            raise BodyBroken(type(exc).__name__) from None

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


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
        self.signer = SigV4(credentials, region or "us-east-1")
        self.attempts = max(1, attempts)
        self.backoff = backoff
        timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        options: dict[str, Any] = {}
        if parts.scheme == "https" and ca_bundle:
            options["ca_certs"] = ca_bundle
        self.pool = urllib3.connection_from_url(
            f"{parts.scheme}://{parts.netloc}",
            maxsize=max(1, connections),
            block=False,
            timeout=timeout,
            retries=False,
            **options,
        )

    def get(
        self,
        bucket: str,
        key: str,
        *,
        max_bytes: int,
        count: Callable[[], None],
        reserve: Callable[[int], None] | None = None,
    ) -> SmallObject:
        """``key`` whole when at most ``max_bytes`` (``reserve(size)`` is called before its body
        is read), else streaming; once the attempts are spent (or at once for a refusal that is
        not transient) raises :class:`Refused`, or the urllib3/OS error of the last attempt."""
        path = object_path(self.base, bucket, key)
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff(attempt - 1))
            count()
            try:
                response = self.pool.urlopen(
                    "GET",
                    path,
                    headers=self.signer.headers(self.host, path),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                    assert_same_host=False,
                )
            except (Urllib3Error, OSError) as exc:
                last = exc
                continue
            status = response.status
            if status != 200:
                try:
                    body = response.read(ERROR_BODY_LIMIT)
                except (Urllib3Error, OSError):
                    body = b""
                response.close()
                response.release_conn()
                code = error_code(body)
                last = Refused(status, code or str(status))
                if retryable(status, code):
                    continue
                raise last
            headers = response.headers
            size = int(headers.get("Content-Length", "-1"))
            found = SmallObject(
                size,
                http_date(headers.get("Last-Modified")),
                headers.get("ETag", ""),
                None,
                version_id=headers.get("x-amz-version-id") or None,
            )
            if size < 0:  # S3 answers a GET with its length; anything else is not an object
                response.close()
                response.release_conn()
                last = BodyBroken("an answer without Content-Length")
                continue
            if size > max_bytes:
                found.stream = _Stream(response)
                return found
            if reserve is not None:
                reserve(size)  # the caller holds the larger of its reservations
            try:
                body = response.read()
            except (Urllib3Error, OSError) as exc:
                response.close()
                response.release_conn()
                last = exc
                continue
            response.release_conn()
            if len(body) != size:
                last = BodyBroken(f"{len(body)} of {size} bytes")
                continue
            found.body = body
            return found
        assert last is not None
        raise last
