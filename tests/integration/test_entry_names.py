"""Entry names extract as written (CONTRACT §7.9), checked on real archives from moto's server."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

from conftest import put_objects, verify_zip

from watcher.config import from_mapping
from watcher.job import run_job
from watcher.store import Store, make_client


def run(s3_server, bucket: str, manifest: dict):
    settings = from_mapping(
        {},
        {
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "BUCKET_NAME": bucket,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    store = Store(make_client(settings.s3))
    return run_job(store, settings, json.dumps(manifest).encode(), manifest_key=None)


def test_an_empty_folder_object_becomes_a_directory_entry_that_extracts_as_one(
    s3_server, s3, bucket, tmp_path
):
    put_objects(s3, bucket, {"p/a.txt": b"alpha", "p/empty/": b"", "p/sub/b.txt": b"beta"})
    outcome = run(s3_server, bucket, {"files": [{"prefix": "p/", "name": "d/"}], "target": "o.zip"})
    assert outcome.state == "succeeded", outcome.error
    path = tmp_path / "o.zip"
    s3.download_file(bucket, "o.zip", str(path))
    expected = {"d/a.txt": b"alpha", "d/empty/": b"", "d/sub/b.txt": b"beta"}
    with verify_zip(path, expected) as archive:
        assert archive.getinfo("d/empty/").is_dir()
    out = tmp_path / "x"
    zipfile.ZipFile(path).extractall(out)
    assert (out / "d/empty").is_dir() and (out / "d/a.txt").read_bytes() == b"alpha"
    if shutil.which("unzip"):
        unzipped = tmp_path / "u"
        subprocess.run(["unzip", "-q", str(path), "-d", str(unzipped)], check=True)
        assert (unzipped / "d/empty").is_dir()
        assert (unzipped / "d/sub/b.txt").read_bytes() == b"beta"


CASES = {
    # case: (objects under its prefix, text the error message must contain)
    "data under a folder key": ({"dir/": b"x" * 31}, "31 bytes"),
    "dot segment": ({"a/./b": b"1"}, "'.' segment"),
    "empty segment": ({"a//b": b"1"}, "empty segment"),
    "nfc twins": ({"caf\u00e9": b"1", "cafe\u0301": b"2"}, "used twice"),
    "bidi": ({"evil\u202etxt.exe": b"1"}, "bidirectional"),
}


def test_names_that_would_not_extract_as_written_fail_the_job_before_any_zip(s3_server, s3, bucket):
    for n, (case, (objects, needle)) in enumerate(CASES.items()):
        put_objects(s3, bucket, {f"p{n}/{key}": body for key, body in objects.items()})
        outcome = run(s3_server, bucket, {"files": [{"prefix": f"p{n}/"}], "target": f"o{n}.zip"})
        assert outcome.state == "failed", case
        assert outcome.error.code == "invalid_manifest", case
        assert needle in outcome.error.message, (case, outcome.error.message)
        result = json.loads(
            s3.get_object(Bucket=bucket, Key=f"o{n}.zip.result.json")["Body"].read()
        )
        assert result["error"]["code"] == "invalid_manifest", case
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if k.endswith(".zip")], keys
