"""Completion callbacks: signature, host allow-list, and delivery with retries to a real local
HTTP receiver (127.0.0.1) that answers 500 twice before 200."""

from __future__ import annotations

import json
import time

import pytest
import structlog
from receiver import Receiver

from watcher.notify import Notifier, sign, verify

SECRET = "notify-secret-for-tests"


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(script=None) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_signature_covers_timestamp_and_body():
    body = b'{"job_id":"j"}'
    signature = sign(body, 1700000000, SECRET)
    assert signature.startswith("v1=") and verify(body, "1700000000", signature, SECRET)
    assert not verify(body + b" ", "1700000000", signature, SECRET)
    assert not verify(body, "1700000001", signature, SECRET)
    assert not verify(body, "1700000000", signature, "other-secret")
    assert not verify(body, "not-a-number", signature, SECRET)


def test_a_signed_result_is_delivered_and_retried_after_two_500s(receiver):
    r = receiver([500, 500])
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier(secret=SECRET, max_attempts=8, backoff_base=0.05)
        result = {"job_id": "j1", "state": "failed", "error": {"code": "missing_input"}}
        started = time.monotonic()
        notifier.submit(r.url, result)
        assert time.monotonic() - started < 1, "submit must not wait for the delivery"
        assert r.done.wait(30)
        notifier.stop()
    assert len(r.calls) == 3
    for headers, body in r.calls:
        assert json.loads(body) == result
        assert verify(body, headers["X-Zip-Timestamp"], headers["X-Zip-Signature"], SECRET)
        assert headers["Content-Type"] == "application/json"
    assert [e["event"] for e in logs if e["event"].startswith("callback")] == [
        "callback_failed",
        "callback_failed",
        "callback_delivered",
    ]
    assert "token=abc" not in json.dumps(logs), "a callback URL (which may hold a token) was logged"


def test_delivery_gives_up_after_max_attempts_and_never_raises(receiver):
    r = receiver([500] * 10)
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier(secret=SECRET, max_attempts=3, backoff_base=0.01)
        notifier.submit(r.url, {"job_id": "j2"})
        deadline = time.monotonic() + 30
        while not any(e["event"] == "callback_given_up" for e in logs):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        notifier.stop()
    assert len(r.calls) == 3
