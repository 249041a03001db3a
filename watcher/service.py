"""The daemon as the HTTP API sees it: submit, look up, readiness, wake-up.

``api.py`` knows nothing of stores or schedulers; it calls this backend, which reuses the intake
(the same validation and the same requests prefix as a dropped manifest) and the daemon's wake-up.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

from watcher import intake
from watcher.errors import WatcherError
from watcher.markers import status_key

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.daemon import Daemon
    from watcher.store import Store

READY_CACHE_SECONDS = 5.0


class DaemonBackend:
    """Implements ``api.ApiBackend`` on top of a store and a running daemon."""

    def __init__(self, store: Store, settings: Settings, daemon: Daemon) -> None:
        self.store = store
        self.settings = settings
        self.daemon = daemon
        self.requests_prefix = settings.watch.prefix
        self.watch_bucket = settings.watch_bucket
        self._ready_lock = threading.Lock()
        self._ready_at = 0.0
        self._ready = False

    def submit(self, raw: bytes) -> intake.Submitted:
        submitted = intake.submit_manifest(self.store, self.settings, raw)
        self.daemon.wake([submitted.manifest_key])
        return submitted

    def job_status(self, job_id: str) -> dict | None:
        """The status marker of ``job_id``; ``state: pending`` while no daemon has started it."""
        entry = intake.lookup_job(self.store, self.settings, job_id)
        if entry is None:
            return None
        bucket = self.settings.buckets.output
        raw = self.store.get_bytes(bucket, status_key(entry["target"]), max_bytes=1 << 20)
        marker = json.loads(raw) if raw else None
        if isinstance(marker, dict) and marker.get("job_id") == job_id:
            return marker
        return {
            "job_id": job_id,
            "state": "pending",
            "target": entry["target"],
            "bucket": bucket,
            "manifest": entry.get("manifest"),
        }

    def ready(self) -> bool:
        """Buckets reachable (cached for a few seconds: probes are billed requests)."""
        with self._ready_lock:
            now = time.monotonic()
            if now - self._ready_at < READY_CACHE_SECONDS:
                return self._ready
            buckets = {self.settings.buckets.input, self.settings.buckets.output, self.watch_bucket}
            try:
                for bucket in buckets:
                    self.store.head_bucket(bucket)
                self._ready = not self.daemon.stopping
            except WatcherError:
                self._ready = False
            self._ready_at = now
            return self._ready

    def wake(self, keys: list[str]) -> None:
        self.daemon.wake(keys)
