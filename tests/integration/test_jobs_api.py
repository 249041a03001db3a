"""The job as its users see it (CONTRACT §9), through the daemon subprocess and moto's server:
failure reasons, the paginated list, retry, download links, the CLI's jobs and status --url."""

from __future__ import annotations

import io
import json
import os
import subprocess
import urllib.request
import zipfile

import pytest
from conftest import SHARED_SECRET, free_port, put_objects
from daemonproc import DaemonProcess, read_json, run_cli, wait_until, write_config
from test_http import AUTH, _listening, request


@pytest.fixture
def api(tmp_path, s3_env):
    """A daemon with its HTTP API on, polling quickly; yields (process, port, config path)."""
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        http={"enabled": True, "port": port},
        links={"expires_seconds": 600},
    )
    proc = DaemonProcess(config, {**s3_env, "SHARED_SECRET": SHARED_SECRET}, tmp_path / "d.log")
    proc.start()
    wait_until(lambda: _listening(port), 60, "the HTTP server")
    yield proc, port, config
    proc.stop()


def submit(port: int, manifest: dict) -> str:
    status, _, body = request(port, "POST", "/jobs", json.dumps(manifest).encode(), AUTH)
    assert status == 202, body
    return json.loads(body)["job_id"]


def finished(port: int, job_id: str, timeout: float = 60) -> dict:
    def done() -> dict | None:
        status, _, body = request(port, "GET", f"/jobs/{job_id}", headers=AUTH)
        view = json.loads(body) if status == 200 else None
        return view if view and view["state"] in ("succeeded", "failed") else None

    return wait_until(done, timeout, f"job {job_id} to finish")


def fetch(url: str) -> tuple[int, bytes]:
    """Plain HTTP GET, no AWS credentials: what a person's browser would do with the link."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_failure_reason_list_retry_and_download(api, s3, bucket, tmp_path, s3_env):
    proc, port, config = api
    put_objects(s3, bucket, {"a.txt": b"alpha" * 100, "b.txt": b"beta"})
    good = submit(port, {"id": "good-1", "files": ["a.txt", "b.txt"], "target": "out/good.zip"})
    bad = submit(port, {"id": "bad-1", "files": ["late.txt"], "target": "out/bad.zip"})

    # Failure reason: GET /jobs/<id> says why, with the result's fields but not its entries.
    failed = finished(port, bad)
    assert failed["state"] == "failed" and failed["error"]["code"] == "missing_input"
    assert "late.txt" in failed["error"]["message"] and "entries" not in failed
    assert "finished_at" in failed and "duration_seconds" in failed
    succeeded = finished(port, good)
    assert succeeded["state"] == "succeeded" and succeeded["error"] is None
    assert succeeded["files_done"] == 2 and "entries" not in succeeded

    # Download: /download answers 302 to a presigned link whose plain GET gives the ZIP's bytes.
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(
            urllib.request.Request(f"http://127.0.0.1:{port}/jobs/{good}/download", headers=AUTH),
            timeout=10,
        )
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302
        link = exc.headers["Location"]
    assert "Signature" in link
    code, data = fetch(link)
    stored = s3.get_object(Bucket=bucket, Key="out/good.zip")["Body"].read()
    assert code == 200 and data == stored
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("a.txt") == b"alpha" * 100 and archive.read("b.txt") == b"beta"
    # The succeeded result marker carries its own link; a plain GET of it gives the same bytes.
    marker = read_json(s3, bucket, "out/good.zip.result.json")
    assert fetch(marker["download_url"]) == (200, stored)
    assert marker["download_url_expires_at"].endswith("Z")
    assert "download_url" not in read_json(s3, bucket, "out/bad.zip.result.json")
    assert request(port, "GET", f"/jobs/{bad}/download", headers=AUTH)[0] == 409
    assert request(port, "GET", "/jobs/nobody/download", headers=AUTH)[0] == 404

    # The list: newest first, paginated with `next`, filtered by state.
    more = [
        submit(port, {"id": f"more-{i}", "files": ["b.txt"], "target": f"out/m{i}.zip"})
        for i in range(3)
    ]
    for job_id in more:
        finished(port, job_id)
    seen: list[str] = []
    cursor = None
    while True:
        query = "/jobs?limit=2" + (f"&next={cursor}" if cursor else "")
        status, _, body = request(port, "GET", query, headers=AUTH)
        assert status == 200, body
        page = json.loads(body)
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([good, bad, *more]) and len(seen) == len(set(seen))
    times = [
        j["indexed_at"] for j in json.loads(request(port, "GET", "/jobs", headers=AUTH)[2])["jobs"]
    ]
    assert times == sorted(times, reverse=True)
    only_failed = json.loads(request(port, "GET", "/jobs?state=failed", headers=AUTH)[2])["jobs"]
    assert [j["job_id"] for j in only_failed] == [bad]
    assert only_failed[0]["error"]["code"] == "missing_input"
    assert request(port, "GET", "/jobs?limit=501", headers=AUTH)[0] == 400

    # Retry: a succeeded job is refused; the failed one re-runs under its id once its input exists.
    assert request(port, "POST", f"/jobs/{good}/retry", headers=AUTH)[0] == 409
    put_objects(s3, bucket, {"late.txt": b"here now"})
    status, headers, _ = request(port, "POST", f"/jobs/{bad}/retry", headers=AUTH)
    assert status == 202 and headers["Location"] == f"/jobs/{bad}"
    retried = wait_until(
        lambda: (
            (v := json.loads(request(port, "GET", f"/jobs/{bad}", headers=AUTH)[2]))["state"]
            == "succeeded"
            and v
        ),
        60,
        "the retried job to succeed",
    )
    assert retried["job_id"] == bad
    with zipfile.ZipFile(
        io.BytesIO(s3.get_object(Bucket=bucket, Key="out/bad.zip")["Body"].read())
    ) as z:
        assert z.read("late.txt") == b"here now"
    assert read_json(s3, bucket, "zip-requests/done/bad-1.json") is not None
    assert read_json(s3, bucket, "zip-requests/failed/bad-1.json") is None

    # The CLI: jobs lists them, status --url prints a link that fetches the same bytes.
    def cli(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, config=config, env={**os.environ, **s3_env}, cwd=tmp_path)

    listing = cli("jobs")
    assert listing.returncode == 0, listing.stderr
    assert all(job_id in listing.stdout for job_id in (good, bad, *more))
    url = cli("status", "out/good.zip", "--url")
    assert url.returncode == 0, url.stderr
    assert fetch(url.stdout.strip())[1] == stored
    assert cli("retry", good).returncode == 2, "a succeeded job cannot be retried"
    log = proc.log_path.read_text()
    assert "X-Amz-Signature" not in log and "Signature=" not in log, "a link reached the log"
