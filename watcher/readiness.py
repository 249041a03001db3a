"""Readiness computed in the background and cached, so ``/readyz`` never waits on the store.

A store that accepts connections but never answers used to hold ``/readyz`` — and, once every
waitress thread was stuck behind it, ``/healthz`` and ``/metrics`` too — for as long as
botocore kept retrying. Here one thread probes every ``interval`` seconds and the answer is what
it saw last; a probe still running after ``stale_after`` seconds counts as "not ready" (a hanging
store is not a ready one). :meth:`ready` returns at once, except that the very first call waits
up to ``first_wait`` seconds for the first probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Readiness:
    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        interval: float = 5.0,
        stale_after: float = 10.0,
        first_wait: float = 0.8,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._stale_after = stale_after
        self._first_wait = first_wait
        self._lock = threading.Lock()
        self._ready = False
        self._probing_since: float | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Readiness:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="readiness", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._probing_since = time.monotonic()
            try:
                ready = bool(self._probe())
            except Exception:
                ready = False
            with self._lock:
                self._ready = ready
                self._probing_since = None
            self._first.set()
            self._stop.wait(self._interval)

    def ready(self) -> bool:
        self.start()
        self._first.wait(self._first_wait)
        with self._lock:
            since = self._probing_since
            if since is not None and time.monotonic() - since > self._stale_after:
                return False
            return self._ready

    def stop(self) -> None:
        self._stop.set()
