"""Completion callbacks end to end (CONTRACT §9): the daemon subprocess POSTs the result marker of
a succeeded and of a failed job to a local receiver, signed; a receiver answering 500 twice sees
the retries, and the jobs finished regardless. A manifest's own ``notify_url`` is called for its
job when its host is in ``notify.allowed_hosts``; any other host is refused (HTTP 400, or the
dropped manifest fails ``invalid_manifest``) and never contacted."""

from __future__ import annotations

import json

from conftest import SHARED_SECRET, free_port, put_objects
from daemonproc import read_json, wait_until, write_config
from receiver import Receiver
from test_http import AUTH, _listening, request

from watcher.notify import verify

SECRET = "callback-signing-secret-77"


def test_signed_callbacks_for_success_and_failure_with_retries(s3, bucket, tmp_path, daemons):
    receiver = Receiver([500, 500])
    try:
        put_objects(s3, bucket, {"a.txt": b"alpha"})
        config = write_config(tmp_path / "c.yaml")
        daemons(config, env={"NOTIFY_URL": receiver.url, "NOTIFY_SECRET": SECRET})
        for name, files in (("ok", ["a.txt"]), ("ko", ["absent.txt"])):
            manifest = {"id": f"cb-{name}", "files": files, "target": f"out/{name}.zip"}
            s3.put_object(Bucket=bucket, Key=f"zip-requests/{name}.json", Body=json.dumps(manifest))

        def delivered() -> dict | None:
            bodies = {}
            for headers, body in receiver.calls:
                document = json.loads(body)
                assert verify(body, headers["X-Zip-Timestamp"], headers["X-Zip-Signature"], SECRET)
                bodies.setdefault(document["job_id"], []).append(document)
            return (
                bodies if {"cb-ok", "cb-ko"} <= set(bodies) and len(receiver.calls) >= 4 else None
            )

        bodies = wait_until(delivered, 90, "both callbacks, after two 500s")
        assert len(receiver.calls) == 4, "two refused deliveries retried, then one each"
        ok, ko = bodies["cb-ok"][-1], bodies["cb-ko"][-1]
        assert ok == read_json(s3, bucket, "out/ok.zip.result.json")
        assert ko == read_json(s3, bucket, "out/ko.zip.result.json")
        assert ok["state"] == "succeeded" and ko["error"]["code"] == "missing_input"
    finally:
        receiver.close()


def test_a_manifests_notify_url_is_called_only_for_an_allowed_host(s3, bucket, tmp_path, daemons):
    everyone, own, stranger = Receiver(), Receiver(), Receiver()
    # Same server, other host name: 'localhost' is not in the allow-list, 127.0.0.1 is.
    refused_url = stranger.url.replace("127.0.0.1", "localhost")
    try:
        put_objects(s3, bucket, {"a.txt": b"alpha"})
        port = free_port()
        config = write_config(tmp_path / "c.yaml", http={"enabled": True, "port": port})
        env = {
            "SHARED_SECRET": SHARED_SECRET,
            "NOTIFY_URL": everyone.url,
            "NOTIFY_SECRET": SECRET,
            "NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
        }
        daemons(config, env=env)
        wait_until(lambda: _listening(port), 60, "the HTTP server")

        def post(manifest: dict) -> tuple[int, dict]:
            status, _, body = request(port, "POST", "/jobs", json.dumps(manifest).encode(), AUTH)
            return status, json.loads(body)

        # Refused at the door: 400 invalid_manifest naming the host (not the URL's token).
        status, answer = post(
            {"files": ["a.txt"], "target": "out/x.zip", "notify_url": refused_url}
        )
        assert status == 400, answer
        assert answer["error"]["code"] == "invalid_manifest"
        assert "'localhost' is not in notify.allowed_hosts" in answer["error"]["message"]
        assert "token" not in answer["error"]["message"]
        # Dropped straight into the bucket: the job fails invalid_manifest, nothing fetched.
        dropped = {"id": "cb-refused", "files": ["a.txt"], "target": "out/refused.zip"}
        dropped["notify_url"] = refused_url
        s3.put_object(Bucket=bucket, Key="zip-requests/refused.json", Body=json.dumps(dropped))
        marker = wait_until(
            lambda: read_json(s3, bucket, "out/refused.zip.result.json"), 60, "refused to fail"
        )
        assert marker["error"]["code"] == "invalid_manifest", marker
        assert "'localhost' is not in notify.allowed_hosts" in marker["error"]["message"]
        # Allowed: its own URL gets its result marker, signed like the configured callback.
        status, answer = post(
            {"id": "cb-own", "files": ["a.txt"], "target": "out/own.zip", "notify_url": own.url}
        )
        assert status == 202, answer
        wait_until(lambda: own.calls, 60, "the manifest's own callback")
        headers, body = own.calls[0]
        assert verify(body, headers["X-Zip-Timestamp"], headers["X-Zip-Signature"], SECRET)
        result = json.loads(body)
        assert result == read_json(s3, bucket, "out/own.zip.result.json")
        assert result["job_id"] == "cb-own" and result["state"] == "succeeded"
        # The configured URL still hears of every job; one thread delivers in order, so once it
        # has both, anything queued for the refused URL would have gone out already.
        wait_until(lambda: len(everyone.calls) >= 2, 60, "both jobs at notify.url")
        heard = sorted(json.loads(body)["job_id"] for _, body in everyone.calls)
        assert heard == ["cb-own", "cb-refused"]
        assert len(own.calls) == 1
        assert stranger.calls == [], "a host outside notify.allowed_hosts was contacted"
    finally:
        for receiver in (everyone, own, stranger):
            receiver.close()
