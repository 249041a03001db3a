"""The lean GET's pure parts (issue 16): its SigV4 signature is the one botocore computes for the
same request, paths are encoded as botocore sends them, refusals are classified like botocore's
standard retry mode, and the small-member packing decision matches the streamed one."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import AWKWARD_KEYS as KEYS

from watcher.pipeline import decide, pack_whole
from watcher.smallget import (
    EMPTY_SHA256,
    SigV4,
    error_code,
    http_date,
    object_path,
    retryable,
    total_attempts,
)


def botocore_signature(creds: Credentials, region: str, host: str, path: str, stamp: str):
    """(signed headers, signature) of ``GET path`` as botocore's S3 signer computes them."""
    auth = S3SigV4Auth(creds, "s3", region)
    headers = {"X-Amz-Date": stamp, "X-Amz-Content-SHA256": EMPTY_SHA256}
    if creds.token:
        headers["X-Amz-Security-Token"] = creds.token
    request = AWSRequest(method="GET", url=f"http://{host}{path}", headers=headers)
    request.context["timestamp"] = stamp
    canonical = auth.canonical_request(request)
    to_sign = auth.string_to_sign(request, canonical)
    return auth.signed_headers(auth.headers_to_sign(request)), auth.signature(to_sign, request)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [None, "session/token+=="])
def test_the_signature_is_botocores(key, token):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    host = "127.0.0.1:9000"
    path = object_path("", "my-bucket", key)
    now = time.time()
    headers = SigV4(creds, "us-west-004").headers(host, path, now)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    names, signature = botocore_signature(creds, "us-west-004", host, path, stamp)
    assert headers["x-amz-date"] == stamp
    assert f"SignedHeaders={names}," in headers["Authorization"]
    assert headers["Authorization"].endswith(f"Signature={signature}")
    assert (
        f"Credential=AKIDEXAMPLE/{stamp[:8]}/us-west-004/s3/aws4_request"
        in (headers["Authorization"])
    )
    assert not [h for h in headers if h.lower().startswith("x-amz-checksum")]


def test_the_days_signing_key_is_kept_and_renewed():
    creds = Credentials("AK", "SECRET")
    signer = SigV4(creds, "us-east-1")
    day1 = datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC).timestamp()
    first = signer.headers("h", "/b/k", day1)["Authorization"]
    again = signer.headers("h", "/b/k", day1)["Authorization"]
    later = signer.headers("h", "/b/k", day1 + 2)["Authorization"]
    assert first == again and "/20261129/" in first and "/20261130/" in later
    names, signature = botocore_signature(creds, "us-east-1", "h", "/b/k", "20261130T000001Z")
    assert later.endswith(signature)


def test_paths_are_encoded_like_botocore():
    assert object_path("", "b", "a b/c+d%e~f") == "/b/a%20b/c%2Bd%25e~f"
    assert object_path("/base", "b", "日") == "/base/b/%E6%97%A5"


def test_refusals_are_classified_like_the_standard_retry_mode():
    body = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>m</Message></Error>"
    assert error_code(body) == "SlowDown" and error_code(b"not xml") == ""
    for status, code in ((503, "SlowDown"), (500, "InternalError"), (429, ""), (400, "Throttling")):
        assert retryable(status, code), (status, code)
    for status, code in (
        (404, "NoSuchKey"),
        (403, "AccessDenied"),
        (412, "PreconditionFailed"),
        (501, "NotImplemented"),
        (400, "InvalidArgument"),
    ):
        assert not retryable(status, code), (status, code)
    assert total_attempts({"total_max_attempts": 9}) == 9
    assert total_attempts({"max_attempts": 3}) == 4 and total_attempts({}) == 3


def test_http_dates():
    assert http_date("Sun, 29 Nov 2026 20:16:16 GMT") == datetime(
        2026, 11, 29, 20, 16, 16, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.txt", b""),
        ("a.txt", b"tiny"),
        ("a.txt", b"text line\n" * 2000),
        ("a.bin", random.Random(1).randbytes(10_000)),
        ("a.bin", random.Random(2).randbytes(300)),
        ("a.jpg", b"text line\n" * 2000),
        ("a.csv", b"text line\n" * 20_000),
        ("a.bin", random.Random(3).randbytes(200_000)),
    ],
)
@pytest.mark.parametrize("compression", ["auto", "deflate", "store"])
def test_a_small_member_is_packed_as_decided(name, data, compression):
    import zlib

    method, level, piece = pack_whole(compression, 6, name, data)
    assert (method, level) == decide(compression, 6, name, data)
    if method == "store":
        assert piece == data
    else:
        assert zlib.decompress(piece, -15) == data


@pytest.mark.parametrize("level", range(10))
def test_a_whole_member_deflates_in_one_call_at_every_level(level):
    import zlib

    from watcher.deflate import compress_whole, compressobj

    for data in (b"", b"x", b"text line\n" * 900, random.Random(level).randbytes(5000)):
        packed = compress_whole(level, data)
        assert zlib.decompress(packed, -15) == data
        stream = compressobj(level)  # the same library and level as the streamed path
        assert len(packed) <= len(stream.compress(data) + stream.flush()) + 16


def test_kept_compressors_are_shared_by_threads_without_mixing_members():
    """compress_whole reuses libdeflate compressors across threads (one caller at a time each,
    at most ``limit`` made per level); every member still inflates to its own bytes."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    from watcher import deflate

    kept = deflate._KEPT
    if kept is None:
        pytest.skip("libdeflate's library is not reachable through ctypes here")
    members = [b"member %d: " % i + random.Random(i).randbytes(64) * (i % 50) for i in range(400)]

    def packed(data: bytes) -> bool:
        return zlib.decompress(deflate.compress_whole(6, data), -15) == data

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(packed, members))
    assert 1 <= kept._made[4] <= kept.limit
    assert len(kept._free[4]) == kept._made[4]  # every compressor was given back
