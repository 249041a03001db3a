"""One job, end to end: manifest bytes in, a ZIP and its markers out.

``run_job`` is what both the daemon and ``b2-zip-watcher zip`` call. A job's failure is data: it
returns an :class:`Outcome` and has written the result marker (when the manifest named a usable
target). Only :class:`JobCancelled` propagates — after the upload was aborted and with no result
marker, because a cancelled job is run again, here or by another daemon — and the store's own
error when the markers themselves cannot be written (an unwritable output bucket): then nothing
records the job, and the daemon counts a failed attempt (CONTRACT §7.5).

Cancellation carries a reason (:class:`Cancel`). Cut short by shutdown or Ctrl-C, the job leaves
its status marker ``failed`` with code ``cancelled`` (§7.10) and runs again later; cut short
because its claim was lost, it writes nothing more: the target's markers belong to the new owner
now. Cancelled on request (``REQUESTED``), it ends like a failed job: result marker ``failed``,
code ``cancelled``. ``fence`` is
called right before each commit (completing the upload, writing the result marker) and raises
:class:`JobCancelled` when the caller no longer owns the job (§7.3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from watcher import intake
from watcher.errors import IdConflict, InternalError, JobCancelled, JobError, WatcherError
from watcher.layout import crc_prefix
from watcher.manifest import guess_id, guess_target, job_id_for, parse_manifest
from watcher.markers import JobInfo, MarkerWriter, Progress
from watcher.pipeline import CrcCache, MiB, PipelineLimits, write_zip
from watcher.plan import build_plan

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.store import Store


# How much of an oversized manifest is read to find its target.
HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    job_id: str
    state: str  # "succeeded" | "failed"
    target: str | None
    error: JobError | None
    result: dict[str, Any] | None
    notify_url: str | None = None  # the manifest's own completion callback (CONTRACT §9)


SHUTDOWN = "shutdown"
INTERRUPTED = "interrupted"
CLAIM_LOST = "claim_lost"
REQUESTED = "requested"


class Cancel:
    """A job's cancellation: set once, with a reason; the pipeline polls :meth:`is_set`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self, reason: str) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the cancelling thread) when the cancellation is set — at once
        if it already is: e.g. cutting off the job's reads that hang."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


@dataclass
class Running:
    """What a running job shows its owner: its cancellation, and once started its markers, so
    the owner can still mark it cancelled when the job's own thread is stuck in a read."""

    cancel: Cancel = field(default_factory=Cancel)
    markers: MarkerWriter | None = None
    _marked: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mark_cancelled(self, log: Any = None) -> None:
        """Status marker ``failed``/``cancelled`` unless the claim was lost; once, best effort."""
        with self._lock:
            if self._marked or self.markers is None or self.cancel.reason == CLAIM_LOST:
                return
            self._marked = True
            try:
                self.markers.cancelled(
                    JobCancelled(f"the job was cancelled ({self.cancel.reason})")
                )
            except WatcherError as exc:
                if log is not None:
                    log.warning("status_marker_failed", code=exc.code, error=exc.message)


def _before_commit(cancel: Cancel, fence: Callable[[], None] | None) -> None:
    """A job cancelled before its ZIP is committed writes none, even when the pipeline never
    waited on a read after the cancel (a small job, or one cancelled before it started)."""
    if cancel.is_set():
        raise JobCancelled("the job was cancelled")
    if fence is not None:
        fence()


def limits_from(settings: Settings) -> PipelineLimits:
    pipeline = settings.pipeline
    return PipelineLimits(
        read_ahead_bytes=pipeline.read_ahead_bytes,
        max_parallel_gets=pipeline.max_parallel_gets,
        small_in_flight=pipeline.small_in_flight,
        upload_concurrency=pipeline.upload_concurrency,
        minimum_part=(pipeline.part_size_mib or 8) * MiB,
        copy_min_bytes=pipeline.copy_min_mib * MiB,
        crc_cache=(
            CrcCache(settings.watch_bucket, crc_prefix(settings.watch.prefix))
            if pipeline.crc_cache and settings.watch_bucket
            else None
        ),
    )


def run_job(
    store: Store,
    settings: Settings,
    raw_manifest: bytes,
    *,
    manifest_key: str | None,
    job_id: str | None = None,
    running: Running | None = None,
    fence: Callable[[], None] | None = None,
    manifest_version: dict[str, Any] | None = None,
    log: Any = None,
    on_start: Callable[[str, str, str | None], None] | None = None,
) -> Outcome:
    """Run the manifest ``raw_manifest``; see the module docstring for what is guaranteed."""
    log = log or structlog.get_logger("watcher.job")
    store = store.for_job() if hasattr(store, "for_job") else store  # counts its requests
    running = running or Running()
    cancel = running.cancel
    prefix = settings.watch.prefix
    output = settings.buckets.output
    started = time.monotonic()
    try:
        manifest = parse_manifest(
            raw_manifest, requests_prefix=prefix, notify_hosts=settings.notify.allowed_hosts
        )
    except JobError as exc:
        job_id = job_id or guess_id(raw_manifest) or job_id_for(None, manifest_key)
        log = log.bind(job_id=job_id)
        target = guess_target(raw_manifest, requests_prefix=prefix)
        log.error("manifest_rejected", code=exc.code, error=exc.message, target=target)
        return _rejected(
            store,
            settings,
            job_id,
            target,
            exc,
            manifest_key=manifest_key,
            log=log,
            fence=fence,
            manifest_version=manifest_version,
        )

    job_id = job_id or job_id_for(manifest, manifest_key)
    log = log.bind(job_id=job_id)
    if manifest_key is not None:
        admission = intake.admit_job(store, settings, manifest, job_id, manifest_key)
        if admission.decision == "duplicate":
            log.info("job_already_succeeded", target=manifest.target)
            return Outcome(job_id, "succeeded", manifest.target, None, admission.result)
        if admission.decision == "conflict":
            conflict = IdConflict(
                f"the id {job_id!r} is already used by a job with other content "
                "(ids are unique in the requests prefix)"
            )
            log.error("manifest_rejected", code=conflict.code, error=conflict.message)
            return _rejected(
                store,
                settings,
                job_id,
                manifest.target,
                conflict,
                manifest_key=manifest_key,
                log=log,
                fence=fence,
                manifest_version=manifest_version,
            )
    info = JobInfo(
        job_id, manifest.target, output, manifest_key, datetime.now(UTC), manifest_version
    )
    progress = Progress(files_total=len(manifest.files))
    markers = MarkerWriter(store, info, progress, log=log)
    running.markers = markers
    if hasattr(store, "interrupt_reads"):
        # From here on a cancel cuts off the job's reads that hang (Store.interrupt_reads);
        # before, the job's few small reads end by themselves and a cancelled job still writes
        # its result marker below.
        cancel.on_set(store.interrupt_reads)
    log.info("job_started", target=manifest.target, bucket=output, manifest=manifest_key)
    error: JobError | None = None
    try:
        if on_start is not None:
            on_start(job_id, manifest.target, manifest_key)
        plan = build_plan(
            manifest,
            lambda p: store.list_objects(settings.buckets.input, p),
            defaults=settings.zip,
            target_key=manifest.target,
            same_bucket=settings.buckets.input == output,
        )
        # The first status marker counts the archive's entries, not the manifest's items: a
        # prefix is listed first (issue 13).
        progress.files_total = len(plan.entries)
        markers.started()
        write_zip(
            plan,
            store,
            input_bucket=settings.buckets.input,
            output_bucket=output,
            target=manifest.target,
            progress=progress,
            limits=limits_from(settings),
            cancel=cancel,
            before_commit=lambda: _before_commit(cancel, fence),
        )
    except JobCancelled as exc:
        if cancel.reason != REQUESTED:
            _cut_short(running, log, interrupted=False)
            raise
        error = exc  # cancelled on request: the job ends failed, with its result marker
    except KeyboardInterrupt:
        _cut_short(running, log, interrupted=True)
        raise
    except JobError as exc:
        error = exc
    except Exception:
        log.exception("job_internal_error")
        error = InternalError("an internal error stopped the job; see the daemon's log")
    try:
        if fence is not None:
            fence()
    except JobCancelled:
        _cut_short(running, log, interrupted=False)
        raise
    result = markers.finished(error, extra=_download_link(store, settings, manifest.target, error))
    state = result["state"]
    log.info(
        "job_finished",
        state=state,
        code=None if error is None else error.code,
        error=None if error is None else error.message,
        files=progress.files_done,
        bytes_read=progress.bytes_read,
        bytes_written=progress.bytes_written,
        seconds=round(time.monotonic() - started, 3),
    )
    return Outcome(job_id, state, manifest.target, error, result, manifest.notify_url)


def _rejected(
    store: Store,
    settings: Settings,
    job_id: str,
    target: str | None,
    error: JobError,
    *,
    manifest_key: str | None,
    log: Any,
    fence: Callable[[], None] | None = None,
    manifest_version: dict[str, Any] | None = None,
) -> Outcome:
    """A manifest that will never run leaves a trace (CONTRACT §7.6): a failed result marker at
    its target when one can be read, else — for a manifest of the requests prefix —
    ``failed/<name>.error.json``."""
    result = None
    if target is not None:
        if fence is not None:
            fence()
        info = JobInfo(
            job_id,
            target,
            settings.buckets.output,
            manifest_key,
            datetime.now(UTC),
            manifest_version,
        )
        result = MarkerWriter(store, info, Progress(), log=log).finished(error)
    elif manifest_key is not None:
        intake.write_error_report(store, settings, manifest_key, job_id, error, attempts=1)
    return Outcome(job_id, "failed", target, error, result)


def reject_oversized(
    store: Store, settings: Settings, manifest_key: str, error: JobError, *, log: Any = None
) -> Outcome:
    """A manifest over the size limit is never read whole: its first :data:`HEAD_BYTES` are
    enough to find its target and id when they come first (CONTRACT §7.6)."""
    log = log or structlog.get_logger("watcher.job")
    head = b""
    with store.open_object(settings.watch_bucket, manifest_key) as reader:
        for chunk in reader.iter_chunks(HEAD_BYTES):
            head = chunk
            break
    prefix = settings.watch.prefix
    job_id = guess_id(head) or job_id_for(None, manifest_key)
    target = guess_target(head, requests_prefix=prefix)
    log = log.bind(job_id=job_id)
    log.error("manifest_rejected", code=error.code, error=error.message, target=target)
    return _rejected(store, settings, job_id, target, error, manifest_key=manifest_key, log=log)


def _download_link(
    store: Store, settings: Settings, target: str, error: JobError | None
) -> dict[str, str] | None:
    """``download_url`` and its expiry for a succeeded job's result marker (CONTRACT §9)."""
    if error is not None or settings.links.expires_seconds <= 0:
        return None
    from watcher.jobs import presign

    link = presign(store, settings.buckets.output, target, settings.links.expires_seconds)
    return link.fields()


def _cut_short(running: Running, log: Any, *, interrupted: bool) -> None:
    if interrupted:
        running.cancel.set(INTERRUPTED)
    log.warning("job_cancelled", reason=running.cancel.reason)
    if running.markers is not None:
        running.markers.stop(timeout=2.0)
    running.mark_cancelled(log)


def run_foreground(
    store: Store, settings: Settings, raw_manifest: bytes, *, log: Any, grace: float = 5.0
) -> Outcome:
    """``b2-zip-watcher zip``: :func:`run_job` on a worker thread, so that Ctrl-C is handled at
    once even while a read hangs. On KeyboardInterrupt the job is cancelled and gets ``grace``
    seconds to abort its upload and mark its status ``cancelled``; if it is stuck, the status is
    marked from here; then the KeyboardInterrupt goes on to the caller."""
    running = Running()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["outcome"] = run_job(
                store, settings, raw_manifest, manifest_key=None, running=running, log=log
            )
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="job", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        running.cancel.set(INTERRUPTED)
        thread.join(grace)
        running.mark_cancelled(log)
        raise
    if "error" in box:
        raise box["error"]
    return box["outcome"]
