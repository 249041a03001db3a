"""Retention on a versioned bucket (CONTRACT §9), the daemon as a subprocess on moto's server and
on the B2-faithful proxy: with ages of seconds, every version of the filed manifests, error
reports, job index entries, finished claims and cancel requests goes, stale multipart uploads are
aborted, and ZIPs and their markers all stay."""

from __future__ import annotations

import json

from conftest import SHARED_SECRET, both_servers, free_port, put_objects
from daemonproc import read_json, wait_until, write_config
from test_http import AUTH, _listening, request

SECONDS = 1 / 86400  # one second, in days


def versions(s3, bucket: str, prefix: str) -> list[tuple[str, str]]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for item in (*page.get("Versions", []), *page.get("DeleteMarkers", [])):
            out.append((item["Key"], item["VersionId"]))
    return out


@both_servers
def test_retention_removes_every_version_of_what_the_daemon_keeps_and_nothing_else(
    s3, bucket, tmp_path, daemons
):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put_objects(s3, bucket, {"in/a.txt": b"alpha"})
    # A cancel request nobody honoured (its job is unknown), and one consumed (a delete marker).
    for name in ("ghost", "taken"):
        s3.put_object(Bucket=bucket, Key=f"zip-requests/.cancel/{name}.json", Body=b"{}")
    s3.delete_object(Bucket=bucket, Key="zip-requests/.cancel/taken.json")
    stale = s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/left-behind.zip")["UploadId"]
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        http={"enabled": True, "port": port},
        watch={"coordination": "auto"},  # conditional on moto, versions on B2
        retention={
            "done_days": 4 * SECONDS,
            "failed_days": 4 * SECONDS,
            "stale_upload_hours": 1 / 3600,
            "interval_seconds": 1,
        },
    )
    proc = daemons(config, env={"SHARED_SECRET": SHARED_SECRET})
    wait_until(lambda: _listening(port), 60, "the HTTP server")
    for name, files in (("good", ["in/a.txt"]), ("bad", ["in/absent.txt"])):
        body = json.dumps({"id": name, "files": files, "target": f"out/{name}.zip"}).encode()
        assert request(port, "POST", "/jobs", body, AUTH)[0] == 202
    for name in ("good", "bad"):
        wait_until(lambda n=name: read_json(s3, bucket, f"out/{n}.zip.result.json"), 60, name)
    ours = (
        "zip-requests/done/",
        "zip-requests/failed/",
        "zip-requests/.jobs/",
        "zip-requests/.cancel/",
    )
    wait_until(lambda: all(versions(s3, bucket, p) for p in ours[:2]), 30, "filed manifests")
    user_before = sorted(versions(s3, bucket, "out/")) + versions(s3, bucket, "in/")
    assert len(user_before) >= 6

    def swept() -> bool:
        return not any(versions(s3, bucket, p) for p in (*ours, "zip-requests/.claims/"))

    wait_until(
        swept, 90, "retention to delete every version of done/ failed/ .jobs/ .cancel/ .claims/"
    )
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert stale not in [u["UploadId"] for u in uploads]
    user_after = sorted(versions(s3, bucket, "out/")) + versions(s3, bucket, "in/")
    assert user_after == user_before, "a ZIP, a marker or an input was touched"
    assert s3.get_object(Bucket=bucket, Key="out/good.zip")["ContentLength"] > 0
    text = request(port, "GET", "/metrics", headers=AUTH)[2].decode()
    deleted = {
        line.split('kind="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("b2zip_retention_deleted_total{")
    }
    assert deleted.get("done", 0) >= 1 and deleted.get("failed", 0) >= 1, deleted
    assert deleted.get("jobs", 0) >= 2 and deleted.get("uploads", 0) >= 1, deleted
    assert deleted.get("cancel", 0) >= 3, deleted
    assert proc.proc.poll() is None
