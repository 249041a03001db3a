"""The daemon meets the store as it is (CONTRACT §7.11, §8): start-up checks of coordination."""

from __future__ import annotations

import json

from conftest import deterministic_bytes, put_objects
from daemonproc import read_json, wait_until, write_config
from faultproxy import Fault, FaultProxy

PREFIX = "zip-requests/"
MiB = 1024 * 1024


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


def test_each_result_marker_counts_its_own_jobs_requests(s3, bucket, tmp_path, daemons):
    """Two jobs at once in one daemon: each marker's ``requests`` are its own (CONTRACT §8).

    A job GETs each input once (explicit keys cost no HEAD), so class ``b`` is its file count;
    requests of the other job, or of the daemon, counted in would show."""
    files = {f"in/{n}/{i}.bin": deterministic_bytes(i, 3 * MiB) for n in (1, 6) for i in range(n)}
    put_objects(s3, bucket, files)
    for n in (1, 6):
        manifest = {"files": [k for k in files if k.startswith(f"in/{n}/")], "target": f"o/{n}.zip"}
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}j{n}.json", Body=json.dumps(manifest))
    daemons(write_config(tmp_path / "c.yaml", watch={"max_concurrent_jobs": 2}))
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
