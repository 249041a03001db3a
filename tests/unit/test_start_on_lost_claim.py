"""A job never starts on a claim that is lost (the B2 soak's race, docs/reliability.md): the
daemon confirms its claims between winning them and starting the job, after the slow steps in
between (reading the manifest and the commit record, claiming the target: a settle delay on B2).
The daemon's own code runs on in-process moto; only the claimer is scripted."""

from __future__ import annotations

import json
import time

import boto3
import pytest
from moto import mock_aws

from watcher import daemon as daemon_module
from watcher.claims import Claim
from watcher.config import from_mapping
from watcher.daemon import Daemon
from watcher.store import Store

PREFIX = "zip-requests/"
KEY = f"{PREFIX}m.json"


class Scripted:
    """Wins every claim; ``lose_on_target`` makes the manifest's claim lost while the target is
    being claimed — noticed by a renewal then (``renew_during_target``) or not at all."""

    mode = "versions"

    def __init__(self, daemon_ref: list, *, renew_during_target: bool) -> None:
        self.daemon_ref = daemon_ref
        self.renew_during_target = renew_during_target
        self.lost = False
        self.renewals = 0
        self.released: list[str] = []

    def claim(self, key: str) -> Claim | None:
        if key != KEY:  # the target's claim: meanwhile another daemon takes the manifest over
            self.lost = True
            if self.renew_during_target:
                self.daemon_ref[0].jobs.renew_all()
        return Claim(key, "me", 1, "v", time.time() + 30)

    def renew(self, claim: Claim) -> Claim | None:
        self.renewals += 1
        return None if self.lost and claim.manifest_key == KEY else claim

    def release(self, claim: Claim) -> None:
        self.released.append(claim.manifest_key)


@pytest.fixture
def store(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bkt")
        client.put_object(Bucket="bkt", Key="in/a.txt", Body=b"a")
        manifest = {"files": ["in/a.txt"], "target": "out/m.zip"}
        client.put_object(Bucket="bkt", Key=KEY, Body=json.dumps(manifest).encode())
        yield Store(client)


def perform(store, monkeypatch, claimer: Scripted, *, cancel_check=None):
    """Admit the manifest with ``claimer``'s claim and run the daemon's whole job on it, with
    ``run_job`` replaced by a recorder: returns (the live job, the run_job calls)."""
    settings = from_mapping(
        {"buckets": {"input": "bkt", "output": "bkt"}, "watch": {"prefix": PREFIX}}, {}
    )
    daemon = Daemon(settings, store, claimer)
    claimer.daemon_ref.append(daemon)
    if cancel_check is not None:
        daemon.set_cancel_check(cancel_check)
    started: list = []
    monkeypatch.setattr(daemon_module, "run_job", lambda *a, **k: started.append(a))
    admitted: list = []
    assert daemon.jobs.admit(KEY, claimer.claim(KEY), admitted.append)
    try:
        daemon._perform(admitted[0])
    except Exception:
        pass  # the recorder returns no Outcome; only whether run_job was called matters
    return admitted[0], started


@pytest.mark.parametrize("renew_during_target", [True, False], ids=["noticed", "unnoticed"])
def test_a_job_whose_claim_was_lost_before_it_started_does_not_start(
    store, monkeypatch, renew_during_target
):
    claimer = Scripted([], renew_during_target=renew_during_target)
    live, started = perform(store, monkeypatch, claimer)
    assert started == [], "the job started on a lost claim"
    assert live.claim_lost
    assert KEY not in claimer.released, "a lost claim is the new owner's: never released"
    targets = [k for k in claimer.released if "/targets/" in k]
    assert len(targets) == 1 == len(claimer.released), "the target's claim is freed at once"
    keys = [o["Key"] for o in store.raw_client.list_objects_v2(Bucket="bkt").get("Contents", [])]
    assert KEY in keys and "out/m.zip" not in keys, "left to the new owner, nothing written"


def test_a_slow_renewal_before_the_start_is_no_loss(store, monkeypatch):
    """Only a known loss stops a start: a renewal that times out while the lease still runs
    does not cost the attempt (the fences before each commit still need an answer)."""
    from watcher.errors import StorageError

    class Slow(Scripted):
        def renew(self, claim: Claim) -> Claim | None:
            raise StorageError("claim: ReadTimeoutError")

    claimer = Slow([], renew_during_target=False)
    claimer.claim = lambda key: Claim(key, "me", 1, "v", time.time() + 30)  # type: ignore[method-assign]
    live, started = perform(store, monkeypatch, claimer)
    assert len(started) == 1 and not live.claim_lost


@pytest.mark.parametrize("ours", [True, False])
def test_before_the_start_a_claimer_that_can_look_only_looks(store, monkeypatch, ours):
    """versions: the look before the start is one LIST (``check``), not a heartbeat PUT."""

    class Looking(Scripted):
        def check(self, claim: Claim) -> bool:
            return ours

        def renew(self, claim: Claim) -> Claim | None:
            raise AssertionError("a heartbeat before the start")

    claimer = Looking([], renew_during_target=False)
    claimer.claim = lambda key: Claim(key, "me", 1, "v", time.time() + 30)  # type: ignore[method-assign]
    live, started = perform(store, monkeypatch, claimer)
    assert len(started) == (1 if ours else 0) and live.claim_lost is not ours


@pytest.mark.parametrize("renew_during_target", [True, False], ids=["noticed", "unnoticed"])
def test_a_cancel_request_is_not_consumed_by_a_job_whose_claim_was_lost(
    store, monkeypatch, renew_during_target
):
    """Review finding 7: the cancel request of a job is consumed only once its claims are
    confirmed; a daemon that lost the claim leaves the request to the new owner, which would
    otherwise run the cancelled job."""
    consumed: list[str] = []
    claimer = Scripted([], renew_during_target=renew_during_target)
    _, started = perform(
        store, monkeypatch, claimer, cancel_check=lambda job_id: consumed.append(job_id) is None
    )
    assert started == [], "the job started on a lost claim"
    assert consumed == [], "the lost job consumed the cancel request"


class TargetLost(Scripted):
    """Wins both claims; the target's claim is found lost at the start fence."""

    def renew(self, claim: Claim) -> Claim | None:
        self.renewals += 1
        return claim if claim.manifest_key == KEY else None


def test_a_lost_target_claim_frees_the_manifest_claim_at_once(store, monkeypatch):
    """Review finding 7b: when the fence finds the *target* claim lost, the manifest's claim
    (still ours, and renewed by nobody any more) is released at once instead of idling for a
    whole lease; the lost target claim is left to its new owner."""
    claimer = TargetLost([], renew_during_target=False)
    _, started = perform(store, monkeypatch, claimer)
    assert started == [], "the job started on a lost claim"
    assert claimer.released == [KEY], claimer.released
