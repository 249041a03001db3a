"""How a manifest enters the requests prefix, how a job id leads back to its target, and how a
manifest that failed for good explains itself.

The HTTP trigger and ``b2-zip-watcher submit`` both call :func:`submit_manifest`, so a job that
came over HTTP is exactly as durable as one dropped into the bucket by hand. The daemon admits
every job it starts with :func:`admit_job`, so ``GET /jobs/<job_id>`` finds dropped manifests too.

A job id is an idempotency key, unique per requests prefix (CONTRACT §7.7): the index entry
``.jobs/<job_id>.json`` carries a digest of the manifest's content, and :func:`decide_id`
compares it — the same content is the same job, other content is an ``id_conflict``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from watcher.errors import IdConflict, JobError
from watcher.layout import RESULT_SUFFIX, error_report_key, job_index_key
from watcher.layout import is_manifest_key as is_manifest_key  # re-exported
from watcher.manifest import Manifest, is_job_id, parse_manifest

if TYPE_CHECKING:
    from watcher.config import Settings
    from watcher.store import Store

IdDecision = Literal["new", "same", "conflict"]


@dataclass(frozen=True)
class Submitted:
    job_id: str
    target: str
    manifest_key: str
    # True when this id was submitted before with the same content: the same job, nothing was
    # written (HTTP answers 200 with it instead of 202).
    existing: bool = False


@dataclass(frozen=True)
class Admission:
    """Whether the daemon runs a manifest it claimed (:func:`admit_job`).

    ``run``: run it. ``conflict``: its id belongs to a job with other content; fail it with
    ``id_conflict``. ``duplicate``: its id and content are a job that already succeeded
    (``result`` is that job's result marker); file it without running.
    """

    decision: Literal["run", "conflict", "duplicate"]
    result: dict[str, Any] | None = None


def content_digest(manifest: Manifest) -> str:
    """What makes two manifests the same job: everything but the ``id``, as parsed — so
    whitespace, field order, ``"a"`` vs ``{"key": "a"}`` and explicit nulls do not count."""
    canonical = json.dumps(
        [
            [[spec.key, spec.prefix, spec.name] for spec in manifest.files],
            manifest.target,
            manifest.compression,
            manifest.missing,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def decide_id(entry: dict | None, digest: str) -> IdDecision:
    """Pure: what an index ``entry`` for an id means for a manifest of content ``digest``.

    An entry from before digests were recorded cannot tell, and is taken over (``new``).
    """
    if entry is None or not isinstance(entry.get("digest"), str):
        return "new"
    return "same" if entry["digest"] == digest else "conflict"


def prepare_submission(
    raw: bytes, *, prefix: str, notify_hosts: Collection[str] = ()
) -> tuple[Submitted, Manifest, bytes]:
    """Validate ``raw`` exactly as the watcher will, and give it an id if it has none.

    Pure: returns the submission, the parsed manifest and the bytes to store. A manifest without
    ``id`` gets a random one written into it, so the id the client is told is the id every marker
    will carry.
    """
    manifest = parse_manifest(raw, requests_prefix=prefix, notify_hosts=notify_hosts)
    body = raw
    job_id = manifest.id
    if job_id is None:
        job_id = uuid.uuid4().hex
        document = json.loads(raw)
        document["id"] = job_id
        body = json.dumps(document, ensure_ascii=False).encode()
    return Submitted(job_id, manifest.target, f"{prefix}{job_id}.json"), manifest, body


def submit_manifest(store: Store, settings: Settings, raw: bytes) -> Submitted:
    """Validate and write the manifest into the requests prefix, plus the job's index entry.

    An ``id`` submitted before is answered from the index without writing anything: the same
    content is that job (``existing``), other content raises :class:`IdConflict`. The manifest is
    written before its index entry, so an entry always means its manifest was stored. (Two
    submissions of one new id racing each other both pass this check: the store has no
    conditional writes everywhere; the daemon's :func:`admit_job` then fails the loser.)
    """
    prefix = settings.watch.prefix
    submitted, manifest, body = prepare_submission(
        raw, prefix=prefix, notify_hosts=settings.notify.allowed_hosts
    )
    digest = content_digest(manifest)
    if manifest.id is not None:
        entry = lookup_job(store, settings, manifest.id)
        decision = decide_id(entry, digest)
        if decision == "conflict":
            raise IdConflict(f"the id {manifest.id!r} is already used by a job with other content")
        if decision == "same":
            assert entry is not None
            return Submitted(
                submitted.job_id,
                entry["target"],
                entry.get("manifest") or submitted.manifest_key,
                existing=True,
            )
    store.put_bytes(
        settings.watch_bucket, submitted.manifest_key, body, content_type="application/json"
    )
    record_job(
        store, settings, submitted.job_id, submitted.target, submitted.manifest_key, digest=digest
    )
    return submitted


def admit_job(
    store: Store, settings: Settings, manifest: Manifest, job_id: str, manifest_key: str
) -> Admission:
    """Register the job of a claimed manifest in the index, deciding by its id (CONTRACT §7.7).

    A manifest without ``id`` is identified by its key: it always runs. One with an ``id`` runs
    when the id is new or names this same content (then the index points at this manifest), is a
    ``conflict`` when the id names other content (the index is left to its owner), and a
    ``duplicate`` when the same content already succeeded: nothing runs twice.
    """
    digest = content_digest(manifest)
    if manifest.id is not None:
        decision = decide_id(lookup_job(store, settings, job_id), digest)
        if decision == "conflict":
            return Admission("conflict")
        if decision == "same":
            result = _result_of(store, settings, manifest.target)
            if result.get("job_id") == job_id and result.get("state") == "succeeded":
                return Admission("duplicate", result)
    record_job(store, settings, job_id, manifest.target, manifest_key, digest=digest)
    return Admission("run")


def _result_of(store: Store, settings: Settings, target: str) -> dict[str, Any]:
    raw = store.get_bytes(settings.buckets.output, target + RESULT_SUFFIX, max_bytes=1 << 26)
    try:
        document = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def record_job(
    store: Store,
    settings: Settings,
    job_id: str,
    target: str,
    manifest_key: str | None,
    *,
    digest: str | None = None,
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
            "digest": digest,
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


def error_report(job_id: str, error: JobError, *, attempts: int) -> dict[str, Any]:
    """``failed/<name>.error.json``: why a manifest failed for good (CONTRACT §7.5, §7.6)."""
    return {"job_id": job_id, "code": error.code, "message": error.message, "attempts": attempts}


def write_error_report(
    store: Store,
    settings: Settings,
    manifest_key: str,
    job_id: str,
    error: JobError,
    *,
    attempts: int,
) -> str:
    """Write :func:`error_report` next to where the manifest is filed; returns its key."""
    key = error_report_key(settings.watch.prefix, manifest_key)
    store.put_json(settings.watch_bucket, key, error_report(job_id, error, attempts=attempts))
    return key
