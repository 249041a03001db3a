"""Housekeeping against in-process moto through the storage edge (CONTRACT §9): every version of
what the daemon keeps goes once old, delete markers included; nothing else is touched. And the
edge itself: no module but watcher/store.py talks to boto3/botocore (CONTRACT §8)."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from watcher.config import from_mapping
from watcher.retention import Housekeeping
from watcher.store import Store

P = "zip-requests/"
OURS = ("done/a.json", "failed/b.json", "failed/b.error.json", ".jobs/j.json", ".cancel/j.json")


@pytest.fixture
def s3(versioned_bucket):
    return versioned_bucket


def settings(days: float = 30.0):
    return from_mapping(
        {
            "buckets": {"input": "bkt", "output": "bkt"},
            "watch": {"prefix": P},
            "retention": {"done_days": days, "failed_days": days, "stale_upload_hours": 1},
        },
        {},
    )


def all_versions(s3) -> set[tuple[str, str]]:
    page = s3.list_object_versions(Bucket="bkt")
    return {
        (e["Key"], e["VersionId"])
        for e in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
    }


def test_every_version_of_our_old_keys_goes_and_nothing_else(s3):
    for name in OURS:
        s3.put_object(Bucket="bkt", Key=P + name, Body=b"1")
        s3.put_object(Bucket="bkt", Key=P + name, Body=b"2")
    s3.delete_object(Bucket="bkt", Key=P + ".cancel/j.json")  # a consumed request: delete marker
    s3.put_object(Bucket="bkt", Key=P + ".claims/gone.json/g-000001", Body=b"c")
    s3.put_object(Bucket="bkt", Key=P + ".claims/waiting.json/g-000001", Body=b"c")
    s3.put_object(Bucket="bkt", Key=P + "waiting.json", Body=b"{}")
    for key in ("out/a.zip", "out/a.zip.result.json", "in/x.txt"):
        s3.put_object(Bucket="bkt", Key=key, Body=b"user's")
    before = all_versions(s3)
    store = Store(s3)

    young = Housekeeping(settings(), store).run_once()
    assert not any(young.values()) and all_versions(s3) == before
    # (moto reports every upload as initiated in 2010: it is created after the young pass)
    upload = s3.create_multipart_upload(Bucket="bkt", Key="out/left.zip")["UploadId"]

    later = datetime.now(UTC) + timedelta(days=400)
    counts = Housekeeping(settings(), store).run_once(now=later)
    left = all_versions(s3)
    assert {k for k, _ in left} == {
        P + ".claims/waiting.json/g-000001",
        P + "waiting.json",
        "out/a.zip",
        "out/a.zip.result.json",
        "in/x.txt",
    }
    assert counts == {
        "done": 2,
        "failed": 4,
        "jobs": 2,
        "claims": 1,
        "cancel": 3,
        "uploads": 1,
    }
    assert upload not in [
        u["UploadId"] for u in s3.list_multipart_uploads(Bucket="bkt").get("Uploads", [])
    ]
    by_class = store.request_classes()
    assert by_class["c"] >= 5 and by_class["a"] >= 1, by_class  # every request went through it


def test_no_module_but_the_store_talks_to_boto3():
    root = Path(__file__).resolve().parents[2] / "watcher"
    offenders = []
    for path in sorted(root.glob("*.py")):
        if path.name == "store.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("boto3", "botocore") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
