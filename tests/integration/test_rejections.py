"""Every rejection is visible, ids are idempotency keys, targets are safe keys (CONTRACT §7.6-§7.8),
with the daemon as a subprocess against moto's S3 server over HTTP."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from conftest import SHARED_SECRET, free_port, put_objects, verify_zip
from daemonproc import drop, list_keys, read_json, result_of, wait_until, write_config

PREFIX = "zip-requests/"


def check_zip(s3, bucket: str, target: str, expected: dict[str, bytes], tmp_path) -> None:
    path = tmp_path / target.replace("/", "_")
    s3.download_file(bucket, target, str(path))
    verify_zip(path, expected)


def test_every_rejected_manifest_leaves_a_failed_marker_or_an_error_report(
    s3, bucket, tmp_path, daemons
):
    put_objects(s3, bucket, {"a.txt": b"alpha"})
    good = {"files": ["a.txt"], "target": "out/good.zip", "id": "good-1"}
    drop(s3, bucket, "good", good)
    daemon = daemons(write_config(tmp_path / "c.yaml"))
    wait_until(lambda: result_of(s3, bucket, "out/good.zip"), 60, "the good job's result")
    good_result = result_of(s3, bucket, "out/good.zip")
    assert good_result["state"] == "succeeded"

    with_target = {
        "dupkeys": b'{"files": ["a.txt"], "files": ["a.txt"], "target": "out/dupkeys.zip"}',
        "bom": b'\xef\xbb\xbf{"files": ["a.txt"], "target": "out/bom.zip"}',
        "deep": b'{"files": ' + b"[" * 200 + b"]" * 200 + b', "target": "out/deep.zip"}',
        # Over 16 MiB: only its first bytes are read, and they name the target.
        "big": b'{"target": "out/big.zip", "files": ["' + b"k" * (16 * 1024 * 1024) + b'"]}',
    }
    without_target = {
        "garbage": b"{not json",
        "two-targets": b'{"files": ["a.txt"], "target": "out/x.zip", "target": "out/y.zip"}',
        "marker-target": json.dumps({"files": ["a.txt"], "target": "out/good.zip.result.json"}),
        "long-target": json.dumps({"files": ["a.txt"], "target": "t" * 1013}),
    }
    for name, raw in {**with_target, **without_target}.items():
        drop(s3, bucket, name, raw if isinstance(raw, bytes) else raw.encode())

    wait_until(
        lambda: (
            {f"{PREFIX}failed/{n}.json" for n in {**with_target, **without_target}}
            <= set(list_keys(s3, bucket, PREFIX + "failed/"))
        ),
        90,
        "every rejected manifest under failed/",
    )
    for name in with_target:
        result = result_of(s3, bucket, f"out/{name}.zip")
        assert result is not None, f"{name}: no result marker"
        assert result["state"] == "failed" and result["error"]["code"] == "invalid_manifest", name
        assert result["manifest"] == f"{PREFIX}{name}.json"
        assert f"out/{name}.zip" not in list_keys(s3, bucket, "out/"), f"{name}: a ZIP was written"
        assert read_json(s3, bucket, f"{PREFIX}failed/{name}.error.json") is None
    for name in without_target:
        report = read_json(s3, bucket, f"{PREFIX}failed/{name}.error.json")
        assert report is not None, f"{name}: no error report"
        assert set(report) == {"job_id", "code", "message", "attempts"}, report
        assert report["code"] == "invalid_manifest" and report["message"], report
        assert report["attempts"] >= 1
    # The target that was a marker key left the good job's marker and ZIP as they were.
    assert result_of(s3, bucket, "out/good.zip") == good_result
    check_zip(s3, bucket, "out/good.zip", {"a.txt": b"alpha"}, tmp_path)
    assert not [k for k in list_keys(s3, bucket, "out/") if k.startswith("out/x") or "y.zip" in k]
    assert daemon.proc.poll() is None


def post_job(port: int, manifest: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/jobs",
        data=json.dumps(manifest).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {SHARED_SECRET}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_job_id_is_an_idempotency_key_over_http_and_for_dropped_manifests(
    s3, bucket, tmp_path, daemons
):
    put_objects(s3, bucket, {"a.txt": b"alpha", "b.txt": b"beta"})
    port = free_port()
    config = write_config(tmp_path / "c.yaml", http={"enabled": True, "port": port})
    daemon = daemons(config, env={"SHARED_SECRET": SHARED_SECRET})
    wait_until(lambda: listening(port), 30, "the HTTP server")
    manifest = {"files": ["a.txt"], "target": "out/a.zip", "id": "order-7"}

    status, first = post_job(port, manifest)
    assert status == 202 and first["job_id"] == "order-7", first
    # The same id and content (fields in another order): the same job, 200.
    status, again = post_job(port, {"id": "order-7", "target": "out/a.zip", "files": ["a.txt"]})
    assert status == 200, again
    assert (again["job_id"], again["target"]) == ("order-7", "out/a.zip")
    # The same id, other content: 409.
    status, other = post_job(port, {**manifest, "files": ["b.txt"]})
    assert status == 409 and other["error"]["code"] == "id_conflict", other

    wait_until(lambda: result_of(s3, bucket, "out/a.zip"), 60, "the job's result")
    result = result_of(s3, bucket, "out/a.zip")
    assert result["state"] == "succeeded" and result["job_id"] == "order-7"
    check_zip(s3, bucket, "out/a.zip", {"a.txt": b"alpha"}, tmp_path)

    # Dropped by hand: the same id and content under another name is filed without running;
    # other content fails with id_conflict, its failed marker at its own target.
    drop(s3, bucket, "again", {"id": "order-7", "files": ["a.txt"], "target": "out/a.zip"})
    drop(s3, bucket, "other", {"files": ["b.txt"], "target": "out/b.zip", "id": "order-7"})
    wait_until(
        lambda: (
            {f"{PREFIX}done/again.json", f"{PREFIX}failed/other.json"}
            <= set(list_keys(s3, bucket, PREFIX))
        ),
        60,
        "both dropped manifests filed",
    )
    conflict = result_of(s3, bucket, "out/b.zip")
    assert conflict["state"] == "failed" and conflict["error"]["code"] == "id_conflict", conflict
    assert conflict["job_id"] == "order-7" and conflict["manifest"] == f"{PREFIX}other.json"
    assert "out/b.zip" not in list_keys(s3, bucket, "out/")
    # Once it has run, the same submission is still the same job.
    status, late = post_job(port, manifest)
    assert status == 200 and late["job_id"] == "order-7", late

    started = [e for e in daemon.events() if e.get("event") == "job_started"]
    assert [e["manifest"] for e in started] == [f"{PREFIX}order-7.json"], started
    assert result_of(s3, bucket, "out/a.zip") == result, "the job ran again"
    check_zip(s3, bucket, "out/a.zip", {"a.txt": b"alpha"}, tmp_path)
    assert read_json(s3, bucket, f"{PREFIX}.jobs/order-7.json")["manifest"] == (
        f"{PREFIX}order-7.json"
    )
    assert daemon.proc.poll() is None
