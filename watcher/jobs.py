"""Jobs as their users see them (CONTRACT §9): one job's view, the list, retry, download links.

Everything here reads what the daemon already keeps — the job index under
``<prefix>.jobs/<job_id>.json``, the status and result markers next to each target, the filed
manifests — so any daemon (or the CLI) can answer for every job, wherever it ran. Decisions
(merging markers into a view, paging, what may be retried) are pure functions; the rest is thin
I/O around them. Presigned links are credentials: they are returned, never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from watcher.errors import WatcherError
from watcher.intake import lookup_job
from watcher.layout import CANCEL, JOBS, cancel_key, error_report_key, filed_key
from watcher.manifest import is_job_id
from watcher.markers import result_key, status_key

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.store import Store

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
STATES = ("pending", "running", "succeeded", "failed")
FINISHED = ("succeeded", "failed")
MAX_MARKER_BYTES = 1 << 30


class NotFound(WatcherError):
    code = "not_found"


class Conflict(WatcherError):
    """The job is in a state that does not allow what was asked (HTTP 409)."""

    code = "conflict"


class BadRequest(WatcherError):
    code = "bad_request"


# -- one job ----------------------------------------------------------------------------------


def job_view(entry: dict, status: dict | None, result: dict | None) -> dict:
    """What ``GET /jobs/<id>`` answers (pure).

    The status marker when it is this job's (``pending`` while no daemon started it), with
    ``error`` always present, and — once the job has finished — every field of its result
    marker but ``entries`` (which can hold 100,000 items).
    """
    job_id = entry["job_id"]
    if isinstance(result, dict) and result.get("job_id") == job_id:
        return {k: v for k, v in result.items() if k != "entries"}
    if isinstance(status, dict) and status.get("job_id") == job_id:
        return {"error": None, **status}
    return {
        "job_id": job_id,
        "state": "pending",
        "target": entry["target"],
        "bucket": entry.get("bucket"),
        "manifest": entry.get("manifest"),
        "error": None,
    }


def _marker(store: Store, bucket: str, key: str, max_bytes: int) -> dict | None:
    raw = store.get_bytes(bucket, key, max_bytes=max_bytes)
    try:
        document = json.loads(raw) if raw else None
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def load_job(store: Store, settings: Settings, job_id: str, *, with_result: bool = True) -> dict:
    """The view of ``job_id``; :class:`NotFound` for an unknown one.

    The status marker is read first (small); the result marker only when the status says the
    job finished, so a running job costs one GET.
    """
    entry = lookup_job(store, settings, job_id)
    if entry is None:
        raise NotFound(f"no job {job_id!r}")
    entry = {**entry, "job_id": job_id}
    bucket = entry.get("bucket") or settings.buckets.output
    status = _marker(store, bucket, status_key(entry["target"]), 1 << 20)
    result = None
    mine = isinstance(status, dict) and status.get("job_id") == job_id
    if with_result and mine and status.get("state") in FINISHED:
        result = _marker(store, bucket, result_key(entry["target"]), MAX_MARKER_BYTES)
    return job_view(entry, status, result)


# -- the list ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    job_id: str
    indexed_at: datetime


def encode_cursor(item: Listed) -> str:
    raw = f"{item.indexed_at.isoformat()}|{item.job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, job_id = raw.split("|", 1)
        return datetime.fromisoformat(moment), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("next: not a cursor this API gave out") from None


def newest_first(items: Iterable[Listed], cursor: str | None) -> list[Listed]:
    """Index entries newest first, starting after ``cursor`` (pure)."""
    ordered = sorted(items, key=lambda i: (i.indexed_at, i.job_id), reverse=True)
    if not cursor:
        return ordered
    after = decode_cursor(cursor)
    return [i for i in ordered if (i.indexed_at, i.job_id) < after]


def parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return limit


def parse_state(text: str | None) -> str | None:
    if text is None or text == "":
        return None
    if text not in STATES:
        raise BadRequest(f"state: must be one of {', '.join(STATES)}")
    return text


def list_jobs(
    store: Store,
    settings: Settings,
    *,
    state: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> dict:
    """``{"jobs": [...], "next": cursor | None}``, newest first (by when the job was indexed).

    One listing of the job index, then the jobs' status markers read in parallel, a page at a
    time; with ``state`` the pages go on until ``limit`` jobs matched or the index is exhausted.
    """
    index_prefix = f"{settings.watch.prefix}{JOBS}"
    listed = [
        Listed(obj.key[len(index_prefix) : -len(".json")], obj.last_modified)
        for obj in store.list_objects(settings.watch_bucket, index_prefix)
        if obj.key.endswith(".json")
    ]
    candidates = [i for i in newest_first(listed, cursor) if is_job_id(i.job_id)]
    jobs: list[dict] = []
    used = 0  # candidates looked at
    with ThreadPoolExecutor(8, thread_name_prefix="jobs-list") as pool:
        while used < len(candidates) and len(jobs) < limit:
            batch = candidates[used : used + limit]
            views = list(pool.map(lambda i: _list_item(store, settings, i), batch))
            for view in views:
                used += 1
                if view is not None and (state is None or view["state"] == state):
                    jobs.append(view)
                if len(jobs) == limit:
                    break
    more = used < len(candidates)
    return {"jobs": jobs, "next": encode_cursor(candidates[used - 1]) if more else None}


def _list_item(store: Store, settings: Settings, item: Listed) -> dict | None:
    try:
        view = load_job(store, settings, item.job_id, with_result=False)
    except NotFound:
        return None
    summary = {
        k: view.get(k)
        for k in ("job_id", "state", "target", "bucket", "manifest", "started_at", "updated_at")
    }
    summary["indexed_at"] = item.indexed_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    summary["error"] = None
    if view["state"] == "failed":
        result = _marker(
            store,
            view.get("bucket") or settings.buckets.output,
            result_key(view["target"]),
            MAX_MARKER_BYTES,
        )
        if result is not None and result.get("job_id") == item.job_id:
            summary["error"] = result.get("error")
            summary["finished_at"] = result.get("finished_at")
    return summary


# -- retry ------------------------------------------------------------------------------------


def retryable(view: dict) -> str | None:
    """Why the job cannot be retried, or None (pure)."""
    if view["state"] != "failed":
        return f"job {view['job_id']!r} is {view['state']}: only a failed job can be retried"
    if not view.get("manifest"):
        return f"job {view['job_id']!r} came by `zip`, not through the requests prefix"
    return None


def failed_copy_key(prefix: str, manifest_key: str) -> str:
    return filed_key(prefix, manifest_key, succeeded=False)


def retry_job(store: Store, settings: Settings, job_id: str) -> dict:
    """Re-queue a failed job under the same id: its manifest goes back into the requests prefix.

    The failed result marker is deleted first: a manifest whose result marker exists counts as
    finished and is filed without running (CONTRACT §7.2). Then the filed manifest is written
    back, and only then is the filed copy (and its ``.error.json``) removed, so the manifest is
    never lost on the way.
    """
    view = load_job(store, settings, job_id)
    reason = retryable(view)
    if reason is not None:
        raise Conflict(reason)
    prefix = settings.watch.prefix
    manifest_key = view["manifest"]
    filed = failed_copy_key(prefix, manifest_key)
    bucket = settings.watch_bucket
    raw = store.get_bytes(bucket, filed, max_bytes=16 * 1024 * 1024 + 1)
    if raw is None:
        raise Conflict(f"the failed manifest s3://{bucket}/{filed} is gone (retention?)")
    output = view.get("bucket") or settings.buckets.output
    store.delete(output, result_key(view["target"]))
    clear_cancel(store, settings, job_id)  # a request left from the last run must not cancel this
    store.put_bytes(bucket, manifest_key, raw, content_type="application/json")
    store.delete(bucket, filed)
    store.delete(bucket, error_report_key(prefix, manifest_key))
    return {"job_id": job_id, "target": view["target"], "manifest": manifest_key}


# -- cancel -----------------------------------------------------------------------------------


def cancellable(view: dict) -> str | None:
    """Why the job cannot be cancelled, or None (pure)."""
    if view["state"] in FINISHED:
        return f"job {view['job_id']!r} has already {view['state']}"
    return None


def request_cancel(store: Store, settings: Settings, job_id: str) -> dict:
    """Record that ``job_id`` must end ``cancelled``; :class:`Conflict` when it has finished.

    A request object rather than a message, so whichever daemon claims or runs the job — here or
    on another host — honours it (``service.CancelRequests``). It names the job's manifest, so
    a daemon can find the job while it is still queued.
    """
    view = load_job(store, settings, job_id, with_result=False)
    reason = cancellable(view)
    if reason is not None:
        raise Conflict(reason)
    store.put_json(
        settings.watch_bucket,
        cancel_key(settings.watch.prefix, job_id),
        {
            "job_id": job_id,
            "manifest": view.get("manifest"),
            "requested_at": datetime.now(UTC).isoformat(),
        },
    )
    return view


def requested_cancels(store: Store, settings: Settings) -> list[str]:
    """The job ids with a cancel request waiting (one listing)."""
    prefix = f"{settings.watch.prefix}{CANCEL}"
    return [
        obj.key[len(prefix) : -len(".json")]
        for obj in store.list_objects(settings.watch_bucket, prefix)
        if obj.key.endswith(".json")
    ]


def cancel_target(store: Store, settings: Settings, job_id: str) -> str | None:
    """The manifest key of the job a cancel request is for (the request names it; else the job
    index does), or None."""
    request = _marker(
        store, settings.watch_bucket, cancel_key(settings.watch.prefix, job_id), 1 << 16
    )
    if request is not None and isinstance(request.get("manifest"), str):
        return request["manifest"]
    entry = lookup_job(store, settings, job_id)
    manifest = entry.get("manifest") if entry else None
    return manifest if isinstance(manifest, str) else None


def cancel_is_stale(store: Store, settings: Settings, job_id: str) -> bool:
    """Whether a cancel request can no longer be honoured: its job finished, or is unknown."""
    try:
        view = load_job(store, settings, job_id, with_result=False)
    except NotFound:
        return True
    return view["state"] in FINISHED


def clear_cancel(store: Store, settings: Settings, job_id: str) -> None:
    store.delete(settings.watch_bucket, cancel_key(settings.watch.prefix, job_id))


# -- download links ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: datetime

    def fields(self) -> dict[str, str]:
        return {
            "download_url": self.url,
            "download_url_expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
        }


def presign(store: Store, bucket: str, key: str, expires_seconds: int) -> Link:
    """A presigned GET of ``bucket/key`` valid ``expires_seconds`` (never logged)."""
    url = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_seconds
    )
    now = datetime.now(UTC).replace(microsecond=0)
    return Link(url, now + timedelta(seconds=expires_seconds))


def download_link(store: Store, settings: Settings, view: dict, expires_seconds: int) -> Link:
    """A fresh link to a succeeded job's ZIP; :class:`Conflict` when there is none."""
    if expires_seconds <= 0:
        raise Conflict("download links are turned off (links.expires_seconds: 0)")
    if view["state"] != "succeeded":
        raise Conflict(f"job {view['job_id']!r} is {view['state']}: it has no ZIP to download")
    bucket = view.get("bucket") or settings.buckets.output
    return presign(store, bucket, view["target"], expires_seconds)
