"""How a manifest enters the requests prefix, and how a job id leads back to its target.

The HTTP trigger and ``b2-zip-watcher submit`` both call :func:`submit_manifest`, so a job that
came over HTTP is exactly as durable as one dropped into the bucket by hand. The daemon records
every job it starts with :func:`record_job`, so ``GET /jobs/<job_id>`` finds dropped manifests too.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watcher.manifest import is_job_id, parse_manifest

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.store import Store

JOBS_SUBPREFIX = ".jobs/"


@dataclass(frozen=True)
class Submitted:
    job_id: str
    target: str
    manifest_key: str


def is_manifest_key(key: str, prefix: str) -> bool:
    """A key the watcher takes: directly in the prefix, ends in .json, not one of our own."""
    if not key.startswith(prefix):
        return False
    name = key[len(prefix) :]
    return bool(name) and "/" not in name and name.endswith(".json") and not name.startswith(".")


def job_index_key(prefix: str, job_id: str) -> str:
    return f"{prefix}{JOBS_SUBPREFIX}{job_id}.json"


def prepare_submission(raw: bytes, *, prefix: str) -> tuple[Submitted, bytes]:
    """Validate ``raw`` exactly as the watcher will, and give it an id if it has none.

    Pure: returns the submission and the bytes to store. A manifest without ``id`` gets a random
    one written into it, so the id the client is told is the id every marker will carry.
    """
    manifest = parse_manifest(raw, requests_prefix=prefix)
    body = raw
    job_id = manifest.id
    if job_id is None:
        job_id = uuid.uuid4().hex
        document = json.loads(raw)
        document["id"] = job_id
        body = json.dumps(document, ensure_ascii=False).encode()
    return Submitted(job_id, manifest.target, f"{prefix}{job_id}.json"), body


def submit_manifest(store: Store, settings: Settings, raw: bytes) -> Submitted:
    """Validate and write the manifest into the requests prefix, plus the job's index entry."""
    prefix = settings.watch.prefix
    submitted, body = prepare_submission(raw, prefix=prefix)
    bucket = settings.watch_bucket
    record_job(store, settings, submitted.job_id, submitted.target, submitted.manifest_key)
    store.put_bytes(bucket, submitted.manifest_key, body, content_type="application/json")
    return submitted


def record_job(
    store: Store, settings: Settings, job_id: str, target: str, manifest_key: str | None
) -> None:
    """Remember where job ``job_id`` writes its markers (one small PUT: free on B2)."""
    store.put_json(
        settings.watch_bucket,
        job_index_key(settings.watch.prefix, job_id),
        {
            "job_id": job_id,
            "target": target,
            "bucket": settings.buckets.output,
            "manifest": manifest_key,
        },
    )


def lookup_job(store: Store, settings: Settings, job_id: str) -> dict | None:
    """The job's index entry, or None for an unknown id (a malformed one costs no request)."""
    if not is_job_id(job_id):
        return None
    raw = store.get_bytes(
        settings.watch_bucket, job_index_key(settings.watch.prefix, job_id), max_bytes=64 * 1024
    )
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("target"), str) else None
