"""Retention (CONTRACT §9): a housekeeping job deletes what the daemon itself keeps, once old.

In the watch bucket, under the requests prefix and nowhere else:

* ``done/`` — filed manifests of succeeded jobs, after ``retention.done_days``;
* ``failed/`` — filed manifests of failed jobs and their ``.error.json``, after
  ``retention.failed_days``;
* ``.jobs/`` — the job index, after the longer of the two (``GET /jobs/<id>`` and retry need it
  as long as the filed manifest exists);
* ``.claims/`` — claims of jobs whose manifest is no longer in the requests prefix (finished),
  after ``retention.done_days``; a claim whose manifest is still there is never touched.

Every version of each such key goes, delete markers included (B2 keeps every version, and bills
them), and a key is judged by its newest version: one rewritten recently stays whole. In the
output bucket, multipart uploads started more than ``retention.stale_upload_hours`` ago are
aborted. ZIPs and their markers are the user's: nothing outside those sub-prefixes is ever
listed for deletion (targets may not live in the requests prefix, CONTRACT §3).

:func:`plan` decides (pure); :class:`Housekeeping` lists, deletes, counts, and runs as an
APScheduler job every ``retention.interval_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from watcher.config import Settings

DAY = 86_400.0
KINDS = ("done", "failed", "jobs", "claims")


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
    for kind, sub in (("done", "done/"), ("failed", "failed/"), ("jobs", ".jobs/")):
        if rest.startswith(sub) and len(rest) > len(sub):
            return kind
    if rest.startswith(".claims/") and len(rest) > len(".claims/"):
        return "claims"
    return None


def claim_manifest(key: str, prefix: str) -> str:
    """The manifest key a claim key belongs to: ``.claims/<name>[/...]`` -> ``<prefix><name>``."""
    rest = key[len(prefix) + len(".claims/") :]
    return prefix + rest.split("/", 1)[0]


def max_age(kind: str, policy: Policy) -> float:
    if kind == "done" or kind == "claims":
        return policy.done_seconds
    if kind == "failed":
        return policy.failed_seconds
    if policy.done_seconds == 0 or policy.failed_seconds == 0:
        return 0.0  # the index lives as long as the filed manifests it points at
    return max(policy.done_seconds, policy.failed_seconds)


def plan(
    versions: Iterable[Version],
    *,
    prefix: str,
    now: datetime,
    policy: Policy,
    waiting: set[str],
) -> dict[str, list[Version]]:
    """The versions to delete, by kind (pure).

    A key goes with all its versions when its newest version is older than its kind's age;
    ``waiting`` are the manifests in the requests prefix now, whose claims must stay.
    """
    by_key: dict[str, list[Version]] = {}
    for version in versions:
        if kind_of(version.key, prefix) is not None:
            by_key.setdefault(version.key, []).append(version)
    doomed: dict[str, list[Version]] = {kind: [] for kind in KINDS}
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
        self, settings: Settings, client: Any, *, metrics: Any = None, log: Any = None
    ) -> None:
        self.settings = settings
        self.client = client
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
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            counts = self.run_once()
        except (ClientError, BotoCoreError) as exc:
            self.log.warning("retention_failed", error=type(exc).__name__)
            return
        if any(counts.values()):
            self.log.info("retention_deleted", **counts)

    def run_once(self, now: datetime | None = None) -> dict[str, int]:
        """One pass; returns how many versions (and uploads) of each kind went."""
        now = now or datetime.now(UTC)
        policy = Policy.from_settings(self.settings)
        bucket = self.settings.watch_bucket
        prefix = self.settings.watch.prefix
        versions = list(self._versions(bucket, prefix))
        waiting = self._current_manifests(bucket, prefix)
        doomed = plan(versions, prefix=prefix, now=now, policy=policy, waiting=waiting)
        counts = {kind: 0 for kind in (*KINDS, "uploads")}
        for kind, items in doomed.items():
            self._delete(bucket, items)
            counts[kind] = len(items)
        output = self.settings.buckets.output
        for upload in stale_uploads(self._uploads(output), now=now, policy=policy):
            self.client.abort_multipart_upload(
                Bucket=output, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            counts["uploads"] += 1
        if self.metrics is not None:
            for kind, n in counts.items():
                if n:
                    self.metrics.retention_deleted.labels(kind=kind).inc(n)
        return counts

    def _versions(self, bucket: str, prefix: str) -> Iterable[Version]:
        for sub in ("done/", "failed/", ".jobs/", ".claims/"):
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=bucket, Prefix=prefix + sub
            )
            for page in pages:
                for item in (*page.get("Versions", []), *page.get("DeleteMarkers", [])):
                    yield Version(
                        item["Key"], item.get("VersionId") or "null", item["LastModified"]
                    )

    def _current_manifests(self, bucket: str, prefix: str) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def _uploads(self, bucket: str) -> Iterable[dict]:
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            yield from page.get("Uploads", [])

    def _delete(self, bucket: str, versions: list[Version]) -> None:
        for start in range(0, len(versions), 1000):
            chunk = versions[start : start + 1000]
            self.client.delete_objects(
                Bucket=bucket,
                Delete={
                    "Objects": [{"Key": v.key, "VersionId": v.version_id} for v in chunk],
                    "Quiet": True,
                },
            )
