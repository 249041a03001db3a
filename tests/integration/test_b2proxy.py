"""The B2-faithful proxy answers as B2's documentation says (docs/b2.md), and the product's
storage edge copes with each answer."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from watcher.claims import probe
from watcher.config import S3Settings
from watcher.store import NotImplementedByStore, Store, make_client, strip_checksum_headers

B2 = pytest.mark.parametrize("s3_server", ["b2"], indirect=True)


def refused(call, status: int, code: str) -> ClientError:
    with pytest.raises(ClientError) as raised:
        call()
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status, error
    assert error["Error"]["Code"] == code, error
    return raised.value


@B2
def test_conditional_writes_answer_501_not_implemented(s3, bucket):
    error = refused(
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"1", IfNoneMatch="*"),
        501,
        "NotImplemented",
    )
    assert "implies functionality that is not implemented" in error.response["Error"]["Message"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"]
    refused(
        lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"2", IfMatch=etag),
        501,
        "NotImplemented",
    )


@B2
def test_tagging_and_checksum_headers_are_refused(s3_server, s3, bucket):
    refused(
        lambda: s3.put_object(Bucket=bucket, Key="t", Body=b"1", Tagging="a=b"),
        400,
        "InvalidArgument",
    )
    raw = s3_server.client()
    raw.meta.events.unregister("before-sign.s3", strip_checksum_headers)  # botocore as it is
    refused(
        lambda: raw.put_object(Bucket=bucket, Key="c", Body=b"1", ChecksumAlgorithm="CRC32"),
        400,
        "InvalidArgument",
    )
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


@B2
def test_every_bucket_keeps_versions_and_a_delete_leaves_a_marker(s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    s3.put_object(Bucket=bucket, Key="d", Body=b"1")
    s3.put_object(Bucket=bucket, Key="d", Body=b"2")
    s3.delete_object(Bucket=bucket, Key="d")
    listed = s3.list_object_versions(Bucket=bucket, Prefix="d")
    assert len(listed["Versions"]) == 2 and len(listed["DeleteMarkers"]) == 1


@B2
def test_keys_b2_refuses(s3, bucket):
    refused(lambda: s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b""), 400, "KeyTooLongError")
    s3.put_object(Bucket=bucket, Key="é" * 512, Body=b"")  # 1,024 bytes of UTF-8: fine
    for bad in ("tab\there", "del\x7fhere", "nl\nhere"):
        refused(
            lambda bad=bad: s3.put_object(Bucket=bucket, Key=bad, Body=b""), 400, "InvalidArgument"
        )


@B2
def test_part_limits(b2_proxy, s3, bucket):
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    refused(
        lambda: s3.upload_part(
            Bucket=bucket, Key="mp", UploadId=upload, PartNumber=10_001, Body=b"x"
        ),
        400,
        "InvalidArgument",
    )
    small = s3.upload_part(
        Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1, Body=b"x" * 4_999_999
    )
    last = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=2, Body=b"y")
    parts = [
        {"PartNumber": 1, "ETag": small["ETag"]},
        {"PartNumber": 2, "ETag": last["ETag"]},
    ]
    before = b2_proxy.refused["CompleteMultipartUpload EntityTooSmall"]
    refused(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts}
        ),
        400,
        "EntityTooSmall",
    )
    assert b2_proxy.refused["CompleteMultipartUpload EntityTooSmall"] == before + 1
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload)


@B2
def test_listings_carry_whole_seconds(s3, bucket):
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"l/{i}", Body=b".")
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="l/")["Contents"]:
        assert obj["LastModified"].microsecond == 0
    for version in s3.list_object_versions(Bucket=bucket, Prefix="l/")["Versions"]:
        assert version["LastModified"].microsecond == 0


@B2
def test_the_edge_on_b2(s3_server, bucket):
    store = Store(make_client(S3Settings(s3_server.endpoint_url, "us-east-1")))
    with pytest.raises(NotImplementedByStore):
        store.put_if_absent(bucket, "c.json", b"1")
    assert probe(store, bucket, "zip-requests/") == "versions"
    store.put(bucket, "v", b"1")
    store.put(bucket, "v", b"2")
    assert store.delete_all_versions(bucket, "v", exact=True) == 2  # no checksum header refused
    assert store.list_versions(bucket, "zip-requests/") == [], "probe versions left behind"
