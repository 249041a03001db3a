"""The lean GET of small objects (issue 16) over HTTP: one signed request per object through the
storage edge, with its retries, timeouts, error translation, request counts and B2's dialect; and
a many-small job written by the pipeline on it, every ZIP opened and checked."""

from __future__ import annotations

import time
import zipfile

import pytest
from conftest import AWKWARD_KEYS as ODD_KEYS
from conftest import both_servers, deterministic_bytes, put_objects, verify_zip
from faultproxy import Fault, FaultProxy

from watcher import store as store_module
from watcher.config import S3Settings
from watcher.errors import AccessDenied, JobCancelled, MissingInput, StorageError
from watcher.markers import Progress
from watcher.pipeline import PipelineLimits, write_zip
from watcher.plan import Entry, Plan
from watcher.smallget import usable_for
from watcher.store import NotImplementedByStore, PreconditionFailed, Store, make_client

MiB = 1024 * 1024


def edge(endpoint: str, **options) -> Store:
    return Store(make_client(S3Settings(endpoint, "us-east-1"), **options))


@pytest.fixture
def proxy(s3_server):
    running = FaultProxy(s3_server.port).start()
    yield running
    running.stop()


def gets_of(proxy: FaultProxy, key_part: str) -> list[dict[str, str]]:
    return [h for m, p, h in proxy.requests if m == "GET" and key_part in p]


@both_servers
def test_one_signed_get_per_object_counted_for_the_job(s3_server, s3, bucket):
    objects = {key: f"body of {key}\n".encode() * (i + 1) for i, key in enumerate(ODD_KEYS)}
    put_objects(s3, bucket, objects)
    front = FaultProxy(s3_server.port).start()
    try:
        job = edge(front.endpoint_url).for_job()
        for key, body in objects.items():
            got = job.get_small(bucket, key, max_bytes=MiB)
            head = s3.head_object(Bucket=bucket, Key=key)
            assert got.body == body and got.reader is None
            assert got.size == len(body) and got.etag == head["ETag"]
            assert got.last_modified == head["LastModified"]
    finally:
        front.stop()
    assert job.job_request_counts() == {"GetObject": len(objects)}
    gets = [h for m, _p, h in front.requests if m == "GET"]
    assert len(gets) == len(objects) == len(front.requests), "one GET per object, nothing else"
    for headers in gets:
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        assert not [h for h in lower if h.startswith("x-amz-checksum")]
        assert "x-amz-sdk-checksum-algorithm" not in lower


@both_servers
def test_a_missing_object_is_missing_input_and_asked_once(s3_server, bucket):
    front = FaultProxy(s3_server.port).start()
    try:
        store = edge(front.endpoint_url)
        with pytest.raises(MissingInput, match="absent.txt"):
            store.get_small(bucket, "absent.txt", max_bytes=MiB)
    finally:
        front.stop()
    assert len(gets_of(front, "absent.txt")) == 1
    assert store.request_counts() == {"GetObject": 1}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (403, "AccessDenied", AccessDenied),
        (403, "SignatureDoesNotMatch", AccessDenied),
        (412, "PreconditionFailed", PreconditionFailed),
        (501, "NotImplemented", NotImplementedByStore),
        (404, "NoSuchKey", MissingInput),
    ],
)
def test_refusals_are_translated_and_never_retried(proxy, s3, bucket, status, code, kind):
    put_objects(s3, bucket, {"r.txt": b"refused"})
    proxy.add(Fault("status", method="GET", path="r.txt", status=status, code=code, times=5))
    store = edge(proxy.endpoint_url)
    with pytest.raises(kind) as caught:
        store.get_small(bucket, "r.txt", max_bytes=MiB)
    assert proxy.fired["status"] == 1, "a refusal is an answer, not a transient failure"
    assert caught.value.status == status and caught.value.aws_code == code
    assert "Credential" not in caught.value.message


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", method="GET", status=503, code="SlowDown", times=2),
        Fault("status", method="GET", status=500, code="InternalError", times=2),
        Fault("drop", method="GET", times=2),
        Fault("truncate", method="GET", after_bytes=100, times=2),
        Fault("cut", method="GET", after_bytes=100, times=2),
    ],
    ids=lambda f: f"{f.kind}-{f.status}",
)
def test_transient_failures_are_retried_to_the_exact_bytes(proxy, s3, bucket, fault):
    body = deterministic_bytes(3, 200_000)
    put_objects(s3, bucket, {"t.bin": body})
    proxy.add(fault)
    store = edge(proxy.endpoint_url)
    got = store.get_small(bucket, "t.bin", max_bytes=MiB)
    assert got.body == body
    assert fault.fired == 2
    assert len(gets_of(proxy, "t.bin")) == 3
    assert store.request_counts() == {"GetObject": 3}, "every attempt is a request"


def test_a_store_that_stalls_times_out_and_is_retried(proxy, s3, bucket):
    put_objects(s3, bucket, {"slow.txt": b"eventually"})
    proxy.add(Fault("late", method="GET", path="slow.txt", seconds=4, times=1))
    store = edge(proxy.endpoint_url, read_timeout=1)
    assert store.get_small(bucket, "slow.txt", max_bytes=MiB).body == b"eventually"
    assert store.request_counts() == {"GetObject": 2}


def test_retries_are_spent_then_storage_error(proxy, s3, bucket):
    put_objects(s3, bucket, {"down.txt": b"x"})
    proxy.add(Fault("status", method="GET", status=503, code="ServiceUnavailable", times=100))
    store = edge(proxy.endpoint_url).with_timeouts(seconds=10, attempts=3)
    with pytest.raises(StorageError, match="down.txt"):
        store.get_small(bucket, "down.txt", max_bytes=MiB)
    assert proxy.fired["status"] == 4, "as many attempts as botocore makes: 1 + 3 retries"


@both_servers
def test_a_bigger_object_streams_from_the_same_answer(s3_server, s3, bucket):
    body = deterministic_bytes(4, 3 * MiB)
    put_objects(s3, bucket, {"big.bin": body})
    front = FaultProxy(s3_server.port).start()
    try:
        front.add(Fault("cut", method="GET", path="big.bin", after_bytes=MiB, times=1))
        store = edge(front.endpoint_url)
        reserved: list[int] = []
        got = store.get_small(bucket, "big.bin", max_bytes=MiB, reserve=reserved.append)
        assert got.body is None and got.size == len(body) and not reserved
        with got.reader as reader:
            data = b"".join(reader.iter_chunks(256 * 1024))
            assert reader.resumptions == 1
    finally:
        front.stop()
    assert data == body
    ranges = [h.get("Range") for h in gets_of(front, "big.bin")]
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    assert len(ranges) == 2


@both_servers
def test_content_encoded_objects_are_read_as_stored(s3_server, s3, bucket):
    """A GET's body is the object's bytes whatever its Content-Encoding: nothing is decoded
    (botocore does not decode either), for a whole body and a streamed one."""
    import gzip

    small = gzip.compress(b"pre-compressed web asset\n" * 500)
    large = gzip.compress(deterministic_bytes(8, 2 * MiB), compresslevel=1)
    for key, body in (("site/app.js", small), ("site/bundle.js", large)):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentEncoding="gzip")
    store = edge(s3_server.endpoint_url)
    got = store.get_small(bucket, "site/app.js", max_bytes=MiB)
    assert got.body == small
    got = store.get_small(bucket, "site/bundle.js", max_bytes=MiB)
    with got.reader as reader:
        assert b"".join(reader.iter_chunks(256 * 1024)) == large


def test_a_cancel_cuts_a_stalled_small_body_and_no_retry_follows(proxy, s3, bucket):
    """CONTRACT §9: a job's cancel must not wait on a store that stalls a small object's body
    (read timeout 60 s, 9 attempts); interrupt_reads() cuts the read, and nothing is retried."""
    import threading

    put_objects(s3, bucket, {"stalled.bin": deterministic_bytes(7, 100_000)})
    stall = proxy.add(Fault("stall", method="GET", path="stalled.bin", seconds=120, times=5))
    job = edge(proxy.endpoint_url).for_job()
    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            job.get_small(bucket, "stalled.bin", max_bytes=MiB)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome.append(exc)

    reader = threading.Thread(target=fetch, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not stall.fired and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stall.fired == 1
    time.sleep(0.3)  # the head is in, the body stalls
    job.interrupt_reads()
    reader.join(30)  # generous; without the cut it takes minutes
    assert not reader.is_alive(), "the stalled read was not cut off"
    assert isinstance(outcome[0], JobCancelled), outcome
    assert len(gets_of(proxy, "stalled.bin")) == 1, "no retry after a cancel"


def test_the_lean_path_takes_the_clients_tls_verification(monkeypatch):
    """AWS_CA_BUNDLE (a private CA) reaches the lean GETs; verify=False keeps them off."""
    import boto3
    import certifi

    monkeypatch.setenv("AWS_CA_BUNDLE", certifi.where())
    client = make_client(S3Settings("https://s3.example.invalid", "us-east-1"))
    getter = store_module._lean_getter(client)
    assert getter is not None and getter.ca_bundle == certifi.where()
    monkeypatch.delenv("AWS_CA_BUNDLE")
    unverified = boto3.client(
        "s3", endpoint_url="https://s3.example.invalid", region_name="us-east-1", verify=False
    )
    assert store_module._lean_getter(unverified) is None


def test_the_lean_path_does_not_go_through_a_proxy_setting(monkeypatch):
    """botocore honours HTTP(S)_PROXY; the lean path does not go where one applies."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert usable_for("http://127.0.0.1:9000") and usable_for("https://s3.example.com")
    assert not usable_for(None) and not usable_for("s3.example.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert not usable_for("https://s3.example.com")
    assert usable_for("http://127.0.0.1:9000"), "only the scheme's own proxy applies"
    monkeypatch.setenv("NO_PROXY", "s3.example.com")
    assert usable_for("https://s3.example.com")


def test_without_the_lean_path_the_full_client_reads(s3_server, s3, bucket, monkeypatch):
    """Where the lean path may not go, get_small is the same verb on the boto3 client."""
    put_objects(s3, bucket, {"f.txt": b"fallback", "f.bin": deterministic_bytes(2, 3000)})
    monkeypatch.setattr(store_module, "_small_getter", lambda client: None)
    store = edge(s3_server.endpoint_url)
    reserved: list[int] = []
    got = store.get_small(bucket, "f.txt", max_bytes=1000, reserve=reserved.append)
    assert got.body == b"fallback" and reserved == [8]
    got = store.get_small(bucket, "f.bin", max_bytes=1000, reserve=reserved.append)
    with got.reader as reader:
        assert b"".join(reader.iter_chunks(1024)) == deterministic_bytes(2, 3000)
    with pytest.raises(MissingInput):
        store.get_small(bucket, "absent", max_bytes=1000)
    assert store.request_counts() == {"GetObject": 3}


@both_servers
def test_a_many_small_job_writes_every_member_with_one_get_each(s3_server, s3, bucket, tmp_path):
    """Plain keys (sizes unknown when planning): small ones read whole and compressed where
    they are fetched, a bigger one streamed from its one GET, a stored one by name."""
    objects = {f"many/{i:04d}.txt": f"line {i}\n".encode() * (i % 300 + 1) for i in range(150)}
    objects["many/empty.txt"] = b""
    objects["many/noise.bin"] = deterministic_bytes(5, 300_000)
    objects["many/photo.jpg"] = deterministic_bytes(6, 50_000)
    objects["many/big.log"] = b"a bigger log line, streamed\n" * 80_000  # 2.2 MB
    put_objects(s3, bucket, objects)
    for key in ODD_KEYS:
        objects[key] = key.encode() * 50
    put_objects(s3, bucket, {k: objects[k] for k in ODD_KEYS})
    keys = sorted(objects)
    front = FaultProxy(s3_server.port).start()
    try:
        store = edge(front.endpoint_url, max_pool_connections=64).for_job()
        plan = Plan(tuple(Entry(k, k, None, None) for k in keys), (), "auto", "fail", 6)
        progress = Progress()
        limits = PipelineLimits(read_ahead_bytes=4 * MiB, small_in_flight=64)
        write_zip(
            plan,
            store,
            input_bucket=bucket,
            output_bucket=bucket,
            target="out/many.zip",
            progress=progress,
            limits=limits,
        )
    finally:
        front.stop()
    path = tmp_path / "many.zip"
    path.write_bytes(s3.get_object(Bucket=bucket, Key="out/many.zip")["Body"].read())
    zf = verify_zip(path, objects)
    methods = {r.name: r.method for r in progress.entries}
    assert methods["many/noise.bin"] == methods["many/photo.jpg"] == "store"
    assert methods["many/0001.txt"] == methods["many/big.log"] == "deflate"
    assert zf.getinfo("many/empty.txt").compress_type == zipfile.ZIP_STORED
    input_gets = [p for m, p, _h in front.requests if m == "GET"]
    assert len(input_gets) == len(objects), "one GET per object, no HEAD"
    assert not [r for r in front.requests if r[0] == "HEAD"]
    assert store.job_request_counts()["GetObject"] == len(objects)
    assert progress.bytes_read == sum(map(len, objects.values()))
