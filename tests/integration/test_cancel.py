"""Cancel (CONTRACT §9) through the daemon subprocess and moto's server: a queued and a running
job end failed with code cancelled, no ZIP, no upload left; a finished job answers 409 (CLI: exit
2), an unknown one 404 (CLI: exit 2).

Three paths: a queued job ends as soon as a daemon's poll lists its request, even while every
slot is taken (the daemon claims it past its capacity and ends it at once); a job running on the
daemon that serves the DELETE is cancelled at once; ``cancel`` from the CLI (another process, as
another host would) leaves a request that the running daemon's next poll listing shows."""

from __future__ import annotations

import json
import os
import subprocess
import time

from conftest import SHARED_SECRET, free_port, put_objects
from daemonproc import read_json, run_cli, wait_until, write_config
from faultproxy import Fault, FaultProxy
from test_http import AUTH, _listening, request

SLOW_FILES = [f"slow/{i:03}.bin" for i in range(200)]


def test_cancel_queued_and_running_jobs(s3, s3_server, s3_env, bucket, tmp_path, daemons):
    put_objects(s3, bucket, {name: b"s" * 100 for name in SLOW_FILES} | {"a.txt": b"alpha"})
    proxy = FaultProxy(s3_server.port).start()
    # Every GET of an input arrives 2 s late, one at a time: a job over 200 of them runs for
    # minutes, unless cancelled.
    proxy.add(Fault("delay", method="GET", key=r"/slow/", seconds=2, times=10**9))
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        watch={"max_concurrent_jobs": 1},
        http={"enabled": True, "port": port},
        pipeline={"max_parallel_gets": 1, "small_in_flight": 1},
    )

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, config=config, env={**os.environ, **s3_env}, cwd=tmp_path)

    def view(job_id: str) -> dict:
        return json.loads(request(port, "GET", f"/jobs/{job_id}", headers=AUTH)[2])

    def submit(job_id: str, files: list[str]) -> None:
        body = json.dumps({"id": job_id, "files": files, "target": f"out/{job_id}.zip"}).encode()
        assert request(port, "POST", "/jobs", body, AUTH)[0] == 202

    def ends_cancelled(job_id: str) -> None:
        done = wait_until(
            lambda: (v := view(job_id))["state"] == "failed" and v, 60, f"{job_id} to end"
        )
        assert done["error"]["code"] == "cancelled", done
        marker = read_json(s3, bucket, f"out/{job_id}.zip.result.json")
        assert marker["state"] == "failed" and marker["error"]["code"] == "cancelled", marker
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"out/{job_id}.zip").get("Contents", [])
        assert f"out/{job_id}.zip" not in [o["Key"] for o in listed], "a ZIP was written"
        wait_until(
            lambda: read_json(s3, bucket, f"zip-requests/failed/{job_id}.json") is not None,
            30,
            f"{job_id}'s manifest filed under failed/",
        )

    def running(job_id: str) -> None:
        wait_until(lambda: view(job_id)["state"] == "running", 60, f"{job_id} to run")

    try:
        daemons(config, env={"SHARED_SECRET": SHARED_SECRET}, endpoint=proxy.endpoint_url)
        wait_until(lambda: _listening(port), 60, "the HTTP server")
        submit("slow1", SLOW_FILES)
        running("slow1")
        submit("queued", ["a.txt"])
        # One slot, taken by slow1: the second job waits, and is cancelled while it waits —
        # without waiting for the slot (CONTRACT §9: within 10 s).
        assert view("queued")["state"] == "pending"
        asked = time.monotonic()
        status, headers, _ = request(port, "DELETE", "/jobs/queued", headers=AUTH)
        assert status == 202 and headers["Location"] == "/jobs/queued"
        ends_cancelled("queued")
        print(f"queued job cancelled by DELETE: filed {time.monotonic() - asked:.1f} s later")
        assert view("slow1")["state"] == "running", "the queued job waited for the slot"
        # The same from another process (as from another host): only the request in the bucket.
        submit("queued2", ["a.txt"])
        assert view("queued2")["state"] == "pending"
        asked = time.monotonic()
        cancelled = cli("cancel", "queued2")
        assert cancelled.returncode == 0, cancelled.stderr
        ends_cancelled("queued2")
        print(f"queued job cancelled by the CLI: filed {time.monotonic() - asked:.1f} s later")
        assert view("slow1")["state"] == "running", "the queued job waited for the slot"
        # The running job, from another process: a request the daemon's next poll lists.
        cancelled = cli("cancel", "slow1")
        assert cancelled.returncode == 0, cancelled.stderr
        ends_cancelled("slow1")
        # A job running on the daemon that answers the DELETE.
        submit("slow2", SLOW_FILES)
        running("slow2")
        status, _, _ = request(port, "DELETE", "/jobs/slow2", headers=AUTH)
        assert status == 202
        ends_cancelled("slow2")
        assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        assert not s3.list_objects_v2(Bucket=bucket, Prefix="zip-requests/.cancel/").get(
            "Contents"
        ), "a cancel request was left behind"

        assert request(port, "DELETE", "/jobs/slow1", headers=AUTH)[0] == 409
        assert request(port, "DELETE", "/jobs/nobody", headers=AUTH)[0] == 404
        finished = cli("cancel", "slow2")
        assert finished.returncode == 2 and "already failed" in finished.stderr, finished
        unknown = cli("cancel", "nobody")
        assert unknown.returncode == 2 and "not_found" in unknown.stderr, unknown
    finally:
        proxy.stop()


def test_a_job_cancelled_before_it_commits_writes_no_zip(s3, s3_server, bucket):
    """However small the job: a cancel set before the commit leaves no ZIP (the pipeline may
    never wait on a read after the cancel, so run_job checks it right before committing)."""
    from test_zip_job import settings_for

    from watcher.job import REQUESTED, Running, run_job
    from watcher.store import Store, make_client

    put_objects(s3, bucket, {"a.txt": b"alpha"})
    settings = settings_for(s3_server.endpoint_url, bucket)
    running = Running()
    running.cancel.set(REQUESTED)
    manifest = json.dumps({"files": ["a.txt"], "target": "out/a.zip"}).encode()
    outcome = run_job(
        Store(make_client(settings.s3)), settings, manifest, manifest_key=None, running=running
    )
    assert outcome.state == "failed" and outcome.error.code == "cancelled", outcome
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="out/a.zip").get("Contents", [])
    assert "out/a.zip" not in [o["Key"] for o in listed], "a ZIP was written"
    assert read_json(s3, bucket, "out/a.zip.result.json")["error"]["code"] == "cancelled"
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
