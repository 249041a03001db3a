"""The storage edge over HTTP: pagination, heads, limits, multipart, retries, request counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import deterministic_bytes, put_objects
from faultproxy import Fault, FaultProxy

from watcher.config import S3Settings
from watcher.errors import InvalidManifest
from watcher.store import Store, make_client

MiB = 1024 * 1024


@pytest.fixture
def store(s3_server):
    return Store(make_client(S3Settings(s3_server.endpoint_url, "us-east-1")))


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
