"""The storage edge over HTTP: pagination, heads, limits, multipart, retries, request counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import deterministic_bytes, put_objects
from faultproxy import Fault, FaultProxy

from watcher.config import S3Settings
from watcher.errors import AccessDenied, InvalidManifest
from watcher.store import NotImplementedByStore, PreconditionFailed, Store, make_client

MiB = 1024 * 1024


@pytest.fixture
def store(s3_server):
    return Store(make_client(S3Settings(s3_server.endpoint_url, "us-east-1")))


@pytest.mark.moto_only("pagination is moto's own behind the B2-faithful proxy")
def test_listing_paginates_and_delimits(store, s3, bucket):
    keys = [f"p/{i:05d}" for i in range(2500)] + ["p/sub/x", "p/sub/y"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"."), keys))
    assert [o.key for o in store.list_objects(bucket, "p/")] == sorted(keys)
    assert store.request_counts()["ListObjectsV2"] == 3
    top = [o.key for o in store.list_objects(bucket, "p/", delimiter="/")]
    assert len(top) == 2500 and "p/sub/x" not in top


def test_head_get_bytes_and_limits(store, s3, bucket):
    put_objects(s3, bucket, {"small": b"12345", "large": b"x" * 2000})
    assert store.head(bucket, "small").size == 5
    assert store.head(bucket, "absent") is None
    assert store.get_bytes(bucket, "small", max_bytes=10) == b"12345"
    assert store.get_bytes(bucket, "absent", max_bytes=10) is None
    with pytest.raises(InvalidManifest, match="larger than 1000"):
        store.get_bytes(bucket, "large", max_bytes=1000)


def test_multipart_completes_or_aborts_leaving_the_previous_object(store, s3, bucket):
    parts = [deterministic_bytes(i, 5 * MiB + i) for i in range(3)]
    with store.multipart(bucket, "mp.bin") as upload:
        for number, body in enumerate(parts, 1):
            upload.upload_part(number, body)
        upload.complete()
    assert s3.get_object(Bucket=bucket, Key="mp.bin")["Body"].read() == b"".join(parts)

    with pytest.raises(RuntimeError), store.multipart(bucket, "mp.bin") as upload:
        upload.upload_part(1, parts[0])
        raise RuntimeError("boom")
    assert s3.get_object(Bucket=bucket, Key="mp.bin")["Body"].read() == b"".join(parts)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_slowdown_on_a_put_is_retried(s3_server, s3, bucket):
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("status", method="PUT", status=503, code="SlowDown", times=2))
        store = Store(make_client(S3Settings(proxy.endpoint_url, "us-east-1")))
        store.put_bytes(bucket, "retried", b"ok", content_type="text/plain")
    finally:
        proxy.stop()
    assert proxy.fired["status"] == 2
    assert s3.get_object(Bucket=bucket, Key="retried")["Body"].read() == b"ok"
    assert store.request_counts()["PutObject"] == 3


def test_a_read_cut_twice_is_resumed_to_the_exact_bytes(s3_server, s3, bucket):
    body = deterministic_bytes(9, 3 * MiB)
    put_objects(s3, bucket, {"cut.bin": body})
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("cut", method="GET", path="cut.bin", after_bytes=MiB, times=1))
        proxy.add(Fault("truncate", method="GET", path="cut.bin", nth=2, after_bytes=1000))
        store = Store(make_client(S3Settings(proxy.endpoint_url, "us-east-1")))
        with store.open_object(bucket, "cut.bin") as reader:
            data = b"".join(reader.iter_chunks(256 * 1024))
            resumptions = reader.resumptions
    finally:
        proxy.stop()
    assert data == body
    assert resumptions == 2
    ranges = [h.get("Range") for m, p, h in proxy.requests if m == "GET" and "cut.bin" in p]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])


def test_an_object_replaced_mid_read_fails_at_once(s3_server, s3, bucket):
    """The resumed GET carries If-Match; its 412 ends the read with no retry (it used to cost
    nine GETs and ~36 s of backoff)."""
    put_objects(s3, bucket, {"moving.bin": deterministic_bytes(1, 3 * MiB)})
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("cut", method="GET", path="moving.bin", after_bytes=MiB, times=1))
        store = Store(make_client(S3Settings(proxy.endpoint_url, "us-east-1")))
        with store.open_object(bucket, "moving.bin") as reader:
            chunks = reader.iter_chunks(256 * 1024)
            next(chunks)
            s3.put_object(Bucket=bucket, Key="moving.bin", Body=b"replaced")
            with pytest.raises(PreconditionFailed):
                list(chunks)
    finally:
        proxy.stop()
    gets = [p for m, p, h in proxy.requests if m == "GET" and "moving.bin" in p]
    assert len(gets) == 2, gets
    assert store.request_counts()["GetObject"] == 2


@pytest.mark.moto_only("B2 answers conditional writes 501: test_b2proxy.py")
def test_conditional_writes_and_deletes(store, bucket):
    first = store.put_if_absent(bucket, "c.json", b"1")
    assert first is not None and first.etag
    assert store.put_if_absent(bucket, "c.json", b"2") is None
    assert store.put_if_match(bucket, "c.json", b"3", '"not-the-etag"') is None
    third = store.put_if_match(bucket, "c.json", b"3", first.etag)
    assert third is not None and third.etag != first.etag
    assert store.put_if_match(bucket, "absent.json", b"x", first.etag) is None
    assert not store.delete_if_match(bucket, "c.json", first.etag)
    fetched = store.get(bucket, "c.json")
    assert fetched.body == b"3" and fetched.etag == third.etag and fetched.server_time
    assert store.delete_if_match(bucket, "c.json", third.etag)
    assert store.get(bucket, "c.json") is None


def test_versions_are_listed_newest_first_and_purged(store, s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert store.bucket_versioning(bucket) == "Enabled"
    written = [store.put(bucket, "v/k", str(i).encode()) for i in range(3)]
    store.put(bucket, "v/other", b"o")
    store.delete(bucket, "v/other")  # leaves a delete marker
    listed = [v for v in store.list_versions(bucket, "v/k") if v.key == "v/k"]
    assert [v.version_id for v in listed] == [w.version_id for w in reversed(written)]
    assert store.get(bucket, "v/k", version_id=written[0].version_id).body == b"0"
    assert store.delete_all_versions(bucket, "v/k", exact=True) == 3
    assert {v.key for v in store.list_versions(bucket, "v/")} == {"v/other"}
    assert store.delete_all_versions(bucket, "v/") == 2  # the version and its delete marker
    assert not s3.list_object_versions(Bucket=bucket, Prefix="v/").get("Versions")
    assert not s3.list_object_versions(Bucket=bucket, Prefix="v/").get("DeleteMarkers")


def test_no_request_carries_checksum_headers(s3_server, s3, bucket):
    """B2 may refuse x-amz-checksum-*; botocore adds them to DeleteObjects even with
    ``when_required``, so the edge sends the Content-MD5 S3 accepts instead."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    proxy = FaultProxy(s3_server.port).start()
    try:
        store = Store(make_client(S3Settings(proxy.endpoint_url, "us-east-1")))
        store.put(bucket, "x", b"x")
        store.delete_all_versions(bucket, "x")
    finally:
        proxy.stop()
    assert not s3.list_object_versions(Bucket=bucket, Prefix="x").get("Versions")
    posts = [h for m, p, h in proxy.requests if m == "POST" and "delete" in p]
    assert posts and all("Content-MD5" in h for h in posts)
    for _method, _path, headers in proxy.requests:
        assert not [h for h in headers if h.lower().startswith("x-amz-checksum")], headers
        assert "x-amz-sdk-checksum-algorithm" not in {h.lower() for h in headers}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [(403, "AccessDenied", AccessDenied), (501, "NotImplemented", NotImplementedByStore)],
)
def test_refusals_of_a_conditional_write_are_told_apart(s3_server, bucket, status, code, kind):
    proxy = FaultProxy(s3_server.port).start()
    try:
        proxy.add(Fault("status", method="PUT", status=status, code=code, times=5))
        store = Store(make_client(S3Settings(proxy.endpoint_url, "us-east-1")))
        with pytest.raises(kind):
            store.put_if_absent(bucket, "c.json", b"1")
    finally:
        proxy.stop()
    assert proxy.fired["status"] == 1, "a refusal is an answer, not a transient failure"


def test_a_job_view_counts_its_own_requests(store, bucket):
    job_a, job_b = store.for_job(), store.for_job()
    job_a.put_bytes(bucket, "a", b"a", content_type="text/plain")
    with ThreadPoolExecutor(4) as pool:  # requests made on other threads count for the job too
        list(pool.map(lambda _: job_b.head(bucket, "a"), range(4)))
    job_b.get_bytes(bucket, "a", max_bytes=10)
    list(job_b.list_objects(bucket, ""))
    assert job_a.job_request_classes() == {"a": 1, "b": 0, "c": 0}
    assert job_b.job_request_counts() == {"HeadObject": 4, "GetObject": 1, "ListObjectsV2": 1}
    assert job_b.job_request_classes() == {"a": 0, "b": 5, "c": 1}
    assert store.request_classes() == {"a": 1, "b": 5, "c": 1}
