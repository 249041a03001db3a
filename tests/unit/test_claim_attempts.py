"""What counts as an attempt (CONTRACT §7.5): a failed attempt (parked) does; a takeover after the
owner simply stopped renewing (SIGKILL, crash, partition) does not. Both protocols, their real
code on in-process moto; leases of a hundredth of a second, so expiry is a matter of the stores'
whole-second clocks."""

from __future__ import annotations

import time

import pytest

from watcher.claims import ConditionalClaimer, VersionsClaimer, read_generations
from watcher.store import Store

P = "zip-requests/"
KEY = f"{P}m.json"


@pytest.fixture
def store(versioned_bucket):
    return Store(versioned_bucket)


def claimers(store, mode: str, n: int = 3):
    if mode == "conditional":
        return [
            ConditionalClaimer(store, "bkt", P, owner=f"d{i}", lease_seconds=0.01) for i in range(n)
        ]
    return [
        VersionsClaimer(
            store,
            "bkt",
            P,
            owner=f"d{i}",
            lease_seconds=0.01,
            settle_seconds=0,
            sleep=lambda s: None,
        )
        for i in range(n)
    ]


def take_over(claimer):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        claim = claimer.claim(KEY)
        if claim is not None:
            return claim
        time.sleep(0.2)
    raise AssertionError("the expired claim was never taken over")


@pytest.mark.parametrize("mode", ["conditional", "versions"])
def test_a_killed_owner_costs_no_attempt_and_a_failed_attempt_costs_one(store, mode):
    first, second, third = claimers(store, mode)
    claim = first.claim(KEY)
    assert claim is not None and claim.attempts == 1
    # first is SIGKILLed: it never renews, never parks; its lease runs out
    retaken = take_over(second)
    assert retaken.attempts == 1, "a kill counted as a failed attempt"
    second.park(retaken, 0.01)  # this attempt failed on infrastructure
    after_failure = take_over(third)
    assert after_failure.attempts == 2
    third.park(after_failure, 0.01)
    assert take_over(first).attempts == 3


def test_failure_marks_are_counted_per_generation_and_refresh_the_heartbeat():
    from datetime import UTC, datetime

    t = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    later = datetime(2026, 11, 29, 12, 5, tzinfo=UTC)
    base = f"{P}.claims/m.json"
    keys = [
        (f"{base}/g-000001", t),
        (f"{base}/g-000001.failed", t),
        (f"{base}/g-000002", t),
        (f"{base}/g-000002.lease", t),
        (f"{base}/g-000003", t),
        (f"{base}/g-000003.failed", later),
    ]
    generations = read_generations(keys, base)
    assert (generations.newest, generations.failures, generations.heartbeat) == (3, 2, later)
