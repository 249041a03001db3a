"""The storage edge: one S3 client configured for B2, and every operation the daemon needs.

Every request goes through here — jobs, markers, claims, probes, version listings, purges — so
this is the one place where errors become :mod:`watcher.errors` codes
(:func:`translate_client_error`), where transient failures are retried (a 412 never is), where a
broken GET body is resumed with a ranged GET, and where requests are counted by operation and by
B2 transaction class (:mod:`watcher.b2classes`), for the daemon and for each job.

New verbs go on :class:`Store` as small methods over :meth:`Store._call`, which translates errors
and counts the request; a verb that must tell "the precondition failed" from a failure catches
:class:`PreconditionFailed`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.httpsession import get_cert_path
from urllib3.exceptions import ProtocolError

from watcher.b2classes import by_class
from watcher.errors import (
    AccessDenied,
    InvalidManifest,
    JobCancelled,
    JobError,
    MissingInput,
    StorageError,
)
from watcher.plan import ObjectInfo
from watcher.smallget import Refused, SmallGetter, SmallObject, total_attempts, usable_for

if TYPE_CHECKING:
    from watcher.config import S3Settings

READ_RETRIES = 8
PART_RETRIES = 4
_BODY_ERRORS = (
    ReadTimeoutError,
    IncompleteReadError,
    ResponseStreamingError,
    BotoConnectionError,
    ProtocolError,
    ConnectionError,
    TimeoutError,
)
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "Forbidden",
    "AllAccessDisabled",
    "InvalidToken",
    "ExpiredToken",
}
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_NOT_IMPLEMENTED = {"NotImplemented", "501"}
# Checksum headers B2 may refuse; botocore adds some even with ``when_required`` (DeleteObjects).
_CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


class TooLarge(InvalidManifest):
    """An object is bigger than the caller is willing to read into memory."""


class PreconditionFailed(JobError):
    """A conditional request's precondition failed (412): the object is not what we pinned.

    Deliberately not a :class:`StorageError`: it is an answer, not a transient failure, so no
    retry loop ever repeats the request. A job that meets it fails with ``storage_error``.
    """

    code = "storage_error"


class NotImplementedByStore(JobError):
    """The store answered ``501 NotImplemented`` (B2 for conditional writes): never retried."""

    code = "storage_error"


def make_client(
    s3: S3Settings,
    *,
    max_pool_connections: int = 32,
    connect_timeout: float = 10,
    read_timeout: float = 60,
    max_attempts: int = 8,
) -> Any:
    """An S3 client for B2 (or any S3-compatible store); credentials from the standard AWS chain.

    boto3 ≥ 1.36 sends CRC checksum headers by default, which B2 rejects with
    ``InvalidArgument: Unsupported header``; ``when_required`` turns them off.

    A botocore client, made from the process's shared session (:func:`_session`): boto3 would
    only add its import (with s3transfer's, ~0.1 s of CPU) and transfer methods no caller uses.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        parameter_validation=False,  # our parameters are well-formed; saves CPU per request
        user_agent_extra="b2-zip-watcher",
    )
    return _new_client(s3.endpoint_url, s3.region, config)


def _new_client(endpoint_url: str | None, region: str | None, config: Config) -> Any:
    with _SESSION_LOCK:  # a botocore session is not thread-safe; its clients are
        client = _session().create_client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
    client.meta.events.register("before-sign.s3", strip_checksum_headers)
    return client


# A botocore session loads the S3 service model, its endpoint rules and the partitions (~0.15 s
# of CPU); every client made from the same session shares them (~0.015 s for the next one). A
# process makes several clients (the first-deploy probe's, the job's or the daemon's, the claims'
# with shorter timeouts, the cancel requests' probe), so they share one session. A session keeps
# the credentials it resolved first: the shared one serves only while the AWS_* environment (and
# HOME, where ~/.aws lives) is what it was made in, so a changed environment gets a new one.
_SESSION_LOCK = threading.Lock()
_SESSION: tuple[tuple[tuple[str, str], ...], Any] | None = None


def _session() -> Any:
    """The shared botocore session for the current environment (call with _SESSION_LOCK held)."""
    global _SESSION
    key = tuple(
        sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_") or k == "HOME")
    )
    if _SESSION is None or _SESSION[0] != key:
        from botocore.session import Session

        session = Session()
        session.register_component(
            "data_loader", _s3_loader(session.get_config_variable("data_path"))
        )
        _SESSION = (key, session)
    return _SESSION[1]


def _s3_loader(data_path: str | None) -> Any:
    """botocore's data loader (what ``botocore.loaders.create_loader`` makes, ``AWS_DATA_PATH``
    included) that looks for S3's models only: before it loads a model, botocore's lists every
    service that has one — ~900 directory listings and ~2,700 stats, twice per session, ~30 ms of
    CPU at every start — only to check that the one asked for is among them."""
    from botocore.loaders import Loader, instance_cache

    class S3Loader(Loader):
        @instance_cache
        def list_available_services(self, type_name: str) -> list[str]:
            for path in self.search_paths:
                s3 = os.path.join(path, "s3")
                if os.path.isdir(s3) and any(
                    self.file_loader.exists(os.path.join(s3, version, type_name))
                    for version in os.listdir(s3)
                ):
                    return ["s3"]
            return []

    paths = [os.path.expanduser(os.path.expandvars(p)) for p in (data_path or "").split(os.pathsep)]
    return S3Loader(extra_search_paths=[p for p in paths if p])


def strip_checksum_headers(request: Any = None, **_: Any) -> None:
    """Drop the checksum headers botocore adds where S3 requires an integrity check
    (DeleteObjects), which B2 may refuse, and send the ``Content-MD5`` S3 accepts instead."""
    if request is None:
        return
    dropped = [h for h in request.headers if h.lower().startswith(_CHECKSUM_HEADERS)]
    for header in dropped:
        del request.headers[header]
    if dropped and "Content-MD5" not in request.headers and isinstance(request.body, bytes):
        digest = hashlib.md5(request.body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode()


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def translate_client_error(err: Exception, *, bucket: str, key: str | None = None) -> JobError:
    """Map a botocore failure to the job error codes of CONTRACT §4 (never leaking credentials).

    The one translator of the storage edge: 404 → :class:`MissingInput`, 403 →
    :class:`AccessDenied`, 412 → :class:`PreconditionFailed`, 501 →
    :class:`NotImplementedByStore`, anything else → :class:`StorageError` (transient).
    """
    where = f"s3://{bucket}/{key}" if key is not None else f"bucket {bucket!r}"
    if isinstance(err, ClientError):
        code = error_code(err)
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = _from_answer(code, status, where, bucket)
        error.status = status  # type: ignore[attr-defined]  # what the store said, for callers
        error.aws_code = code  # type: ignore[attr-defined]  # that must tell refusals apart
        return error
    if isinstance(err, BotoCoreError):
        error = StorageError(f"{where}: {type(err).__name__} talking to the storage service")
    else:
        error = StorageError(f"{where}: {type(err).__name__}")
    # No answer at all: which transport failure it was (first-deploy checks name the culprit).
    error.status = None  # type: ignore[attr-defined]
    error.aws_code = None  # type: ignore[attr-defined]
    error.transport = type(err).__name__  # type: ignore[attr-defined]
    return error


def _from_answer(code: str, status: int | None, where: str, bucket: str) -> JobError:
    if code in _MISSING or (status == 404 and code != "NoSuchBucket"):
        return MissingInput(f"{where} does not exist")
    if code in _DENIED or status == 403:
        return AccessDenied(f"access denied to {where} ({code or status})")
    if code == "NoSuchBucket":
        return StorageError(f"bucket {bucket!r} does not exist")
    if code in _PRECONDITION or status == 412:
        return PreconditionFailed(f"{where} changed (precondition failed)")
    if code in _NOT_IMPLEMENTED or status == 501:
        return NotImplementedByStore(
            f"{where}: the storage service does not implement this request ({code or status})"
        )
    return StorageError(f"{where}: {code or status} from the storage service")


def server_time(response: dict) -> float | None:
    """The store's clock when it answered (its HTTP ``Date`` header), or None without one."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _backoff(attempt: int) -> float:
    return min(20.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2)


class Reads:
    """The response bodies being read through one store view, so that another thread can cut
    them off (CONTRACT §7.10, §9: shutdown and cancel must not wait on a store that stalls).

    A body whose store sent its headers and then stalls blocks in ``recv()`` until botocore's
    read timeout (60 s); :meth:`interrupt` shuts the sockets of the bodies being read down,
    which wakes those reads at once, and from then on every read of this view raises
    :class:`JobCancelled` instead of being resumed or retried.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: set[Any] = set()
        self.interrupted = False

    def opened(self, body: Any) -> Any:
        with self._lock:
            self._bodies.add(body)
            interrupted = self.interrupted
        if interrupted:
            _cut(body)
        return body

    def closed(self, body: Any) -> None:
        with self._lock:
            self._bodies.discard(body)

    def check(self, where: str) -> None:
        """Raise :class:`JobCancelled` once interrupted (before a retry, or after a failed read)."""
        if self.interrupted:
            raise JobCancelled(f"{where}: the read was interrupted (the job was cancelled)")

    def interrupt(self) -> None:
        with self._lock:
            self.interrupted = True
            bodies = list(self._bodies)
        for body in bodies:
            _cut(body)


def _socket_of(body: Any) -> socket.socket | None:
    """The socket a body reads from: a botocore ``StreamingBody`` (its urllib3 response), a
    lean GET's stream (``smallget._Stream``), or a urllib3 response itself."""
    raw = getattr(body, "_raw_stream", None) or getattr(body, "_response", None) or body
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        return sock
    fp = getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(fp, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _cut(body: Any) -> None:
    """Wake a read blocked on ``body`` (from any thread): shut its socket down."""
    sock = _socket_of(body)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class ObjectReader:
    """One object's body as chunks; a body that breaks mid-way is resumed with a ranged GET.

    The resumption carries ``If-Match`` with the first response's ETag, so an object replaced
    while we read it fails the job instead of silently mixing two versions into one entry. With
    ``reads`` (a job's store view), the body can be cut off from another thread (:class:`Reads`).
    """

    _reads: Reads | None = None

    def __init__(self, client: Any, bucket: str, key: str, reads: Reads | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self._reads = reads
        response = self._get()
        self.size: int = response["ContentLength"]
        self.last_modified = response["LastModified"]
        self.etag: str = response.get("ETag", "")
        self.version_id: str | None = response.get("VersionId") or None
        self._body = response["Body"]
        self.position = 0
        self.resumptions = 0

    def _get(self, **extra: Any) -> dict:
        self._check()
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.key, **extra)
        except (ClientError, BotoCoreError) as exc:
            self._check()
            raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None
        if self._reads is not None:
            self._reads.opened(response["Body"])
        return response

    def _check(self) -> None:
        if self._reads is not None:
            self._reads.check(f"s3://{self.bucket}/{self.key}")

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        attempt = 0
        while self.position < self.size:
            try:
                chunk = self._body.read(min(chunk_size, self.size - self.position))
            except _BODY_ERRORS:
                chunk = None
            if chunk:
                self.position += len(chunk)
                attempt = 0
                yield chunk
                continue
            attempt += 1
            self.close()
            self._check()
            if attempt > READ_RETRIES:
                raise StorageError(
                    f"s3://{self.bucket}/{self.key}: reading broke off at byte {self.position} "
                    f"of {self.size} and could not be resumed"
                )
            time.sleep(_backoff(attempt - 1))
            self.resumptions += 1
            try:
                response = self._get(Range=f"bytes={self.position}-", IfMatch=self.etag)
            except StorageError:
                if attempt >= READ_RETRIES:
                    raise
                continue
            self._body = response["Body"]

    def close(self) -> None:
        if self._reads is not None:
            self._reads.closed(self._body)
        self._body.close()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MultipartUpload:
    """A multipart upload that is completed explicitly and aborted on any failure.

    Use as a context manager: leaving the block without :meth:`complete` — by an exception or
    otherwise — aborts the upload, so nothing partial ever appears at the key and no upload is
    left dangling (B2 keeps unfinished large files until they are cancelled).
    """

    def __init__(self, client: Any, bucket: str, key: str, content_type: str) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self._etags: dict[int, str] = {}
        self._lock = threading.Lock()
        self.completed = False

    def __enter__(self) -> MultipartUpload:
        try:
            response = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None
        self.upload_id = response["UploadId"]
        self.started_at = datetime.now(UTC) - timedelta(seconds=5)  # tolerate clock skew
        return self

    def upload_part(self, number: int, data: bytes | memoryview) -> None:
        """Upload part ``number`` (thread-safe); retried a few times beyond botocore's own."""
        for attempt in range(PART_RETRIES + 1):
            try:
                response = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=bytes(data),
                )
                break
            except (ClientError, BotoCoreError) as exc:
                error = translate_client_error(exc, bucket=self.bucket, key=self.key)
                if not isinstance(error, StorageError) or attempt == PART_RETRIES:
                    raise error from None
                time.sleep(_backoff(attempt))
        with self._lock:
            self._etags[number] = response["ETag"]

    def complete(self) -> None:
        parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self._etags.items())]
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload" or not self._landed():
                raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None
        except BotoCoreError as exc:
            raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None
        self.completed = True

    def _landed(self) -> bool:
        """After ``NoSuchUpload`` on a retried Complete: did the first attempt go through?

        A completed multipart object's ETag ends in ``-<part count>``, and it is newer than the
        upload's start.
        """
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key)
        except (ClientError, BotoCoreError):
            return False
        return (
            head.get("ETag", "").strip('"').endswith(f"-{len(self._etags)}")
            and head["LastModified"] >= self.started_at
        )

    def abort(self) -> None:
        if self.upload_id is None or self.completed:
            return
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except (ClientError, BotoCoreError):
            pass  # best effort; the daemon's next run on this target aborts leftovers again
        self.upload_id = None

    def __exit__(self, *exc: object) -> None:
        if not self.completed:
            self.abort()

    # -- server-side parts (pipeline, issue 14) ---------------------------------------------

    def copy_part(self, number: int, source: Pinned, start: int, end: int) -> None:
        """Part ``number`` := bytes ``[start, end)`` of ``source``, copied by the store itself.

        Pinned like :meth:`Store.read_range`: the source's version where the store keeps
        versions, else ``x-amz-copy-source-if-match`` on its ETag. :class:`CopyRefused` when the
        store does not do this at all; a changed source is a :class:`StorageError`, never retried.
        """
        copy_source: dict[str, str] = {"Bucket": source.bucket, "Key": source.key}
        pinning: dict[str, str] = {}
        if source.version_id:
            copy_source["VersionId"] = source.version_id
        else:
            pinning["CopySourceIfMatch"] = source.etag
        for attempt in range(PART_RETRIES + 1):
            try:
                response = self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    **pinning,
                )
                break
            except ClientError as exc:
                if error_code(exc) in _COPY_REFUSED or _status(exc) in (405, 501):
                    raise CopyRefused(
                        f"s3://{self.bucket}: the store refused UploadPartCopy "
                        f"({error_code(exc) or _status(exc)})"
                    ) from None
                error = translate_client_error(exc, bucket=source.bucket, key=source.key)
                if _status(exc) == 412 or not isinstance(error, StorageError):
                    raise error from None
                if attempt == PART_RETRIES:
                    raise error from None
            except BotoCoreError as exc:
                if attempt == PART_RETRIES:
                    raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None
            time.sleep(_backoff(attempt))
        with self._lock:
            self._etags[number] = response["CopyPartResult"]["ETag"]


@dataclass(frozen=True)
class Written:
    """What a PUT left: the new object's ETag, and its VersionId where the store keeps versions."""

    etag: str
    version_id: str | None


@dataclass(frozen=True)
class Fetched:
    """A small object read whole, with the store's clock when it answered (``None`` if unknown)."""

    key: str
    body: bytes
    etag: str
    last_modified: datetime
    version_id: str | None
    server_time: float | None


@dataclass(frozen=True)
class Listing:
    """One full listing of a prefix, and the store's clock when its last page was answered."""

    objects: list[ObjectInfo]
    server_time: float | None


@dataclass(frozen=True)
class Level:
    """One level of a prefix: its objects, and its sub-prefixes (``<prefix>name/``) that hold
    objects."""

    objects: list[ObjectInfo]
    folders: frozenset[str]


@dataclass(frozen=True)
class VersionInfo:
    """One version (or delete marker) of a key, as ListObjectVersions reports it."""

    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    delete_marker: bool = False


class _Tally:
    """Requests sent, by S3 operation; thread-safe."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# The tallies of the Store verb running on this thread. botocore sends a request (and its
# retries) on the thread that called the client, so the ``before-send`` hook finds them here.
_scope = threading.local()


class _ScopedClient:
    """The boto3 client as seen from one :class:`Store`: every call runs with that store's
    tallies in scope, so its requests — retries included — count for the daemon and, on a job's
    store, for that job."""

    def __init__(self, client: Any, tallies: tuple[_Tally, ...]) -> None:
        self._client = client
        self._tallies = tallies

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name in ("generate_presigned_url", "get_paginator"):
            return attribute
        tallies = self._tallies

        def call(*args: Any, **kwargs: Any) -> Any:
            outer = getattr(_scope, "tallies", None)
            _scope.tallies = tallies
            try:
                return attribute(*args, **kwargs)
            finally:
                _scope.tallies = outer

        return call


class Store:
    """The operations of the daemon on one S3 client. Thread-safe (boto3 clients are).

    :meth:`for_job` gives a view of the same store that also counts the requests made through it,
    so a job's result marker can say what the job cost (CONTRACT §8).
    """

    def __init__(self, client: Any) -> None:
        self.raw_client = client
        self._root = _Tally()
        self._tallies: tuple[_Tally, ...] = (self._root,)
        self.client = _ScopedClient(client, self._tallies)
        root = self._root
        # Registered once per Store on the client: counts requests made through a Store of this
        # root (by the scope), and any made on the bare client outside every Store.

        def count(event_name: str = "", **_: Any) -> None:
            tallies = getattr(_scope, "tallies", None)
            operation = event_name.rsplit(".", 1)[-1]
            if tallies is None:
                root.add(operation)
            elif tallies[0] is root:
                for tally in tallies:
                    tally.add(operation)

        self._count_hook = count
        client.meta.events.register("before-send.s3.*", count)
        # The bodies read through this store, which interrupt_reads() cuts off: a job's own
        # view (for_job) has its own, so cancelling one job never touches another's reads.
        self.reads: Reads | None = None

    def interrupt_reads(self) -> None:
        """Cut off every body being read through this view, and fail its later reads with
        :class:`JobCancelled` (a job's cancellation: CONTRACT §7.10)."""
        if self.reads is not None:
            self.reads.interrupt()

    def for_job(self) -> Store:
        """A view of this store whose requests are counted for one job as well (see
        :meth:`job_request_counts`); everything else is shared."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._job = _Tally()
        view._tallies = (*self._tallies, view._job)
        view.reads = Reads()
        view.client = _ScopedClient(self.raw_client, view._tallies)
        return view

    def with_timeouts(self, *, seconds: float, attempts: int) -> Store:
        """A view of this store on a client of its own whose requests time out after
        ``seconds`` and are tried ``attempts`` times (claim requests, CONTRACT §7.3: a slow answer
        must count as a failure well before a lease runs out); requests count as this store's."""
        raw = self.raw_client
        config = raw.meta.config.merge(
            Config(
                connect_timeout=seconds,
                read_timeout=seconds,
                retries={"mode": "standard", "max_attempts": attempts},
            )
        )
        client = _new_client(raw.meta.endpoint_url, raw.meta.region_name, config)
        client.meta.events.register("before-send.s3.*", self._count_hook)
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.raw_client = client
        view.client = _ScopedClient(client, view._tallies)
        return view

    def request_counts(self) -> dict[str, int]:
        """HTTP requests sent so far, retries included, by S3 operation name."""
        return self._root.snapshot()

    def request_classes(self) -> dict[str, int]:
        """:meth:`request_counts` by B2 transaction class: ``{"a": n, "b": n, "c": n}``."""
        return by_class(self.request_counts())

    def job_request_counts(self) -> dict[str, int]:
        """Requests sent through this job view (:meth:`for_job`), by operation."""
        job = self.__dict__.get("_job")
        return job.snapshot() if job is not None else {}

    def job_request_classes(self) -> dict[str, int]:
        return by_class(self.job_request_counts())

    def _call(self, operation: str, *, bucket: str, key: str | None = None, **params: Any) -> Any:
        """One request: counted, retried by botocore when transient, errors translated."""
        try:
            return getattr(self.client, operation)(Bucket=bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, bucket=bucket, key=key) from None

    def _pages(self, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        """The pages of a ListObjectsV2 of ``prefix``."""
        params: dict[str, Any] = {"Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        while True:
            page = self._call("list_objects_v2", bucket=bucket, key=prefix, **params)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token

    def list_objects(
        self, bucket: str, prefix: str, *, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (paginated ListObjectsV2), in key order."""
        for page in self._pages(bucket, prefix, delimiter):
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"], obj["Size"], obj["LastModified"], obj.get("ETag"))

    def list_level(self, bucket: str, prefix: str) -> Level:
        """The objects directly under ``prefix`` and the sub-prefixes that hold any object (one
        paginated ListObjectsV2 with Delimiter ``/``: the sub-prefixes come for free)."""
        objects: list[ObjectInfo] = []
        folders: set[str] = set()
        for page in self._pages(bucket, prefix, "/"):
            objects.extend(
                ObjectInfo(o["Key"], o["Size"], o["LastModified"], o.get("ETag"))
                for o in page.get("Contents", [])
            )
            folders.update(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return Level(objects, frozenset(folders))

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if isinstance(translate_client_error(exc, bucket=bucket, key=key), MissingInput):
                return None
            raise translate_client_error(exc, bucket=bucket, key=key) from None
        except BotoCoreError as exc:
            raise translate_client_error(exc, bucket=bucket, key=key) from None
        return ObjectInfo(
            key, response["ContentLength"], response["LastModified"], response.get("ETag")
        )

    def head_bucket(self, bucket: str) -> None:
        self._call("head_bucket", bucket=bucket)

    def peek(self, bucket: str) -> None:
        """List at most one key of ``bucket``: does it exist, and may we read it? (First-deploy
        checks; the translated error carries ``status``, ``aws_code`` and ``transport``.)"""
        self._call("list_objects_v2", bucket=bucket, MaxKeys=1)

    def open_object(self, bucket: str, key: str) -> ObjectReader:
        return ObjectReader(self.client, bucket, key, self.reads)

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        """The whole object, or None when it does not exist; TooLarge past ``max_bytes``."""
        try:
            reader = self.open_object(bucket, key)
        except MissingInput:
            return None
        with reader:
            if reader.size > max_bytes:
                raise TooLarge(f"s3://{bucket}/{key} is larger than {max_bytes} bytes")
            return b"".join(reader.iter_chunks())

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> str:
        return self.put(bucket, key, data, content_type=content_type).etag

    def put_json(self, bucket: str, key: str, document: Any) -> str:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return self.put_bytes(bucket, key, body, content_type="application/json")

    def copy(
        self,
        bucket: str,
        src_key: str,
        dst_key: str,
        *,
        version_id: str | None = None,
        if_match: str | None = None,
    ) -> None:
        """Server-side copy; of exactly one version with ``version_id`` and/or ``if_match``
        (``x-amz-copy-source-if-match``): :class:`PreconditionFailed` when the source is not that
        version any more, :class:`MissingInput` when it (or that version) is gone."""
        source = {"Bucket": bucket, "Key": src_key}
        if version_id is not None:
            source["VersionId"] = version_id
        condition = {"CopySourceIfMatch": if_match} if if_match is not None else {}
        self._call(
            "copy_object", bucket=bucket, key=src_key, Key=dst_key, CopySource=source, **condition
        )

    def delete(self, bucket: str, key: str, *, version_id: str | None = None) -> None:
        """Delete ``key`` (a delete marker on a versioned bucket), or exactly one version of it
        with ``version_id``."""
        params = {"VersionId": version_id} if version_id is not None else {}
        self._call("delete_object", bucket=bucket, key=key, Key=key, **params)

    def multipart(
        self, bucket: str, key: str, *, content_type: str = "application/zip"
    ) -> MultipartUpload:
        return MultipartUpload(self.client, bucket, key, content_type)

    def list_multipart_uploads(self, bucket: str, prefix: str) -> list[dict]:
        """Unfinished uploads under ``prefix``: ``[{"Key", "UploadId", "Initiated"}]``."""
        uploads: list[dict] = []
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            page = self._call("list_multipart_uploads", bucket=bucket, key=prefix, **params)
            uploads.extend(page.get("Uploads", []))
            if not page.get("IsTruncated"):
                return uploads
            params = {
                "Prefix": prefix,
                "KeyMarker": page.get("NextKeyMarker"),
                "UploadIdMarker": page.get("NextUploadIdMarker"),
            }

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._call("abort_multipart_upload", bucket=bucket, key=key, Key=key, UploadId=upload_id)

    # -- conditional writes, versions, clocks (claims and probes) ----------------------------

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> Written:
        """PUT ``data``; with a precondition, :class:`PreconditionFailed` when it does not hold
        and :class:`NotImplementedByStore` where the store has no conditional writes (B2)."""
        condition: dict[str, str] = {}
        if if_none_match:
            condition["IfNoneMatch"] = "*"
        if if_match is not None:
            condition["IfMatch"] = if_match
        response = self._call(
            "put_object",
            bucket=bucket,
            key=key,
            Key=key,
            Body=data,
            ContentType=content_type,
            **condition,
        )
        return Written(response.get("ETag", ""), response.get("VersionId"))

    def put_if_absent(
        self, bucket: str, key: str, data: bytes, *, content_type: str = "application/json"
    ) -> Written | None:
        """Create ``key`` only if it does not exist (``If-None-Match: *``); None if it does."""
        try:
            return self.put(bucket, key, data, content_type=content_type, if_none_match=True)
        except PreconditionFailed:
            return None

    def put_if_match(
        self,
        bucket: str,
        key: str,
        data: bytes,
        etag: str,
        *,
        content_type: str = "application/json",
    ) -> Written | None:
        """Replace ``key`` only if its ETag is still ``etag``; None if it is not (or is gone)."""
        try:
            return self.put(bucket, key, data, content_type=content_type, if_match=etag)
        except (PreconditionFailed, MissingInput):
            return None

    def delete_if_match(self, bucket: str, key: str, etag: str) -> bool:
        """Delete ``key`` only if its ETag is still ``etag``; False if it is not (or is gone)."""
        try:
            self._call("delete_object", bucket=bucket, key=key, Key=key, IfMatch=etag)
        except (PreconditionFailed, MissingInput):
            return False
        return True

    def get(
        self, bucket: str, key: str, *, version_id: str | None = None, max_bytes: int = 1 << 20
    ) -> Fetched | None:
        """A small object (or one version of it) read whole, with the store's clock; None when
        it does not exist; :class:`TooLarge` past ``max_bytes``."""
        params: dict[str, Any] = {"Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        reads = self.reads
        where = f"s3://{bucket}/{key}"
        if reads is not None:
            reads.check(where)
        try:
            response = self._call("get_object", bucket=bucket, key=key, **params)
        except MissingInput:
            return None
        body = response["Body"]
        if reads is not None:
            reads.opened(body)
        try:
            if response.get("ContentLength", 0) > max_bytes:
                raise TooLarge(f"{where} is larger than {max_bytes} bytes")
            data = body.read()
        except _BODY_ERRORS as exc:
            if reads is not None:
                reads.check(where)
            raise StorageError(f"{where}: {type(exc).__name__} while reading") from None
        finally:
            if reads is not None:
                reads.closed(body)
            body.close()
        return Fetched(
            key,
            data,
            response.get("ETag", ""),
            response["LastModified"],
            response.get("VersionId"),
            server_time(response),
        )

    def listing(self, bucket: str, prefix: str) -> Listing:
        """Every object under ``prefix`` and the store's clock when it listed them."""
        objects: list[ObjectInfo] = []
        moment: float | None = None
        for page in self._pages(bucket, prefix):
            objects.extend(
                ObjectInfo(o["Key"], o["Size"], o["LastModified"], o.get("ETag"))
                for o in page.get("Contents", [])
            )
            moment = server_time(page)
        return Listing(objects, moment)

    def list_versions(self, bucket: str, prefix: str) -> list[VersionInfo]:
        """Every version and delete marker under ``prefix``, in the store's order: by key, and
        each key's versions newest first."""
        found: list[VersionInfo] = []
        params: dict[str, Any] = {"Prefix": prefix}
        while True:
            page = self._call("list_object_versions", bucket=bucket, key=prefix, **params)
            for field, marker in (("Versions", False), ("DeleteMarkers", True)):
                found.extend(
                    VersionInfo(
                        e["Key"],
                        e.get("VersionId") or "null",  # an unversioned bucket's one version
                        e["LastModified"],
                        bool(e.get("IsLatest")),
                        marker,
                    )
                    for e in page.get(field, [])
                )
            if not page.get("IsTruncated"):
                return found
            params = {
                "Prefix": prefix,
                "KeyMarker": page.get("NextKeyMarker"),
                "VersionIdMarker": page.get("NextVersionIdMarker"),
            }

    def delete_versions(self, bucket: str, versions: list[VersionInfo]) -> None:
        """Delete exactly these versions (and delete markers), 1,000 per request."""
        for start in range(0, len(versions), 1000):
            batch = versions[start : start + 1000]
            response = self._call(
                "delete_objects",
                bucket=bucket,
                key=batch[0].key,
                Delete={
                    "Objects": [{"Key": v.key, "VersionId": v.version_id} for v in batch],
                    "Quiet": True,
                },
            )
            errors = [e for e in response.get("Errors", []) if e.get("Code") not in _MISSING]
            if errors:
                first = errors[0]
                raise StorageError(
                    f"s3://{bucket}/{first.get('Key')}: {first.get('Code')} deleting a version"
                )

    def delete_all_versions(self, bucket: str, prefix: str, *, exact: bool = False) -> int:
        """Delete every version of every key under ``prefix`` (only the key ``prefix`` itself
        with ``exact``): on a versioned bucket — every B2 bucket — a plain DELETE only hides an
        object, and B2 keeps (and bills) the hidden versions forever. Returns how many went."""
        doomed = [v for v in self.list_versions(bucket, prefix) if not exact or v.key == prefix]
        self.delete_versions(bucket, doomed)
        return len(doomed)

    def bucket_versioning(self, bucket: str) -> str | None:
        """``Enabled``, ``Suspended``, or None for a bucket that never had versioning."""
        return self._call("get_bucket_versioning", bucket=bucket).get("Status")

    # -- pinned reads (pipeline, issue 14) --------------------------------------------------

    def pin(self, bucket: str, key: str) -> Pinned:
        """One HEAD: the object's current version, which later ranged reads and part copies
        are pinned to. MissingInput when it does not exist."""
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, bucket=bucket, key=key) from None
        return Pinned(
            bucket,
            key,
            response["ContentLength"],
            response.get("ETag", ""),
            response.get("VersionId") or None,
            response["LastModified"],
        )

    def read_range(
        self, source: Pinned, start: int, end: int, *, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of exactly the pinned version (``versionId`` where the store
        keeps versions, else ``If-Match`` on the ETag), in chunks; a broken body is resumed
        from the byte where it stopped. A changed source fails with StorageError (412)."""
        pinning = {"VersionId": source.version_id} if source.version_id else {}
        pinning["IfMatch"] = source.etag
        position, attempt = start, 0
        reads, where = self.reads, f"s3://{source.bucket}/{source.key}"
        while position < end:
            if reads is not None:  # cut off by a cancel (Reads): no retry
                reads.check(where)
            try:
                response = self.client.get_object(
                    Bucket=source.bucket,
                    Key=source.key,
                    Range=f"bytes={position}-{end - 1}",
                    **pinning,
                )
            except (ClientError, BotoCoreError) as exc:
                error = translate_client_error(exc, bucket=source.bucket, key=source.key)
                attempt += 1
                transient = isinstance(exc, BotoCoreError) or _status(exc) in (500, 503)
                if not transient or attempt > READ_RETRIES:
                    raise error from None
                time.sleep(_backoff(attempt - 1))
                continue
            body = response["Body"]
            if reads is not None:
                reads.opened(body)
            try:
                while position < end:
                    chunk = body.read(min(chunk_size, end - position))
                    if not chunk:
                        break
                    position += len(chunk)
                    attempt = 0
                    yield chunk
            except _BODY_ERRORS:
                pass
            finally:
                if reads is not None:
                    reads.closed(body)
                body.close()
            if position < end:
                if reads is not None:
                    reads.check(where)
                attempt += 1
                if attempt > READ_RETRIES:
                    raise StorageError(
                        f"s3://{source.bucket}/{source.key}: reading broke off at byte "
                        f"{position} and could not be resumed"
                    )
                time.sleep(_backoff(attempt - 1))

    # -- small objects: one lean GET each (issue 16) -----------------------------------------

    def get_small(
        self,
        bucket: str,
        key: str,
        *,
        max_bytes: int,
        reserve: Callable[[int], None] | None = None,
    ) -> SmallRead:
        """One GET of ``key``: its body whole when at most ``max_bytes`` (``reserve(size)``
        runs before the body is read, so a caller can bound its memory first), else an
        :class:`ObjectReader` over the same response — one request either way.

        Sent by :class:`watcher.smallget.SmallGetter` (one signed request on a shared pool, not
        a full botocore call) with this edge's rules: counted as ``GetObject`` for the daemon
        and the job, transient failures retried, errors through :func:`translate_client_error`.
        Falls back to the boto3 client where the lean path cannot go (a proxy, no endpoint)."""
        getter = _small_getter(self.raw_client)
        if getter is None:
            reader = self.open_object(bucket, key)
            if reader.size > max_bytes:
                return SmallRead(reader.size, reader.last_modified, reader.etag, None, reader)
            with reader:
                if reserve is not None:
                    reserve(reader.size)
                body = b"".join(reader.iter_chunks())
            return SmallRead(reader.size, reader.last_modified, reader.etag, body, None)
        tallies = self._tallies

        def count() -> None:
            for tally in tallies:
                tally.add("GetObject")

        events = self.raw_client.meta.events

        def told(status: int | None, ms: float) -> None:  # logs.log_store_requests, at DEBUG
            events.emit(LEAN_REQUEST_EVENT, bucket=bucket, key=key, status=status, ms=ms)

        try:
            found = getter.get(
                bucket,
                key,
                max_bytes=max_bytes,
                count=count,
                reserve=reserve,
                guard=self.reads,
                on_request=told,
            )
        except Refused as refused:
            answer = {
                "Error": {"Code": refused.code, "Message": ""},
                "ResponseMetadata": {"HTTPStatusCode": refused.status},
            }
            error = ClientError(answer, "GetObject")  # type: ignore[arg-type]
            raise translate_client_error(error, bucket=bucket, key=key) from None
        except OSError as exc:  # resets, timeouts, TLS, a body cut short: the attempts are spent
            raise translate_client_error(exc, bucket=bucket, key=key) from None
        if found.body is not None:
            return SmallRead(found.size, found.last_modified, found.etag, found.body, None)
        reader = _AdoptedReader(self.client, bucket, key, found)
        if self.reads is not None:  # cut off by a cancel like any other body (Reads)
            reader._reads = self.reads
            self.reads.opened(found.stream)
        return SmallRead(found.size, found.last_modified, found.etag, None, reader)


@dataclass(frozen=True)
class SmallRead:
    """What :meth:`Store.get_small` read: ``body`` whole, or ``reader`` streaming it."""

    size: int
    last_modified: datetime
    etag: str
    body: bytes | None
    reader: ObjectReader | None


class _AdoptedReader(ObjectReader):
    """An :class:`ObjectReader` over a lean GET's live answer (resumed like any other)."""

    def __init__(self, client: Any, bucket: str, key: str, found: SmallObject) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        self.size = found.size
        self.last_modified = found.last_modified
        self.etag = found.etag
        self.version_id = found.version_id
        self._body = found.stream
        self.position = 0
        self.resumptions = 0


# Emitted on the client's event system for each lean GET (botocore's hooks do not see them).
LEAN_REQUEST_EVENT = "lean-request.s3.GetObject"
SMALL_POOL = 1024  # the most small GETs a job may have in flight (pipeline.small_in_flight)
_GETTERS: weakref.WeakKeyDictionary[Any, SmallGetter | None] = weakref.WeakKeyDictionary()
_GETTERS_LOCK = threading.Lock()


def _small_getter(client: Any) -> SmallGetter | None:
    """The lean GET pool of a boto3 client (one per client, made on first use)."""
    with _GETTERS_LOCK:
        try:
            return _GETTERS[client]
        except KeyError:
            getter = _GETTERS[client] = _lean_getter(client)
            return getter


def _lean_getter(client: Any) -> SmallGetter | None:
    """A :class:`SmallGetter` on a boto3 client's endpoint, credentials (the very object its
    signer uses, refreshed as it is), region, timeouts, retry count and CA bundle; None where
    the lean path may not go (no endpoint URL, a proxy setting, no credentials)."""
    meta = client.meta
    if not usable_for(meta.endpoint_url):
        return None
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is None:
        return None
    config = meta.config
    # the client's own TLS verification: a CA bundle path (AWS_CA_BUNDLE, a profile's
    # ca_bundle, certifi's), else (verify=False or unknown) the full client does the GETs
    verify = getattr(
        getattr(getattr(client, "_endpoint", None), "http_session", None), "_verify", True
    )
    bundle = get_cert_path(True) if verify is True else verify
    if meta.endpoint_url.startswith("https:") and not isinstance(bundle, str):
        return None
    return SmallGetter(
        meta.endpoint_url,
        credentials,
        meta.region_name,
        # idle connections kept: as many as there may be small GETs in flight (the pool opens
        # them only as they are needed)
        connections=max(config.max_pool_connections or 10, SMALL_POOL),
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        attempts=total_attempts(config.retries or {}),
        backoff=_backoff,
        ca_bundle=bundle if isinstance(bundle, str) else None,
    )


# -- end of small objects (issue 16) ----------------------------------------------------------


@dataclass(frozen=True)
class Pinned:
    """One version of one object, as :meth:`Store.pin` found it."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None
    last_modified: datetime


class CopyRefused(StorageError):
    """The store does not place parts by ``UploadPartCopy`` (or by neither way of pinning)."""


_COPY_REFUSED = {"NotImplemented", "InvalidRequest", "MethodNotAllowed", "XNotImplemented"}


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
