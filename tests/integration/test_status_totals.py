"""What `submit --wait` and `GET /jobs/<id>` show while a job runs (issue 13): every status
marker counts the archive's entries, after prefix expansion, never the manifest's items."""

from __future__ import annotations

import json

from conftest import put_objects
from test_zip_job import settings_for

from watcher.job import run_job
from watcher.store import Store, make_client


def test_every_status_marker_counts_entries_after_prefix_expansion(s3_server, s3, bucket):
    put_objects(s3, bucket, {f"many/{i:02d}.txt": b"x" * i for i in range(30)} | {"a.txt": b"a"})
    settings = settings_for(s3_server.endpoint_url, bucket)
    client = make_client(settings.s3)
    status_docs: list[dict] = []

    def record(params: dict, **_: object) -> None:
        if params.get("Key") == "out/many.zip.status.json":
            status_docs.append(json.loads(params["Body"]))

    client.meta.events.register("provide-client-params.s3.PutObject", record)
    manifest = {"files": [{"prefix": "many/"}, "a.txt"], "target": "out/many.zip"}
    outcome = run_job(Store(client), settings, json.dumps(manifest).encode(), manifest_key=None)
    assert outcome.state == "succeeded", outcome.error
    assert status_docs, "no status marker written"
    assert [d["files_total"] for d in status_docs] == [31] * len(status_docs)
