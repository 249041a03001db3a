"""How a poll picks and claims manifests: among the oldest, for the free slots, all at once."""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime, timedelta

from watcher import daemon as daemon_module
from watcher.claims import Claim
from watcher.config import from_mapping
from watcher.daemon import CLAIM_WINDOW, Daemon, pick_batch
from watcher.plan import ObjectInfo
from watcher.store import Level

PREFIX = "zip-requests/"


def settings_with(**watch: object):
    return from_mapping(
        {"watch": watch}, {"BUCKET_NAME": "bucket", "AWS_DEFAULT_REGION": "us-east-1"}
    )


def test_a_batch_is_free_distinct_picks_among_the_oldest():
    rng = random.Random(7)
    backlog = list(range(100))
    chosen: set[int] = set()
    for _ in range(300):
        batch = pick_batch(backlog, 3, rng)
        assert len(batch) == len(set(batch)) == 3
        assert max(batch) < 3 * CLAIM_WINDOW
        chosen.update(batch)
    assert chosen == set(range(3 * CLAIM_WINDOW)), "every manifest of the window gets its turn"
    assert sorted(pick_batch([4, 9], 3, rng)) == [4, 9]
    assert pick_batch([], 3, rng) == []


def test_a_lone_daemon_starts_its_backlog_in_submission_order():
    """Issue 13: with ``coordination: single`` there is nobody to spread over, so the oldest go
    first; with several daemons a batch is still started oldest first within itself."""
    rng = random.Random(3)
    backlog = list(range(40))
    assert pick_batch(backlog, 3, rng, spread=False) == [0, 1, 2]
    assert pick_batch([7], 3, rng, spread=False) == [7]
    for _ in range(100):
        batch = pick_batch(backlog, 4, rng)
        assert batch == sorted(batch)


def test_daemons_on_one_backlog_mostly_pick_different_manifests():
    backlog = list(range(50))
    daemons = [random.Random(seed) for seed in range(3)]
    overlaps = 0
    for _ in range(200):
        picks = [set(pick_batch(backlog, 2, rng)) for rng in daemons]
        overlaps += len(picks[0] & picks[1]) + len(picks[0] & picks[2]) + len(picks[1] & picks[2])
    # Always taking the oldest two would overlap 6 times per round (1,200 in all); at random
    # among the oldest eight, about 1.5 per round.
    assert overlaps < 600, overlaps


class ListingStore:
    def __init__(self, keys: list[str]) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        self.objects = [
            ObjectInfo(key, 10, start + timedelta(seconds=i)) for i, key in enumerate(keys)
        ]

    def list_level(self, bucket: str, prefix: str) -> Level:
        return Level(list(self.objects), frozenset())


class GatedClaimer:
    """Wins every other manifest; each claim waits until ``parties`` claims are in flight
    together, so claims made one after another would break the barrier and fail the test."""

    mode = "versions"

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def claim(self, manifest_key: str) -> Claim | None:
        with self._lock:
            self.asked.append(manifest_key)
            n = len(self.asked)
        if n <= self.barrier.parties:
            self.barrier.wait()
        return Claim(manifest_key, "me", 1, "v", 0.0) if n % 2 else None


def test_a_poll_claims_for_all_free_slots_at_once_and_fills_them(monkeypatch):
    settings = settings_with(max_concurrent_jobs=3)
    keys = [f"{PREFIX}m{i:02d}.json" for i in range(20)] + [f"{PREFIX}done/old.json"]
    claimer = GatedClaimer(parties=3)
    daemon = Daemon(settings, ListingStore(keys), claimer)
    started: list[str] = []

    def start(live):
        started.append(live.key)  # admitted: the job occupies its slot until it finishes

    monkeypatch.setattr(daemon, "_start", start)
    assert daemon.poll_once() == 20
    assert len(started) == 3 == len(set(started)), started
    assert set(claimer.asked) <= {k for k in keys if "/done/" not in k}
    assert len(claimer.asked) == len(set(claimer.asked)), "no manifest asked for twice"
    assert daemon.poll_once() == 20 and len(started) == 3, "no free slot, no claim"


def test_later_batches_claim_from_a_fresh_listing(monkeypatch):
    """Another daemon files m19 while our first batch is out: we must not claim it after."""
    monkeypatch.setattr(daemon_module, "STALE_LISTING_SECONDS", -1.0)  # refresh every batch
    settings = settings_with(max_concurrent_jobs=3)
    store = ListingStore([f"{PREFIX}m{i:02d}.json" for i in range(20)])
    asked: list[str] = []

    class LosingClaimer:
        mode = "versions"

        def claim(self, manifest_key: str) -> Claim | None:
            asked.append(manifest_key)
            store.objects = [o for o in store.objects if o.key != f"{PREFIX}m19.json"]
            return None  # every manifest is somebody else's

    daemon = Daemon(settings, store, LosingClaimer())
    assert daemon.poll_once() == 20
    assert sorted(asked) == [f"{PREFIX}m{i:02d}.json" for i in range(19)], "each tried once"


def test_a_claim_being_released_is_not_renewed():
    """A renewal that listed the claim halfway through its release would call it lost."""
    settings = settings_with()
    releasing, may_finish = threading.Event(), threading.Event()
    renewed: list[str] = []

    class SlowReleaser:
        mode = "versions"

        def renew(self, claim: Claim) -> Claim | None:
            renewed.append(claim.manifest_key)
            return None

        def release(self, claim: Claim) -> None:
            releasing.set()
            assert may_finish.wait(10)

    jobs = Daemon(settings, ListingStore([]), SlowReleaser()).jobs
    admitted: list = []
    assert jobs.admit("k", Claim("k", "me", 1, "v", 0.0), admitted.append)
    live = admitted[0]
    release = threading.Thread(target=jobs.release, args=(live,))
    release.start()
    assert releasing.wait(10)
    renewal = threading.Thread(target=jobs.renew_all)
    renewal.start()
    may_finish.set()
    release.join(10)
    renewal.join(10)
    assert renewed == [] and not live.claim_lost


def test_only_the_warning_about_a_skipped_overlapping_run_is_filtered():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("apscheduler.scheduler", logging.WARNING, "", 0, message, (), None)

    skipped = record(
        'Execution of job "Daemon._tick (trigger: interval[0:00:01], next run at: ...)" '
        "skipped: maximum number of running instances reached (1)"
    )
    keep = daemon_module._SKIPPED_RUN_FILTER.filter
    assert not keep(skipped)
    assert keep(record('Run time of job "x" was missed by 0:05'))
