"""The daemon's HTTP trigger as a real subprocess on a free loopback port (CONTRACT §5)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import EVENT_SECRET, SHARED_SECRET, free_port, put_objects, verify_zip
from daemonproc import DaemonProcess, read_json, wait_until, write_config


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


AUTH = {"Authorization": f"Bearer {SHARED_SECRET}", "Content-Type": "application/json"}


@pytest.fixture
def http_daemon(tmp_path, s3_env):
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        watch={"interval_seconds": 60, "max_idle_interval_seconds": 60},
        http={"enabled": True, "port": port},
    )
    proc = DaemonProcess(
        config,
        {**s3_env, "SHARED_SECRET": SHARED_SECRET, "B2_EVENT_SECRET": EVENT_SECRET},
        tmp_path / "d.log",
    ).start()
    wait_until(
        lambda: request(port, "GET", "/healthz")[0] == 200 if _listening(port) else False,
        30,
        "the HTTP server",
    )
    proc.wait_for_event("daemon_started")
    time.sleep(1.5)  # let the first (start-up) poll pass, so only a wake-up can start a job
    yield proc, port
    proc.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def metric(port: int, name: str) -> float:
    text = request(port, "GET", "/metrics", headers=AUTH)[2].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_post_runs_the_job_and_every_route_answers(http_daemon, s3, bucket, tmp_path):
    proc, port = http_daemon
    put_objects(s3, bucket, {"a.txt": b"alpha", "b.txt": b"beta"})
    assert request(port, "GET", "/readyz")[0] == 200
    before = metric(port, "b2zip_jobs_finished_total")

    status, headers, body = request(
        port,
        "POST",
        "/",
        json.dumps({"files": ["a.txt", "b.txt"], "target": "out/http.zip"}).encode(),
        AUTH,
    )
    assert status == 202, body
    answer = json.loads(body)
    assert answer["target"] == "out/http.zip" and headers["Location"] == answer["status_url"]
    job_id = answer["job_id"]
    wait_until(
        lambda: read_json(s3, bucket, "out/http.zip.result.json"),
        20,
        "the result marker (the POST must wake the daemon; polls are 60 s apart)",
    )
    verify_zip(
        tmp_path / "z.zip"
        if s3.download_file(bucket, "out/http.zip", str(tmp_path / "z.zip")) is None
        else None,
        {"a.txt": b"alpha", "b.txt": b"beta"},
    )
    status, _, body = request(port, "GET", f"/jobs/{job_id}", headers=AUTH)
    assert status == 200 and json.loads(body)["state"] == "succeeded"
    assert request(port, "GET", "/jobs/no-such-job", headers=AUTH)[0] == 404
    wait_until(lambda: metric(port, "b2zip_jobs_finished_total") == before + 1, 10, "metrics")
    assert metric(port, "b2zip_bytes_read_total") >= 9
    assert metric(port, "b2zip_storage_requests_total") > 0

    assert request(port, "POST", "/jobs", b"{nope", AUTH)[0] == 400
    assert request(port, "POST", "/jobs", b"hi", {**AUTH, "Content-Type": "text/plain"})[0] == 415
    assert request(port, "POST", "/jobs", b"x" * (16 * 1024 * 1024 + 10), AUTH)[0] == 413
    wrong = {"Authorization": "Bearer not-the-secret-xyz", "Content-Type": "application/json"}
    status, headers, _ = request(port, "POST", "/jobs", b"{}", wrong)
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    assert request(port, "GET", "/nowhere", headers=AUTH)[0] == 404
    log = proc.log_path.read_text()
    assert "not-the-secret-xyz" not in log and SHARED_SECRET not in log and EVENT_SECRET not in log


def test_signed_b2_event_starts_a_dropped_manifest_before_the_next_poll(http_daemon, s3, bucket):
    proc, port = http_daemon
    put_objects(s3, bucket, {"c.txt": b"gamma"})
    s3.put_object(
        Bucket=bucket,
        Key="zip-requests/evented.json",
        Body=json.dumps({"files": ["c.txt"], "target": "out/evented.zip"}).encode(),
    )
    body = json.dumps(
        {
            "events": [
                {
                    "eventType": "b2:ObjectCreated:Upload",
                    "objectName": "zip-requests/evented.json",
                    "bucketName": bucket,
                    "eventId": "evt-1",
                    "eventTimestamp": int(time.time() * 1000),
                }
            ]
        }
    ).encode()
    bad = request(
        port, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": "v1=" + "0" * 64}
    )
    assert bad[0] == 401
    signature = "v1=" + hmac.new(EVENT_SECRET.encode(), body, hashlib.sha256).hexdigest()
    sent = time.monotonic()
    status, _, _ = request(
        port, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": signature}
    )
    answered = time.monotonic() - sent
    assert status == 200 and answered < 1.0
    wait_until(
        lambda: read_json(s3, bucket, "out/evented.zip.result.json"),
        20,
        "the event-triggered job (the next poll is 60 s away)",
    )
    elapsed = time.monotonic() - sent
    print(f"webhook event to result marker: {elapsed:.2f} s")
    assert elapsed < 30
    assert read_json(s3, bucket, "out/evented.zip.result.json")["state"] == "succeeded"
