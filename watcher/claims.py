"""How several daemons on one requests prefix agree on who runs which manifest (CONTRACT §4.1).

A claim lives under ``<prefix>.claims/`` in the watch bucket (a sub-prefix the watcher ignores)
and expires ``lease_seconds`` after its last renewal, so a job whose daemon died is retaken.

``conditional`` — for stores with conditional writes (S3, R2, MinIO, moto). The claim is one
object ``.claims/<name>``, created with ``If-None-Match: *`` (exactly one creator succeeds),
renewed with ``If-Match: <its ETag>`` (fails once someone else took over), taken over after
expiry with ``If-Match`` on the expired claim's ETag (exactly one taker succeeds), and released
with a conditional delete.

``versions`` — for B2, which answers ``NotImplemented`` to conditional writes but keeps every
version of an object in the order it received them. Claims come in generations: contenders for
generation *g* all PUT the same key ``.claims/<name>/g-<g>``, wait a settle delay, and list that
key's versions; the writer of the **oldest** version (ties on the timestamp broken by the smaller
VersionId — all contenders see the same list, so they agree) owns generation *g*. Nobody can add
a version older than one that already exists, and a write still in flight after the settle delay
is stamped later than the reader's own write, so every contender reaches the same, final verdict.
The owner then writes ``.claims/<name>/g-<g>.lease`` and rewrites it to renew; the lease's
LastModified is the heartbeat. A generation whose heartbeat is older than ``lease_seconds`` is
dead; taking over means contending for generation *g + 1*, and an owner that finds a newer
generation on renewal has lost its claim.

Expiry is judged on the store's clock alone, in both protocols: a claim's age is the ``Date`` of
the response that showed it minus its LastModified, so daemons whose clocks disagree (a VM
without NTP, a container on a drifting host) still never take over a live claim.

``single`` — no coordination: only one daemon may watch the prefix.

``auto`` probes at start-up: conditional when a second ``If-None-Match: *`` create of the same
key fails (a store that ignores the header does not count), else versions when the bucket keeps
versions, else single.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from watcher.errors import StorageError
from watcher.store import error_code

CLAIMS = ".claims/"
_LOST = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey", "404"}


@dataclass(frozen=True)
class Claim:
    manifest_key: str
    owner: str
    generation: int
    token: str  # ETag (conditional), VersionId (versions), "" (single)
    expires_at: float


class Claimer(Protocol):
    mode: str

    def claim(self, manifest_key: str) -> Claim | None: ...

    def renew(self, claim: Claim) -> Claim | None: ...

    def release(self, claim: Claim) -> None: ...


def _storage_error(exc: Exception, key: str) -> StorageError:
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return StorageError(f"claim {key}: {code}")


# Date and the LastModified of a HEAD/GET are whole seconds; an expiry is only believed this much
# after it, so rounding can never make a live claim look expired.
_CLOCK_RESOLUTION = 1.0


def store_now(response: dict, fallback: float) -> float:
    """The store's clock when it answered (its HTTP ``Date`` header); ``fallback`` without one."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        return fallback


def claim_base(prefix: str, manifest_key: str) -> str:
    return f"{prefix}{CLAIMS}{manifest_key[len(prefix) :]}"


class _Base:
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock

    def _body(self, manifest_key: str, generation: int) -> bytes:
        now = self.clock()
        return json.dumps(
            {
                "owner": self.owner,
                "manifest": manifest_key,
                "generation": generation,
                "created_at": now,
                "expires_at": now + self.lease_seconds,
                "nonce": uuid.uuid4().hex,  # every write differs, so every ETag does
            }
        ).encode()


class ConditionalClaimer(_Base):
    mode = "conditional"

    def _put(self, key: str, body: bytes, **condition: str) -> str | None:
        """PUT with a precondition; the new ETag, or None when the precondition failed."""
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **condition
            )
        except ClientError as exc:
            if error_code(exc) in _LOST:
                return None
            raise _storage_error(exc, key) from None
        except BotoCoreError as exc:
            raise _storage_error(exc, key) from None
        return response["ETag"]

    def claim(self, manifest_key: str) -> Claim | None:
        key = claim_base(self.prefix, manifest_key)
        etag = self._put(key, self._body(manifest_key, 1), IfNoneMatch="*")
        if etag is None:
            etag = self._take_over_if_expired(key, manifest_key)
        if etag is None:
            return None
        return Claim(manifest_key, self.owner, 1, etag, self.clock() + self.lease_seconds)

    def _take_over_if_expired(self, key: str, manifest_key: str) -> str | None:
        try:
            current = self.client.get_object(Bucket=self.bucket, Key=key)
            document = json.loads(current["Body"].read())
        except ClientError as exc:
            if error_code(exc) in _LOST:
                return None  # released meanwhile: the next poll claims it afresh
            raise _storage_error(exc, key) from None
        except (BotoCoreError, ValueError) as exc:
            raise _storage_error(exc, key) from None
        if not self._expired(current, document):
            return None
        return self._put(key, self._body(manifest_key, 1), IfMatch=current["ETag"])

    def _expired(self, response: dict, document: dict) -> bool:
        """Whether the claim GET ``response`` returned has expired, by the store's clock.

        The lease is the owner's (its document's ``expires_at - created_at``: a difference on one
        clock), counted from when the store last received the claim.
        """
        try:
            lease = float(document["expires_at"]) - float(document["created_at"])
        except (KeyError, TypeError, ValueError):
            lease = self.lease_seconds
        written = response["LastModified"].timestamp()
        now = store_now(response, self.clock())
        return now > written + lease + _CLOCK_RESOLUTION

    def renew(self, claim: Claim) -> Claim | None:
        key = claim_base(self.prefix, claim.manifest_key)
        etag = self._put(key, self._body(claim.manifest_key, 1), IfMatch=claim.token)
        if etag is None:
            return None
        return replace(claim, token=etag, expires_at=self.clock() + self.lease_seconds)

    def release(self, claim: Claim) -> None:
        key = claim_base(self.prefix, claim.manifest_key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=claim.token)
        except ClientError as exc:
            if error_code(exc) not in _LOST:
                raise _storage_error(exc, key) from None
        except BotoCoreError as exc:
            raise _storage_error(exc, key) from None


@dataclass(frozen=True)
class Version:
    version_id: str
    last_modified: datetime


def winner(versions: list[Version]) -> Version:
    """The version that owns a generation: the oldest; equal timestamps → the smaller id."""
    return min(versions, key=lambda v: (v.last_modified, v.version_id))


@dataclass(frozen=True)
class Generations:
    """What one listing of ``.claims/<name>/`` says: the newest generation and its heartbeat."""

    newest: int
    heartbeat: datetime | None


def read_generations(keys: list[tuple[str, datetime]], base: str) -> Generations:
    """Pure: from (key, LastModified) pairs under ``base/``, the newest generation and when it
    last showed life (its lease, else its claim key)."""
    newest = 0
    seen: dict[int, datetime] = {}
    for key, modified in keys:
        name = key[len(base) + 1 :]
        if not name.startswith("g-"):
            continue
        number = name[2:].removesuffix(".lease")
        if not number.isdigit():
            continue
        generation = int(number)
        newest = max(newest, generation)
        seen[generation] = max(seen.get(generation, modified), modified)
    return Generations(newest, seen.get(newest))


class VersionsClaimer(_Base):
    mode = "versions"

    def __init__(
        self,
        *args: Any,
        settle_seconds: float = 1.5,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settle_seconds = settle_seconds
        self.sleep = sleep

    def _gen_key(self, manifest_key: str, generation: int) -> str:
        return f"{claim_base(self.prefix, manifest_key)}/g-{generation:06d}"

    def _list(self, manifest_key: str) -> tuple[Generations, float]:
        """The manifest's generations, and the store's clock when it listed them."""
        base = claim_base(self.prefix, manifest_key)
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=base + "/")
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, base) from None
        generations = read_generations(
            [(o["Key"], o["LastModified"]) for o in page.get("Contents", [])], base
        )
        return generations, store_now(page, self.clock())

    def _alive(self, generations: Generations, now: float) -> bool:
        if generations.heartbeat is None:
            return False
        age = now - generations.heartbeat.timestamp()
        return age <= self.lease_seconds + _CLOCK_RESOLUTION

    def claim(self, manifest_key: str) -> Claim | None:
        generations, now = self._list(manifest_key)
        if generations.newest and self._alive(generations, now):
            return None
        generation = generations.newest + 1
        key = self._gen_key(manifest_key, generation)
        try:
            mine = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=self._body(manifest_key, generation),
                ContentType="application/json",
            )["VersionId"]
            self.sleep(self.settle_seconds)
            listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key) from None
        except KeyError:
            raise StorageError(f"claim {key}: the bucket does not keep object versions") from None
        versions = [
            Version(v["VersionId"], v["LastModified"])
            for v in listed.get("Versions", [])
            if v["Key"] == key
        ]
        if not versions or winner(versions).version_id != mine:
            return None
        claim = Claim(manifest_key, self.owner, generation, mine, 0.0)
        return self._heartbeat(claim)

    def _heartbeat(self, claim: Claim) -> Claim:
        key = self._gen_key(claim.manifest_key, claim.generation) + ".lease"
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=self._body(claim.manifest_key, claim.generation),
                ContentType="application/json",
            )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, key) from None
        return replace(claim, expires_at=self.clock() + self.lease_seconds)

    def renew(self, claim: Claim) -> Claim | None:
        if self._list(claim.manifest_key)[0].newest != claim.generation:
            return None  # someone found our lease expired and took the job over
        return self._heartbeat(claim)

    def release(self, claim: Claim) -> None:
        """Delete every version of this manifest's claim objects (B2 would keep them forever)."""
        base = claim_base(self.prefix, claim.manifest_key)
        if self._list(claim.manifest_key)[0].newest != claim.generation:
            return
        try:
            listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=base + "/")
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])
            ]
            if doomed:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": doomed, "Quiet": True}
                )
        except (ClientError, BotoCoreError) as exc:
            raise _storage_error(exc, base) from None


class SingleClaimer:
    """No coordination between daemons; within this process a manifest runs once at a time."""

    mode = "single"

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, manifest_key: str) -> Claim | None:
        with self._lock:
            if manifest_key in self._held:
                return None
            self._held.add(manifest_key)
        return Claim(manifest_key, self.owner, 1, "", float("inf"))

    def renew(self, claim: Claim) -> Claim | None:
        return claim

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._held.discard(claim.manifest_key)


def probe(client: Any, bucket: str, prefix: str) -> str:
    """Which protocol this store supports: "conditional", "versions" or "single"."""
    key = f"{prefix}{CLAIMS}.probe-{uuid.uuid4().hex}"
    conditional = False
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
        except ClientError as exc:
            conditional = error_code(exc) in ("PreconditionFailed", "412")
    except ClientError:
        conditional = False  # e.g. B2's NotImplemented
    except BotoCoreError as exc:
        raise _storage_error(exc, key) from None
    try:
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status")
    except (ClientError, BotoCoreError):
        versioning = None
    try:
        listed = client.list_object_versions(Bucket=bucket, Prefix=key)
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in listed.get("Versions", []) + listed.get("DeleteMarkers", [])
            if v["Key"] == key
        ]
        if doomed:
            client.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
    except (ClientError, BotoCoreError):
        client.delete_object(Bucket=bucket, Key=key)
    if conditional:
        return "conditional"
    return "versions" if versioning == "Enabled" else "single"


def make_claimer(
    mode: str,
    client: Any,
    bucket: str,
    prefix: str,
    *,
    owner: str,
    lease_seconds: float,
    **options: Any,
) -> Claimer:
    """The claimer for ``mode``; ``auto`` probes the store first."""
    if mode == "auto":
        mode = probe(client, bucket, prefix)
    if mode == "conditional":
        return ConditionalClaimer(
            client, bucket, prefix, owner=owner, lease_seconds=lease_seconds, **options
        )
    if mode == "versions":
        return VersionsClaimer(
            client, bucket, prefix, owner=owner, lease_seconds=lease_seconds, **options
        )
    return SingleClaimer(owner)
