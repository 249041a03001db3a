"""Status and result markers next to every target (CONTRACT §4).

``<target>.status.json`` is written when a job starts and refreshed by a ticker thread while it
runs — at most once a second, backing off to every 10 s (even when nothing moved, so a watcher
can tell a live job from a dead one). The status marker is made final first, then
``<target>.result.json`` is written once, last: its existence means the job is finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from watcher.layout import result_key, status_key

if TYPE_CHECKING:
    from watcher.errors import JobError
    from watcher.store import Store

MIN_INTERVAL = 1.0
HEARTBEAT = 10.0


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EntryResult:
    name: str
    key: str
    size: int
    compressed_size: int
    crc32: int
    method: str  # "deflate" | "store"

    def to_json(self) -> dict[str, Any]:
        """The marker's entry object (written out by hand: ``asdict`` is 10x slower, and a big
        job's result marker lists 100,000 of them)."""
        return {
            "name": self.name,
            "key": self.key,
            "size": self.size,
            "compressed_size": self.compressed_size,
            "crc32": self.crc32,
            "method": self.method,
        }


@dataclass
class Progress:
    """Counters of one running job; every update goes through the lock (pipeline threads)."""

    files_total: int = 0
    files_done: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    entries: list[EntryResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    version: int = 0

    def add(self, *, bytes_read: int = 0, bytes_written: int = 0) -> None:
        with self._lock:
            self.bytes_read += bytes_read
            self.bytes_written += bytes_written
            self.version += 1

    def entry_done(self, entry: EntryResult) -> None:
        with self._lock:
            self.entries.append(entry)
            self.files_done += 1
            self.version += 1

    def skip(self, key: str, reason: str) -> None:
        with self._lock:
            self.skipped.append({"key": key, "reason": reason})
            self.files_total = max(0, self.files_total - 1)
            self.version += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "files_total": self.files_total,
                "files_done": self.files_done,
                "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written,
            }


@dataclass(frozen=True)
class JobInfo:
    """What every marker of one job repeats."""

    job_id: str
    target: str
    bucket: str
    manifest: str | None
    started_at: datetime
    # Which version of the manifest this job runs (CONTRACT §7.1): ``{"etag", "version_id",
    # "run"}``; the result marker carrying it is the job's commit record (§7.2).
    manifest_version: dict[str, Any] | None = None


def status_doc(info: JobInfo, state: str, progress: Progress, now: datetime) -> dict[str, Any]:
    document = {
        "job_id": info.job_id,
        "state": state,
        "target": info.target,
        "bucket": info.bucket,
        "manifest": info.manifest,
        **progress.snapshot(),
        "started_at": iso(info.started_at),
        "updated_at": iso(now),
    }
    if info.manifest_version is not None:
        document["manifest_version"] = info.manifest_version
    return document


def result_doc(
    info: JobInfo,
    progress: Progress,
    *,
    error: JobError | None,
    finished_at: datetime,
    requests: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result marker: every field of the contract's table, entries in archive order."""
    state = "succeeded" if error is None else "failed"
    with progress._lock:
        entries = [e.to_json() for e in progress.entries]
        skipped = list(progress.skipped)
    document = status_doc(info, state, progress, finished_at)
    document.update(
        finished_at=iso(finished_at),
        duration_seconds=round((finished_at - info.started_at).total_seconds(), 3),
        entries=entries,
        skipped=skipped,
        error=None if error is None else {"code": error.code, "message": error.message},
    )
    if requests is not None:
        document["requests"] = requests
    if extra:
        document.update(extra)  # e.g. download_url (CONTRACT §9)
    return document


class MarkerWriter:
    """Writes one job's markers; a ticker thread keeps the status marker fresh while it runs."""

    def __init__(
        self,
        store: Store,
        info: JobInfo,
        progress: Progress,
        *,
        log: Any = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.info = info
        self.progress = progress
        self.log = log
        self._now = now
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._written_version = -1
        self._written_at = 0.0
        self.status_writes = 0

    def _write_status(self, state: str, error: JobError | None = None) -> None:
        version = self.progress.version
        document = status_doc(self.info, state, self.progress, self._now())
        if error is not None:  # GET /jobs/<id> answers from it until the result marker exists
            document["error"] = {"code": error.code, "message": error.message}
        self.store.put_json(self.info.bucket, status_key(self.info.target), document)
        self._written_version = version
        self._written_at = time.monotonic()
        self.status_writes += 1

    def started(self) -> None:
        """Write the first status marker and start refreshing it in the background."""
        self._write_status("running")
        self._ticker = threading.Thread(target=self._tick, name="status-marker", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        """Refresh after 1 s, then 2, 4, 8 and every 10 s: quick feedback on short jobs, few
        billed writes on long ones, and a heartbeat at least every 10 s."""
        interval = MIN_INTERVAL
        while not self._stop.wait(interval):
            changed = self.progress.version != self._written_version
            if changed or time.monotonic() - self._written_at >= HEARTBEAT:
                try:
                    self._write_status("running")
                except Exception as exc:  # a missed refresh must not kill the job
                    if self.log is not None:
                        self.log.warning("status_marker_failed", error=str(exc))
            interval = min(HEARTBEAT, interval * 2)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout)
            self._ticker = None

    def cancelled(self, error: JobError) -> None:
        """Make the status marker say the job was cut short (``failed``, ``error.code``
        ``cancelled``); no result marker, because the job runs again (CONTRACT §7.10)."""
        self.stop(timeout=2.0)
        self._write_status("failed", error)

    def finished(
        self,
        error: JobError | None,
        *,
        requests: dict[str, int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make the status marker final, then write the result marker: once, and last."""
        self.stop()
        finished_at = self._now()
        state = "failed" if error is not None else "succeeded"
        self._write_status(state, error)
        if requests is None:
            requests = job_requests(self.store)
        document = result_doc(
            self.info,
            self.progress,
            error=error,
            finished_at=finished_at,
            requests=requests,
            extra=extra,
        )
        self.store.put_json(self.info.bucket, result_key(self.info.target), document)
        return document


def job_requests(store: Any) -> dict[str, int] | None:
    """The job's requests by B2 class (CONTRACT §8) when ``store`` is a job's view of the store
    (``Store.for_job``): every request the job made, the final status marker's PUT and the result
    marker's own PUT (class ``a``) included."""
    classes = getattr(store, "job_request_classes", None)
    if classes is None:
        return None
    counts = dict(classes())
    counts["a"] += 1  # the result marker's PUT, sent right after
    return counts
