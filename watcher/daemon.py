"""The long-running daemon: watch the requests prefix, claim, run, file, recover.

The poll loop (:meth:`Daemon._loop`, on its own thread; :meth:`Daemon.run` keeps systemd's
watchdog fed while it lives and waits for a signal) reads like this docstring::

    until asked to stop:
        when a poll is due (the interval passed, a job ended, or the HTTP trigger or a B2 event
        woke us): list the requests prefix once, claim pending manifests for the free slots and
        admit each won claim as a job on its own thread
        sleep until the next poll is due or something wakes us
    drain (see :meth:`Jobs.drain`)

Polls back off from ``interval_seconds`` to ``max_idle_interval_seconds`` while nothing happens
(every ListObjectsV2 is a billed Class C transaction on B2).

:class:`Jobs` owns the live jobs and their whole state machine: admission (refused once
draining: a claim won after the signal is released, not run), renewal, fencing and release of
their claims (one lock per job, so they never overlap), cancellation (``cancel(job_id)``), and
draining the live set — never a snapshot of it. APScheduler runs only what is periodic: claim
renewals every third of the lease, and housekeeping registered with :meth:`Daemon.add_periodic`.

One job, on its thread (:meth:`Daemon._perform`): read the manifest once, remembering its version
(ETag, VersionId: CONTRACT §7.1); if the result marker at its target is that version's commit
record, file it without running (§7.2); claim the target too, or leave the manifest for a later
poll while another job writes that target (§7.4); after too many attempts, fail it for good
(§7.5); else run it, confirming both claims before each commit (§7.3), file exactly that version
under ``done/`` or ``failed/`` and release the claims. A job that fails on infrastructure keeps
its claim record, which counts the attempts and holds the job back for a backoff.

Shutdown is a state, not an exception: the first SIGTERM/SIGINT stops new work and gives running
jobs ``shutdown_grace_seconds``; after that (or at a second signal) they are cancelled, which
aborts their uploads, marks their status ``cancelled`` and releases their claims. A cancel cuts
off the job's reads that hang mid-body (``Store.interrupt_reads``: their sockets are shut down),
so the job's own thread comes back at once. Only a request that never got an answer at all can
still hold a thread (until botocore's read timeout): its owner cleans up after it, and the
process exits anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from watcher import intake, sdnotify
from watcher.errors import (
    InvalidManifest,
    JobCancelled,
    JobError,
    MissingInput,
    StorageError,
    WatcherError,
)
from watcher.job import CLAIM_LOST, REQUESTED, SHUTDOWN, Running, reject_oversized, run_job
from watcher.layout import filed_key, is_manifest_key
from watcher.manifest import MAX_MANIFEST_BYTES, guess_id, guess_target, job_id_for
from watcher.markers import JobInfo, MarkerWriter, Progress, result_key
from watcher.store import PreconditionFailed

if TYPE_CHECKING:
    from watcher.claims import Claim, Claimer
    from watcher.config import Settings
    from watcher.metrics import Metrics
    from watcher.store import Store

# A cancelled job gets this long to abort its upload and mark its status before its owner does.
STOP_WAIT_SECONDS = 3.0
# Backoff between failed attempts of one manifest: this, doubling, capped at the lease.
BACKOFF_SECONDS = 1.0


def next_interval(current: float, *, busy: bool, base: float, ceiling: float) -> float:
    """The next poll interval: ``base`` while work flows, doubling up to ``ceiling`` when idle."""
    if busy:
        return base
    return min(ceiling, max(base, current * 2))


# How far past the oldest pending manifests a daemon looks when it picks what to claim.
CLAIM_WINDOW = 4
# A listing older than this is refreshed before the next batch of claims in the same poll.
STALE_LISTING_SECONDS = 1.0


def pick_batch(
    candidates: list[Any], free: int, rng: random.Random, *, spread: bool = True
) -> list[Any]:
    """Which of ``candidates`` (oldest first) to claim for ``free`` slots, oldest first (pure but
    for ``rng``).

    With ``spread`` (several daemons may share the prefix), a random ``free`` of the oldest
    ``free * CLAIM_WINDOW``: roughly first come, first served, while daemons polling the same
    backlog mostly go for different manifests instead of all contending for the same oldest
    ones. The oldest manifest is in every daemon's window until someone takes it, so none waits
    forever. Without it (``coordination: single``), strictly the oldest ``free``.
    """
    if not spread:
        return candidates[:free]
    window = candidates[: free * CLAIM_WINDOW]
    chosen = sorted(rng.sample(range(len(window)), min(free, len(window))))
    return [window[i] for i in chosen]


def target_claim_key(prefix: str, bucket: str, target: str) -> str:
    """The pseudo manifest key whose claim is the claim on ``target`` (CONTRACT §7.4).

    Under ``<prefix>.claims/targets/``: a manifest name never contains ``/``, so it cannot collide.
    """
    digest = hashlib.sha256(f"{bucket}\0{target}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}targets/{digest[:40]}"


def backoff_seconds(attempts: int, ceiling: float) -> float:
    """How long a manifest rests after its ``attempts``-th failed attempt (pure)."""
    return min(ceiling, BACKOFF_SECONDS * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class ManifestVersion:
    """One version of one manifest, as read when it was claimed: the job's identity (§7.1)."""

    key: str
    body: bytes
    etag: str
    version_id: str | None
    run: str  # the claim's run id: differs between drops of identical content (see claims.md)

    def identity(self) -> dict[str, Any]:
        return {"etag": self.etag, "version_id": self.version_id, "run": self.run or None}

    def committed_by(self, result: Any) -> bool:
        """Whether ``result`` (a result marker document) is this version's commit record."""
        if not isinstance(result, dict) or result.get("manifest") != self.key:
            return False
        recorded = result.get("manifest_version")
        if not isinstance(recorded, dict):
            return False
        mine = self.identity()
        return all(recorded.get(name) == mine[name] for name in ("etag", "version_id", "run"))


class _ManifestFiles:
    """The manifest's own objects: read one version, file exactly that version (§7.1)."""

    def __init__(self, store: Store, bucket: str, prefix: str) -> None:
        self.store = store
        self.bucket = bucket
        self.prefix = prefix

    def read(self, key: str, run: str) -> ManifestVersion | None:
        """The manifest as it is now, or None when it is gone; TooLarge past the size limit."""
        fetched = self.store.get(self.bucket, key, max_bytes=MAX_MANIFEST_BYTES)
        if fetched is None:
            return None
        return ManifestVersion(key, fetched.body, fetched.etag, fetched.version_id, run)

    def file(self, version: ManifestVersion, *, succeeded: bool) -> None:
        """Put exactly ``version`` under done/ or failed/, then delete exactly that version.

        The copy is conditional on the version (CopySourceIfMatch, or the VersionId); when the
        manifest was overwritten meanwhile, the bytes we ran are written instead. The delete is
        by VersionId on a versioned bucket, else conditional on the ETag: a newer version with
        other content stays, and is a new job.
        """
        destination = filed_key(self.prefix, version.key, succeeded)
        try:
            self.store.copy(
                self.bucket,
                version.key,
                destination,
                version_id=version.version_id,
                if_match=version.etag,
            )
        except (PreconditionFailed, MissingInput):
            self.store.put_bytes(
                self.bucket, destination, version.body, content_type="application/json"
            )
        if version.version_id:
            try:
                self.store.delete(self.bucket, version.key, version_id=version.version_id)
            except MissingInput:
                pass
        else:
            self.store.delete_if_match(self.bucket, version.key, version.etag)


# -- the live jobs ----------------------------------------------------------------------------


@dataclass
class LiveJob:
    """One admitted job: its claims, its cancellation and its thread."""

    key: str
    claim: Claim
    target_claim: Claim | None = None
    job_id: str | None = None
    waiting: bool = False  # left for a later poll: its target is busy
    running: Running = field(default_factory=Running)
    thread: threading.Thread | None = None
    claim_lost: bool = False
    lost_claim: str | None = None  # "claim" or "target_claim": which one was lost
    released: bool = False
    # Renewal (scheduler thread), fencing and release (job thread, or the owner at shutdown) of
    # this job's claims never overlap.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cancel(self) -> Any:
        return self.running.cancel


class Jobs:
    """The owner of every live job's state (see the module docstring)."""

    def __init__(self, claimer: Claimer, capacity: int, log: Any) -> None:
        self.claimer = claimer
        self.capacity = capacity
        self.log = log
        self._lock = threading.Lock()
        self._live: dict[str, LiveJob] = {}
        self._changed = threading.Condition(self._lock)
        self.draining = False

    # -- admission ----------------------------------------------------------------------------

    def free(self) -> int:
        with self._lock:
            return 0 if self.draining else self.capacity - len(self._live)

    def busy(self, key: str) -> bool:
        with self._lock:
            return key in self._live

    def count(self) -> int:
        with self._lock:
            return len(self._live)

    def admit(self, key: str, claim: Claim, start: Callable[[LiveJob], None]) -> bool:
        """Start a job for a won claim; refused (and the claim released) once draining."""
        with self._lock:
            admitted = not self.draining and key not in self._live
            if admitted:
                live = LiveJob(key, claim)
                self._live[key] = live
        if not admitted:
            self.log.info("claim_returned", manifest=key, draining=self.draining)
            self._release_claim(claim)
            return False
        start(live)
        return True

    def finished(self, live: LiveJob) -> None:
        with self._changed:
            self._live.pop(live.key, None)
            self._changed.notify_all()

    # -- claims -------------------------------------------------------------------------------

    def _claims(self, live: LiveJob) -> list[tuple[str, Claim]]:
        claims = [("claim", live.claim)]
        if live.target_claim is not None:
            claims.append(("target_claim", live.target_claim))
        return claims

    def _renew(self, live: LiveJob, *, confirm: bool = False, look: bool = False) -> bool:
        """Renew the job's claims (holding its lock); False when one of them is lost. A failed
        request is shrugged off while the lease still runs — unless ``confirm``: a commit needs
        an answer (§7.3). With ``look``, a claimer that can tell ownership without renewing
        (``check``) only looks."""
        check = getattr(self.claimer, "check", None) if look else None
        for name, claim in self._claims(live):
            try:
                if check is not None:  # a look, no heartbeat (versions: a LIST, not LIST + PUT)
                    renewed = claim if check(claim) else None
                else:
                    renewed = self.claimer.renew(claim)
            except WatcherError as exc:
                if not confirm and time.time() < claim.expires_at - 1.0:
                    self.log.warning("claim_renew_failed", manifest=live.key, error=exc.message)
                    continue
                renewed = None  # it may have expired by now: count it lost
            if renewed is None:
                live.lost_claim = name
                return False
            setattr(live, name, renewed)
        return True

    def renew_all(self) -> None:
        """Renew every live job's claims, all jobs at once (one slow answer must not hold the
        others' renewals past their lease); a job whose claim is lost is cancelled at once."""
        with self._lock:
            jobs = list(self._live.values())
        if not jobs:
            return
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="renew") as pool:
            list(pool.map(self._renew_one, jobs))

    def _renew_one(self, live: LiveJob) -> None:
        with live.lock:
            if live.released or live.claim_lost:
                return
            if not self._renew(live):
                self._lose(live, "renewal")

    def _lose(self, live: LiveJob, when: str) -> None:
        self.log.error("claim_lost", manifest=live.key, job_id=live.job_id, when=when)
        live.claim_lost = True
        live.cancel.set(CLAIM_LOST)

    def fence(self, live: LiveJob, when: str = "fence") -> None:
        """Confirm the job still owns its claims right before a commit, else cancel it (§7.3).

        Before the job starts (``when="start"``) only a known loss stops it: a renewal that
        failed while the lease still runs is shrugged off there as in :meth:`renew_all` (a slow
        answer must not cost a whole attempt; the fences before each commit still need one)."""
        start = when == "start"
        with live.lock:
            if (
                not live.claim_lost
                and not live.released
                and self._renew(live, confirm=not start, look=start)
            ):
                return
            if not live.claim_lost:
                self._lose(live, when)
        raise JobCancelled("the job's claim was lost; another daemon owns it now")

    def take_target(self, live: LiveJob, target_key: str) -> bool:
        claim = self.claimer.claim(target_key)
        with live.lock:
            live.target_claim = claim
        return claim is not None

    def release(self, live: LiveJob, *, park_seconds: float | None = None) -> None:
        """Release the job's claims — or, with ``park_seconds``, keep the manifest's claim
        record (its attempt counter) and let it expire after that long (§7.5)."""
        with live.lock:
            if live.released:
                return
            live.released = True
            if live.claim_lost:
                # The lost claim is the new owner's now; the other one is still ours to free
                # (a target claim kept until its lease ran out would hold the new owner back).
                if live.target_claim is not None and live.lost_claim == "claim":
                    self._release_claim(live.target_claim)
                elif live.lost_claim == "target_claim":  # nobody renews the manifest's any more
                    self._release_claim(live.claim)
                return
            if live.target_claim is not None:
                self._release_claim(live.target_claim)
            if park_seconds is None:
                self._release_claim(live.claim)
            else:
                self._park_claim(live.claim, park_seconds)

    def _release_claim(self, claim: Claim) -> None:
        try:
            self.claimer.release(claim)
        except WatcherError as exc:
            self.log.warning("claim_release_failed", manifest=claim.manifest_key, error=exc.message)

    def _park_claim(self, claim: Claim, seconds: float) -> None:
        park = getattr(self.claimer, "park", None)
        if park is None:
            return  # the claim expires after its lease: a backoff of lease_seconds
        try:
            park(claim, seconds)
        except WatcherError as exc:
            self.log.warning("claim_park_failed", manifest=claim.manifest_key, error=exc.message)

    # -- cancellation and draining --------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = REQUESTED) -> bool:
        """Cancel the live job ``job_id`` (e.g. at a user's request); False when none runs."""
        with self._lock:
            found = [live for live in self._live.values() if live.job_id == job_id]
        for live in found:
            live.cancel.set(reason)
        return bool(found)

    def stop_admitting(self) -> None:
        with self._lock:
            self.draining = True

    def drain(self, grace: float, cancel_now: threading.Event) -> list[LiveJob]:
        """Wait for the live set to empty within ``grace`` (or until ``cancel_now``); then cancel
        what is left and give it :data:`STOP_WAIT_SECONDS`. Returns the jobs that did not stop.

        Admission is closed first, so the live set only shrinks: waiting on it, not on a
        snapshot, covers a job admitted a moment before the signal.
        """
        self.stop_admitting()
        deadline = time.monotonic() + grace
        with self._changed:
            while self._live and not cancel_now.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(0.2, remaining))
            left = list(self._live.values())
        for live in left:
            live.cancel.set(SHUTDOWN)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        with self._changed:
            while self._live and time.monotonic() < deadline:
                self._changed.wait(0.1)
            return list(self._live.values())


class _SkippedRunFilter(logging.Filter):
    """Drops APScheduler's warning that a run was skipped because the previous one still runs.

    That is how renewals are meant to work (never two at once); the warning would add a line
    every time a slow renewal overlaps the next.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


_SKIPPED_RUN_FILTER = _SkippedRunFilter()


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
        self.max_attempts = watch.max_attempts
        self.jobs = Jobs(claimer, watch.max_concurrent_jobs, self.log)
        self.manifests = _ManifestFiles(store, self.bucket, self.prefix)
        self._interval = watch.interval_seconds
        self._next_poll = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel_now = threading.Event()
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._random = random.Random()
        self._cancel_check: Callable[[str], bool] | None = None
        self._cancel_requests: tuple[str, Callable[[bool, list[str]], None]] | None = None
        self._poller: threading.Thread | None = None
        self.polls = 0
        self._folders: frozenset[str] = frozenset()
        self._on_finished: Callable[[dict, str | None], None] | None = None

    # -- control -----------------------------------------------------------------------------

    def wake(self, keys: list[str] | None = None) -> None:
        """Poll now instead of at the next interval (HTTP submissions, B2 events)."""
        self._wake.set()

    def set_on_finished(self, callback: Callable[[dict, str | None], None]) -> None:
        """``callback(result_marker, notify_url)`` after each job that wrote a result marker and
        was filed (completion callbacks; ``notify_url`` is the manifest's own, or None); it must
        return at once."""
        self._on_finished = callback

    def request_stop(self) -> None:
        """Signal-safe: the first call stops new work, the second cancels running jobs."""
        if self._stopping.is_set():
            self._cancel_now.set()
        self._stopping.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def running_jobs(self) -> int:
        return self.jobs.count()

    def cancel(self, job_id: str) -> bool:
        """Cancel the job ``job_id`` if it runs here: it ends ``failed`` with code ``cancelled``
        (result marker written, upload aborted, manifest under ``failed/``). False when it does
        not run here."""
        return self.jobs.cancel(job_id)

    def set_cancel_check(self, check: Callable[[str], bool]) -> None:
        """``check(job_id)`` is asked once a job is claimed and its id known, before it runs; a
        True answer cancels it as :meth:`cancel` does."""
        self._cancel_check = check

    def set_cancel_requests(self, folder: str, handle: Callable[[bool, list[str]], None]) -> None:
        """``handle(waiting, queued_keys)`` runs on the poll thread after each poll's listing,
        before its claims: ``waiting`` says whether the sub-prefix ``folder`` (where cancel
        requests wait: CONTRACT §9) holds anything; ``queued_keys`` are the manifests listed that
        no job here runs. The listing is made anyway, so this costs an idle daemon nothing."""
        self._cancel_requests = (folder, handle)

    def take_now(self, key: str) -> bool:
        """Claim the manifest ``key`` and start it even when every slot is taken — for a queued
        job that must end at once (a cancel request: the cancel check answers True). False when
        it runs here already, or someone else holds its claim."""
        if self.jobs.busy(key):
            return False
        try:
            claim = self.claimer.claim(key)
        except WatcherError as exc:
            self.log.warning("claim_failed", manifest=key, code=exc.code, error=exc.message)
            return False
        return claim is not None and self.jobs.admit(key, claim, self._start)

    def add_periodic(self, func: Callable[[], None], seconds: float, name: str) -> None:
        """Run ``func`` every ``seconds`` on the scheduler's thread (housekeeping), never two at
        once; it stops with the daemon."""
        self._scheduler.add_job(
            func, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
        )

    def start(self) -> None:
        lease = self.settings.watch.lease_seconds
        logging.getLogger("apscheduler.scheduler").addFilter(_SKIPPED_RUN_FILTER)
        self._scheduler.add_job(
            self.jobs.renew_all,
            "interval",
            seconds=max(1.0, lease / 3),
            id="renew",
            max_instances=1,
            coalesce=True,
        )
        self._scheduler.start()
        self._poller = threading.Thread(target=self._loop, name="poll", daemon=True)
        self._poller.start()
        self.log.info(
            "daemon_started",
            bucket=self.bucket,
            prefix=self.prefix,
            coordination=getattr(self.claimer, "mode", "?"),
            max_concurrent_jobs=self.settings.watch.max_concurrent_jobs,
        )

    def run(self) -> int:
        """Start, tell systemd we are ready and keep its watchdog fed while the poll loop lives,
        until asked to stop; then shut down. Returns the exit code."""
        self.start()
        sdnotify.notify("READY=1", environ=self._environ)
        heartbeat = sdnotify.watchdog_interval(self._environ)
        while not self._stopping.wait(min(heartbeat or 0.5, 0.5)):
            if heartbeat and self._poller is not None and self._poller.is_alive():
                sdnotify.notify("WATCHDOG=1", environ=self._environ)
        sdnotify.notify("STOPPING=1", environ=self._environ)
        stuck = self.shutdown()
        if stuck:
            # Threads blocked in a read would hold the interpreter's exit up until it times out.
            self.log.warning("exiting_with_stuck_reads", jobs=stuck)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        return 0

    def _loop(self) -> None:
        """The loop of the module docstring (on the ``poll`` thread)."""
        while not self._stopping.is_set():
            if self._poll_due():
                self._poll()
            self._wake.wait(max(0.05, min(1.0, self._next_poll - time.monotonic())))

    def shutdown(self) -> int:
        """Drain (see :meth:`Jobs.drain`); clean up after jobs stuck in a read. Returns how many
        job threads are still stuck."""
        self._stopping.set()
        self._wake.set()
        grace = self.settings.shutdown_grace_seconds
        self.log.info("daemon_stopping", running_jobs=self.jobs.count(), grace_seconds=grace)
        self.jobs.stop_admitting()
        if self._poller is not None:
            self._poller.join(timeout=grace + 1)  # a claim it wins from now on is returned
        stuck = self.jobs.drain(grace, self._cancel_now)
        for live in stuck:
            self._clean_up_stuck(live)
        self._scheduler.shutdown(wait=False)
        self.log.info("daemon_stopped")
        return len(stuck)

    def _clean_up_stuck(self, live: LiveJob) -> None:
        """A cancelled job whose thread does not come back (a read that hangs): do what it would
        have done — abort its upload, mark it cancelled, release its claims."""
        log = self.log.bind(manifest=live.key, job_id=live.job_id)
        log.error("job_did_not_stop")
        markers = live.running.markers
        if markers is not None and not live.claim_lost:
            output, target = markers.info.bucket, markers.info.target
            try:
                for upload in self.store.list_multipart_uploads(output, target):
                    if upload["Key"] == target:
                        self.store.abort_upload(output, target, upload["UploadId"])
            except WatcherError as exc:
                log.warning("upload_abort_failed", error=exc.message)
            live.running.mark_cancelled(log)
        self.jobs.release(live)

    # -- polling -----------------------------------------------------------------------------

    def _poll_due(self) -> bool:
        if self._wake.is_set():
            self._wake.clear()
            return True
        return self.settings.watch.enabled and time.monotonic() >= self._next_poll

    def _poll(self) -> None:
        """One poll; with every slot taken it still lists (no claims), so cancel requests and
        ``manifests_pending`` stay current while jobs run."""
        watch = self.settings.watch
        try:
            pending = self.poll_once()
        except WatcherError as exc:
            self.log.warning("poll_failed", code=exc.code, error=exc.message)
            pending = 0
        busy = pending > 0 or self.jobs.count() > 0
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
        listed = pending
        if self._cancel_requests is not None:
            folder, handle = self._cancel_requests
            queued = [o.key for o in pending if not self.jobs.busy(o.key)]
            handle(f"{self.prefix}{folder}" in self._folders, queued)
        listed_at = time.monotonic()
        tried: set[str] = set()
        candidates = pending
        while not self._stopping.is_set():
            free = self.jobs.free()
            candidates = [o for o in candidates if not self.jobs.busy(o.key)]
            if free <= 0 or not candidates:
                break
            batch = pick_batch(
                candidates, free, self._random, spread=getattr(self.claimer, "mode", "") != "single"
            )
            for obj, claim in self._claim_all(batch):
                self.jobs.admit(obj.key, claim, self._start)
            tried.update(o.key for o in batch)
            if time.monotonic() - listed_at > STALE_LISTING_SECONDS:
                candidates = listed = self._pending()
                listed_at = time.monotonic()
            candidates = [o for o in candidates if o.key not in tried]
        if self.metrics is not None:
            # After the claims: a manifest that runs here is not waiting (issue 13).
            waiting = [o for o in listed if not self.jobs.busy(o.key)]
            self.metrics.manifests_pending.set(len(waiting))
        return len(pending)

    def _pending(self) -> list[Any]:
        """The manifests in the requests prefix, oldest first (one ListObjectsV2, whose
        sub-prefixes are kept in ``_folders``)."""
        level = self.store.list_level(self.bucket, self.prefix)
        self._folders = level.folders
        return sorted(
            (o for o in level.objects if is_manifest_key(o.key, self.prefix)),
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

    def _start(self, live: LiveJob) -> None:
        live.thread = threading.Thread(
            target=self._perform, args=(live,), name=f"job-{live.key}", daemon=True
        )
        live.thread.start()

    # -- one job -----------------------------------------------------------------------------

    def _perform(self, live: LiveJob) -> None:
        log = self.log.bind(manifest=live.key)
        park: float | None = None
        try:
            park = self._run_version(live, log)
        except JobCancelled:
            log.warning("job_cancelled", reason=live.cancel.reason)
        except WatcherError as exc:
            log.error("job_infrastructure_error", code=exc.code, error=exc.message)
            park = self._failed_attempt(live, exc, log)
        except Exception:
            log.exception("job_crashed")
            park = backoff_seconds(self._attempts(live), self.settings.watch.lease_seconds)
        finally:
            self.jobs.release(live, park_seconds=park)
            self.jobs.finished(live)
            if not live.waiting:
                self._wake.set()  # a slot is free: poll now

    def _attempts(self, live: LiveJob) -> int:
        return int(getattr(live.claim, "attempts", 1) or 1)

    def _run_version(self, live: LiveJob, log: Any) -> float | None:
        """One claimed manifest, start to end. Returns a backoff when the attempt failed on
        infrastructure and the claim record should hold the manifest back, else None."""
        run = getattr(live.claim, "run", "") or ""
        try:
            version = self.manifests.read(live.key, run)
        except InvalidManifest as exc:  # over the size limit: it can never run
            reject_oversized(self.store, self.settings, live.key, exc, log=log)
            self.store.copy(self.bucket, live.key, filed_key(self.prefix, live.key, False))
            self.store.delete(self.bucket, live.key)
            return None
        if version is None:
            log.info("manifest_gone")
            return None
        job_id = job_id_for(None, live.key)
        target = guess_target(version.body, requests_prefix=self.prefix)
        live.job_id = guess_id(version.body) or job_id
        log = log.bind(job_id=live.job_id, etag=version.etag, run=version.run or None)
        if target is not None:
            committed = self._commit_record(version, target)
            if committed is not None:
                log.info("job_already_committed", target=target)
                succeeded = committed.get("state") == "succeeded"
                self._file(live, version, succeeded=succeeded, log=log)
                return None
            key = target_claim_key(self.prefix, self.settings.buckets.output, target)
            if not self.jobs.take_target(live, key):
                log.info("target_busy", target=target)
                live.waiting = True
                return None
        attempts = self._attempts(live)
        if attempts > self.max_attempts:
            error = StorageError(f"gave up after {attempts - 1} attempts")
            self._dead_letter(live, version, error, log, attempts=attempts - 1)
            return None
        # Claiming, reading and claiming the target took a while (a settle delay each on B2):
        # confirm the claims now, so a job never starts on a claim already lost — and only then
        # consume a cancel request, which the claim's new owner needs otherwise.
        self.jobs.fence(live, "start")
        if self._cancel_check is not None and self._cancel_check(live.job_id):
            live.cancel.set(REQUESTED)
        if self.metrics is not None:
            self.metrics.job_started()
        try:
            outcome = run_job(
                self.store,
                self.settings,
                version.body,
                manifest_key=live.key,
                running=live.running,
                fence=lambda: self.jobs.fence(live),
                manifest_version=version.identity(),
                log=log,
                on_start=self._on_job_start,
            )
        except BaseException:
            if self.metrics is not None:
                self.metrics.jobs_running.dec()
            raise
        live.job_id = outcome.job_id
        if self.metrics is not None:
            self.metrics.observe_outcome(outcome)
        self._file(live, version, succeeded=outcome.state == "succeeded", log=log)
        if self._on_finished is not None and outcome.result is not None:
            self._on_finished(outcome.result, outcome.notify_url)  # completion callbacks (§9)
        return None

    def _commit_record(self, version: ManifestVersion, target: str) -> dict[str, Any] | None:
        """The result marker at ``target`` when it is this version's commit record (§7.2)."""
        try:
            raw = self.store.get_bytes(
                self.settings.buckets.output, result_key(target), max_bytes=64 << 20
            )
            document = json.loads(raw) if raw is not None else None
        except (InvalidManifest, ValueError):
            return None
        return document if version.committed_by(document) else None

    def _file(self, live: LiveJob, version: ManifestVersion, *, succeeded: bool, log: Any) -> None:
        """File a finished job's manifest; retried a few times, then left to the claim's expiry:
        whoever takes the claim next finds the commit record and files it (§7.2)."""
        for attempt in range(3):
            try:
                self.manifests.file(version, succeeded=succeeded)
                log.info("manifest_filed", succeeded=succeeded)
                return
            except StorageError as exc:
                log.warning("manifest_filing_retry", attempt=attempt, error=exc.message)
                if live.cancel.wait(min(10.0, 2.0**attempt)):
                    break
        log.error("manifest_filing_failed")
        with live.lock:
            live.released = True  # keep the claims: they expire, and the next owner files

    def _failed_attempt(self, live: LiveJob, exc: WatcherError, log: Any) -> float | None:
        """An attempt that failed on infrastructure: back off, or after ``max_attempts`` fail the
        manifest for good (§7.5)."""
        attempts = self._attempts(live)
        if attempts < self.max_attempts:
            seconds = backoff_seconds(attempts, self.settings.watch.lease_seconds)
            log.warning("job_attempt_failed", attempts=attempts, backoff_seconds=seconds)
            return seconds
        try:
            version = self.manifests.read(live.key, getattr(live.claim, "run", "") or "")
        except WatcherError:
            return backoff_seconds(attempts, self.settings.watch.lease_seconds)
        if version is not None:
            error = exc if isinstance(exc, JobError) else StorageError(exc.message)
            self._dead_letter(live, version, error, log, attempts=attempts)
        return None

    def _dead_letter(
        self,
        live: LiveJob,
        version: ManifestVersion | None,
        error: JobError,
        log: Any,
        *,
        attempts: int | None = None,
    ) -> None:
        """Fail a manifest for good: a result marker when one can be written, and always the
        manifest under failed/ with failed/<name>.error.json."""
        attempts = attempts if attempts is not None else self._attempts(live)
        job_id = live.job_id or job_id_for(None, live.key)
        log.error("job_failed_for_good", code=error.code, error=error.message, attempts=attempts)
        if version is not None:
            target = guess_target(version.body, requests_prefix=self.prefix)
            if target is not None:
                info = JobInfo(
                    job_id,
                    target,
                    self.settings.buckets.output,
                    live.key,
                    datetime.now(UTC),
                    version.identity(),
                )
                self.jobs.fence(live)
                try:
                    MarkerWriter(self.store, info, Progress(), log=log).finished(error)
                except JobError as exc:
                    log.warning("result_marker_unwritable", code=exc.code, error=exc.message)
        intake.write_error_report(
            self.store, self.settings, live.key, job_id, error, attempts=attempts
        )
        if version is not None:
            self.manifests.file(version, succeeded=False)
        else:
            self.store.copy(self.bucket, live.key, filed_key(self.prefix, live.key, False))
            self.store.delete(self.bucket, live.key)

    def _on_job_start(self, job_id: str, target: str, manifest_key: str | None) -> None:
        """Abort uploads a dead earlier run left behind (run_job indexed the job already).

        We hold the target's claim, so any unfinished upload of this target belongs to a job
        whose claim is dead (B2 would otherwise keep its parts, and bill them, indefinitely).
        """
        output = self.settings.buckets.output
        for upload in self.store.list_multipart_uploads(output, target):
            if upload["Key"] == target:
                self.store.abort_upload(output, target, upload["UploadId"])
                self.log.info("stale_upload_aborted", job_id=job_id, target=target)
