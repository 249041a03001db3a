"""Retention's decisions (retention.plan, stale_uploads): pure, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from watcher.retention import Policy, Version, kind_of, plan, stale_uploads

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
P = "zip-requests/"
POLICY = Policy(done_seconds=30 * 86400, failed_seconds=90 * 86400, stale_upload_seconds=86400)


def v(key: str, days_ago: float, vid: str = "1") -> Version:
    return Version(key, vid, NOW - timedelta(days=days_ago))


def keys(doomed: dict) -> set[tuple[str, str]]:
    return {(x.key, x.version_id) for items in doomed.values() for x in items}


def test_only_our_sub_prefixes_are_ever_planned():
    assert kind_of("zip-requests/done/a.json", P) == "done"
    assert kind_of("zip-requests/failed/a.error.json", P) == "failed"
    assert kind_of("zip-requests/.jobs/j.json", P) == "jobs"
    assert kind_of("zip-requests/.claims/a.json/g-1", P) == "claims"
    for key in ("zip-requests/a.json", "out/a.zip", "out/a.zip.result.json", "zip-requests/done/"):
        assert kind_of(key, P) is None
    old = [v(k, 400) for k in ("out/a.zip", "out/a.zip.result.json", "zip-requests/a.json")]
    assert keys(plan(old, prefix=P, now=NOW, policy=POLICY, waiting=set())) == set()


def test_every_version_of_an_old_key_goes_and_a_recently_rewritten_key_stays_whole():
    versions = [
        v("zip-requests/done/old.json", 40, "a"),
        v("zip-requests/done/old.json", 35, "b"),
        v("zip-requests/done/new.json", 40, "c"),
        v("zip-requests/done/new.json", 1, "d"),
        v("zip-requests/failed/f.json", 40, "e"),
        v("zip-requests/failed/g.json", 100, "f"),
        v("zip-requests/failed/g.error.json", 100, "g"),
        v("zip-requests/.jobs/j.json", 60, "h"),
        v("zip-requests/.jobs/k.json", 91, "i"),
    ]
    doomed = plan(versions, prefix=P, now=NOW, policy=POLICY, waiting=set())
    assert keys(doomed) == {
        ("zip-requests/done/old.json", "a"),
        ("zip-requests/done/old.json", "b"),
        ("zip-requests/failed/g.json", "f"),
        ("zip-requests/failed/g.error.json", "g"),
        ("zip-requests/.jobs/k.json", "i"),
    }


def test_claims_of_a_manifest_still_waiting_are_kept():
    versions = [v("zip-requests/.claims/a.json", 40, "1"), v("zip-requests/.claims/b.json/g-2", 40)]
    doomed = plan(versions, prefix=P, now=NOW, policy=POLICY, waiting={"zip-requests/a.json"})
    assert keys(doomed) == {("zip-requests/.claims/b.json/g-2", "1")}


def test_zero_keeps_forever_and_stale_uploads_follow_their_own_age():
    forever = Policy(0, 0, 0)
    assert (
        keys(
            plan(
                [v("zip-requests/done/x.json", 1000)],
                prefix=P,
                now=NOW,
                policy=forever,
                waiting=set(),
            )
        )
        == set()
    )
    uploads = [
        {"Key": "out/a.zip", "UploadId": "1", "Initiated": NOW - timedelta(hours=25)},
        {"Key": "out/b.zip", "UploadId": "2", "Initiated": NOW - timedelta(hours=2)},
    ]
    assert [u["UploadId"] for u in stale_uploads(uploads, now=NOW, policy=POLICY)] == ["1"]
    assert stale_uploads(uploads, now=NOW, policy=forever) == []


def test_cancel_requests_live_as_long_as_the_job_index():
    versions = [
        v("zip-requests/.cancel/old.json", 91, "1"),
        v("zip-requests/.cancel/young.json", 60, "2"),
        v("zip-requests/.cancel/", 400, "3"),  # the bare sub-prefix is no key of ours
    ]
    doomed = plan(versions, prefix=P, now=NOW, policy=POLICY, waiting=set())
    assert keys(doomed) == {("zip-requests/.cancel/old.json", "1")}
    assert kind_of("zip-requests/.cancel/j.json", P) == "cancel"
