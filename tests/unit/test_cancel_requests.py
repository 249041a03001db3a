"""How a daemon meets cancel requests (CONTRACT §9) and counts what waits, without a network.

The poll's one listing of the requests prefix says whether ``.cancel/`` holds anything (its
sub-prefixes come with it), so an idle daemon pays nothing for cancels; a full daemon still
lists, so a queued job's request is seen within a poll interval and the job is claimed past the
daemon's capacity to end at once; ``manifests_pending`` leaves out what runs here (issue 13).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import structlog

from watcher.claims import Claim
from watcher.config import from_mapping
from watcher.daemon import Daemon
from watcher.metrics import Metrics
from watcher.plan import ObjectInfo
from watcher.service import CancelRequests
from watcher.store import Level

PREFIX = "zip-requests/"
LOG = structlog.get_logger("test")


def settings_with(**watch: object):
    return from_mapping(
        {"watch": watch}, {"BUCKET_NAME": "bucket", "AWS_DEFAULT_REGION": "us-east-1"}
    )


class LevelStore:
    """Lists ``keys`` at the requests prefix's level, with ``folders`` as its sub-prefixes;
    counts listings; any other request fails the test."""

    def __init__(self, keys: list[str], folders: set[str] = frozenset()) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        self.objects = [ObjectInfo(k, 10, start + timedelta(seconds=i)) for i, k in enumerate(keys)]
        self.folders = frozenset(folders)
        self.listings = 0

    def list_level(self, bucket: str, prefix: str) -> Level:
        self.listings += 1
        return Level(list(self.objects), self.folders)

    def __getattr__(self, name: str):
        raise AssertionError(f"the daemon asked the store for {name}")


class Winner:
    mode = "conditional"

    def claim(self, key: str) -> Claim | None:
        return Claim(key, "me", 1, "t", time.time() + 60)


def full_daemon(store: LevelStore, started: list[str], monkeypatch) -> Daemon:
    daemon = Daemon(
        settings_with(max_concurrent_jobs=1), store, Winner(), metrics=Metrics(), log=LOG
    )
    monkeypatch.setattr(daemon, "_start", lambda live: started.append(live.key))
    return daemon


def gauge(daemon: Daemon) -> float:
    return daemon.metrics.manifests_pending._value.get()


def test_manifests_pending_leaves_out_what_runs_here_even_when_full(monkeypatch):
    keys = [f"{PREFIX}m{i}.json" for i in range(3)]
    store = LevelStore(keys)
    started: list[str] = []
    daemon = full_daemon(store, started, monkeypatch)
    daemon._poll()
    assert len(started) == 1 and gauge(daemon) == 2, "one runs here: two wait"
    # Another daemon took one of the two others; ours still runs.
    store.objects = [o for o in store.objects if o.key != next(k for k in keys if k not in started)]
    daemon._poll()
    assert store.listings == 2, "a full daemon still lists"
    assert len(started) == 1 and gauge(daemon) == 1


def test_a_full_daemon_hands_queued_manifests_to_the_cancel_handler(monkeypatch):
    keys = [f"{PREFIX}m0.json", f"{PREFIX}m1.json"]
    store = LevelStore(keys, {f"{PREFIX}.cancel/", f"{PREFIX}done/"})
    started: list[str] = []
    daemon = full_daemon(store, started, monkeypatch)
    seen: list[tuple[bool, list[str]]] = []
    daemon.set_cancel_requests(".cancel/", lambda waiting, queued: seen.append((waiting, queued)))
    daemon._poll()
    assert seen == [(True, keys)] and len(started) == 1
    daemon.set_cancel_requests(
        ".cancel/", lambda waiting, queued: [daemon.take_now(k) for k in queued]
    )
    daemon._poll()
    assert sorted(started) == keys, "the queued job is claimed past the daemon's capacity"
    assert daemon.jobs.free() < 0 and gauge(daemon) == 0
    store.folders = frozenset({f"{PREFIX}done/"})
    daemon.set_cancel_requests(".cancel/", lambda waiting, queued: seen.append((waiting, queued)))
    daemon._poll()
    assert seen[-1] == (False, [])


class NoStore:
    def __getattr__(self, name: str):
        raise AssertionError(f"asked the store for {name} with no cancel request waiting")


class Recorder:
    def __init__(self) -> None:
        self.checks = None
        self.handler = None

    def set_cancel_check(self, check) -> None:
        self.checks = check

    def set_cancel_requests(self, folder: str, handle) -> None:
        assert folder == ".cancel/"
        self.handler = handle


def test_no_request_waiting_costs_no_request():
    daemon = Recorder()
    CancelRequests(daemon, NoStore(), settings_with(), LOG).install()
    daemon.handler(False, [f"{PREFIX}m0.json"])
    assert daemon.checks("m0") is False
