"""Claim protocols against moto's server over HTTP: exactly one winner, renewal, takeover."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import per_server
from faultproxy import Fault, FaultProxy

from watcher.claims import (
    ConditionalClaimer,
    SingleClaimer,
    VersionsClaimer,
    make_claimer,
    probe,
    store_now,
)
from watcher.config import S3Settings
from watcher.errors import AccessDenied, ConfigError
from watcher.store import Store, make_client

PREFIX = "zip-requests/"
KEYS = [f"{PREFIX}m{i:02d}.json" for i in range(30)]


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def edge(endpoint_url: str) -> Store:
    return Store(make_client(S3Settings(endpoint_url, "us-east-1")))


def claimer(mode: str, s3_server, bucket: str, owner: str, clock=None, lease: float = 30):
    options = {"clock": clock} if clock else {}
    if mode == "versions":
        return VersionsClaimer(
            edge(s3_server.endpoint_url),
            bucket,
            PREFIX,
            owner=owner,
            lease_seconds=lease,
            settle_seconds=0.3,
            **options,
        )
    return ConditionalClaimer(
        edge(s3_server.endpoint_url), bucket, PREFIX, owner=owner, lease_seconds=lease, **options
    )


# Both protocols on moto; on the B2-faithful server only ``versions`` (B2 has no conditional
# writes: a ``conditional`` daemon exits 2 there, test_b2.py).
MODES = per_server("mode", ["conditional", "versions"], ["versions"], indirect=True)


@pytest.fixture
def mode(request, s3, bucket):
    if request.param == "versions":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return request.param


@MODES
def test_three_contenders_each_key_claimed_exactly_once(mode, s3_server, bucket):
    contenders = [claimer(mode, s3_server, bucket, f"daemon-{n}") for n in range(3)]

    def contend(c):
        return [key for key in KEYS if c.claim(key) is not None]

    with ThreadPoolExecutor(3) as pool:
        won = list(pool.map(contend, contenders))
    wins = Counter(key for keys in won for key in keys)
    assert wins == Counter(dict.fromkeys(KEYS, 1)), wins


@MODES
def test_live_claim_blocks_others_and_renews(mode, s3_server, bucket):
    a = claimer(mode, s3_server, bucket, "a")
    b = claimer(mode, s3_server, bucket, "b")
    held = a.claim(KEYS[0])
    assert held is not None
    assert b.claim(KEYS[0]) is None
    renewed = a.renew(held)
    assert renewed is not None and renewed.expires_at >= held.expires_at
    assert b.claim(KEYS[0]) is None


@MODES
def test_expired_claim_is_taken_over_and_the_old_owner_loses_it(mode, s3_server, bucket):
    # Expiry is judged on the store's clock (whole seconds, plus one of margin): a 2 s lease is
    # surely over after 4.2 s.
    a = claimer(mode, s3_server, bucket, "a", lease=2)
    b = claimer(mode, s3_server, bucket, "b", lease=2)
    held = a.claim(KEYS[1])
    assert held is not None and b.claim(KEYS[1]) is None
    time.sleep(4.2)
    taken = b.claim(KEYS[1])
    assert taken is not None
    assert a.renew(held) is None
    assert b.renew(taken) is not None


@MODES
@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_a_daemon_with_a_wrong_clock_neither_steals_nor_waits_forever(
    mode, s3_server, bucket, skew
):
    a = claimer(mode, s3_server, bucket, "a", lease=2)
    b = claimer(mode, s3_server, bucket, "b", clock=Clock(time.time() + skew), lease=2)
    held = a.claim(KEYS[2])
    assert held is not None
    assert b.claim(KEYS[2]) is None, "a live claim must hold whatever b's clock says"
    time.sleep(4.2)
    assert b.claim(KEYS[2]) is not None, "an expired claim must be retaken whatever b's clock says"
    assert a.renew(held) is None


def test_store_clock_comes_from_the_date_header_else_the_fallback():
    answer = {"ResponseMetadata": {"HTTPHeaders": {"date": "Wed, 25 Nov 2026 12:00:00 GMT"}}}
    assert store_now(answer, 5.0) == 1795608000.0
    assert store_now({"ResponseMetadata": {"HTTPHeaders": {}}}, 5.0) == 5.0
    assert store_now({"ResponseMetadata": {"HTTPHeaders": {"date": "garbage"}}}, 5.0) == 5.0


@MODES
def test_release_lets_the_next_claimer_in_and_cleans_up(mode, s3_server, s3, bucket):
    a = claimer(mode, s3_server, bucket, "a")
    b = claimer(mode, s3_server, bucket, "b")
    held = a.claim(KEYS[2])
    a.release(held)
    again = b.claim(KEYS[2])
    assert again is not None
    b.release(again)
    versions = s3.list_object_versions(Bucket=bucket, Prefix=f"{PREFIX}.claims/")
    assert not versions.get("Versions"), "claim objects left behind"


@pytest.mark.moto_only("B2 has no conditional writes (test_b2proxy.py: `auto` picks versions)")
def test_probe_picks_conditional_on_moto(s3_server, s3, bucket):
    store = edge(s3_server.endpoint_url)
    assert probe(store, bucket, PREFIX) == "conditional"
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents"), "probe object left behind"
    assert make_claimer("auto", store, bucket, PREFIX, owner="x", lease_seconds=10).mode == (
        "conditional"
    )


@pytest.mark.moto_only("needs a bucket without versions first; every B2 bucket keeps them")
def test_versions_are_confirmed_by_observing_them(s3_server, s3, bucket):
    store = edge(s3_server.endpoint_url)
    with pytest.raises(ConfigError, match="does not keep object versions"):
        make_claimer("versions", store, bucket, PREFIX, owner="x", lease_seconds=10)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert make_claimer("versions", store, bucket, PREFIX, owner="x", lease_seconds=10).mode == (
        "versions"
    )
    left = s3.list_object_versions(Bucket=bucket)
    assert not left.get("Versions") and not left.get("DeleteMarkers"), "probe versions left"


@pytest.mark.parametrize("nth", [1, 2])
def test_access_denied_during_the_probe_is_reported_as_such(s3_server, s3, bucket, nth):
    """Denied on the first or on the second conditional create: never "no conditional writes"."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("status", method="PUT", status=403, code="AccessDenied", nth=nth))
        with pytest.raises(ConfigError, match="access denied") as raised:
            probe(edge(proxy.endpoint_url), bucket, PREFIX)
    finally:
        proxy.stop()
    assert raised.value.key == "watch.coordination"


@per_server("mode", ["conditional", "versions"], ["versions"])
def test_access_denied_on_a_claim_is_access_denied(mode, s3_server, s3, bucket):
    if mode == "versions":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("status", status=403, code="AccessDenied", times=100))
        endpoint = S3Settings(proxy.endpoint_url, "us-east-1")
        kind = ConditionalClaimer if mode == "conditional" else VersionsClaimer
        contender = kind(Store(make_client(endpoint)), bucket, PREFIX, owner="a", lease_seconds=9)
        with pytest.raises(AccessDenied) as raised:
            contender.claim(KEYS[0])
    finally:
        proxy.stop()
    assert raised.value.code == "access_denied"


def test_single_claimer_only_guards_this_process():
    single = SingleClaimer("me")
    held = single.claim("k")
    assert held is not None and single.claim("k") is None
    single.release(held)
    assert single.claim("k") is not None
