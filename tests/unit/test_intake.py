"""Job lookup by id: ids no job can have cost no storage request."""

from __future__ import annotations

import json

import pytest

from watcher.config import from_mapping
from watcher.intake import is_manifest_key, job_index_key, lookup_job

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
