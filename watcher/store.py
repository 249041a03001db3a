"""The boto3 edge: one S3 client configured for B2, and the few operations the daemon needs.

Every request goes through here, so this is where errors become :mod:`watcher.errors` codes,
where transient failures are retried, where a broken GET body is resumed with a ranged GET, and
where requests are counted by operation (B2 bills them by class).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
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
from urllib3.exceptions import ProtocolError

from watcher.errors import (
    AccessDenied,
    InvalidManifest,
    JobError,
    MissingInput,
    StorageError,
)
from watcher.plan import ObjectInfo

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
_MISSING = {"NoSuchKey", "404", "NotFound"}


class TooLarge(InvalidManifest):
    """An object is bigger than the caller is willing to read into memory."""


def make_client(
    s3: S3Settings,
    *,
    max_pool_connections: int = 32,
    connect_timeout: float = 10,
    read_timeout: float = 60,
) -> Any:
    """An S3 client for B2 (or any S3-compatible store); credentials from the standard AWS chain.

    boto3 ≥ 1.36 sends CRC checksum headers by default, which B2 rejects with
    ``InvalidArgument: Unsupported header``; ``when_required`` turns them off.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        parameter_validation=False,  # our parameters are well-formed; saves CPU per request
        user_agent_extra="b2-zip-watcher",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region, config=config
    )


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def translate_client_error(err: Exception, *, bucket: str, key: str | None = None) -> JobError:
    """Map a botocore failure to the job error codes of CONTRACT §4 (never leaking credentials)."""
    where = f"s3://{bucket}/{key}" if key is not None else f"bucket {bucket!r}"
    if isinstance(err, ClientError):
        code = error_code(err)
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING or (status == 404 and code != "NoSuchBucket"):
            return MissingInput(f"{where} does not exist")
        if code in _DENIED or status == 403:
            return AccessDenied(f"access denied to {where} ({code or status})")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {bucket!r} does not exist")
        if code in ("PreconditionFailed", "412"):
            return StorageError(f"{where} changed while being read")
        return StorageError(f"{where}: {code or status} from the storage service")
    if isinstance(err, BotoCoreError):
        return StorageError(f"{where}: {type(err).__name__} talking to the storage service")
    return StorageError(f"{where}: {type(err).__name__}")


def _backoff(attempt: int) -> float:
    return min(20.0, 0.25 * 2**attempt) * (0.5 + random.random() / 2)


class ObjectReader:
    """One object's body as chunks; a body that breaks mid-way is resumed with a ranged GET.

    The resumption carries ``If-Match`` with the first response's ETag, so an object replaced
    while we read it fails the job instead of silently mixing two versions into one entry.
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client = client
        self.bucket = bucket
        self.key = key
        response = self._get()
        self.size: int = response["ContentLength"]
        self.last_modified = response["LastModified"]
        self.etag: str = response.get("ETag", "")
        self._body = response["Body"]
        self.position = 0
        self.resumptions = 0

    def _get(self, **extra: Any) -> dict:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self.key, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, bucket=self.bucket, key=self.key) from None

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
            self._body.close()
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


class Store:
    """The operations of the daemon on one S3 client. Thread-safe (boto3 clients are)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._counts: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        client.meta.events.register("before-send.s3.*", self._count)

    def _count(self, request: Any = None, event_name: str = "", **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        with self._count_lock:
            self._counts[operation] += 1

    def request_counts(self) -> dict[str, int]:
        """HTTP requests sent so far, retries included, by S3 operation name."""
        with self._count_lock:
            return dict(self._counts)

    def _call(self, operation: str, *, bucket: str, key: str | None = None, **params: Any) -> Any:
        try:
            return getattr(self.client, operation)(Bucket=bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, bucket=bucket, key=key) from None

    def list_objects(
        self, bucket: str, prefix: str, *, delimiter: str | None = None
    ) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (paginated ListObjectsV2), in key order."""
        params: dict[str, Any] = {"Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        token: str | None = None
        while True:
            page = self._call(
                "list_objects_v2",
                bucket=bucket,
                key=prefix,
                **params,
                **({"ContinuationToken": token} if token else {}),
            )
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"], obj["Size"], obj["LastModified"], obj.get("ETag"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

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

    def open_object(self, bucket: str, key: str) -> ObjectReader:
        return ObjectReader(self.client, bucket, key)

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
        response = self._call(
            "put_object", bucket=bucket, key=key, Key=key, Body=data, ContentType=content_type
        )
        return response.get("ETag", "")

    def put_json(self, bucket: str, key: str, document: Any) -> str:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return self.put_bytes(bucket, key, body, content_type="application/json")

    def copy(self, bucket: str, src_key: str, dst_key: str) -> None:
        self._call(
            "copy_object",
            bucket=bucket,
            key=src_key,
            Key=dst_key,
            CopySource={"Bucket": bucket, "Key": src_key},
        )

    def delete(self, bucket: str, key: str) -> None:
        self._call("delete_object", bucket=bucket, key=key, Key=key)

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
