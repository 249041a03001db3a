"""Job lookup by id: ids no job can have cost no storage request."""

from __future__ import annotations

import json

import pytest

from watcher.config import from_mapping
from watcher.errors import IdConflict, InvalidManifest
from watcher.intake import (
    admit_job,
    content_digest,
    decide_id,
    error_report,
    is_manifest_key,
    job_index_key,
    lookup_job,
    submit_manifest,
    write_error_report,
)
from watcher.manifest import job_id_for, parse_manifest

PREFIX = "zip-requests/"
SETTINGS = from_mapping({}, {"BUCKET_NAME": "bucket", "AWS_DEFAULT_REGION": "us-east-1"})


class CountingStore:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []

    def get_bytes(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        self.gets.append(key)
        return self.objects.get(key)


@pytest.mark.parametrize("job_id", ["", "../x", "a/b", ".hidden", "x" * 129, "é", "a b"])
def test_an_impossible_job_id_is_unknown_without_a_request(job_id):
    store = CountingStore({})
    assert lookup_job(store, SETTINGS, job_id) is None
    assert store.gets == []


def test_a_recorded_job_is_found_with_one_request():
    entry = {"job_id": "nightly-1a2b", "target": "out/a.zip", "bucket": "bucket", "manifest": None}
    store = CountingStore({job_index_key(PREFIX, "nightly-1a2b"): json.dumps(entry).encode()})
    assert lookup_job(store, SETTINGS, "nightly-1a2b") == entry
    assert lookup_job(store, SETTINGS, "other") is None
    assert len(store.gets) == 2


def test_manifest_keys_are_json_objects_directly_in_the_prefix():
    assert is_manifest_key(PREFIX + "a.json", PREFIX)
    for key in (PREFIX + "done/a.json", PREFIX + ".claims/a.json", PREFIX + "a.txt", "x/a.json"):
        assert not is_manifest_key(key, PREFIX), key


# -- job ids are idempotency keys (CONTRACT §7.7) ---------------------------------------------


class MemoryStore:
    """Objects of every bucket in one dict keyed by (bucket, key); counts writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.writes: list[str] = []

    def get_bytes(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        return self.objects.get((bucket, key))

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> str:
        self.objects[(bucket, key)] = data
        self.writes.append(key)
        return "etag"

    def put_json(self, bucket: str, key: str, document: object) -> str:
        return self.put_bytes(bucket, key, json.dumps(document).encode(), content_type="json")


def manifest_bytes(**fields: object) -> bytes:
    return json.dumps({"files": ["a.txt"], "target": "out/a.zip", **fields}).encode()


def test_the_content_digest_ignores_spelling_and_the_id_but_not_the_content():
    def digest(**fields: object) -> str:
        return content_digest(parse_manifest(manifest_bytes(**fields), requests_prefix=PREFIX))

    same = digest(id="x")
    assert digest(id="y") == same
    assert digest(id="x", files=[{"key": "a.txt"}], compression=None) == same
    spaced = parse_manifest(
        b'{ "target" : "out/a.zip",\n "files": ["a.txt"], "id": "x" }', requests_prefix=PREFIX
    )
    assert content_digest(spaced) == same
    assert digest(id="x", target="out/b.zip") != same
    assert digest(id="x", files=["b.txt"]) != same
    assert digest(id="x", files=[{"key": "a.txt", "name": "b.txt"}]) != same
    assert digest(id="x", compression="store") != same


def test_decide_id_new_same_or_conflict():
    assert decide_id(None, "d1") == "new"
    assert decide_id({"job_id": "x", "target": "t"}, "d1") == "new"  # indexed before digests
    assert decide_id({"job_id": "x", "target": "t", "digest": "d1"}, "d1") == "same"
    assert decide_id({"job_id": "x", "target": "t", "digest": "d2"}, "d1") == "conflict"


def test_a_resubmitted_id_with_the_same_content_is_the_same_job_and_writes_nothing():
    store = MemoryStore()
    first = submit_manifest(store, SETTINGS, manifest_bytes(id="job-1"))
    assert (first.job_id, first.target, first.existing) == ("job-1", "out/a.zip", False)
    assert set(store.writes) == {PREFIX + "job-1.json", job_index_key(PREFIX, "job-1")}
    store.writes.clear()
    again = submit_manifest(
        store, SETTINGS, b'{"id": "job-1", "target": "out/a.zip", "files": ["a.txt"]}'
    )
    assert (again.job_id, again.target, again.existing) == ("job-1", "out/a.zip", True)
    assert store.writes == []


def test_a_resubmitted_id_with_other_content_is_refused_as_id_conflict_and_writes_nothing():
    store = MemoryStore()
    submit_manifest(store, SETTINGS, manifest_bytes(id="job-1"))
    store.writes.clear()
    with pytest.raises(IdConflict, match="job-1") as info:
        submit_manifest(store, SETTINGS, manifest_bytes(id="job-1", target="out/other.zip"))
    assert info.value.code == "id_conflict"
    assert store.writes == []


def test_submissions_without_an_id_never_conflict():
    store = MemoryStore()
    first = submit_manifest(store, SETTINGS, manifest_bytes())
    second = submit_manifest(store, SETTINGS, manifest_bytes())
    assert first.job_id != second.job_id and not first.existing and not second.existing
    stored = json.loads(store.objects[("bucket", first.manifest_key)])
    assert stored["id"] == first.job_id
    assert lookup_job(store, SETTINGS, first.job_id)["manifest"] == first.manifest_key


def admit(store: MemoryStore, raw: bytes, key: str):
    manifest = parse_manifest(raw, requests_prefix=PREFIX)
    return admit_job(store, SETTINGS, manifest, job_id_for(manifest, key), key)


def test_admitting_a_dropped_manifest_registers_it_and_decides_by_its_id():
    store = MemoryStore()
    assert admit(store, manifest_bytes(id="job-1"), PREFIX + "a.json").decision == "run"
    assert lookup_job(store, SETTINGS, "job-1")["manifest"] == PREFIX + "a.json"
    # The same job again (a retry, or the HTTP submission's own manifest) runs.
    assert admit(store, manifest_bytes(id="job-1"), PREFIX + "a.json").decision == "run"
    # Other content under the id fails, and leaves the index to the job that owns the id.
    refused = admit(store, manifest_bytes(id="job-1", files=["b.txt"]), PREFIX + "b.json")
    assert refused.decision == "conflict"
    assert lookup_job(store, SETTINGS, "job-1")["manifest"] == PREFIX + "a.json"
    # Without an id the manifest key is the identity: an overwrite is simply a new job.
    assert admit(store, manifest_bytes(), PREFIX + "c.json").decision == "run"
    assert admit(store, manifest_bytes(files=["b.txt"]), PREFIX + "c.json").decision == "run"


def test_the_same_id_and_content_after_the_job_succeeded_is_not_run_again():
    store = MemoryStore()
    admit(store, manifest_bytes(id="job-1"), PREFIX + "a.json")
    result = {"job_id": "job-1", "state": "succeeded", "target": "out/a.zip"}
    store.put_json("bucket", "out/a.zip.result.json", result)
    again = admit(store, manifest_bytes(id="job-1"), PREFIX + "b.json")
    assert (again.decision, again.result) == ("duplicate", result)
    # A failed job with the same id and content runs again (a retry).
    store.put_json("bucket", "out/a.zip.result.json", {**result, "state": "failed"})
    assert admit(store, manifest_bytes(id="job-1"), PREFIX + "b.json").decision == "run"
    # Another job's success at the same target is not this job's.
    store.put_json("bucket", "out/a.zip.result.json", {**result, "job_id": "other"})
    assert admit(store, manifest_bytes(id="job-1"), PREFIX + "b.json").decision == "run"


# -- failed/<name>.error.json (CONTRACT §7.5, §7.6) -------------------------------------------


def test_the_error_report_has_exactly_the_contracts_fields():
    document = error_report("job-1", InvalidManifest("the manifest is not valid JSON"), attempts=1)
    assert document == {
        "job_id": "job-1",
        "code": "invalid_manifest",
        "message": "the manifest is not valid JSON",
        "attempts": 1,
    }


def test_the_error_report_is_written_next_to_the_filed_manifest():
    store = MemoryStore()
    key = write_error_report(
        store, SETTINGS, PREFIX + "nightly.json", "job-1", InvalidManifest("bad"), attempts=3
    )
    assert key == PREFIX + "failed/nightly.error.json"
    assert json.loads(store.objects[("bucket", key)])["attempts"] == 3
