"""Retention (CONTRACT §9): a housekeeping job deletes what the daemon itself keeps, once old.

In the watch bucket, under the requests prefix and nowhere else:

* ``done/`` — filed manifests of succeeded jobs, after ``retention.done_days``;
* ``failed/`` — filed manifests of failed jobs and their ``.error.json``, after
  ``retention.failed_days``;
* ``.jobs/`` — the job index, after the longer of the two (``GET /jobs/<id>`` and retry need it
  as long as the filed manifest exists);
* ``.claims/`` — claims of jobs whose manifest is no longer in the requests prefix (finished),
  after ``retention.done_days``; a claim whose manifest is still there is never touched;
* ``.cancel/`` — cancel requests (``DELETE /jobs/<id>`` for a job another daemon holds), after
  the job index's age: a request belongs to its job, and one not yet honoured must outlive any
  queue (a consumed request leaves a delete marker on a versioned bucket, which goes the same
  way).

Every version of each such key goes, delete markers included (B2 keeps every version, and bills
them), and a key is judged by its newest version: one rewritten recently stays whole. In the
output bucket, multipart uploads started more than ``retention.stale_upload_hours`` ago are
aborted. ZIPs and their markers are the user's: nothing outside those sub-prefixes is ever
listed for deletion (targets may not live in the requests prefix, CONTRACT §3).

:func:`plan` decides (pure); :class:`Housekeeping` lists, deletes, counts, and runs as an
APScheduler job every ``retention.interval_seconds``. Every request goes through
:class:`watcher.store.Store` (its verbs list versions page by page, delete exact versions 1,000 at a
time, translate errors and count requests); the sub-prefixes come from :mod:`watcher.layout`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from watcher.errors import WatcherError
from watcher.layout import CANCEL, CLAIMS, DONE, FAILED, JOBS

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.store import Store

DAY = 86_400.0
KINDS = ("done", "failed", "jobs", "claims", "cancel")
# Each kind's sub-prefix of the requests prefix.
SUB_PREFIXES = {"done": DONE, "failed": FAILED, "jobs": JOBS, "claims": CLAIMS, "cancel": CANCEL}


class Versioned(Protocol):
    """One version of a key: :class:`Version` here, :class:`watcher.store.VersionInfo` live."""

    @property
    def key(self) -> str: ...

    @property
    def version_id(self) -> str: ...

    @property
    def last_modified(self) -> datetime: ...


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    last_modified: datetime


@dataclass(frozen=True)
class Policy:
    done_seconds: float  # 0: keep forever
    failed_seconds: float
    stale_upload_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        r = settings.retention
        return cls(r.done_days * DAY, r.failed_days * DAY, r.stale_upload_hours * 3600.0)


def kind_of(key: str, prefix: str) -> str | None:
    """Which of our sub-prefixes ``key`` is in, or None for anything else (pure)."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    for kind, sub in SUB_PREFIXES.items():
        if rest.startswith(sub) and len(rest) > len(sub):
            return kind
    return None


def claim_manifest(key: str, prefix: str) -> str:
    """The manifest key a claim key belongs to: ``.claims/<name>[/...]`` -> ``<prefix><name>``."""
    rest = key[len(prefix) + len(CLAIMS) :]
    return prefix + rest.split("/", 1)[0]


def max_age(kind: str, policy: Policy) -> float:
    if kind == "done" or kind == "claims":
        return policy.done_seconds
    if kind == "failed":
        return policy.failed_seconds
    # "jobs" and "cancel": as long as the filed manifests the index points at
    if policy.done_seconds == 0 or policy.failed_seconds == 0:
        return 0.0
    return max(policy.done_seconds, policy.failed_seconds)


def plan(
    versions: Iterable[Versioned],
    *,
    prefix: str,
    now: datetime,
    policy: Policy,
    waiting: set[str],
) -> dict[str, list[Versioned]]:
    """The versions to delete, by kind (pure).

    A key goes with all its versions when its newest version is older than its kind's age;
    ``waiting`` are the manifests in the requests prefix now, whose claims must stay.
    """
    by_key: dict[str, list[Versioned]] = {}
    for version in versions:
        if kind_of(version.key, prefix) is not None:
            by_key.setdefault(version.key, []).append(version)
    doomed: dict[str, list[Versioned]] = {kind: [] for kind in KINDS}
    for key, all_versions in by_key.items():
        kind = kind_of(key, prefix)
        assert kind is not None
        age = max_age(kind, policy)
        if age <= 0:
            continue
        if kind == "claims" and claim_manifest(key, prefix) in waiting:
            continue
        newest = max(v.last_modified for v in all_versions)
        if now - newest > timedelta(seconds=age):
            doomed[kind].extend(all_versions)
    return doomed


def stale_uploads(uploads: Iterable[dict], *, now: datetime, policy: Policy) -> list[dict]:
    """Multipart uploads initiated longer ago than the policy allows (pure)."""
    if policy.stale_upload_seconds <= 0:
        return []
    limit = timedelta(seconds=policy.stale_upload_seconds)
    return [u for u in uploads if now - u["Initiated"] > limit]


class Housekeeping:
    """Runs :meth:`run_once` periodically on its own APScheduler scheduler."""

    def __init__(
        self, settings: Settings, store: Store, *, metrics: Any = None, log: Any = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.log = log or structlog.get_logger("watcher.retention")
        self._scheduler: Any = None

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        interval = self.settings.retention.interval_seconds
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._scheduler.add_job(
            self._run_logged,
            "interval",
            seconds=interval,
            id="retention",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC) + timedelta(seconds=min(interval, 60.0)),
        )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)

    def _run_logged(self) -> None:
        try:
            counts = self.run_once()
        except WatcherError as exc:
            self.log.warning("retention_failed", code=exc.code, error=exc.message)
            return
        if any(counts.values()):
            self.log.info("retention_deleted", **counts)

    def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass; returns how many versions (and uploads) of each kind went."""
        now = now or datetime.now(UTC)
        policy = Policy.from_settings(self.settings)
        bucket = self.settings.watch_bucket
        prefix = self.settings.watch.prefix
        versions = [
            v for sub in SUB_PREFIXES.values() for v in self._versions(bucket, prefix + sub)
        ]
        waiting = {o.key for o in self.store.list_objects(bucket, prefix, delimiter="/")}
        doomed = plan(versions, prefix=prefix, now=now, policy=policy, waiting=waiting)
        counts = {kind: 0 for kind in (*KINDS, "uploads")}
        for kind, items in doomed.items():
            self.store.delete_versions(bucket, items)  # type: ignore[arg-type]
            counts[kind] = len(items)
        output = self.settings.buckets.output
        if policy.stale_upload_seconds > 0:
            uploads = self.store.list_multipart_uploads(output, "")
            for upload in stale_uploads(uploads, now=now, policy=policy):
                self.store.abort_upload(output, upload["Key"], upload["UploadId"])
                counts["uploads"] += 1
        if self.metrics is not None:
            for kind, n in counts.items():
                if n:
                    self.metrics.retention_deleted.labels(kind=kind).inc(n)
        return counts

    def _versions(self, bucket: str, prefix: str) -> list[Versioned]:
        """Every version and delete marker under ``prefix`` (one sub-prefix of ours)."""
        return list(self.store.list_versions(bucket, prefix))
