"""The owner of the live jobs (``daemon.Jobs``) without a network: admission, draining,
cancellation, fencing; and a manifest version's commit record (CONTRACT §7.1-§7.3, §7.10)."""

from __future__ import annotations

import threading
import time

import pytest
import structlog

from watcher.claims import Claim
from watcher.daemon import Jobs, ManifestVersion, backoff_seconds, target_claim_key
from watcher.errors import JobCancelled, StorageError
from watcher.job import CLAIM_LOST, SHUTDOWN

LOG = structlog.get_logger("test")


class Claims:
    """A claimer whose renewals say what the test wants; it records releases."""

    mode = "conditional"

    def __init__(self) -> None:
        self.released: list[str] = []
        self.renewals = 0
        self.answer: str = "ok"  # "ok" | "lost" | "error"

    def claim(self, key: str) -> Claim | None:
        return Claim(key, "me", 1, "t", time.time() + 60)

    def renew(self, claim: Claim) -> Claim | None:
        self.renewals += 1
        if self.answer == "error":
            raise StorageError("claim: ReadTimeoutError")
        return None if self.answer == "lost" else claim

    def release(self, claim: Claim) -> None:
        self.released.append(claim.manifest_key)


def claim(key: str, expires_in: float = 60) -> Claim:
    return Claim(key, "me", 1, "t", time.time() + expires_in)


def test_a_claim_won_after_draining_began_is_released_not_run():
    claims = Claims()
    jobs = Jobs(claims, 2, LOG)
    jobs.stop_admitting()
    started: list = []
    assert not jobs.admit("p/a.json", claim("p/a.json"), started.append)
    assert started == [] and claims.released == ["p/a.json"] and jobs.count() == 0


def test_drain_waits_for_the_live_set_not_a_snapshot_and_cancels_what_is_left():
    jobs = Jobs(Claims(), 2, LOG)
    quick: list = []
    jobs.admit("p/quick.json", claim("p/quick.json"), quick.append)
    stubborn: list = []
    jobs.admit("p/stubborn.json", claim("p/stubborn.json"), stubborn.append)
    threading.Timer(0.3, jobs.finished, args=(quick[0],)).start()

    def stop_when_cancelled() -> None:
        stubborn[0].cancel.wait(10)
        jobs.finished(stubborn[0])

    threading.Thread(target=stop_when_cancelled).start()
    started = time.monotonic()
    left = jobs.drain(grace=1.0, cancel_now=threading.Event())
    assert left == [] and jobs.count() == 0
    assert stubborn[0].cancel.reason == SHUTDOWN and not quick[0].cancel.is_set()
    assert 1.0 <= time.monotonic() - started < 5


def test_drain_returns_jobs_stuck_after_the_cancellation():
    jobs = Jobs(Claims(), 1, LOG)
    jobs.admit("p/stuck.json", claim("p/stuck.json"), lambda live: None)
    left = jobs.drain(grace=0.1, cancel_now=threading.Event())
    assert [live.key for live in left] == ["p/stuck.json"]


def test_cancel_by_job_id_reaches_only_that_job():
    jobs = Jobs(Claims(), 2, LOG)
    admitted: list = []
    for key in ("p/a.json", "p/b.json"):
        jobs.admit(key, claim(key), admitted.append)
    admitted[0].job_id, admitted[1].job_id = "job-a", "job-b"
    assert jobs.cancel("job-b") and not jobs.cancel("job-z")
    assert admitted[1].cancel.is_set() and not admitted[0].cancel.is_set()


@pytest.mark.parametrize("answer", ["lost", "error"])
def test_fence_refuses_a_commit_once_the_claim_cannot_be_confirmed(answer):
    claims = Claims()
    jobs = Jobs(claims, 1, LOG)
    admitted: list = []
    jobs.admit("p/a.json", claim("p/a.json", expires_in=0.5), admitted.append)
    jobs.fence(admitted[0])  # confirmed
    claims.answer = answer
    with pytest.raises(JobCancelled):
        jobs.fence(admitted[0])
    assert admitted[0].claim_lost and admitted[0].cancel.reason == CLAIM_LOST
    jobs.release(admitted[0])
    assert claims.released == [], "a lost claim is not released: it is somebody else's"


def test_a_renewal_error_while_the_lease_still_runs_is_not_a_loss():
    claims = Claims()
    jobs = Jobs(claims, 1, LOG)
    admitted: list = []
    jobs.admit("p/a.json", claim("p/a.json", expires_in=60), admitted.append)
    claims.answer = "error"
    jobs.renew_all()
    assert not admitted[0].claim_lost and not admitted[0].cancel.is_set()


def test_a_result_marker_is_the_commit_record_of_exactly_one_version():
    version = ManifestVersion("p/a.json", b"{}", '"e1"', None, "run-1")
    record = {"manifest": "p/a.json", "manifest_version": version.identity()}
    assert version.committed_by(record)
    redropped = ManifestVersion("p/a.json", b"{}", '"e1"', None, "run-2")
    assert not redropped.committed_by(record), "identical content dropped again is a new job"
    overwritten = ManifestVersion("p/a.json", b"{}", '"e2"', None, "run-1")
    assert not overwritten.committed_by(record)
    other = ManifestVersion("p/b.json", b"{}", '"e1"', None, "run-1")
    assert not other.committed_by(record)
    assert not version.committed_by({"manifest": "p/a.json"})
    assert not version.committed_by(None)


def test_target_claims_and_backoff_are_pure():
    a = target_claim_key("p/", "out", "x.zip")
    assert a == target_claim_key("p/", "out", "x.zip") != target_claim_key("p/", "out", "y.zip")
    assert a.startswith("p/targets/") and "/" not in a[len("p/targets/") :]
    assert [backoff_seconds(n, 6) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 6, 6]
