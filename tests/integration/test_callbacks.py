"""Completion callbacks end to end (CONTRACT §9): the daemon subprocess POSTs the result marker of
a succeeded and of a failed job to a local receiver, signed; a receiver answering 500 twice sees
the retries, and the jobs finished regardless."""

from __future__ import annotations

import json

from conftest import put_objects
from daemonproc import read_json, wait_until, write_config
from receiver import Receiver

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
