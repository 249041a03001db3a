"""A job's life under faults (CONTRACT §7.1-§7.5, §7.10): the daemon as a subprocess, moto's
server over HTTP, and a fault proxy in front of it that holds, delays, drops or fails chosen
requests. Every test checks the contract's outcome: no manifest lost, no job run twice, no result
marker rewritten, every marker consistent with the ZIP at its target, no upload left dangling,
the daemon still serving others."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter

import pytest
from conftest import (
    SHARED_SECRET,
    both_servers,
    deterministic_bytes,
    free_port,
    put_objects,
    verify_zip,
)
from daemonproc import list_keys, read_json, wait_until, write_config
from faultproxy import Fault, FaultProxy
from test_http import AUTH, _listening, request

PREFIX = "zip-requests/"
LEASE = 4


@pytest.fixture
def proxy(s3_server):
    proxy = FaultProxy(s3_server.port).start()
    yield proxy
    for fault in proxy.faults:
        fault.release()
    proxy.stop()


def config(tmp_path, name: str = "c.yaml", **sections):
    watch = {"lease_seconds": LEASE, **sections.pop("watch", {})}
    sections.setdefault("shutdown_grace_seconds", 3)
    return write_config(tmp_path / name, watch=watch, **sections)


def drop(s3, bucket: str, name: str, manifest: dict) -> str:
    key = f"{PREFIX}{name}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    return key


def result_of(s3, bucket: str, target: str) -> dict | None:
    return read_json(s3, bucket, f"{target}.result.json")


def status_of(s3, bucket: str, target: str) -> dict | None:
    return read_json(s3, bucket, f"{target}.status.json")


def waiting_manifests(s3, bucket: str) -> list[str]:
    return [k for k in list_keys(s3, bucket, PREFIX) if "/" not in k[len(PREFIX) :]]


def uploads(s3, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def events(procs, name: str, **fields) -> list[dict]:
    return [
        e
        for p in procs
        for e in p.events()
        if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def assert_marker_matches_zip(s3, bucket: str, target: str, tmp_path, expected: dict) -> dict:
    """The result marker at ``target`` describes the ZIP there, entry by entry."""
    result = result_of(s3, bucket, target)
    assert result is not None and result["state"] == "succeeded", result
    path = tmp_path / target.replace("/", "_")
    s3.download_file(bucket, target, str(path))
    verify_zip(path, expected)
    with zipfile.ZipFile(path) as zf:
        listed = [(i.filename, i.file_size, i.CRC) for i in zf.infolist()]
    assert listed == [(e["name"], e["size"], e["crc32"]) for e in result["entries"]]
    return result


# -- §7.1: a job is one version of one manifest --------------------------------------------------


def test_manifest_overwritten_while_its_job_runs_is_a_new_job_that_runs_after(
    s3, bucket, tmp_path, daemons, proxy
):
    put_objects(s3, bucket, {"in/slow.txt": b"slow", "in/b.txt": b"bee"})
    hold = proxy.add(Fault("hold", method="GET", key=r"/in/slow\.txt$"))
    daemon = daemons(config(tmp_path), endpoint=proxy.endpoint_url)
    first = {"files": ["in/slow.txt"], "target": "out/v1.zip"}
    second = {"files": ["in/b.txt"], "target": "out/v2.zip"}
    drop(s3, bucket, "a", first)
    hold.wait_held()
    drop(s3, bucket, "a", second)
    hold.release()

    wait_until(lambda: result_of(s3, bucket, "out/v2.zip"), 40, "the second version's result")
    assert_marker_matches_zip(s3, bucket, "out/v1.zip", tmp_path, {"in/slow.txt": b"slow"})
    assert_marker_matches_zip(s3, bucket, "out/v2.zip", tmp_path, {"in/b.txt": b"bee"})
    wait_until(lambda: not waiting_manifests(s3, bucket), 20, "the manifest filed")
    filed = s3.get_object(Bucket=bucket, Key=f"{PREFIX}done/a.json")["Body"].read()
    assert json.loads(filed) == second
    assert len(events([daemon], "job_finished")) == 2
    assert daemon.proc.poll() is None


def test_identical_manifest_dropped_again_right_after_filing_runs_again(
    s3, bucket, tmp_path, daemons
):
    put_objects(s3, bucket, {"in/a.txt": b"alpha"})
    daemon = daemons(config(tmp_path))
    manifest = {"files": ["in/a.txt"], "target": "out/again.zip"}
    rounds = 3
    for number in range(rounds):
        drop(s3, bucket, "again", manifest)
        # Re-drop the moment the previous drop is filed: usually within the same second.
        wait_until(
            lambda: not waiting_manifests(s3, bucket), 40, f"drop {number} filed", interval=0.05
        )
    wait_until(lambda: len(events([daemon], "job_finished")) >= rounds, 10, "every run")
    assert len(events([daemon], "job_finished")) == rounds
    assert_marker_matches_zip(s3, bucket, "out/again.zip", tmp_path, {"in/a.txt": b"alpha"})


# -- §7.2: the result marker is the commit record ------------------------------------------------


def test_sigkill_between_result_marker_and_filing_files_without_running_again(
    s3, bucket, tmp_path, daemons, proxy
):
    put_objects(s3, bucket, {"in/a.txt": b"alpha"})
    hold = proxy.add(Fault("hold", method="PUT", key=rf"/{PREFIX}done/k\.json$"))
    conf = config(tmp_path)
    first = daemons(conf, name="first", endpoint=proxy.endpoint_url)
    drop(s3, bucket, "k", {"files": ["in/a.txt"], "target": "out/k.zip"})
    hold.wait_held()
    first.kill()
    hold.release(forward=False)
    committed = s3.get_object(Bucket=bucket, Key="out/k.zip.result.json")
    assert f"{PREFIX}k.json" in waiting_manifests(s3, bucket)

    second = daemons(conf, name="second")
    wait_until(lambda: not waiting_manifests(s3, bucket), 40, "the manifest filed")
    assert f"{PREFIX}done/k.json" in list_keys(s3, bucket, PREFIX)
    again = s3.get_object(Bucket=bucket, Key="out/k.zip.result.json")
    assert again["ETag"] == committed["ETag"], "the result marker was rewritten"
    assert not events([second], "job_started")
    assert_marker_matches_zip(s3, bucket, "out/k.zip", tmp_path, {"in/a.txt": b"alpha"})
    assert second.proc.poll() is None


@both_servers
def test_sigkilled_runs_are_not_failed_attempts(s3, bucket, tmp_path, daemons, proxy):
    """§7.5 counts attempts that failed on infrastructure: with ``max_attempts: 1``, a job whose
    daemon is SIGKILLed twice mid-run is retaken each time and succeeds, never failed for good."""
    put_objects(s3, bucket, {"in/a.txt": b"alpha"})
    conf = config(tmp_path, watch={"max_attempts": 1, "coordination": "auto"})
    drop(s3, bucket, "k", {"id": "k", "files": ["in/a.txt"], "target": "out/k.zip"})
    for round_ in range(2):
        hold = proxy.add(Fault("hold", method="GET", key=r"/in/a\.txt$"))
        victim = daemons(conf, name=f"victim{round_}", endpoint=proxy.endpoint_url)
        hold.wait_held(timeout=90)
        victim.kill()
        hold.release(forward=False)
        proxy.clear()
    survivor = daemons(conf, name="survivor")
    wait_until(lambda: result_of(s3, bucket, "out/k.zip"), 90, "the result marker")
    assert_marker_matches_zip(s3, bucket, "out/k.zip", tmp_path, {"in/a.txt": b"alpha"})
    wait_until(lambda: not waiting_manifests(s3, bucket), 30, "the manifest filed")
    assert f"{PREFIX}done/k.json" in list_keys(s3, bucket, PREFIX)
    assert not events([survivor], "job_failed_for_good")
    assert survivor.proc.poll() is None


# -- §7.3: fencing -------------------------------------------------------------------------------


def test_owner_whose_renewals_answer_late_does_not_commit(s3, bucket, tmp_path, daemons, proxy):
    put_objects(s3, bucket, {"in/slow.txt": b"slow"})
    conf = config(tmp_path)
    hold = proxy.add(Fault("hold", method="GET", key=r"/in/slow\.txt$"))
    late = daemons(conf, name="late", endpoint=proxy.endpoint_url)
    drop(s3, bucket, "f", {"files": ["in/slow.txt"], "target": "out/f.zip"})
    hold.wait_held()
    # From now on every claim request of the first daemon reaches the store 15 s late.
    proxy.add(Fault("delay", key=rf"/{PREFIX}\.claims/", seconds=15, times=10_000))
    other = daemons(conf, name="other")
    wait_until(lambda: result_of(s3, bucket, "out/f.zip"), 40, "the other daemon's result")
    committed = s3.get_object(Bucket=bucket, Key="out/f.zip.result.json")
    hold.release()  # the first daemon's job goes on and reaches its commit
    wait_until(
        lambda: events([late], "job_cancelled") or events([late], "job_finished"),
        40,
        "the late owner to stop",
    )
    time.sleep(1)
    again = s3.get_object(Bucket=bucket, Key="out/f.zip.result.json")
    assert again["ETag"] == committed["ETag"], "the late owner rewrote the result marker"
    assert not events([late], "job_finished")
    assert len(events([other], "job_finished")) == 1
    assert_marker_matches_zip(s3, bucket, "out/f.zip", tmp_path, {"in/slow.txt": b"slow"})
    wait_until(lambda: not uploads(s3, bucket), 20, "no upload left")
    assert other.proc.poll() is None and late.proc.poll() is None


# -- §7.4: one job per target --------------------------------------------------------------------


def test_two_manifests_with_one_target_run_one_after_the_other(
    s3, bucket, tmp_path, daemons, proxy
):
    big = deterministic_bytes(11, 9 * 1024 * 1024)
    put_objects(s3, bucket, {"in/big.bin": big, "in/slow.txt": b"slow", "in/b.txt": b"bee"})
    hold = proxy.add(Fault("hold", method="GET", key=r"/in/slow\.txt$"))
    daemon = daemons(config(tmp_path, zip={"compression": "store"}), endpoint=proxy.endpoint_url)
    drop(
        s3,
        bucket,
        "first",
        {"files": ["in/big.bin", "in/slow.txt"], "target": "out/t.zip", "id": "first"},
    )
    hold.wait_held()
    wait_until(lambda: uploads(s3, bucket), 30, "the first job's upload")
    drop(s3, bucket, "second", {"files": ["in/b.txt"], "target": "out/t.zip", "id": "second"})
    time.sleep(3)  # the second job has had time to start, if it were going to
    assert not events([daemon], "job_started", job_id="second"), "ran beside the first"
    hold.release()

    wait_until(lambda: not waiting_manifests(s3, bucket), 60, "both manifests filed")
    done = set(list_keys(s3, bucket, PREFIX + "done/"))
    assert {f"{PREFIX}done/first.json", f"{PREFIX}done/second.json"} <= done
    finished = events([daemon], "job_finished")
    assert [e["state"] for e in finished] == ["succeeded", "succeeded"], finished
    assert [e["job_id"] for e in finished] == ["first", "second"]
    result = assert_marker_matches_zip(s3, bucket, "out/t.zip", tmp_path, {"in/b.txt": b"bee"})
    assert result["job_id"] == "second"
    assert not events([daemon], "stale_upload_aborted")
    assert not uploads(s3, bucket)


# -- §7.5: poison never wedges the queue ---------------------------------------------------------


def test_poison_manifests_are_failed_for_good_and_the_others_flow(
    s3, bucket, tmp_path, daemons, proxy
):
    put_objects(s3, bucket, {"in/a.txt": b"alpha"})
    proxy.add(
        Fault(
            "status",
            method="PUT",
            key=r"/out/poison-",
            status=403,
            code="AccessDenied",
            times=10_000,
        )
    )
    conf = config(tmp_path, watch={"max_attempts": 2, "max_concurrent_jobs": 2})
    daemon = daemons(conf, endpoint=proxy.endpoint_url)
    for i in range(4):
        poison = {"files": ["in/a.txt"], "target": f"out/poison-{i}.zip", "id": f"poison-{i}"}
        drop(s3, bucket, f"poison-{i}", poison)
    time.sleep(1.1)
    for i in range(3):
        drop(s3, bucket, f"good-{i}", {"files": ["in/a.txt"], "target": f"out/good-{i}.zip"})

    wait_until(
        lambda: all(result_of(s3, bucket, f"out/good-{i}.zip") for i in range(3)),
        60,
        "the good jobs' results",
    )
    wait_until(lambda: not waiting_manifests(s3, bucket), 60, "every manifest filed")
    for i in range(3):
        assert_marker_matches_zip(s3, bucket, f"out/good-{i}.zip", tmp_path, {"in/a.txt": b"alpha"})
    for i in range(4):
        report = read_json(s3, bucket, f"{PREFIX}failed/poison-{i}.error.json")
        assert report is not None, f"no error report for poison-{i}"
        assert report["job_id"] == f"poison-{i}" and report["attempts"] == 2, report
        assert report["code"] == "access_denied" and report["message"]
        assert f"{PREFIX}failed/poison-{i}.json" in list_keys(s3, bucket, PREFIX + "failed/")
    started = Counter(e["job_id"] for e in events([daemon], "job_started"))
    assert all(started[f"poison-{i}"] == 2 for i in range(4)), started
    assert not uploads(s3, bucket)
    assert daemon.proc.poll() is None


# -- §7.10: shutdown keeps its word --------------------------------------------------------------


MUTE = {  # where the store goes quiet: (mute.bin's MiB, compression, the fault, thread back?)
    "stalled-body": (
        3,
        "store",
        dict(kind="stall", method="GET", key=r"/in/mute\.bin$", after_bytes=64 * 1024),
        True,
    ),
    "lean-get": (3, "store", dict(kind="hang", method="GET", key=r"/in/mute\.bin$"), True),
    "ranged-gets": (12, "deflate", dict(kind="hang", method="GET", key=r"/in/mute\.bin$"), True),
    "part-upload": (
        3,
        "store",
        dict(kind="hang", method="PUT", path="partNumber=", key=r"/out/m\.zip$"),
        False,
    ),
}


@pytest.mark.parametrize("where", list(MUTE))
def test_sigterm_while_the_store_goes_quiet_exits_within_grace_and_marks_the_job_cancelled(
    s3, bucket, tmp_path, daemons, proxy, where
):
    """The store sends the headers and 64 KiB of a body, then nothing (the cancellation cuts that
    read off, instead of waiting for botocore's 60 s read timeout); or it accepts a request and
    sends nothing, not even headers: the lean GET of a plain key, the parallel ranged GETs of a
    large deflated member, a part's upload (botocore waits for its answer). The
    daemon still exits within grace + 5 s, whether the cancellation reaches the waiting request
    or the daemon gives up on the stuck thread (os._exit after cleaning up for it): the status
    marker says cancelled, the upload is aborted, the claim released, the manifest left to run
    again."""
    big = deterministic_bytes(15, 9 * 1024 * 1024)
    size_mib, compression, fault, comes_back = MUTE[where]
    mute = deterministic_bytes(16, size_mib * 1024 * 1024)
    put_objects(s3, bucket, {"in/big.bin": big, "in/mute.bin": mute})
    hang = proxy.add(Fault(seconds=600, **fault))
    daemon = daemons(
        config(tmp_path, zip={"compression": compression}), endpoint=proxy.endpoint_url
    )
    drop(s3, bucket, "m", {"files": ["in/big.bin", "in/mute.bin"], "target": "out/m.zip"})
    wait_until(lambda: hang.fired and uploads(s3, bucket), 30, "the unanswered GET and the upload")
    signalled = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 3 + 5
    if comes_back:  # the cancellation reached the waiting GET: the job's own thread ended it
        assert events([daemon], "job_cancelled", reason="shutdown"), "the thread never returned"
        assert not events([daemon], "job_did_not_stop") + events(
            [daemon], "exiting_with_stuck_reads"
        )
    else:  # botocore's wait for an answer cannot be cut: the daemon cleaned up and left
        assert events([daemon], "job_did_not_stop") and events([daemon], "exiting_with_stuck_reads")
    status = status_of(s3, bucket, "out/m.zip")
    assert status["state"] == "failed" and status["error"]["code"] == "cancelled", status
    assert result_of(s3, bucket, "out/m.zip") is None
    assert not uploads(s3, bucket)
    assert f"{PREFIX}m.json" in waiting_manifests(s3, bucket)
    assert not list_keys(s3, bucket, f"{PREFIX}.claims/m"), "the claim was not released"


def test_cancel_of_a_job_whose_read_hangs_ends_it_within_ten_seconds(
    s3, bucket, tmp_path, daemons, proxy
):
    """CONTRACT §9: DELETE /jobs/<id> ends a running job within 10 s, even in a stalled body."""
    put_objects(s3, bucket, {"in/hang.bin": deterministic_bytes(14, 2 * 1024 * 1024)})
    stall = proxy.add(
        Fault("stall", method="GET", key=r"/in/hang\.bin$", seconds=600, after_bytes=64 * 1024)
    )
    port = free_port()
    daemon = daemons(
        config(tmp_path, http={"enabled": True, "port": port}),
        endpoint=proxy.endpoint_url,
        env={"SHARED_SECRET": SHARED_SECRET},
    )
    wait_until(lambda: _listening(port), 60, "the HTTP server")
    drop(s3, bucket, "x", {"id": "x", "files": ["in/hang.bin"], "target": "out/x.zip"})
    wait_until(lambda: stall.fired, 30, "the hanging read")
    asked = time.monotonic()
    assert request(port, "DELETE", "/jobs/x", headers=AUTH)[0] == 202
    result = wait_until(lambda: result_of(s3, bucket, "out/x.zip"), 30, "the result marker")
    assert time.monotonic() - asked < 10
    assert result["state"] == "failed" and result["error"]["code"] == "cancelled", result
    assert "out/x.zip" not in list_keys(s3, bucket, "out/")
    wait_until(lambda: f"{PREFIX}failed/x.json" in list_keys(s3, bucket, PREFIX), 30, "filing")
    assert not events([daemon], "job_did_not_stop")
    assert daemon.proc.poll() is None


def test_double_ctrl_c_on_run_cancels_and_leaves_no_running_marker(
    s3, bucket, tmp_path, daemons, proxy
):
    put_objects(s3, bucket, {"in/slow.txt": b"slow"})
    hold = proxy.add(Fault("hold", method="GET", key=r"/in/slow\.txt$"))
    daemon = daemons(config(tmp_path, shutdown_grace_seconds=60), endpoint=proxy.endpoint_url)
    drop(s3, bucket, "c", {"files": ["in/slow.txt"], "target": "out/c.zip"})
    hold.wait_held()
    daemon.signal(signal.SIGINT)
    daemon.wait_for_event("daemon_stopping")
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=15) == 0
    status = status_of(s3, bucket, "out/c.zip")
    assert status["state"] == "failed" and status["error"]["code"] == "cancelled", status
    assert f"{PREFIX}c.json" in waiting_manifests(s3, bucket)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_zip_leaves_the_status_marker_cancelled(s3, bucket, tmp_path, s3_env, proxy):
    put_objects(s3, bucket, {"in/slow.txt": b"slow"})
    hold = proxy.add(Fault("hold", method="GET", key=r"/in/slow\.txt$"))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": ["in/slow.txt"], "target": "out/z.zip"}))
    log = open(tmp_path / "zip.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "zip", str(manifest), "--config", str(config(tmp_path))],
        env={**s3_env, "AWS_ENDPOINT_URL": proxy.endpoint_url, "PATH": "/usr/bin:/bin"},
        stdout=log,
        stderr=subprocess.STDOUT,
        # Ctrl-C reaches a foreground process, whose SIGINT is not ignored; a suite started in
        # the background of a shell without job control (`cmd &`, nohup) inherits SIGINT
        # ignored, and Python then keeps it ignored (both CI runs of this session failed so).
        preexec_fn=_sigint_default,
    )
    try:
        hold.wait_held()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert code == 130, (tmp_path / "zip.log").read_text()
    status = status_of(s3, bucket, "out/z.zip")
    assert status["state"] == "failed" and status["error"]["code"] == "cancelled", status
    assert result_of(s3, bucket, "out/z.zip") is None
