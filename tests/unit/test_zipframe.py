"""The framing module: archives built from its pure functions, opened by Python ``zipfile`` and
``unzip -t``, and their structures read back byte by byte (CONTRACT §10)."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import zipfile
import zlib
from datetime import UTC, datetime

import pytest
from isal import isal_zlib

from watcher.zipframe import (
    DEFLATED,
    LIMIT32,
    STORED,
    Directory,
    FrameError,
    Member,
    Written,
    data_descriptor,
    local_header,
)

WHEN = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)
GiB = 1 << 30


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def known(name: str, data: bytes, method: int = STORED) -> tuple[Member, bytes]:
    packed = deflate(data) if method == DEFLATED else data
    return Member(name, WHEN, method, zlib.crc32(data), len(data), len(packed)), packed


def build(items: list[tuple[str, bytes, str]]) -> bytes:
    """An archive of (name, data, how): how is ``stored``, ``deflated`` or ``streamed``."""
    out = io.BytesIO()
    directory = Directory()
    for name, data, how in items:
        offset = out.tell()
        if how == "streamed":
            member = Member(name, WHEN, DEFLATED)
            packed = deflate(data)
            out.write(local_header(member) + packed)
            out.write(data_descriptor(member, zlib.crc32(data), len(data), len(packed)))
        else:
            member, packed = known(name, data, DEFLATED if how == "deflated" else STORED)
            out.write(local_header(member) + packed)
        directory.add(Written(member, offset, zlib.crc32(data), len(data), len(packed)))
    out.write(directory.finish(out.tell()))
    return out.getvalue()


def check_with_readers(
    archive: bytes, expected: dict[str, bytes], tmp_path, *, every: int = 1
) -> zipfile.ZipFile:
    """Names of all, sizes, CRCs and bytes of every ``every``-th member; ``unzip -t`` of all."""
    zf = zipfile.ZipFile(io.BytesIO(archive))
    assert [i.filename for i in zf.infolist()] == list(expected)
    for name, data in list(expected.items())[::every]:
        info = zf.getinfo(name)
        assert (info.file_size, info.CRC) == (len(data), zlib.crc32(data))
        assert zf.read(name) == data
        assert info.date_time == (2024, 5, 6, 7, 8, 10)
        assert info.flag_bits & 0x0800, "names are flagged UTF-8"
    if shutil.which("unzip"):
        path = tmp_path / "a.zip"
        path.write_bytes(archive)
        run = subprocess.run(["unzip", "-t", "-qq", str(path)], capture_output=True)
        assert run.returncode == 0, run.stdout + run.stderr
    return zf


def extras(raw: bytes) -> dict[int, bytes]:
    found, at = {}, 0
    while at < len(raw):
        kind, size = struct.unpack_from("<HH", raw, at)
        found[kind] = raw[at + 4 : at + 4 + size]
        at += 4 + size
    return found


def local_extras(archive, offset: int) -> tuple[int, dict[int, bytes]]:
    """(flags, extras) of the local header at ``offset`` of a bytes-like or a file."""
    if isinstance(archive, bytes):
        head = archive[offset : offset + 30 + 65535 * 2]
    else:
        archive.seek(offset)
        head = archive.read(30 + 1024)
    assert head[:4] == b"PK\x03\x04"
    flags = struct.unpack_from("<H", head, 6)[0]
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return flags, extras(head[30 + name_len : 30 + name_len + extra_len])


def test_small_archive_opens_in_every_reader_with_no_zip64_and_descriptors_only_when_streamed(
    tmp_path,
):
    text = b"a line of text\n" * 5000
    noise = random.Random(1).randbytes(70_000)
    items = [
        ("docs/text.txt", text, "deflated"),
        ("noise.bin", noise, "stored"),
        ("caf\u00e9/\u65e5\u672c-\U0001f600.txt", "unicode \u2713".encode(), "stored"),
        ("streamed.log", text, "streamed"),
        ("empty", b"", "stored"),
    ]
    archive = build(items)
    zf = check_with_readers(archive, {n: d for n, d, _ in items}, tmp_path)
    assert b"PK\x06\x06" not in archive and b"PK\x06\x07" not in archive
    for info, (_, _, how) in zip(zf.infolist(), items, strict=True):
        flags, found = local_extras(archive, info.header_offset)
        assert bool(flags & 0x08) == (how == "streamed"), info.filename
        assert 0x0001 not in found and 0x0001 not in extras(info.extra)
        assert set(found) == {0x5455} and found[0x5455] == struct.pack("<Bl", 1, 1714979290)
    assert archive.count(b"PK\x07\x08") == 1
    descriptor_at = archive.index(b"PK\x07\x08")
    after = archive[descriptor_at + 16 : descriptor_at + 20]
    assert after in (b"PK\x03\x04", b"PK\x01\x02"), "the descriptor is 16 bytes"


def test_end_record_disk_numbers_are_zero():
    archive = build([("a", b"a", "stored")])
    end = archive[archive.rindex(b"PK\x05\x06") :]
    disk, cd_disk, here, total = struct.unpack_from("<HHHH", end, 4)
    assert (disk, cd_disk, here, total) == (0, 0, 1, 1)


def test_more_than_65535_small_members_make_only_the_end_records_zip64(tmp_path):
    items = [(f"d{i // 1000}/{i}.txt", b"x" * (i % 3), "stored") for i in range(65_600)]
    archive = build(items)
    zf = check_with_readers(archive, {n: d for n, d, _ in items}, tmp_path, every=97)
    assert archive.count(b"PK\x06\x06") == 1
    assert all(0x0001 not in extras(i.extra) for i in zf.infolist())
    sample = zf.infolist()[65_599]
    assert 0x0001 not in local_extras(archive, sample.header_offset)[1]
    end64 = archive.index(b"PK\x06\x06")
    _, _, _, _, disk, cd_disk, here, total, _, _ = struct.unpack_from(
        "<4sQHHIIQQQQ", archive, end64
    )
    assert (disk, cd_disk, here, total) == (0, 0, 65_600, 65_600)
    locator = archive[end64 + 56 : end64 + 76]
    assert locator[:4] == b"PK\x06\x07"
    assert struct.unpack_from("<IQI", locator, 4) == (0, end64, 1)
    end = archive[end64 + 76 :]
    assert struct.unpack_from("<4sHHHH", end) == (b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF)


def crc_of_zeros(size: int) -> int:
    """CRC-32 of ``size`` zero bytes without materialising them (CRC combination)."""
    block = 1 << 20
    crc_block, value, done = zlib.crc32(bytes(block)), 0, 0
    while done + block <= size:
        value = isal_zlib.crc32_combine(value, crc_block, block)
        done += block
    return zlib.crc32(bytes(size - done), value)


def test_members_past_the_4_gib_offset_keep_zip32_local_headers(tmp_path):
    """A sparse file: two members of zeros (one just under 4 GiB, one over) that are never
    written, small members around and past the 4 GiB offset that are."""
    path = tmp_path / "big.zip"
    just_under = LIMIT32 - 5000
    plan = [
        ("under.bin", None, just_under),  # < 4 GiB: no ZIP64 anywhere
        ("crossing.txt", b"c" * 20_000, None),  # starts below 4 GiB, ends past it
        ("after.txt", b"after text " * 300, None),  # offset past 4 GiB, deflated
        ("after-streamed.txt", b"streamed " * 300, None),  # offset past 4 GiB, descriptor
        ("over.bin", None, LIMIT32 + 7),  # >= 4 GiB: ZIP64 local header
        ("last.txt", b"last", None),
    ]
    directory = Directory()
    with path.open("wb") as out:
        for name, data, zeros in plan:
            offset = out.tell()
            if zeros is not None:
                crc = crc_of_zeros(zeros)
                member = Member(name, WHEN, STORED, crc, zeros, zeros)
                out.write(local_header(member))
                out.seek(zeros, 1)  # a hole reads as zeros
                written = Written(member, offset, crc, zeros, zeros)
            elif name == "after-streamed.txt":
                member = Member(name, WHEN, DEFLATED)
                packed = deflate(data)
                out.write(local_header(member) + packed)
                out.write(data_descriptor(member, zlib.crc32(data), len(data), len(packed)))
                written = Written(member, offset, zlib.crc32(data), len(data), len(packed))
            else:
                member, packed = known(name, data, DEFLATED if name == "after.txt" else STORED)
                out.write(local_header(member) + packed)
                written = Written(member, offset, zlib.crc32(data), len(data), len(packed))
            directory.add(written)
        out.write(directory.finish(out.tell()))

    zf = zipfile.ZipFile(path)
    infos = {i.filename: i for i in zf.infolist()}
    assert infos["under.bin"].file_size == just_under
    assert infos["over.bin"].file_size == LIMIT32 + 7
    assert infos["crossing.txt"].header_offset < LIMIT32 < infos["after.txt"].header_offset
    for name, data, _ in plan:
        if data is not None:
            assert zf.read(name) == data
    with path.open("rb") as raw:
        for name in ("under.bin", "crossing.txt", "after.txt", "after-streamed.txt", "last.txt"):
            assert 0x0001 not in local_extras(raw, infos[name].header_offset)[1], name
        zip64 = local_extras(raw, infos["over.bin"].header_offset)[1][0x0001]
        assert struct.unpack("<QQ", zip64) == (LIMIT32 + 7, LIMIT32 + 7)
    for name in ("under.bin", "crossing.txt"):
        assert 0x0001 not in extras(infos[name].extra), name
    for name in ("after.txt", "after-streamed.txt", "last.txt"):
        (offset,) = struct.unpack("<Q", extras(infos[name].extra)[0x0001])
        assert offset == infos[name].header_offset > LIMIT32, name
    assert struct.unpack("<QQQ", extras(infos["over.bin"].extra)[0x0001])[:2] == (
        LIMIT32 + 7,
        LIMIT32 + 7,
    )
    with path.open("rb") as raw:
        raw.seek(-98, 2)
        tail = raw.read()
    assert tail[:4] == b"PK\x06\x06" and tail[-22:-18] == b"PK\x05\x06"
    assert struct.unpack_from("<HH", tail, -18) == (0, 0), "disk numbers 0"
    if shutil.which("unzip"):
        names = ["crossing.txt", "after.txt", "after-streamed.txt", "last.txt"]
        run = subprocess.run(["unzip", "-t", "-qq", str(path), *names], capture_output=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_a_large_streamed_member_announces_zip64_and_gets_a_24_byte_descriptor(tmp_path):
    member = Member("huge.log", WHEN, DEFLATED, large=True)
    header = local_header(member)
    assert struct.unpack_from("<II", header, 18) == (LIMIT32, LIMIT32)
    assert extras(header[30 + len(b"huge.log") :])[0x0001] == bytes(16)
    descriptor = data_descriptor(member, 1, 5 * GiB, 4 * GiB + 1)
    assert len(descriptor) == 24
    assert struct.unpack("<4sIQQ", descriptor) == (b"PK\x07\x08", 1, 4 * GiB + 1, 5 * GiB)


def test_a_small_streamed_member_that_outgrows_4_gib_is_refused():
    member = Member("grew.log", WHEN, DEFLATED)
    assert len(data_descriptor(member, 1, 10, 10)) == 16
    with pytest.raises(FrameError, match="outgrew"):
        data_descriptor(member, 1, LIMIT32 + 1, 100)


def test_names_longer_than_the_format_holds_are_refused():
    with pytest.raises(FrameError, match="65,535"):
        local_header(Member("x" * 70_000, WHEN, STORED, 0, 0, 0))


def test_directory_entries_carry_the_directory_mode():
    archive = build([("folder/", b"", "stored"), ("folder/a", b"a", "stored")])
    zf = zipfile.ZipFile(io.BytesIO(archive))
    assert zf.getinfo("folder/").is_dir() and zf.getinfo("folder/").external_attr & 0x10
    assert not zf.getinfo("folder/a").is_dir()
