"""Prompt pick-up for ``submit`` on the daemon's own host, without the HTTP API (CONTRACT §9).

``run`` listens on a Unix datagram socket in Linux's abstract namespace, named after the store
endpoint, the watch bucket and the requests prefix (so daemons of other buckets on the same host
do not hear each other). ``submit`` sends the key of the manifest it just wrote; the daemon then
polls at its next one-second tick instead of after its idle interval (up to
``watch.max_idle_interval_seconds``). The datagram carries nothing but a key and only makes the
daemon look sooner: the manifest in the bucket stays the only source of work, so a lost or forged
datagram costs at most one extra listing. Elsewhere than on Linux there is no wake-up, and
``submit`` waits for the next poll as before.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcher.config import Settings

MAX_DATAGRAM = 2048


def address(settings: Settings) -> str | None:
    """The abstract socket name for this requests prefix, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    where = f"{settings.s3.endpoint_url}|{settings.watch_bucket}|{settings.watch.prefix}"
    return "\0b2-zip-watcher-" + hashlib.sha256(where.encode()).hexdigest()[:24]


def notify(settings: Settings, manifest_key: str) -> bool:
    """Tell a daemon of this host that ``manifest_key`` is waiting; False when none listens."""
    name = address(settings)
    if name is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(manifest_key.encode()[:MAX_DATAGRAM], name)
        except OSError:
            return False
    return True


class Listener:
    """Receives wake-up datagrams in a thread and hands each manifest key to ``wake``."""

    def __init__(self, settings: Settings, wake: Callable[[list[str]], None]) -> None:
        self._name = address(settings)
        self._prefix = settings.watch.prefix
        self._wake = wake
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self) -> bool:
        """Bind and listen; False when there is no wake-up here or another daemon has it."""
        if self._name is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._name)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="wakeup", daemon=True)
        self._thread.start()
        return True

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except OSError:
                return
            if self._stopped.is_set():
                return
            key = data.decode("utf-8", "replace")
            if key.startswith(self._prefix):
                self._wake([key])

    def stop(self) -> None:
        """End the thread at once: it blocks in ``recv`` until a datagram comes, so send it one
        (polling with a timeout made every shutdown wait up to half a second for it)."""
        self._stopped.set()
        if self._thread is not None and self._name is not None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                try:
                    sock.sendto(b"", self._name)
                except OSError:
                    pass  # the thread is gone already
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
