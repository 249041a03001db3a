"""Completion callbacks (CONTRACT §9): every finished job's result marker POSTed to a URL.

The body is the result marker as JSON; ``X-Zip-Timestamp`` is the Unix time of the attempt and
``X-Zip-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`` keyed by ``notify.secret``, so
a receiver can check both origin and freshness (reject timestamps more than a few minutes old).
Delivery happens in this module's own thread, retried with exponential backoff up to
``notify.max_attempts``; it never delays or fails the job, and a callback still queued at
shutdown is dropped (the result marker in the bucket stays the record). Callback URLs may carry
tokens: they are never logged, only their host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

SIGNATURE_HEADER = "X-Zip-Signature"
TIMESTAMP_HEADER = "X-Zip-Timestamp"
TIMEOUT_SECONDS = 10.0


def sign(body: bytes, timestamp: int, secret: str) -> str:
    """The ``X-Zip-Signature`` value of ``body`` sent at ``timestamp`` (pure)."""
    message = str(timestamp).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(body: bytes, timestamp: str, signature: str, secret: str) -> bool:
    """What a receiver does (used by the tests; documented in the README)."""
    try:
        expected = sign(body, int(timestamp), secret)
    except ValueError:
        return False
    return hmac.compare_digest(signature.encode(), expected.encode())


def backoff(attempt: int, *, base: float = 1.0, ceiling: float = 300.0) -> float:
    """Seconds before retry ``attempt`` (1-based), full jitter on an exponential (pure but for
    the jitter)."""
    return random.uniform(0.5, 1.0) * min(ceiling, base * 2 ** (attempt - 1))


@dataclass(frozen=True)
class Delivery:
    url: str
    body: bytes
    job_id: str


class Notifier:
    """Queues result markers and POSTs them from one background thread."""

    def __init__(
        self,
        *,
        secret: str | None,
        max_attempts: int = 8,
        log: Any = None,
        backoff_base: float = 1.0,
        post: Callable[[str, bytes, dict[str, str]], int] | None = None,
    ) -> None:
        self._secret = secret or ""
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self.log = log or structlog.get_logger("watcher.notify")
        self._post = post or _post
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def submit(self, url: str, result: dict) -> None:
        """Queue ``result`` for ``url``; returns at once."""
        body = json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
        self._queue.put(Delivery(url, body, str(result.get("job_id"))))

    def _run(self) -> None:
        while not self._stop.is_set():
            delivery = self._queue.get()
            if delivery is None:
                return
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        host = urllib.parse.urlsplit(delivery.url).hostname
        for attempt in range(1, self._max_attempts + 1):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(delivery.body, timestamp, self._secret),
                "User-Agent": "b2-zip-watcher",
            }
            status = self._post(delivery.url, delivery.body, headers)
            if 200 <= status < 300:
                self.log.info(
                    "callback_delivered", job_id=delivery.job_id, host=host, attempt=attempt
                )
                return
            self.log.warning(
                "callback_failed", job_id=delivery.job_id, host=host, attempt=attempt, status=status
            )
            if attempt < self._max_attempts and self._stop.wait(
                backoff(attempt, base=self._backoff_base)
            ):
                return
        self.log.error("callback_given_up", job_id=delivery.job_id, host=host)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5)


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST; the HTTP status, or 0 when there was no answer."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: the configured URL is the only target."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
