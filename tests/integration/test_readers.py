"""The reader matrix (CONTRACT §10): the product's archives opened by every independent reader.

Archives come from `b2-zip-watcher zip` against moto's S3 server; tests/readers runs Python
zipfile, Info-ZIP unzip, 7-Zip, bsdtar (file and pipe), Java ZipFile and ZipInputStream, yauzl 2.10
and 3.x, node-stream-zip and unzipper Open/Parse on each, checking names, sizes, CRCs and bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from conftest import deterministic_bytes, download, put_objects
from faultproxy import FaultProxy
from readers import (
    READERS,
    Row,
    check_with_all_readers,
    compare,
    expectation,
    matrix,
)

# Text that deflates, incompressible bytes (stored by `auto` from their first bytes), a media
# extension, an empty object, a name outside ASCII, and a directory entry (a 0-byte object whose
# key ends in "/", CONTRACT §7.9) with a file under it, both taken through a prefix.
TREE = {"tree/": b"", "tree/leaf.txt": b"leaf\n"}
OBJECTS = {
    "docs/readme.txt": b"The quick brown fox jumps over the lazy dog.\n" * 2000,
    "rows.csv": b"".join(b"%d,row,%d\n" % (i, i * 7) for i in range(150_000)),
    "photos/img.jpg": deterministic_bytes(21, 300_000),
    "data/random.bin": deterministic_bytes(22, 1_500_000),
    "empty.txt": b"",
    "caf\u00e9/\u65e5\u672c-\U0001f600.txt": "unicode \u2713\n".encode() * 50,
}
EXPECTED = {**OBJECTS, **TREE}


def zip_with_cli(s3, bucket, s3_env, tmp_path, compression: str) -> tuple:
    """Run `b2-zip-watcher zip` on EXPECTED; (archive path, its result marker)."""
    put_objects(s3, bucket, EXPECTED)
    target = f"out/{compression}.zip"
    files = [*OBJECTS, {"prefix": "tree/"}]
    manifest = {"files": files, "target": target, "compression": compression}
    run_zip_command(s3_env, tmp_path, manifest)
    result = json.loads(s3.get_object(Bucket=bucket, Key=target + ".result.json")["Body"].read())
    return download(s3, bucket, target, tmp_path / f"{compression}.zip"), result


def run_zip_command(s3_env, tmp_path, manifest: dict, timeout: float = 300) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "zip", str(path)],
        env={**os.environ, **s3_env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-5000:] + done.stdout[-2000:]


def methods(result: dict) -> set[str]:
    return {entry["method"] for entry in result["entries"]}


def described(path) -> list[str]:
    """Members whose data is followed by a data descriptor (general purpose flag bit 3)."""
    with zipfile.ZipFile(path) as archive:
        return [info.filename for info in archive.infolist() if info.flag_bits & 0x08]


def test_mixed_archive_opens_in_every_reader(s3, bucket, s3_env, tmp_path):
    path, result = zip_with_cli(s3, bucket, s3_env, tmp_path, "auto")
    assert methods(result) == {"store", "deflate"}, "the archive must mix both methods"
    # Every member is under 8 MiB: compressed before its header, so no data descriptor (§10)
    assert described(path) == []
    check_with_all_readers(path, EXPECTED, parse=True)


def test_store_only_archive_opens_in_every_reader_including_streaming_parse(
    s3, bucket, s3_env, tmp_path
):
    path, result = zip_with_cli(s3, bucket, s3_env, tmp_path, "store")
    assert methods(result) == {"store"}
    assert described(path) == []
    check_with_all_readers(path, EXPECTED, parse=True)


def _data_offset(path, name: str) -> int:
    """Where member ``name``'s bytes start (after its local header)."""
    with zipfile.ZipFile(path) as archive:
        header = archive.getinfo(name).header_offset
    with open(path, "rb") as handle:
        handle.seek(header)
        local = handle.read(30)
    assert local[:4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return header + 30 + name_len + extra_len


def zip64_local_headers(path) -> list[str]:
    """Members whose local header carries a ZIP64 extra field (id 0x0001)."""
    found = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            handle.seek(info.header_offset)
            local = handle.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            handle.seek(name_len, 1)
            extra = handle.read(extra_len)
            while len(extra) >= 4:
                kind, size = struct.unpack("<HH", extra[:4])
                if kind == 0x0001:
                    found.append(info.filename)
                extra = extra[4 + size :]
    return found


def test_every_reader_reports_a_changed_byte(s3, bucket, s3_env, tmp_path):
    """The matrix can fail: one flipped byte inside a stored member is reported by every reader,
    whether the reader checks CRCs itself or only hands back the bytes."""
    path, _ = zip_with_cli(s3, bucket, s3_env, tmp_path, "store")
    data = bytearray(path.read_bytes())
    data[_data_offset(path, "data/random.bin") + 700_000] ^= 0x01
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bytes(data))
    installed = [r for r in READERS if r in matrix().readers]
    assert installed, "no reader is set up at all"
    with pytest.raises(AssertionError) as failure:
        check_with_all_readers(broken, EXPECTED, parse=True)
    report = str(failure.value)
    blind = [reader for reader in installed if f"\n  {reader}: " not in report]
    assert not blind, f"readers that did not notice a changed byte: {blind}\n{report}"
    assert f"{len(installed)} of {len(installed)} readers disagree" in report


def test_compare_names_every_kind_of_difference():
    body = b"payload"
    want = {"a.txt": expectation(body), "dir/": expectation(b""), "big.bin": expectation((10, 7))}
    good = [
        Row("a.txt", 7, zlib.crc32(body), hashlib.sha256(body).hexdigest(), 7, zlib.crc32(body)),
        Row("dir/", 0, 0, None),
        Row("big.bin", 10, 7, "0" * 64, None, None),
    ]
    assert compare(good, want) == []
    cases = {
        "missing": [good[0], good[1]],
        "unexpected": [*good, Row("x", 0, 0, None)],
        "listed twice": [*good, good[0]],
        "returned 8 bytes": [good[0], good[1], Row("big.bin", 8, 7, None)],
        "bytes' CRC-32": [good[0], good[1], Row("big.bin", 10, 8, None)],
        "bytes differ": [Row("a.txt", 7, zlib.crc32(body), "f" * 64), *good[1:]],
        "declares size": [Row("a.txt", 7, zlib.crc32(body), None, 6, None), *good[1:]],
        "declares CRC-32": [Row("a.txt", 7, zlib.crc32(body), None, None, 1), *good[1:]],
    }
    for phrase, rows in cases.items():
        problems = compare(rows, want)
        assert any(phrase in p for p in problems), (phrase, problems)


@pytest.mark.timeout(1200)
def test_more_than_65535_entries_open_in_every_reader(tmp_path):
    """65,600 tiny entries: only the end records are ZIP64 and no member has a data descriptor, so
    every reader, Parse included, reads it. The archive is the pipeline's (write_zip) on the unit
    tests' in-memory store: the same job over HTTP is 65,600 GETs, minutes of the suite's time
    that test_zip_job already spends once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from test_pipeline import FakeStore, make_plan, zip_it

    store = FakeStore({"one": b"1", "two": b"22"})
    files = [("one" if i % 2 else "two", f"d{i // 1000}/{i}.txt") for i in range(65_600)]
    zip_it(store, make_plan(files))
    path = tmp_path / "many.zip"
    path.write_bytes(store.outputs["t.zip"])
    check_with_all_readers(path, {name: store.objects[key] for key, name in files}, parse=True)
    assert described(path) == []
    archive = path.read_bytes()
    assert archive.count(b"PK\x06\x06") == 1, "ZIP64 end records, once"


def log_lines(count: int) -> bytes:
    rng = random.Random(count)
    return b"".join(
        b"2024-05-%02d GET /api/items/%d %d\n" % (i % 28 + 1, rng.randrange(10**7), i)
        for i in range(count)
    )


def test_a_large_deflated_member_is_read_by_parallel_ranged_gets(
    s3_server, s3, bucket, s3_env, tmp_path
):
    """CONTRACT §11: a 21 MiB text object is deflated from its first GET's first 2 MiB and then
    ranged GETs of 2 MiB, 4 at a time, pinned to the ETag that GET answered with; the archive (a
    streamed member with a data descriptor, a small one after it) opens in every reader."""
    big = log_lines(700_000)[: 21 * 1024 * 1024 + 99]
    assert len(big) == 21 * 1024 * 1024 + 99
    objects = {"logs/big.log": big, "after.txt": b"after the big member\n" * 100}
    put_objects(s3, bucket, objects)
    etag = s3.head_object(Bucket=bucket, Key="logs/big.log")["ETag"]
    proxy = FaultProxy(s3_server.port).start()
    try:
        env = {**s3_env, "AWS_ENDPOINT_URL": proxy.endpoint_url}
        manifest = {"files": list(objects), "target": "out/ranged.zip", "compression": "auto"}
        run_zip_command(env, tmp_path, manifest)
    finally:
        proxy.stop()
    gets = [
        {k.lower(): v for k, v in headers.items()}
        for method, path, headers in proxy.requests
        if method == "GET" and path.partition("?")[0].endswith("/logs/big.log")
    ]
    ranged = [g for g in gets if "range" in g]
    assert len(gets) - len(ranged) == 1, "one plain GET opens the member"
    starts = sorted(int(g["range"][6:].partition("-")[0]) for g in ranged)
    span = 2 * 1024 * 1024
    # the opening GET's body is read up to the first chunk boundary at or past 2 MiB
    assert span <= starts[0] < span + 1024 * 1024, starts[:3]
    assert starts == list(range(starts[0], len(big), span)), "the rest by 2 MiB ranges"
    ends = sorted(int(g["range"].partition("-")[2]) for g in ranged)
    assert ends[-1] == len(big) - 1 and len(ranged) >= 9
    assert all(g.get("if-match") == etag for g in ranged), "pinned to the first GET's ETag"
    path = download(s3, bucket, "out/ranged.zip", tmp_path / "ranged.zip")
    assert described(path) == ["logs/big.log"]
    check_with_all_readers(path, objects, parse=False)


GiB = 1 << 30
# Two stored media members; the second crosses the 4 GiB offset, what follows starts past it.
BIG_MEMBERS = {"video/a.mp4": 2 * GiB + GiB // 20, "video/b.mp4": 2 * GiB + GiB // 10}


def put_random_object(s3, bucket: str, key: str, size: int, seed: int, scratch) -> tuple:
    """Upload ``size`` reproducible random bytes; (size, crc32, sha256) to expect of the entry."""
    rng = random.Random(seed)
    sha = hashlib.sha256()
    crc = 0
    path = scratch / f"upload-{seed}.bin"
    with path.open("wb") as handle:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 16 << 20))
            sha.update(chunk)
            crc = zlib.crc32(chunk, crc)
            handle.write(chunk)
            left -= len(chunk)
    s3.upload_file(str(path), bucket, key)
    path.unlink()
    return size, crc, sha.hexdigest()


@pytest.fixture
def seaweed(tmp_path_factory, monkeypatch):
    """A disk-backed SeaweedFS S3 server (the benchmark's, `pip install '.[bench]'`) with a fresh
    bucket: (boto3 client, environment for the CLI). moto cannot hold this test: it reads a whole
    object into memory for every ranged GET and every UploadPartCopy (2 GiB each, hundreds of
    times) and assembles a completed upload in one bytearray."""
    from bench import servers

    try:
        servers._weed()
    except SystemExit as exc:
        pytest.fail(f"{exc} (the > 4 GiB archive needs a disk-backed S3 server)")

    def client(endpoint: str):
        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=servers.ACCESS_KEY,
            aws_secret_access_key=servers.SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    server = servers.SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start(client)
    try:
        s3 = client(server.endpoint_url)
        s3.create_bucket(Bucket="soak")
        env = {
            "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "BUCKET_NAME": "soak",
        }
        yield s3, env
    finally:
        server.stop()


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_archive_over_4_gib_opens_in_every_reader(seaweed, tmp_path, monkeypatch):
    """`make soak`: a 4.2 GiB archive. A stored member crosses the 4 GiB offset; a deflated text
    and a small image start past it (ZIP32 local headers, ZIP64 offsets in the directory). The
    stored members are assembled server-side (UploadPartCopy), on SeaweedFS (see ``seaweed``)."""
    import readers

    # a hang guard, not a speed limit: each reader streams 4.2 GiB, on 2 shared cores
    monkeypatch.setattr(readers, "READER_TIMEOUT", 3 * 3600.0)
    s3, s3_env = seaweed
    bucket = s3_env["BUCKET_NAME"]
    small = {
        "notes.txt": b"after the 4 GiB offset\n" * 40_000,
        "z/last.jpg": b"\xff\xd8" + bytes(range(256)) * 100,
    }
    expected: dict = {
        key: put_random_object(s3, bucket, key, size, seed, tmp_path)
        for seed, (key, size) in enumerate(BIG_MEMBERS.items(), start=41)
    }
    put_objects(s3, bucket, small)
    expected.update(small)
    run_zip_command(s3_env, tmp_path, {"files": list(expected), "target": "out/big.zip"}, 3 * 3600)
    result = json.loads(s3.get_object(Bucket=bucket, Key="out/big.zip.result.json")["Body"].read())
    copies = result.get("requests", {})
    path = download(s3, bucket, "out/big.zip", tmp_path / "big.zip")
    assert path.stat().st_size > 4 * GiB
    print(f"\n4 GiB soak: archive {path.stat().st_size} bytes, result requests {copies}")
    # CONTRACT §10: no member needs ZIP64 in its local header (each is under 4 GiB, wherever it
    # starts), and none has a data descriptor
    assert zip64_local_headers(path) == []
    assert described(path) == []
    agreed = check_with_all_readers(path, expected, parse=True)
    print(f"4 GiB soak: {len(agreed)} readers agreed: {', '.join(agreed)}")
