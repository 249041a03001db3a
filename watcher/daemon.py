"""The long-running daemon: watch the requests prefix, claim, run, file, recover.

One loop, driven by APScheduler's BackgroundScheduler:

* ``tick`` (every second, never overlapping): when a poll is due — the interval has passed, a job
  just finished, or the HTTP trigger / a B2 event woke us — list the requests prefix once, and for
  as many pending manifests as there are free slots (picked among the oldest, see
  :func:`pick_batch`): claim them at once, then hand each won job to the worker pool.
  Polls back off from ``interval_seconds`` to ``max_idle_interval_seconds`` while nothing happens
  (every ListObjectsV2 is a billed Class C transaction on B2).
* ``renew`` (every third of ``lease_seconds``): renew the claim of every running job; a job whose
  claim was lost is cancelled, because someone else owns it now.
* each job: read the manifest, run it (``job.run_job`` writes the markers), then file the manifest
  under ``done/`` or ``failed/`` — copy first, delete second, so it is never lost — and release
  the claim.

Shutdown is a state, not an exception: the first SIGTERM/SIGINT stops new work and gives running
jobs ``shutdown_grace_seconds``; after that (or at a second signal) they are cancelled, which
aborts their uploads, and their claims are released so another daemon retakes them at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from watcher import sdnotify
from watcher.errors import InvalidManifest, JobCancelled, StorageError, WatcherError
from watcher.job import reject_oversized, run_job
from watcher.layout import filed_key, is_manifest_key
from watcher.manifest import MAX_MANIFEST_BYTES

if TYPE_CHECKING:
    from watcher.claims import Claim, Claimer
    from watcher.config import Settings
    from watcher.metrics import Metrics
    from watcher.store import Store

TICK_SECONDS = 1.0


def next_interval(current: float, *, busy: bool, base: float, ceiling: float) -> float:
    """The next poll interval: ``base`` while work flows, doubling up to ``ceiling`` when idle."""
    if busy:
        return base
    return min(ceiling, max(base, current * 2))


# How far past the oldest pending manifests a daemon looks when it picks what to claim.
CLAIM_WINDOW = 4
# A listing older than this is refreshed before the next batch of claims in the same poll.
STALE_LISTING_SECONDS = 1.0


def pick_batch(candidates: list[Any], free: int, rng: random.Random) -> list[Any]:
    """Which of ``candidates`` (oldest first) to claim for ``free`` slots (pure but for ``rng``).

    A random ``free`` of the oldest ``free * CLAIM_WINDOW``: roughly first come, first served,
    while daemons polling the same backlog mostly go for different manifests instead of all
    contending for the same oldest ones. The oldest manifest is in every daemon's window until
    someone takes it, so none waits forever.
    """
    window = candidates[: free * CLAIM_WINDOW]
    return rng.sample(window, min(free, len(window)))


class _SkippedRunFilter(logging.Filter):
    """Drops APScheduler's warning that a run was skipped because the previous one still runs.

    That is how ticks and renewals are meant to work (never two at once); the warning would add a
    line every second while a long poll runs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


_SKIPPED_RUN_FILTER = _SkippedRunFilter()


@dataclass
class _Running:
    key: str
    claim: Claim
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None
    claim_lost: bool = False
    released: bool = False
    # Renewal (scheduler thread) and release (job thread) of one claim never overlap: a renewal
    # that listed the claim while it was being released would report it lost.
    claim_lock: threading.Lock = field(default_factory=threading.Lock)


class Daemon:
    """Watches one requests prefix. ``run()`` blocks until shutdown and returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        claimer: Claimer,
        *,
        metrics: Metrics | None = None,
        log: Any = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.claimer = claimer
        self.metrics = metrics
        self.log = log or structlog.get_logger("watcher.daemon")
        self._environ = environ
        watch = settings.watch
        self.bucket = settings.watch_bucket
        self.prefix = watch.prefix
        self._interval = watch.interval_seconds
        self._next_poll = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel_now = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=watch.max_concurrent_jobs, thread_name_prefix="job"
        )
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._random = random.Random()
        self.polls = 0
        self._on_finished: Callable[[dict], None] | None = None

    # -- control -----------------------------------------------------------------------------

    def wake(self, keys: list[str] | None = None) -> None:
        """Poll now instead of at the next interval (HTTP submissions, B2 events)."""
        self._wake.set()

    def set_on_finished(self, callback: Callable[[dict], None]) -> None:
        """``callback(result_marker)`` after each job that wrote a result marker and was filed
        (completion callbacks); it must return at once."""
        self._on_finished = callback

    def request_stop(self) -> None:
        """Signal-safe: the first call stops new work, the second cancels running jobs."""
        if self._stopping.is_set():
            self._cancel_now.set()
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def running_jobs(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        lease = self.settings.watch.lease_seconds
        logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED_RUN_FILTER)
        self._scheduler.add_job(
            self._tick,
            "interval",
            seconds=TICK_SECONDS,
            id="tick",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.add_job(
            self._renew_all,
            "interval",
            seconds=max(1.0, lease / 3),
            id="renew",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()
        self.log.info(
            "daemon_started",
            bucket=self.bucket,
            prefix=self.prefix,
            coordination=getattr(self.claimer, "mode", "?"),
            max_concurrent_jobs=self.settings.watch.max_concurrent_jobs,
        )

    def run(self) -> int:
        """Start, tell systemd we are ready, heartbeat until asked to stop, then shut down."""
        self.start()
        sdnotify.notify("READY=1", environ=self._environ)
        heartbeat = sdnotify.watchdog_interval(self._environ)
        last_beat = 0.0
        while not self._stopping.is_set():
            time.sleep(0.2)
            now = time.monotonic()
            if heartbeat and now - last_beat >= heartbeat and self._scheduler.running:
                sdnotify.notify("WATCHDOG=1", environ=self._environ)
                last_beat = now
        sdnotify.notify("STOPPING=1", environ=self._environ)
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Let running jobs finish within the grace period, then cancel them; release claims."""
        self._stopping.set()
        grace = self.settings.shutdown_grace_seconds
        with self._lock:
            pending = [r for r in self._running.values() if r.future is not None]
        self.log.info("daemon_stopping", running_jobs=len(pending), grace_seconds=grace)
        deadline = time.monotonic() + grace
        while pending and time.monotonic() < deadline and not self._cancel_now.is_set():
            pending = [r for r in pending if r.future is not None and not r.future.done()]
            time.sleep(0.1)
        for running in pending:
            running.cancel.set()
        for running in pending:
            if running.future is not None:
                try:
                    running.future.exception(timeout=60)
                except TimeoutError:
                    self.log.error("job_did_not_stop", manifest=running.key)
        self._scheduler.shutdown(wait=False)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.log.info("daemon_stopped")

    # -- polling -----------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._stopping.is_set():
            return
        now = time.monotonic()
        periodic = self.settings.watch.enabled and now >= self._next_poll
        if not self._wake.is_set() and not periodic:
            return
        self._wake.clear()
        if self.running_jobs() >= self.settings.watch.max_concurrent_jobs:
            self._next_poll = now + self.settings.watch.interval_seconds
            return
        try:
            pending = self.poll_once()
        except WatcherError as exc:
            self.log.warning("poll_failed", code=exc.code, error=exc.message)
            pending = 0
        busy = pending > 0 or self.running_jobs() > 0
        watch = self.settings.watch
        self._interval = next_interval(
            self._interval,
            busy=busy,
            base=watch.interval_seconds,
            ceiling=watch.max_idle_interval_seconds,
        )
        self._next_poll = time.monotonic() + self._interval

    def poll_once(self) -> int:
        """List the prefix and start as many pending jobs as there are free slots.

        Claims go in batches (one per round of free slots); a batch that lost some claims is
        followed by another among the manifests not tried yet, on a fresh listing when the last
        one is older than :data:`STALE_LISTING_SECONDS` (in ``versions`` mode every batch waits a
        settle delay, and meanwhile other daemons finish and file manifests: claiming those would
        cost a settle delay each for nothing). Returns how many manifests were waiting.
        """
        self.polls += 1
        pending = self._pending()
        if self.metrics is not None:
            self.metrics.manifests_pending.set(len(pending))
        listed_at = time.monotonic()
        tried: set[str] = set()
        candidates = pending
        while not self._stopping.is_set():
            with self._lock:
                free = self.settings.watch.max_concurrent_jobs - len(self._running)
                candidates = [o for o in candidates if o.key not in self._running]
            if free <= 0 or not candidates:
                break
            batch = pick_batch(candidates, free, self._random)
            for obj, claim in self._claim_all(batch):
                self._start(obj, claim)
            tried.update(o.key for o in batch)
            if time.monotonic() - listed_at > STALE_LISTING_SECONDS:
                candidates = self._pending()
                listed_at = time.monotonic()
            candidates = [o for o in candidates if o.key not in tried]
        return len(pending)

    def _pending(self) -> list[Any]:
        """The manifests in the requests prefix, oldest first (one ListObjectsV2)."""
        listed = self.store.list_objects(self.bucket, self.prefix, delimiter="/")
        return sorted(
            (o for o in listed if is_manifest_key(o.key, self.prefix)),
            key=lambda o: (o.last_modified, o.key),
        )

    def _claim_all(self, batch: list[Any]) -> list[tuple[Any, Claim]]:
        """Claim the manifests of ``batch`` at once: in ``versions`` mode every claim waits a
        settle delay, and these waits overlap instead of adding up."""

        def attempt(obj: Any) -> Claim | None:
            try:
                return self.claimer.claim(obj.key)
            except WatcherError as exc:
                self.log.warning("claim_failed", manifest=obj.key, code=exc.code, error=exc.message)
                return None

        with ThreadPoolExecutor(len(batch), thread_name_prefix="claim") as pool:
            claims = list(pool.map(attempt, batch))
        return [(obj, claim) for obj, claim in zip(batch, claims, strict=True) if claim]

    def _start(self, obj: Any, claim: Claim) -> None:
        running = _Running(key=obj.key, claim=claim)
        with self._lock:
            self._running[obj.key] = running
        running.future = self._executor.submit(self._perform, obj, running)

    def _renew_all(self) -> None:
        with self._lock:
            jobs = list(self._running.values())
        for running in jobs:
            if running.future is not None and running.future.done():
                continue
            with running.claim_lock:
                if running.released:
                    continue
                try:
                    renewed = self.claimer.renew(running.claim)
                except WatcherError as exc:
                    self.log.warning("claim_renew_failed", manifest=running.key, error=exc.message)
                    continue
                if renewed is None:
                    self.log.error("claim_lost", manifest=running.key)
                    running.claim_lost = True
                    running.cancel.set()
                else:
                    running.claim = renewed

    # -- one job -----------------------------------------------------------------------------

    def _perform(self, obj: Any, running: _Running) -> None:
        log = self.log.bind(manifest=obj.key)
        try:
            if self._already_filed(obj):
                log.info("manifest_already_filed")
                self.store.delete(self.bucket, obj.key)
                return
            try:
                raw = self.store.get_bytes(self.bucket, obj.key, max_bytes=MAX_MANIFEST_BYTES)
            except InvalidManifest as exc:  # over the size limit
                reject_oversized(self.store, self.settings, obj.key, exc, log=log)
                self._file(obj.key, succeeded=False)
                return
            if raw is None:
                log.info("manifest_gone")
                return
            cancel = _either(running.cancel, self._cancel_now)
            if self.metrics is not None:
                self.metrics.job_started()
            try:
                outcome = run_job(
                    self.store,
                    self.settings,
                    raw,
                    manifest_key=obj.key,
                    cancel=cancel,
                    log=log,
                    on_start=self._on_job_start,
                )
            except BaseException:
                if self.metrics is not None:
                    self.metrics.jobs_running.dec()
                raise
            if self.metrics is not None:
                self.metrics.observe_outcome(outcome)
            self._file(obj.key, succeeded=outcome.state == "succeeded")
            if self._on_finished is not None and outcome.result is not None:
                self._on_finished(outcome.result)  # completion callbacks (issue 13)
        except JobCancelled:
            log.warning("job_cancelled", claim_lost=running.claim_lost)
        except WatcherError as exc:
            log.error("job_infrastructure_error", code=exc.code, error=exc.message)
        except Exception:
            log.exception("job_crashed")
        finally:
            self._release(running, log)
            with self._lock:
                self._running.pop(obj.key, None)
            self._wake.set()

    def _release(self, running: _Running, log: Any) -> None:
        """Release a finished job's claim (unless it was lost); never while it is being renewed."""
        with running.claim_lock:
            running.released = True
            if running.claim_lost:
                return
            try:
                self.claimer.release(running.claim)
            except WatcherError as exc:
                log.warning("claim_release_failed", error=exc.message)

    def _on_job_start(self, job_id: str, target: str, manifest_key: str | None) -> None:
        """Abort uploads a dead earlier run left behind (run_job indexed the job already).

        We hold the manifest's claim, so any unfinished upload of this target belongs to a run of
        it that died (B2 would otherwise keep its parts, and bill them, indefinitely).
        """
        output = self.settings.buckets.output
        for upload in self.store.list_multipart_uploads(output, target):
            if upload["Key"] == target:
                self.store.abort_upload(output, target, upload["UploadId"])
                self.log.info("stale_upload_aborted", job_id=job_id, target=target)

    def _already_filed(self, obj: Any) -> bool:
        """True when a previous run finished this very manifest but died before deleting it.

        The filed copy is made after the manifest was written, so a copy with the same ETag that is
        not older than the manifest is that manifest. A later re-drop of identical content is newer
        than its old copy and runs again.
        """
        for succeeded in (True, False):
            head = self.store.head(self.bucket, filed_key(self.prefix, obj.key, succeeded))
            if (
                head is not None
                and head.etag == obj.etag
                and head.last_modified >= obj.last_modified
            ):
                return True
        return False

    def _file(self, key: str, *, succeeded: bool) -> None:
        """Move the manifest under done/ or failed/: copy first, then delete, so nothing is lost."""
        destination = filed_key(self.prefix, key, succeeded)
        for attempt in range(5):
            try:
                self.store.copy(self.bucket, key, destination)
                self.store.delete(self.bucket, key)
                return
            except StorageError as exc:
                self.log.warning(
                    "manifest_filing_retry", manifest=key, attempt=attempt, error=exc.message
                )
                time.sleep(min(30.0, 2.0**attempt))
        self.log.error("manifest_filing_failed", manifest=key, destination=destination)


class _either:
    """An Event-like view that is set when either of two events is."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        self._events = (first, second)

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True
