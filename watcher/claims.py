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
key fails (a store that ignores the header does not count; B2 answers ``501 NotImplemented``),
else versions when the bucket keeps versions *and* a probe key written twice lists both versions,
newest first (observed, not just announced by ``GetBucketVersioning``), else single. An
``AccessDenied`` during the probe is a configuration error, never a missing feature; so is
``versions`` (chosen or configured) on a store that does not keep versions (CONTRACT §7.11, §8).

Every request goes through :class:`watcher.store.Store` (its verbs translate errors and count
requests); the key layout comes from :mod:`watcher.layout`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from watcher.errors import AccessDenied, ConfigError, StorageError
from watcher.layout import CLAIMS, claim_base, probe_key
from watcher.store import Fetched, NotImplementedByStore, Store, server_time

__all__ = ["CLAIMS", "claim_base"]  # re-exported from watcher.layout
T = TypeVar("T")


@dataclass(frozen=True)
class Claim:
    manifest_key: str
    owner: str
    generation: int
    token: str  # ETag (conditional), VersionId (versions), "" (single)
    expires_at: float
    # Kept in the claim record across takeovers (CONTRACT §7.2, §7.5; docs/claims.md): which
    # attempt this is, and the run id chosen when the claim was created afresh (a drop of the
    # same content after the job finished and released its claim gets a new one).
    attempts: int = 1
    run: str = ""


class Claimer(Protocol):
    mode: str

    def claim(self, manifest_key: str) -> Claim | None: ...

    def renew(self, claim: Claim) -> Claim | None: ...

    def release(self, claim: Claim) -> None: ...


# Date and the LastModified of a HEAD/GET are whole seconds; an expiry is only believed this much
# after it, so rounding can never make a live claim look expired.
_CLOCK_RESOLUTION = 1.0


def store_now(response: dict, fallback: float) -> float:
    """The store's clock when it answered (its HTTP ``Date`` header); ``fallback`` without one."""
    moment = server_time(response)
    return fallback if moment is None else moment


class _Base:
    def __init__(
        self,
        store: Store,
        bucket: str,
        prefix: str,
        *,
        owner: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = _as_store(store)
        self.bucket = bucket
        self.prefix = prefix
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock

    def _body(
        self,
        manifest_key: str,
        generation: int,
        *,
        attempts: int = 1,
        run: str = "",
        lease: float | None = None,
        parked: bool = False,
    ) -> bytes:
        now = self.clock()
        return json.dumps(
            {
                "owner": self.owner,
                "manifest": manifest_key,
                "generation": generation,
                "created_at": now,
                "expires_at": now + (self.lease_seconds if lease is None else lease),
                "attempts": attempts,
                "run": run,
                # Written by park(): the attempt failed. A lease that ran out without it means
                # the owner died or stalled (a kill, a crash): not a failed attempt (§7.5).
                "parked": parked,
                "nonce": uuid.uuid4().hex,  # every write differs, so every ETag does
            }
        ).encode()


class ConditionalClaimer(_Base):
    mode = "conditional"

    def claim(self, manifest_key: str) -> Claim | None:
        """Create the claim (a new run, attempt 1), or take an expired one over (its run, the
        next attempt)."""
        key = claim_base(self.prefix, manifest_key)
        run = uuid.uuid4().hex
        written = self.store.put_if_absent(self.bucket, key, self._body(manifest_key, 1, run=run))
        if written is not None:
            return Claim(manifest_key, self.owner, 1, written.etag, self._expiry(), 1, run)
        return self._take_over_if_expired(key, manifest_key)

    def _expiry(self) -> float:
        return self.clock() + self.lease_seconds

    def _take_over_if_expired(self, key: str, manifest_key: str) -> Claim | None:
        current = self.store.get(self.bucket, key, max_bytes=64 * 1024)
        if current is None:
            return None  # released meanwhile: the next poll claims it afresh
        try:
            document = json.loads(current.body)
        except ValueError:
            document = {}
        document = document if isinstance(document, dict) else {}
        if not self._expired(current, document):
            return None
        # The next attempt after a failed one (parked); the same attempt, retaken, when the
        # owner simply stopped renewing (killed, crashed, partitioned): CONTRACT §7.5 counts
        # attempts that failed, not daemons that died.
        attempts = max(1, _int(document.get("attempts"), 1) + (1 if document.get("parked") else 0))
        run = str(document.get("run") or uuid.uuid4().hex)
        body = self._body(manifest_key, 1, attempts=attempts, run=run)
        written = self.store.put_if_match(self.bucket, key, body, current.etag)
        if written is None:
            return None
        return Claim(manifest_key, self.owner, 1, written.etag, self._expiry(), attempts, run)

    def _expired(self, current: Fetched, document: dict) -> bool:
        """Whether the claim ``current`` (as a GET returned it) has expired, by the store's clock.

        The lease is the owner's (its document's ``expires_at - created_at``: a difference on one
        clock), counted from when the store last received the claim.
        """
        try:
            lease = float(document["expires_at"]) - float(document["created_at"])
        except (KeyError, TypeError, ValueError):
            lease = self.lease_seconds
        written = current.last_modified.timestamp()
        now = self.clock() if current.server_time is None else current.server_time
        return now > written + lease + _CLOCK_RESOLUTION

    def renew(self, claim: Claim) -> Claim | None:
        key = claim_base(self.prefix, claim.manifest_key)
        body = self._body(claim.manifest_key, 1, attempts=claim.attempts, run=claim.run)
        written = self.store.put_if_match(self.bucket, key, body, claim.token)
        if written is None:
            return None
        return replace(claim, token=written.etag, expires_at=self._expiry())

    def park(self, claim: Claim, seconds: float) -> None:
        """Keep the claim record (its attempts and run) but let it expire after ``seconds``: the
        backoff before the next attempt (CONTRACT §7.5)."""
        key = claim_base(self.prefix, claim.manifest_key)
        body = self._body(
            claim.manifest_key,
            1,
            attempts=claim.attempts,
            run=claim.run,
            lease=seconds,
            parked=True,
        )
        self.store.put_if_match(self.bucket, key, body, claim.token)

    def release(self, claim: Claim) -> None:
        key = claim_base(self.prefix, claim.manifest_key)
        self.store.delete_if_match(self.bucket, key, claim.token)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Version:
    version_id: str
    last_modified: datetime


def winner(versions: list[Version]) -> Version:
    """The version that owns a generation: the oldest; equal timestamps → the smaller id."""
    return min(versions, key=lambda v: (v.last_modified, v.version_id))


@dataclass(frozen=True)
class Generations:
    """What one listing of ``.claims/<name>/`` says: the newest generation, its heartbeat, and
    how many generations ended in a failed attempt (``g-<g>.failed``)."""

    newest: int
    heartbeat: datetime | None
    failures: int = 0


def read_generations(keys: list[tuple[str, datetime]], base: str) -> Generations:
    """Pure: from (key, LastModified) pairs under ``base/``, the newest generation, when it
    last showed life (its lease, its failure mark, else its claim key), and the failure marks."""
    newest = 0
    seen: dict[int, datetime] = {}
    failed: set[int] = set()
    for key, modified in keys:
        name = key[len(base) + 1 :]
        if not name.startswith("g-"):
            continue
        number = name[2:].removesuffix(".lease").removesuffix(".failed")
        if not number.isdigit():
            continue
        generation = int(number)
        if name.endswith(".failed"):
            failed.add(generation)
        newest = max(newest, generation)
        seen[generation] = max(seen.get(generation, modified), modified)
    return Generations(newest, seen.get(newest), len(failed))


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
        listing = self.store.listing(self.bucket, base + "/")
        generations = read_generations([(o.key, o.last_modified) for o in listing.objects], base)
        now = self.clock() if listing.server_time is None else listing.server_time
        return generations, now

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
        mine = self.store.put(
            self.bucket, key, self._body(manifest_key, generation), content_type="application/json"
        ).version_id
        if mine is None:
            raise StorageError(f"claim {key}: the bucket does not keep object versions")
        self.sleep(self.settle_seconds)
        versions = [
            Version(v.version_id, v.last_modified)
            for v in self.store.list_versions(self.bucket, key)
            if v.key == key and not v.delete_marker
        ]
        if not versions or winner(versions).version_id != mine:
            return None
        # Generations restart at 1 after a release; a generation whose attempt failed left a
        # failure mark (park), so those count the attempts — a generation whose owner was
        # killed does not (CONTRACT §7.5). The manifest's own VersionId tells drops apart (run
        # stays "").
        attempts = generations.failures + 1
        claim = Claim(manifest_key, self.owner, generation, mine, 0.0, attempts=attempts)
        return self._heartbeat(claim)

    def _heartbeat(self, claim: Claim) -> Claim:
        key = self._gen_key(claim.manifest_key, claim.generation) + ".lease"
        self.store.put(
            self.bucket,
            key,
            self._body(claim.manifest_key, claim.generation),
            content_type="application/json",
        )
        return replace(claim, expires_at=self.clock() + self.lease_seconds)

    def renew(self, claim: Claim) -> Claim | None:
        if not self.check(claim):
            return None  # someone found our lease expired and took the job over
        return self._heartbeat(claim)

    def check(self, claim: Claim) -> bool:
        """Whether ``claim`` is still ours (one LIST, no heartbeat): the daemon's look right
        before a job starts, where a fresh heartbeat is not needed (its lease was just written)."""
        return self._list(claim.manifest_key)[0].newest == claim.generation

    def park(self, claim: Claim, seconds: float) -> None:
        """Mark the generation failed (``g-<g>.failed``, which the next taker counts) and leave
        the claim to expire ``lease_seconds`` after that mark (the backoff in this mode)."""
        key = self._gen_key(claim.manifest_key, claim.generation) + ".failed"
        body = self._body(claim.manifest_key, claim.generation, attempts=claim.attempts)
        self.store.put(self.bucket, key, body, content_type="application/json")

    def release(self, claim: Claim) -> None:
        """Delete every version of this manifest's claim objects (B2 would keep them forever)."""
        base = claim_base(self.prefix, claim.manifest_key)
        if self._list(claim.manifest_key)[0].newest != claim.generation:
            return
        self.store.delete_all_versions(self.bucket, base + "/")


class SingleClaimer:
    """No coordination between daemons; within this process a manifest runs once at a time."""

    mode = "single"

    def __init__(self, owner: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.owner = owner
        self.clock = clock
        self._held: set[str] = set()
        self._parked: dict[str, tuple[float, Claim]] = {}  # key -> (until, claim)
        self._lock = threading.Lock()

    def claim(self, manifest_key: str) -> Claim | None:
        with self._lock:
            if manifest_key in self._held:
                return None
            until, parked = self._parked.get(manifest_key, (0.0, None))
            if self.clock() < until:
                return None
            self._parked.pop(manifest_key, None)
            self._held.add(manifest_key)
        if parked is not None:
            return replace(parked, attempts=parked.attempts + 1)
        return Claim(manifest_key, self.owner, 1, "", float("inf"), 1, uuid.uuid4().hex)

    def renew(self, claim: Claim) -> Claim | None:
        return claim

    def park(self, claim: Claim, seconds: float) -> None:
        with self._lock:
            self._held.discard(claim.manifest_key)
            self._parked[claim.manifest_key] = (self.clock() + seconds, claim)

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._held.discard(claim.manifest_key)
            self._parked.pop(claim.manifest_key, None)


def _as_store(store: Any) -> Store:
    """A :class:`Store`; a bare boto3 client (older callers) gets one of its own."""
    return store if isinstance(store, Store) else Store(store)


def _denied(exc: AccessDenied, what: str) -> ConfigError:
    return ConfigError(
        "watch.coordination",
        f"{exc.message} while probing {what}: the credentials must be allowed to write, list "
        "(with versions) and delete under the requests prefix",
    )


def _has_conditional_writes(store: Store, bucket: str, key: str) -> bool:
    """A second ``If-None-Match: *`` create of one key must fail with 412; B2 answers the first
    with ``501 NotImplemented``, and a store that ignores the header lets both through."""
    try:
        if store.put_if_absent(bucket, key, b"1") is None:
            return False
        return store.put_if_absent(bucket, key, b"2") is None
    except NotImplementedByStore:
        return False
    except StorageError as exc:
        if getattr(exc, "status", None) in (400, 405, 501):
            return False  # a store that refuses the header outright
        raise


def observe_versions(store: Store, bucket: str, key: str) -> bool:
    """Write ``key`` twice and list its versions: True when both are listed, newest first
    (CONTRACT §8). ``GetBucketVersioning`` alone only says what the store claims."""
    first = store.put(bucket, key, b"first", content_type="application/octet-stream")
    second = store.put(bucket, key, b"second", content_type="application/octet-stream")
    if not first.version_id or not second.version_id or first.version_id == second.version_id:
        return False
    listed = [v.version_id for v in store.list_versions(bucket, key) if v.key == key]
    return listed[:2] == [second.version_id, first.version_id]


def _with_probe_key(
    store: Store, bucket: str, prefix: str, what: str, check: Callable[[str], T]
) -> T:
    """``check(key)`` on a fresh probe key, which is purged (every version) afterwards; an
    ``AccessDenied`` becomes a :class:`ConfigError` naming ``what`` was probed."""
    key = probe_key(prefix, uuid.uuid4().hex)
    try:
        return check(key)
    except AccessDenied as exc:
        raise _denied(exc, what) from None
    finally:
        try:
            store.delete_all_versions(bucket, key, exact=True)
        except (AccessDenied, StorageError):
            pass  # a stray probe key under .claims/ is harmless


def probe(store: Store, bucket: str, prefix: str) -> str:
    """Which protocol this store supports: "conditional", "versions" or "single".

    Raises :class:`ConfigError` on ``AccessDenied`` (the probe's verdict would be meaningless).
    """
    store = _as_store(store)

    def pick(key: str) -> str:
        if _has_conditional_writes(store, bucket, key):
            return "conditional"
        if store.bucket_versioning(bucket) != "Enabled":
            return "single"
        return "versions" if observe_versions(store, bucket, key) else "single"

    return _with_probe_key(store, bucket, prefix, "the store's features", pick)


def require_versions(store: Store, bucket: str, prefix: str) -> None:
    """``coordination: versions`` on a store that does not keep versions is a configuration
    error at start-up (CONTRACT §7.11), not a silent stall."""
    kept = _with_probe_key(
        store, bucket, prefix, "object versions", lambda key: observe_versions(store, bucket, key)
    )
    if not kept:
        raise ConfigError(
            "watch.coordination",
            f"'versions' needs a bucket that keeps object versions, and bucket {bucket!r} does "
            "not keep object versions (a key written twice did not list two versions, newest "
            "first): enable versioning or use 'conditional' / 'auto'",
        )


def require_conditional_writes(store: Store, bucket: str, prefix: str) -> None:
    """``coordination: conditional`` on a store without conditional writes (B2) would fail every
    claim: a configuration error at start-up instead."""
    supported = _with_probe_key(
        store,
        bucket,
        prefix,
        "conditional writes",
        lambda key: _has_conditional_writes(store, bucket, key),
    )
    if not supported:
        raise ConfigError(
            "watch.coordination",
            f"'conditional' needs conditional writes (If-None-Match / If-Match), and the store of "
            f"bucket {bucket!r} does not honour them (B2 answers 501 NotImplemented): use "
            "'versions' or 'auto'",
        )


def claim_timeout(lease_seconds: float) -> float:
    """How long one claim request may take: a third of the lease, between 1 and 10 s (pure).

    A renewal whose answer comes later than this counts as failed, so a daemon learns that it
    cannot confirm its claim while the lease still holds (CONTRACT §7.3).
    """
    return max(1.0, min(10.0, lease_seconds / 3))


def make_claimer(
    mode: str,
    store: Store,
    bucket: str,
    prefix: str,
    *,
    owner: str,
    lease_seconds: float,
    **options: Any,
) -> Claimer:
    """The claimer for ``mode``; ``auto`` probes the store first, ``versions`` checks that the
    store keeps versions."""
    store = _as_store(store)
    if mode == "auto":
        mode = probe(store, bucket, prefix)
    elif mode == "versions":
        require_versions(store, bucket, prefix)
    elif mode == "conditional":
        require_conditional_writes(store, bucket, prefix)
    if mode in ("conditional", "versions"):
        store = store.with_timeouts(seconds=claim_timeout(lease_seconds), attempts=3)
    if mode == "conditional":
        return ConditionalClaimer(
            store, bucket, prefix, owner=owner, lease_seconds=lease_seconds, **options
        )
    if mode == "versions":
        return VersionsClaimer(
            store, bucket, prefix, owner=owner, lease_seconds=lease_seconds, **options
        )
    return SingleClaimer(owner)
