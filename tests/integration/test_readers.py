"""The reader matrix (CONTRACT §10): the product's archives opened by every independent reader.

Archives come from `b2-zip-watcher zip` against moto's S3 server; tests/readers runs Python
zipfile, Info-ZIP unzip, 7-Zip, bsdtar (file and pipe), Java ZipFile and ZipInputStream, yauzl 2.10
and 3.x, node-stream-zip and unzipper Open/Parse on each, checking names, sizes, CRCs and bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest
from conftest import deterministic_bytes, download, put_objects
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
    manifest = tmp_path / f"{compression}.json"
    manifest.write_text(json.dumps({"files": files, "target": target, "compression": compression}))
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "zip", str(manifest)],
        env={**os.environ, **s3_env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(s3.get_object(Bucket=bucket, Key=target + ".result.json")["Body"].read())
    return download(s3, bucket, target, tmp_path / f"{compression}.zip"), result


def methods(result: dict) -> set[str]:
    return {entry["method"] for entry in result["entries"]}


def test_mixed_archive_opens_in_every_reader(s3, bucket, s3_env, tmp_path):
    path, result = zip_with_cli(s3, bucket, s3_env, tmp_path, "auto")
    assert methods(result) == {"store", "deflate"}, "the archive must mix both methods"
    # Parse too: CONTRACT §10 only requires it without data descriptors, but it reads these
    # deflated members' descriptors (none of their compressed bytes look like one).
    check_with_all_readers(path, EXPECTED, parse=True)


def test_store_only_archive_opens_in_every_reader_including_streaming_parse(
    s3, bucket, s3_env, tmp_path
):
    path, result = zip_with_cli(s3, bucket, s3_env, tmp_path, "store")
    assert methods(result) == {"store"}
    with zipfile.ZipFile(path) as archive:
        described = [i.filename for i in archive.infolist() if i.flag_bits & 0x08]
    assert not described, f"stored members with a data descriptor: {described}"
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
    assert compare(good, want, extraction=False) == []
    assert compare([good[0], good[2]], want, extraction=True) == [], "extraction has no dirs"
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
        problems = compare(rows, want, extraction=False)
        assert any(phrase in p for p in problems), (phrase, problems)
