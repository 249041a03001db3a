"""First contact with the store: is every bucket a command needs there, reachable and ours?

Every command (``run`` included) calls :func:`require_usable` before it does anything, so the
first-deploy mistakes of CONTRACT §9 — an unreachable endpoint, a missing bucket, refused
credentials, a bucket that is not set — end as one line naming the culprit and exit 2 instead
of a traceback or a job failure. ``check`` calls :func:`probe` for every bucket and prints each
:class:`Problem`.

The probe is one ``ListObjectsV2`` with ``MaxKeys=1`` per bucket (a Class C transaction on B2):
unlike ``HeadBucket``, its error answers have a body, so a refused key (``InvalidAccessKeyId``),
a wrong secret (``SignatureDoesNotMatch``), a bucket the key may not use (``AccessDenied``) and a
missing bucket (``NoSuchBucket``) can be told apart. Deciding what an answer means is the pure
:func:`classify`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.config import Settings

ENDPOINT = "s3.endpoint_url"
ENDPOINT_HINT = "set s3.endpoint_url or AWS_ENDPOINT_URL"
BUCKET_HINTS = {
    "buckets.input": "set buckets.input, INPUT_BUCKET_NAME or BUCKET_NAME",
    "buckets.output": "set buckets.output, OUTPUT_BUCKET_NAME or BUCKET_NAME",
    "watch.bucket": "set watch.bucket, or buckets.input (INPUT_BUCKET_NAME or BUCKET_NAME)",
}
_KEY_REFUSED = {"InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "UnrecognizedClientException"}
_SECRET_REFUSED = {"SignatureDoesNotMatch"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "Forbidden", "403"}
_NO_BUCKET = {"NoSuchBucket"}
_UNREACHABLE = {
    "EndpointConnectionError": "cannot connect to {endpoint}",
    "ConnectTimeoutError": "no answer from {endpoint} (connect timeout)",
    "ReadTimeoutError": "{endpoint} accepted the connection but did not answer (read timeout)",
    "ConnectionClosedError": "{endpoint} closed the connection without an answer",
    "SSLError": "the TLS handshake with {endpoint} failed",
    "ProxyConnectionError": "cannot connect to the HTTP proxy for {endpoint}",
}


class StoreUnusable(ConfigError):
    """The store or a bucket cannot be used as configured (exit 2, like a configuration error)."""

    code = "store_unusable"


@dataclass(frozen=True)
class Problem:
    """What is wrong, and with which key or variable (``culprit``)."""

    culprit: str
    message: str
    kind: str  # "unreachable" | "credentials" | "denied" | "no_bucket" | "unset" | "other"

    def line(self) -> str:
        return f"{self.culprit}: {self.message}"


def classify(
    *, key: str, bucket: str, endpoint: str, code: str | None, status: int | None, transport: str
) -> Problem:
    """What a failed probe of ``bucket`` (configured as ``key``) means (pure).

    ``code`` and ``status`` come from an S3 error answer; ``transport`` is the name of the
    botocore exception class when there was no answer at all.
    """
    if code is None and status is None:
        if transport == "NoCredentialsError":
            return Problem(
                "AWS_ACCESS_KEY_ID",
                "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or ~/.aws/credentials)",
                "credentials",
            )
        text = _UNREACHABLE.get(transport, "cannot talk to {endpoint} ({transport})")
        message = text.format(endpoint=endpoint, transport=transport)
        return Problem(ENDPOINT, f"{message}; {ENDPOINT_HINT}", "unreachable")
    code = code or str(status)
    hint = BUCKET_HINTS.get(key, f"set {key}")
    if code in _KEY_REFUSED:
        return Problem(
            "AWS_ACCESS_KEY_ID",
            f"{endpoint} refused the access key ({code}): check the key id",
            "credentials",
        )
    if code in _SECRET_REFUSED:
        return Problem(
            "AWS_SECRET_ACCESS_KEY",
            f"{endpoint} refused the signature ({code}): the secret key does not match the key id",
            "credentials",
        )
    if code in _NO_BUCKET or (status == 404 and code in ("404", "NotFound")):
        return Problem(key, f"bucket {bucket!r} does not exist at {endpoint}; {hint}", "no_bucket")
    if code in _DENIED or status == 403:
        return Problem(
            key,
            f"the credentials may not use bucket {bucket!r} ({code}): give the key read and "
            "write access to it",
            "denied",
        )
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301", "400") and (
        status in (301, 400)
    ):
        return Problem(
            "s3.region",
            f"bucket {bucket!r} is in another region than the one configured ({code}); "
            "set s3.region or AWS_DEFAULT_REGION",
            "other",
        )
    return Problem(key, f"bucket {bucket!r} at {endpoint}: {code} from the store", "other")


def buckets_for(settings: Settings, keys: Iterable[str]) -> list[tuple[str, str | None]]:
    """``(key, bucket)`` for each configuration key a command needs."""
    values = {
        "buckets.input": settings.buckets.input,
        "buckets.output": settings.buckets.output,
        "watch.bucket": settings.watch_bucket,
    }
    return [(key, values[key]) for key in keys]


def probe_client(settings: Settings) -> Any:
    """A :class:`watcher.store.Store` that gives up quickly (one retry, short timeouts): a probe
    answers in seconds."""
    from watcher.store import Store, make_client

    client = make_client(
        settings.s3, connect_timeout=5, read_timeout=10, max_attempts=2, max_pool_connections=4
    )
    return Store(client)


def probe(settings: Settings, keys: Iterable[str], client: Any = None) -> list[Problem]:
    """Probe each bucket named by ``keys``; one :class:`Problem` per bucket that fails.

    An endpoint or credentials problem is the same for every bucket, so it is reported once and
    the remaining buckets are not tried.
    """
    from watcher.errors import WatcherError

    endpoint = settings.s3.endpoint_url or "the AWS default endpoint"
    problems: list[Problem] = []
    probed: set[str] = set()
    for key, bucket in buckets_for(settings, keys):
        if not bucket:
            problems.append(Problem(key, f"is not set; {BUCKET_HINTS[key]}", "unset"))
            continue
        if bucket in probed:
            continue
        probed.add(bucket)
        if client is None:
            client = probe_client(settings)
        try:
            client.peek(bucket)
            continue
        except WatcherError as exc:  # translated by the storage edge, which keeps the answer
            problem = classify(
                key=key,
                bucket=bucket,
                endpoint=endpoint,
                code=getattr(exc, "aws_code", None) or None,
                status=getattr(exc, "status", None),
                transport=getattr(exc, "transport", "") or "",
            )
        problems.append(problem)
        if problem.kind in ("unreachable", "credentials"):
            break
    return problems


def require_usable(settings: Settings, keys: Iterable[str]) -> None:
    """Raise :class:`StoreUnusable` naming the first problem; return when every bucket answers."""
    keys = list(keys)
    for key, bucket in buckets_for(settings, keys):
        if not bucket:
            raise StoreUnusable(key, f"is not set; {BUCKET_HINTS[key]}")
    problems = probe(settings, keys)
    if problems:
        raise StoreUnusable(problems[0].culprit, problems[0].message)
