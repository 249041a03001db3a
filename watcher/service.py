"""The daemon as the HTTP API sees it: submit, look up, readiness, wake-up.

``api.py`` knows nothing of stores or schedulers; it calls this backend, which reuses the intake
(the same validation and the same requests prefix as a dropped manifest) and the daemon's wake-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watcher import intake, jobs
from watcher.errors import WatcherError
from watcher.readiness import Readiness

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.daemon import Daemon
    from watcher.store import Store

READY_CACHE_SECONDS = 5.0
# How often a daemon with running jobs looks for cancel requests made elsewhere (CONTRACT §9:
# a cancelled job ends within 10 s).
CANCEL_SCAN_SECONDS = 3.0


def honour_cancels(daemon: Daemon, store: Store, settings: Settings, log: Any) -> None:
    """Make ``daemon`` honour cancel requests (``jobs.request_cancel``) written by any process:
    a job is checked once claimed, before it runs; while jobs run here, the requests are listed
    every :data:`CANCEL_SCAN_SECONDS` (one LIST, none while idle)."""

    def check(job_id: str) -> bool:
        try:
            return jobs.take_cancel(store, settings, job_id)
        except WatcherError as exc:
            log.warning("cancel_check_failed", job_id=job_id, error=exc.message)
            return False

    def scan() -> None:
        if daemon.running_jobs() == 0:
            return
        try:
            for job_id in jobs.requested_cancels(store, settings):
                if daemon.cancel(job_id):
                    log.info("job_cancel_requested", job_id=job_id)
                    jobs.clear_cancel(store, settings, job_id)
        except WatcherError as exc:
            log.warning("cancel_scan_failed", error=exc.message)

    daemon.set_cancel_check(check)
    daemon.add_periodic(scan, CANCEL_SCAN_SECONDS, "cancel-requests")


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
