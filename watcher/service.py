"""The daemon as the HTTP API sees it: submit, look up, readiness, wake-up.

``api.py`` knows nothing of stores or schedulers; it calls this backend, which reuses the intake
(the same validation and the same requests prefix as a dropped manifest) and the daemon's wake-up.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from watcher import intake, jobs
from watcher.errors import WatcherError
from watcher.layout import CANCEL
from watcher.readiness import Readiness

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.daemon import Daemon
    from watcher.store import Store

READY_CACHE_SECONDS = 5.0
# A cancel request that no daemon took up this long after it was made is looked at again (its
# job may have finished meanwhile: then the request is dropped), at most this often.
STALE_CANCEL_SECONDS = 60.0


class CancelRequests:
    """Make a daemon honour cancel requests (``jobs.request_cancel``) written by any process.

    Nothing is asked of the store for it while no request waits: each poll's listing of the
    requests prefix shows the ``.cancel/`` sub-prefix only when it holds one. When it does, one
    more LIST names the jobs: one running here is cancelled; one queued in the prefix is claimed
    at once, past the daemon's capacity, and ends ``cancelled`` without running (CONTRACT §9:
    within 10 s, even while every slot is busy); a job claimed later finds its id in the last
    listed set. Requests are consumed (deleted) when honoured.
    """

    def __init__(self, daemon: Daemon, store: Store, settings: Settings, log: Any) -> None:
        self.daemon = daemon
        self.store = store
        self.settings = settings
        self.log = log
        self.requested: frozenset[str] = frozenset()
        self._manifests: dict[str, str | None] = {}  # job id -> its manifest key
        self._looked_at: dict[str, float] = {}  # job id -> when it was last found stale

    def install(self) -> CancelRequests:
        self.daemon.set_cancel_check(self.check)
        self.daemon.set_cancel_requests(CANCEL, self.on_poll)
        return self

    def check(self, job_id: str) -> bool:
        """Asked once a job is claimed, before it runs: True (and the request consumed) when a
        request for it was listed."""
        if job_id not in self.requested:
            return False
        self._consume(job_id)
        return True

    def on_poll(self, waiting: bool, queued: list[str]) -> None:
        if not waiting:
            self.requested = frozenset()
            self._manifests.clear()
            return
        try:
            self.requested = frozenset(jobs.requested_cancels(self.store, self.settings))
            queued_keys = set(queued)
            for job_id in self.requested:
                if self.daemon.cancel(job_id):
                    self.log.info("job_cancel_requested", job_id=job_id)
                    self._consume(job_id)
                    continue
                manifest = self._manifest_of(job_id)
                if manifest in queued_keys:
                    self.log.info("queued_job_cancel_requested", job_id=job_id)
                    self.daemon.take_now(manifest)
                else:
                    self._drop_if_stale(job_id)
        except WatcherError as exc:
            self.log.warning("cancel_requests_failed", code=exc.code, error=exc.message)

    def _manifest_of(self, job_id: str) -> str | None:
        if job_id not in self._manifests:
            self._manifests[job_id] = jobs.cancel_target(self.store, self.settings, job_id)
        return self._manifests[job_id]

    def _drop_if_stale(self, job_id: str) -> None:
        """A request nobody honoured (its job finished meanwhile, or vanished) is dropped, so the
        polls stop paying for it; one whose job still waits or runs elsewhere stays."""
        now = time.monotonic()
        if now - self._looked_at.setdefault(job_id, now) < STALE_CANCEL_SECONDS:
            return
        self._looked_at[job_id] = now
        if jobs.cancel_is_stale(self.store, self.settings, job_id):
            self.log.info("cancel_request_dropped", job_id=job_id)
            self._consume(job_id)

    def _consume(self, job_id: str) -> None:
        self.requested = self.requested - {job_id}
        self._manifests.pop(job_id, None)
        self._looked_at.pop(job_id, None)
        try:
            jobs.clear_cancel(self.store, self.settings, job_id)
        except WatcherError as exc:
            self.log.warning("cancel_request_not_cleared", job_id=job_id, error=exc.message)


class DaemonBackend:
    """Implements ``api.ApiBackend`` on top of a store and a running daemon."""

    def __init__(self, store: Store, settings: Settings, daemon: Daemon) -> None:
        self.store = store
        self.settings = settings
        self.daemon = daemon
        self.requests_prefix = settings.watch.prefix
        self.watch_bucket = settings.watch_bucket
        self._probe_client = None
        self._readiness = Readiness(self._probe_buckets, interval=READY_CACHE_SECONDS).start()

    def submit(self, raw: bytes) -> intake.Submitted:
        submitted = intake.submit_manifest(self.store, self.settings, raw)
        self.daemon.wake([submitted.manifest_key])
        return submitted

    def job_status(self, job_id: str) -> dict | None:
        """The job's view (``jobs.job_view``): its status marker with ``error``, and once it has
        finished its result marker's fields but ``entries``; ``pending`` before it starts."""
        try:
            return jobs.load_job(self.store, self.settings, job_id)
        except jobs.NotFound:
            return None

    def list_jobs(self, *, state: str | None, limit: str | None, cursor: str | None) -> dict:
        return jobs.list_jobs(
            self.store,
            self.settings,
            state=jobs.parse_state(state),
            limit=jobs.parse_limit(limit),
            cursor=cursor,
        )

    def retry(self, job_id: str) -> dict:
        retried = jobs.retry_job(self.store, self.settings, job_id)
        self.daemon.wake([retried["manifest"]])
        return retried

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job: at once when it runs here, else through a cancel
        request that the daemon claiming or running it honours (``jobs.request_cancel``)."""
        view = jobs.request_cancel(self.store, self.settings, job_id)
        if self.daemon.cancel(job_id):
            jobs.clear_cancel(self.store, self.settings, job_id)
        else:
            self.daemon.wake()
        return view

    def download_url(self, job_id: str) -> str:
        view = jobs.load_job(self.store, self.settings, job_id, with_result=False)
        expires = self.settings.links.expires_seconds
        return jobs.download_link(self.store, self.settings, view, expires).url

    def ready(self) -> bool:
        """Buckets reachable and not stopping: computed in the background, answered at once."""
        return self._readiness.ready() and not self.daemon.stopping

    def _probe_buckets(self) -> bool:
        """One HeadBucket per bucket on a quick client (short timeouts, one retry)."""
        from watcher.preflight import probe_client

        if self._probe_client is None:
            self._probe_client = probe_client(self.settings)
        buckets = {self.settings.buckets.input, self.settings.buckets.output, self.watch_bucket}
        for bucket in buckets:
            self._probe_client.head_bucket(bucket)
        return True

    def wake(self, keys: list[str]) -> None:
        self.daemon.wake(keys)
