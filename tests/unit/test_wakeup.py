"""The wake-up listener (watcher/wakeup.py): a datagram wakes the daemon; stop() ends its thread
at once, not at the next timeout."""

from __future__ import annotations

import sys
import threading
import uuid

import pytest

from watcher import wakeup
from watcher.config import from_mapping

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux's"
)


def _settings():
    return from_mapping(
        {
            "s3": {"endpoint_url": "http://127.0.0.1:9"},
            "watch": {"bucket": f"wake-{uuid.uuid4().hex}", "prefix": "zip-requests/"},
        },
        {},
    )


def test_a_datagram_wakes_and_stop_ends_the_thread_without_waiting():
    settings = _settings()
    woken: list[list[str]] = []
    heard = threading.Event()

    def wake(keys: list[str]) -> None:
        woken.append(keys)
        heard.set()

    listener = wakeup.Listener(settings, wake)
    assert listener.start()
    assert wakeup.notify(settings, "zip-requests/a.json")
    assert wakeup.notify(settings, "elsewhere/b.json")  # not under the prefix: ignored
    assert heard.wait(10)
    thread = listener._thread
    assert thread is not None and thread.is_alive()
    # The thread blocks in recv with no timeout: stop() must wake it with a datagram of its own,
    # or its join(timeout=2) would return with the thread still alive.
    listener.stop()
    assert not thread.is_alive()
    assert woken == [["zip-requests/a.json"]]
    assert not wakeup.notify(settings, "zip-requests/c.json")  # nobody listens any more
