"""The daemon meets the store as it is (CONTRACT §7.11, §8): start-up checks of coordination."""

from __future__ import annotations

import json

import pytest
from conftest import deterministic_bytes, download, put_objects, verify_zip
from daemonproc import list_keys, read_json, wait_until, write_config
from faultproxy import Fault, FaultProxy

PREFIX = "zip-requests/"
MiB = 1024 * 1024


@pytest.mark.moto_only("needs a store without versions; every B2 bucket keeps them")
def test_versions_on_a_store_without_versions_is_a_configuration_error(
    s3, bucket, tmp_path, daemons
):
    """§7.11: exit 2 at start-up with a line naming the key, not a daemon that never claims."""
    daemon = daemons(write_config(tmp_path / "c.yaml", watch={"coordination": "versions"}))
    assert daemon.wait(60) == 2
    log = daemon.log_path.read_text()
    assert "watch.coordination" in log and "does not keep object versions" in log, log
    assert "Traceback" not in log
    left = s3.list_object_versions(Bucket=bucket)
    assert not left.get("Versions"), "probe objects left behind"


def test_access_denied_during_the_probe_is_reported_as_access_denied(
    s3_server, bucket, tmp_path, daemons
):
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("status", method="PUT", status=403, code="AccessDenied", times=1000))
        daemon = daemons(
            write_config(tmp_path / "c.yaml", watch={"coordination": "auto"}),
            endpoint=proxy.endpoint_url,
        )
        assert daemon.wait(60) == 2
    finally:
        proxy.stop()
    log = daemon.log_path.read_text()
    assert "access denied" in log and "AccessDenied" in log, log
    assert "Traceback" not in log


@pytest.mark.parametrize("s3_server", ["b2"], indirect=True)
def test_on_b2_each_result_marker_counts_its_own_jobs_requests(
    b2_proxy, s3, bucket, tmp_path, daemons
):
    """On the B2-faithful server with ``coordination: auto``: claims (versions), a multipart ZIP,
    markers and filing work, nothing the daemon sends is refused but the probe's conditional
    PUT, and two jobs at once in one daemon each count their own ``requests`` (CONTRACT §8):
    a job GETs each input once (explicit keys cost no HEAD), so class ``b`` is its file count;
    requests of the other job, or of the daemon, counted in would show."""
    files = {f"in/{n}/{i}.bin": deterministic_bytes(i, 3 * MiB) for n in (1, 6) for i in range(n)}
    put_objects(s3, bucket, files)
    for n in (1, 6):
        manifest = {"files": [k for k in files if k.startswith(f"in/{n}/")], "target": f"o/{n}.zip"}
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}j{n}.json", Body=json.dumps(manifest))
    daemon = daemons(
        write_config(tmp_path / "c.yaml", watch={"max_concurrent_jobs": 2, "coordination": "auto"})
    )
    daemon.wait_for_event("daemon_started", coordination="versions")
    results = {
        n: wait_until(lambda n=n: read_json(s3, bucket, f"o/{n}.zip.result.json"), 120, "result")
        for n in (1, 6)
    }
    for n, result in results.items():
        assert result["state"] == "succeeded", result
        requests = result["requests"]
        assert set(requests) == {"a", "b", "c"}, requests
        assert requests["b"] == n, (n, requests)
        # status markers (>= 2), the ZIP (1 PUT or a multipart upload), the result marker
        assert requests["a"] >= 4, (n, requests)
    started = [r["started_at"] for r in results.values()]
    finished = [r["finished_at"] for r in results.values()]
    assert max(started) < min(finished), "the two jobs did not overlap"
    verify_zip(
        download(s3, bucket, "o/6.zip", tmp_path / "6.zip"),
        {k: v for k, v in files.items() if k.startswith("in/6/")},
    )
    wait_until(
        lambda: (
            {f"{PREFIX}done/j1.json", f"{PREFIX}done/j6.json"} <= set(list_keys(s3, bucket, PREFIX))
        ),
        60,
        "both manifests filed",
    )
    assert set(b2_proxy.refused) <= {"PutObject NotImplemented"}, b2_proxy.refused


@pytest.mark.parametrize("s3_server", ["b2"], indirect=True)
def test_conditional_on_a_store_without_conditional_writes_is_a_configuration_error(
    tmp_path, daemons, b2_proxy
):
    daemon = daemons(
        write_config(tmp_path / "c.yaml", watch={"coordination": "conditional"}),
        endpoint=b2_proxy.endpoint_url,
    )
    assert daemon.wait(60) == 2
    log = daemon.log_path.read_text()
    assert "watch.coordination" in log and "501" in log and "Traceback" not in log, log
