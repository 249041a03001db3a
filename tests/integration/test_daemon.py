"""The daemon as a real subprocess against moto's S3 server over HTTP (CONTRACT §4, §6)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import deterministic_bytes, put_objects, verify_zip
from daemonproc import drop, list_keys, read_json, result_of, run_cli, wait_until, write_config

PREFIX = "zip-requests/"


def fetch_zip(s3, bucket: str, key: str, tmp_path):
    path = tmp_path / key.replace("/", "_")
    s3.download_file(bucket, key, str(path))
    return path


def test_several_manifests_dropped_at_once_all_succeed_and_are_filed(s3, bucket, tmp_path, daemons):
    inputs = {
        f"in/{i}/file-{j}.txt": f"job {i} file {j}\n".encode() * (j + 1)
        for i in range(4)
        for j in range(3)
    }
    put_objects(s3, bucket, inputs)
    for i in range(4):
        files = [f"in/{i}/file-{j}.txt" for j in range(3)]
        drop(s3, bucket, f"job-{i}", {"files": files, "target": f"out/job-{i}.zip"})
    daemon = daemons(write_config(tmp_path / "c.yaml"))

    wait_until(
        lambda: all(result_of(s3, bucket, f"out/job-{i}.zip") for i in range(4)),
        60,
        "all result markers",
    )
    for i in range(4):
        result = result_of(s3, bucket, f"out/job-{i}.zip")
        assert result["state"] == "succeeded", result
        assert result["error"] is None
        assert result["manifest"] == f"{PREFIX}job-{i}.json"
        status = read_json(s3, bucket, f"out/job-{i}.zip.status.json")
        assert status["state"] == "succeeded"
        expected = {f"in/{i}/file-{j}.txt": inputs[f"in/{i}/file-{j}.txt"] for j in range(3)}
        verify_zip(fetch_zip(s3, bucket, f"out/job-{i}.zip", tmp_path), expected)
    wait_until(
        lambda: (
            sorted(list_keys(s3, bucket, PREFIX + "done/"))
            == sorted(f"{PREFIX}done/job-{i}.json" for i in range(4))
        ),
        20,
        "manifests filed under done/",
    )
    assert not [
        k for k in list_keys(s3, bucket, PREFIX) if k.count("/") == 1 and k.endswith(".json")
    ], "manifests left in the requests prefix"
    assert daemon.proc.poll() is None, "daemon died"


def test_invalid_manifest_goes_to_failed_and_the_next_one_still_runs(s3, bucket, tmp_path, daemons):
    put_objects(s3, bucket, {"a.txt": b"alpha"})
    drop(s3, bucket, "bad", {"files": ["../etc/passwd"], "target": "out/bad.zip"})
    drop(s3, bucket, "garbage", b"{not json")
    time.sleep(1.1)  # make the good one strictly newer, so it is taken after the bad ones
    drop(s3, bucket, "good", {"files": ["a.txt"], "target": "out/good.zip"})
    daemon = daemons(write_config(tmp_path / "c.yaml"))

    wait_until(lambda: result_of(s3, bucket, "out/good.zip"), 60, "good job's result")
    wait_until(
        lambda: (
            {f"{PREFIX}failed/bad.json", f"{PREFIX}failed/garbage.json"}
            <= set(list_keys(s3, bucket, PREFIX + "failed/"))
        ),
        20,
        "bad manifests under failed/",
    )
    bad = result_of(s3, bucket, "out/bad.zip")
    assert bad["state"] == "failed" and bad["error"]["code"] == "invalid_manifest"
    assert "out/bad.zip" not in list_keys(s3, bucket, "out/bad.zip"[:-1])
    assert result_of(s3, bucket, "out/good.zip")["state"] == "succeeded"
    verify_zip(fetch_zip(s3, bucket, "out/good.zip", tmp_path), {"a.txt": b"alpha"})
    events = daemon.events()
    assert any(e.get("level") == "error" and "garbage" in json.dumps(e) for e in events)
    assert daemon.proc.poll() is None


@pytest.mark.moto_only("3 daemons on B2: test_reliability.py's test_three_daemons_on_b2_*")
@pytest.mark.parametrize("coordination", ["conditional", "versions"])
def test_three_daemons_thirty_manifests_every_job_runs_exactly_once(
    s3, bucket, tmp_path, daemons, coordination
):
    if coordination == "versions":
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put_objects(s3, bucket, {f"src/{i}.txt": f"payload {i}\n".encode() * 50 for i in range(30)})
    config = write_config(
        tmp_path / "c.yaml", watch={"coordination": coordination, "max_concurrent_jobs": 3}
    )
    procs = [daemons(config, name=f"d{n}") for n in range(3)]
    for proc in procs:
        proc.wait_for_event("daemon_started")
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: drop(
                    s3,
                    bucket,
                    f"m{i:02d}",
                    {"files": [f"src/{i}.txt"], "target": f"out/{i}.zip", "id": f"job-{i:02d}"},
                ),
                range(30),
            )
        )

    wait_until(
        lambda: len(list_keys(s3, bucket, PREFIX + "done/")) == 30, 180, "30 manifests under done/"
    )
    started = Counter()
    for proc in procs:
        for event in proc.events():
            if event.get("event") == "job_started":
                started[event["job_id"]] += 1
    assert started == Counter({f"job-{i:02d}": 1 for i in range(30)}), started
    assert sum(1 for p in procs if any(e.get("event") == "job_started" for e in p.events())) >= 2
    for i in range(30):
        result = result_of(s3, bucket, f"out/{i}.zip")
        assert result["state"] == "succeeded" and result["job_id"] == f"job-{i:02d}"
        verify_zip(
            fetch_zip(s3, bucket, f"out/{i}.zip", tmp_path),
            {f"src/{i}.txt": f"payload {i}\n".encode() * 50},
        )
    assert [p.proc.poll() for p in procs] == [None, None, None]


@pytest.mark.slow
def test_sigkill_mid_job_is_retaken_after_the_lease_and_no_upload_is_left(
    s3, bucket, tmp_path, daemons
):
    big = deterministic_bytes(7, 200 * 1024 * 1024)
    put_objects(s3, bucket, {"big.bin": big, "small.txt": b"small"})
    config = write_config(
        tmp_path / "c.yaml", watch={"lease_seconds": 5}, zip={"compression": "store"}
    )
    first = daemons(config, name="first")
    drop(s3, bucket, "big", {"files": ["small.txt", "big.bin"], "target": "out/big.zip"})
    wait_until(
        lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"),
        120,
        "the job to be uploading",
    )
    first.kill()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "expected a dangling upload"
    assert result_of(s3, bucket, "out/big.zip") is None

    second = daemons(config, name="second")
    wait_until(lambda: result_of(s3, bucket, "out/big.zip"), 240, "the retaken job's result")
    assert result_of(s3, bucket, "out/big.zip")["state"] == "succeeded"
    verify_zip(
        fetch_zip(s3, bucket, "out/big.zip", tmp_path), {"small.txt": b"small", "big.bin": big}
    )
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    wait_until(lambda: f"{PREFIX}done/big.json" in list_keys(s3, bucket, PREFIX), 20, "filed")
    assert second.proc.poll() is None


def test_sigterm_while_idle_exits_zero_quickly(tmp_path, daemons):
    daemon = daemons(write_config(tmp_path / "c.yaml"))
    daemon.wait_for_event("daemon_started")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert any(e.get("event") == "daemon_stopped" for e in daemon.events())


def test_sigterm_mid_job_lets_it_finish_within_the_grace_period(s3, bucket, tmp_path, daemons):
    body = deterministic_bytes(3, 48 * 1024 * 1024)
    put_objects(s3, bucket, {"mid.bin": body})
    daemon = daemons(write_config(tmp_path / "c.yaml", shutdown_grace_seconds=120))
    drop(s3, bucket, "mid", {"files": ["mid.bin"], "target": "out/mid.zip"})
    daemon.wait_for_event("job_started", timeout=60)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=150) == 0
    result = result_of(s3, bucket, "out/mid.zip")
    assert result is not None and result["state"] == "succeeded"
    verify_zip(fetch_zip(s3, bucket, "out/mid.zip", tmp_path), {"mid.bin": body})
    assert f"{PREFIX}done/mid.json" in list_keys(s3, bucket, PREFIX)


def test_submit_wait_and_status_commands(s3, bucket, tmp_path, daemons, s3_env):
    import subprocess

    put_objects(s3, bucket, {"a.txt": b"alpha"})
    config = write_config(tmp_path / "c.yaml")
    daemons(config)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"files": ["a.txt"], "target": "out/submitted.zip"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"files": ["absent.txt"], "target": "out/never.zip"}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, config=config, env={**s3_env, "PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    ok = cli("submit", str(good), "--wait")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "succeeded" in ok.stdout
    status = cli("status", "out/submitted.zip")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "succeeded"
    failed = cli("submit", str(bad), "--wait")
    assert failed.returncode == 1 and "missing_input" in failed.stdout
    unknown = cli("status", "out/nothing-here.zip")
    assert unknown.returncode == 1
    verify_zip(fetch_zip(s3, bucket, "out/submitted.zip", tmp_path), {"a.txt": b"alpha"})
