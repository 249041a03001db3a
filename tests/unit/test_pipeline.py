"""The pipeline: its pure decisions (part sizes, copy layout, compression choice, levels,
timestamps), then write_zip end to end against an in-memory store (layout, ZIP64, server-side
copies and their fallback, parts, failures, cancel)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import struct
import threading
import zipfile
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import verify_zip

from watcher import pipeline
from watcher.errors import JobCancelled, MissingInput, StorageError
from watcher.markers import Progress
from watcher.pipeline import (
    MAX_PART,
    MIN_PART,
    CrcCache,
    MiB,
    PipelineLimits,
    choose_method,
    clamp_mtime,
    copy_head,
    copy_pieces,
    decide,
    part_size,
    write_zip,
)
from watcher.plan import Entry, Plan
from watcher.store import CopyRefused, Pinned, SmallRead

GiB = 1024 * MiB


@pytest.mark.parametrize("planned", [0, 1, 100 * MiB, 10 * GiB, 100 * GiB, 4 * 1024 * GiB])
def test_ten_thousand_parts_always_carry_the_planned_size(planned):
    sizes = [part_size(planned, n) for n in range(1, 10_001)]
    assert all(MIN_PART <= s <= MAX_PART for s in sizes)
    assert sum(sizes) >= planned
    assert sum(sizes[:9000]) >= planned, "9,000 parts carry the plan"
    assert all(s % MiB == 0 for s in sizes)


def test_parts_grow_past_the_plan_when_unknown_sizes_make_the_archive_bigger():
    assert sum(part_size(0, n) for n in range(1, 10_001)) > 5 * 1024 * GiB
    assert part_size(0, 1000) == MIN_PART < part_size(0, 1001)
    assert part_size(100 * GiB, 1) == part_size(100 * GiB, 1000) > MIN_PART


@pytest.mark.parametrize("buffered", [0, 100, 5 * MiB - 1, 5 * MiB, 40 * MiB])
@pytest.mark.parametrize("size", [5 * MiB, 10 * MiB - 1, 10 * MiB, 16 * MiB, 3 * GiB])
def test_copy_head_keeps_both_the_uploaded_part_and_the_copied_rest_above_the_floor(buffered, size):
    floor = 5 * MiB
    head = copy_head(buffered, size, floor)
    if head is None:
        assert size - max(0, floor - buffered) < floor
    else:
        assert buffered + head >= floor and size - head >= floor
        assert head == max(0, floor - buffered), "no more is uploaded than the floor needs"


@pytest.mark.parametrize(
    "start,end,piece",
    [
        (0, 1, 8),
        (3, 100, 8),
        (0, 5 * MiB, 128 * MiB),
        (7, 12 * GiB + 5, 128 * MiB),
        (0, 11 * GiB, 20 * GiB),
    ],
)
def test_copy_pieces_cover_the_range_in_order_each_between_piece_and_5_gib(start, end, piece):
    spans = copy_pieces(start, end, piece)
    assert spans[0][0] == start and spans[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(b - a <= MAX_PART for a, b in spans)
    if end - start >= piece:
        assert all(b - a >= piece for a, b in spans)


def test_auto_stores_incompressible_bytes_at_any_size_and_empty_objects():
    noise = random.Random(1).randbytes(MiB)
    assert decide("auto", 6, "big.bin", noise) == ("store", 0)
    assert decide("auto", 6, "empty", b"") == ("store", 0)
    assert decide("auto", 6, "log.txt", b"GET /index.html 200\n" * 4000) == ("deflate", 6)
    assert decide("deflate", 8, "clip.mp4", noise) == ("deflate", 8)
    assert decide("store", 6, "log.txt", b"text" * 1000) == ("store", 0)


def test_media_and_archives_are_stored_by_extension():
    for name in ("a/photo.JPG", "clip.mp4", "x.zip", "y.tar.gz", "doc.docx"):
        assert choose_method(name, b"text " * 1000) == "store"


def test_incompressible_bytes_are_stored_and_text_is_deflated():
    noise = random.Random(1).randbytes(64 * 1024)
    assert choose_method("data.bin", noise) == "store"
    assert choose_method("log.txt", b"GET /index.html 200\n" * 4000) == "deflate"
    assert choose_method("tiny.bin", b"\x00\x01") == "deflate"


def test_timestamps_are_clamped_to_what_the_zip_can_hold():
    assert clamp_mtime(datetime(1970, 1, 1, tzinfo=UTC)) == datetime(1980, 1, 1, tzinfo=UTC)
    assert clamp_mtime(datetime(2100, 1, 1, tzinfo=UTC)).year == 2038
    local = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert clamp_mtime(local) == datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert clamp_mtime(datetime(2024, 6, 1)).tzinfo is UTC


# -- write_zip against an in-memory store ------------------------------------------------------


WHEN = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)


class FakeReader:
    def __init__(self, key: str, body: bytes, etag: str, on_chunk=None) -> None:
        self.bucket, self.key, self.version_id = "in", key, None
        self.body, self.etag, self.on_chunk = body, etag, on_chunk
        self.size = len(body)
        self.last_modified = WHEN
        self.position = 0
        self.closed = False

    def iter_chunks(self, n: int):
        for start in range(0, self.size, n):
            if self.closed:
                raise StorageError("read after close")
            if self.on_chunk is not None:
                self.on_chunk()
            self.position = min(self.size, start + n)
            yield self.body[start : start + n]

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class FakeUpload:
    def __init__(self, store: FakeStore, key: str) -> None:
        self.store, self.key, self.parts = store, key, {}
        store.uploads.append(self)
        self.state = "open"

    def __enter__(self):
        return self

    def upload_part(self, number: int, data: bytes) -> None:
        if self.store.fail_part == number:
            raise StorageError("part upload failed")
        self.parts[number] = bytes(data)
        self.store.uploaded.append(len(data))

    def copy_part(self, number: int, source: Pinned, start: int, end: int) -> None:
        if self.store.refuse_copy:
            raise CopyRefused("the store refused UploadPartCopy (NotImplemented)")
        body = self.store.current(source)
        self.parts[number] = body[start:end]
        self.store.copied.append(end - start)

    def complete(self) -> None:
        self.store.outputs[self.key] = b"".join(self.parts[n] for n in sorted(self.parts))
        self.state = "completed"

    def abort(self) -> None:
        self.state = "aborted"


class FakeStore:
    """Objects in a dict; the ZIP lands in ``outputs`` only when the upload completes."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = dict(objects)
        self.outputs: dict[str, bytes] = {}
        self.uploads: list[FakeUpload] = []
        self.opens: dict[str, int] = {}
        self.fail_part: int | None = None
        self.on_chunk = None
        self.lock = threading.Lock()
        self.refuse_copy = False
        self.ranged: dict[str, int] = {}
        self.uploaded: list[int] = []
        self.copied: list[int] = []
        self.kept: dict[str, bytes] = {}  # the CRC cache's objects

    @staticmethod
    def etag(body: bytes) -> str:
        return f'"{zlib.crc32(body):08x}-{len(body)}"'

    def pin(self, bucket: str, key: str) -> Pinned:
        if key not in self.objects:
            raise MissingInput(f"s3://{bucket}/{key} does not exist")
        body = self.objects[key]
        return Pinned(bucket, key, len(body), self.etag(body), None, WHEN)

    def current(self, source: Pinned) -> bytes:
        """The pinned bytes, or the 412 a real store answers when they changed."""
        body = self.objects[source.key]
        if self.etag(body) != source.etag:
            raise StorageError(f"s3://{source.bucket}/{source.key} changed while being read")
        return body

    def read_range(self, source: Pinned, start: int, end: int, *, chunk_size: int):
        with self.lock:
            self.ranged[source.key] = self.ranged.get(source.key, 0) + 1
        body = self.current(source)
        for at in range(start, end, chunk_size):
            if self.on_chunk is not None:
                self.on_chunk()
            yield body[at : min(end, at + chunk_size)]

    def open_object(self, bucket: str, key: str) -> FakeReader:
        with self.lock:
            self.opens[key] = self.opens.get(key, 0) + 1
        if key not in self.objects:
            raise MissingInput(f"s3://{bucket}/{key} does not exist")
        body = self.objects[key]
        return FakeReader(key, body, self.etag(body), self.on_chunk)

    def get_small(self, bucket: str, key: str, *, max_bytes: int, reserve=None) -> SmallRead:
        """Store.get_small: one GET, the body whole up to ``max_bytes``, else streaming."""
        reader = self.open_object(bucket, key)
        if reader.size > max_bytes:
            return SmallRead(reader.size, WHEN, reader.etag, None, reader)
        if reserve is not None:
            reserve(reader.size)
        if self.on_chunk is not None:
            self.on_chunk()
        return SmallRead(reader.size, WHEN, reader.etag, reader.body, None)

    def multipart(self, bucket: str, key: str) -> FakeUpload:
        return FakeUpload(self, key)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> str:
        self.outputs[key] = bytes(data)
        return '"etag"'

    def put_json(self, bucket: str, key: str, document) -> str:
        self.kept[key] = json.dumps(document).encode()
        return '"etag"'

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int) -> bytes | None:
        return self.kept.get(key)


def make_plan(files, *, compression="auto", missing="fail", level=6) -> Plan:
    entries = tuple(Entry(key, name, None, None) for key, name in files)
    return Plan(entries, (), compression, missing, level)


SMALL_PARTS = PipelineLimits(
    read_ahead_bytes=4 * MiB,
    max_parallel_gets=4,
    minimum_part=MiB,
    copy_min_bytes=0,
    copy_floor=MiB,
)
COPYING = PipelineLimits(
    read_ahead_bytes=4 * MiB,
    max_parallel_gets=4,
    minimum_part=MiB,
    copy_min_bytes=2 * MiB,
    copy_floor=MiB,
)


def zip_it(store, plan, *, limits=SMALL_PARTS, cancel=None) -> Progress:
    progress = Progress()
    write_zip(
        plan,
        store,
        input_bucket="in",
        output_bucket="out",
        target="t.zip",
        progress=progress,
        limits=limits,
        cancel=cancel,
    )
    return progress


def pipeline_threads() -> list[str]:
    prefixes = ("get_", "put_", "crc_", "deflate_")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


def saved(store: FakeStore, tmp_path) -> object:
    path = tmp_path / "t.zip"
    path.write_bytes(store.outputs["t.zip"])
    return path


def test_entries_reported_as_zipfile_reads_them_over_several_parts(tmp_path):
    objects = {
        "noise.bin": random.Random(2).randbytes(3 * MiB),
        "text.txt": b"a line of text that repeats\n" * 100_000,
        "photo.jpg": random.Random(3).randbytes(200_000),
        "empty": b"",
    }
    store = FakeStore(objects)
    progress = zip_it(store, make_plan([(k, "dir/" + k) for k in objects]))
    path = saved(store, tmp_path)
    zf = verify_zip(path, {"dir/" + k: v for k, v in objects.items()})
    assert len(store.uploads) == 1 and len(store.uploads[0].parts) >= 3
    assert progress.bytes_written == path.stat().st_size
    assert progress.bytes_read == sum(map(len, objects.values()))
    methods = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_STORED: "store"}
    for result in progress.entries:
        info = zf.getinfo(result.name)
        assert (result.size, result.compressed_size, result.crc32, result.method) == (
            info.file_size,
            info.compress_size,
            info.CRC,
            methods[info.compress_type],
        )
        assert info.date_time == (2024, 5, 6, 7, 8, 10)
    by_name = {r.name: r.method for r in progress.entries}
    assert by_name["dir/photo.jpg"] == "store" and by_name["dir/text.txt"] == "deflate"


def local_flags_and_extras(archive: bytes, offset: int) -> tuple[int, set[int]]:
    flags, name_len, extra_len = struct.unpack_from("<H18xHH", archive, offset + 6)
    extra = archive[offset + 30 + name_len : offset + 30 + name_len + extra_len]
    kinds, at = set(), 0
    while at < len(extra):
        kind, size = struct.unpack_from("<HH", extra, at)
        kinds.add(kind)
        at += 4 + size
    return flags, kinds


def test_members_carry_a_descriptor_only_when_streamed_and_no_zip64(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 256 * 1024)
    objects = {
        "small.txt": b"small text\n" * 1000,
        "large.log": b"a large log line, deflated as it streams\n" * 20_000,
        "noise.bin": random.Random(5).randbytes(600_000),
        "photo.jpg": random.Random(6).randbytes(100_000),
    }
    store = FakeStore(objects)
    progress = zip_it(store, make_plan([(k, k) for k in objects]))
    path = saved(store, tmp_path)
    zf = verify_zip(path, objects)
    archive = path.read_bytes()
    methods = {r.name: r.method for r in progress.entries}
    assert methods == {
        "small.txt": "deflate",
        "large.log": "deflate",
        "noise.bin": "store",
        "photo.jpg": "store",
    }
    for info in zf.infolist():
        flags, kinds = local_flags_and_extras(archive, info.header_offset)
        assert bool(flags & 0x08) == (info.filename == "large.log"), info.filename
        assert flags & 0x0800 and kinds == {0x5455}, info.filename
        assert b"\x01\x00" not in info.extra[:2]
    assert archive.count(b"PK\x07\x08") == 1 and b"PK\x06\x06" not in archive
    assert store.opens["noise.bin"] == 1 and store.ranged["noise.bin"] == 2, "CRC pass, stream"


def test_more_than_65535_entries_make_only_the_end_records_zip64(tmp_path):
    store = FakeStore({"one": b"1", "two": b"22"})
    files = [("one" if i % 2 else "two", f"d{i // 1000}/{i}") for i in range(65_537)]
    progress = zip_it(store, make_plan(files))
    path = saved(store, tmp_path)
    zf = verify_zip(path, {name: store.objects[key] for key, name in files})
    archive = path.read_bytes()
    assert archive.count(b"PK\x06\x06") == 1 and b"PK\x07\x08" not in archive
    assert not any(b"\x01\x00" in info.extra[:2] for info in zf.infolist())
    end = archive[archive.rindex(b"PK\x05\x06") :]
    assert struct.unpack_from("<HH", end, 4) == (0, 0), "disk numbers 0"
    assert progress.files_done == 65_537


def test_big_entry_under_explicit_store_is_crced_by_ranged_reads_and_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 64 * 1024)
    body = b"compressible " * 50_000
    store = FakeStore({"big.txt": body})
    progress = zip_it(store, make_plan([("big.txt", "big.txt")], compression="store"))
    zf = verify_zip(saved(store, tmp_path), {"big.txt": body})
    assert zf.getinfo("big.txt").compress_type == zipfile.ZIP_STORED
    assert store.opens["big.txt"] == 1, "the read-ahead opened it, saw its size, read nothing"
    assert progress.entries[0].compressed_size == len(body)
    assert progress.bytes_read == 2 * len(body), "read once for the CRC, once to stream"


def test_big_incompressible_entry_under_auto_is_stored_not_deflated(tmp_path):
    body = random.Random(4).randbytes(pipeline.BUFFER_LIMIT + MiB)
    store = FakeStore({"noise.bin": body})
    progress = zip_it(store, make_plan([("noise.bin", "noise.bin")]))
    zf = verify_zip(saved(store, tmp_path), {"noise.bin": body})
    (result,) = progress.entries
    assert result.method == "store" and result.compressed_size == len(body)
    assert zf.getinfo("noise.bin").flag_bits & 0x08 == 0, "no data descriptor"


@pytest.mark.parametrize("same_etag", [False, True])
def test_an_input_changed_between_its_two_reads_fails_the_job(monkeypatch, same_etag):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 64 * 1024)
    store = FakeStore({"big.bin": b"x" * 200_000})
    original = store.read_range
    pinned_etag = store.etag(store.objects["big.bin"])

    def read_range(source, start, end, *, chunk_size):
        if store.ranged.get("big.bin") == 1:  # the CRC pass is done: the object changes
            store.objects["big.bin"] = b"y" * 200_000
            if same_etag:
                store.etag = lambda body: pinned_etag
        return original(source, start, end, chunk_size=chunk_size)

    store.read_range = read_range
    with pytest.raises(StorageError, match="big.bin changed"):
        zip_it(store, make_plan([("big.bin", "big.bin")], compression="store"))
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)


def media_objects() -> dict[str, bytes]:
    return {
        "a.txt": b"text before the media\n" * 100,
        "one.mp4": random.Random(11).randbytes(3 * MiB + 17),
        "two.mp4": random.Random(12).randbytes(5 * MiB + 3),
        "photo.jpg": random.Random(13).randbytes(300_000),
        "three.mov": random.Random(14).randbytes(2 * MiB + 1),
    }


def test_large_stored_members_are_copied_server_side_in_parts_the_store_takes(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    objects = media_objects()
    store = FakeStore(objects)
    progress = zip_it(store, make_plan([(k, k) for k in objects]), limits=COPYING)
    path = saved(store, tmp_path)
    verify_zip(path, objects)
    (upload,) = store.uploads
    sizes = [len(upload.parts[n]) for n in sorted(upload.parts)]
    assert sorted(upload.parts) == list(range(1, len(sizes) + 1))
    assert all(size >= COPYING.copy_floor for size in sizes[:-1]), sizes
    large = sum(len(objects[k]) for k in ("one.mp4", "two.mp4", "three.mov"))
    assert sum(store.copied) >= large - 3 * COPYING.copy_floor
    assert sum(store.uploaded) + sum(store.copied) == path.stat().st_size
    assert progress.bytes_written == path.stat().st_size
    assert {r.name: r.method for r in progress.entries}["two.mp4"] == "store"


def test_refused_copies_fall_back_to_streaming_once_with_byte_identical_archives(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    objects = media_objects()
    plan = make_plan([(k, k) for k in objects])
    copied = FakeStore(objects)
    zip_it(copied, plan, limits=COPYING)
    refused = FakeStore(objects)
    refused.refuse_copy = True
    asked = []
    original = FakeUpload.copy_part

    def counting(self, *args):
        asked.append(args[0])
        return original(self, *args)

    FakeUpload.copy_part = counting
    try:
        zip_it(refused, plan, limits=COPYING)
    finally:
        FakeUpload.copy_part = original
    streamed = FakeStore(objects)
    zip_it(streamed, plan)
    assert copied.copied and not refused.copied and not streamed.copied
    assert len(asked) == 1, "the store is asked once per job"
    assert copied.outputs["t.zip"] == refused.outputs["t.zip"] == streamed.outputs["t.zip"]
    verify_zip(saved(refused, tmp_path), objects)


def test_a_missing_large_input_is_skipped_before_anything_of_it_is_written(tmp_path):
    store = FakeStore({"a.txt": b"a"})
    plan = Plan(
        (Entry("gone.mp4", "gone.mp4", 50 * MiB, WHEN), Entry("a.txt", "a.txt", None, None)),
        (),
        "auto",
        "skip",
        6,
    )
    progress = zip_it(store, plan, limits=COPYING)
    verify_zip(saved(store, tmp_path), {"a.txt": b"a"})
    assert progress.skipped == [{"key": "gone.mp4", "reason": "missing"}]
    assert "gone.mp4" not in store.opens, "size and extension were known: no GET"


def test_missing_input_fails_naming_the_key_and_writes_nothing():
    store = FakeStore({"a": b"a" * 3 * MiB})
    with pytest.raises(MissingInput, match="gone"):
        zip_it(store, make_plan([("a", "a"), ("gone", "gone")], compression="store"))
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)
    assert not pipeline_threads()


def test_missing_inputs_skipped_and_an_archive_of_nothing_is_refused(tmp_path):
    store = FakeStore({"a": b"a"})
    progress = zip_it(store, make_plan([("gone", "x"), ("a", "a")], missing="skip"))
    verify_zip(saved(store, tmp_path), {"a": b"a"})
    assert progress.skipped == [{"key": "gone", "reason": "missing"}]
    store = FakeStore({})
    with pytest.raises(MissingInput, match="every input was missing"):
        zip_it(store, make_plan([("gone", "x"), ("gone2", "y")], missing="skip"))
    assert not store.outputs


def test_a_failed_part_aborts_the_upload_and_joins_every_thread():
    store = FakeStore({f"{i}": random.Random(i).randbytes(MiB) for i in range(5)})
    store.fail_part = 2
    with pytest.raises(StorageError):
        zip_it(store, make_plan([(k, k) for k in store.objects], compression="store"))
    assert not store.outputs and [u.state for u in store.uploads] == ["aborted"]
    assert not pipeline_threads()


def test_cancel_stops_promptly_aborts_and_joins_every_thread():
    cancel = threading.Event()
    store = FakeStore({f"{i}": random.Random(i).randbytes(2 * MiB) for i in range(20)})
    chunks = itertools.count()
    store.on_chunk = lambda: next(chunks) == 12 and cancel.set()
    with pytest.raises(JobCancelled):
        zip_it(store, make_plan([(k, k) for k in store.objects]), cancel=cancel)
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)
    assert next(chunks) < 60, "reading went on long after the cancel"
    assert not pipeline_threads()


CACHED = dataclasses.replace(COPYING, crc_cache=CrcCache("in", "zip-requests/.crc/"))


def test_the_crc_cache_spares_a_repeat_job_the_crc_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    objects = media_objects()
    store = FakeStore(objects)
    plan = make_plan([(k, k) for k in objects])
    first = zip_it(store, plan, limits=CACHED)
    assert len(store.kept) == 3 and all(k.startswith("zip-requests/.crc/") for k in store.kept)
    cold = dict(store.ranged)
    again = zip_it(store, plan, limits=CACHED)
    warm = {k: store.ranged[k] - cold[k] for k in cold}
    assert warm == {"one.mp4": 1, "two.mp4": 1, "three.mov": 1}, "only the heads are read"
    assert again.bytes_read < first.bytes_read / 3
    verify_zip(saved(store, tmp_path), objects)
    assert [r.crc32 for r in again.entries] == [r.crc32 for r in first.entries]


def test_a_crc_cache_entry_is_used_only_for_the_same_etag_and_checked_when_streamed(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    body = random.Random(15).randbytes(2 * MiB)
    store = FakeStore({"clip.mp4": body})
    plan = make_plan([("clip.mp4", "clip.mp4")])
    zip_it(store, plan, limits=CACHED)
    (entry_key,) = store.kept
    store.objects["clip.mp4"] = changed = random.Random(16).randbytes(2 * MiB)
    zip_it(store, plan, limits=CACHED)
    verify_zip(saved(store, tmp_path), {"clip.mp4": changed})
    assert len(store.kept) == 2, "a new ETag is a new entry; the old one is never used"
    document = json.loads(store.kept[entry_key])
    stale_key = CACHED.crc_cache.key_for(store.pin("in", "clip.mp4"))
    store.kept[stale_key] = json.dumps({**document, "etag": store.etag(changed)}).encode()
    streaming = dataclasses.replace(CACHED, copy_min_bytes=0)
    with pytest.raises(StorageError, match="clip.mp4 changed"):
        zip_it(store, plan, limits=streaming)


# -- large deflated members: parallel ranged GETs (CONTRACT §11) ------------------------------


def small_ranges(monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 256 * 1024)
    monkeypatch.setattr(pipeline, "RANGED_MIN", 256 * 1024)
    monkeypatch.setattr(pipeline, "RANGED_SPAN", 256 * 1024)


def log_text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    lines = (b"%d GET /item/%d 200\n" % (i, rng.randrange(10**6)) for i in range(size // 16))
    return b"".join(lines)[:size]


def test_a_large_deflated_member_is_read_by_parallel_ranged_gets(tmp_path, monkeypatch):
    small_ranges(monkeypatch)
    objects = {"big.log": log_text(1, 3 * MiB + 123), "next.log": log_text(2, 2 * MiB + 7)}
    store = FakeStore(objects)
    original = store.read_range
    lock, both = threading.Lock(), threading.Event()
    flying, peak = [0], [0]

    def read_range(source, start, end, *, chunk_size):
        with lock:
            flying[0] += 1
            peak[0] = max(peak[0], flying[0])
            if flying[0] >= 2:
                both.set()
        try:
            both.wait(10)  # the first range waits (a while at most) for a second one beside it
            yield from original(source, start, end, chunk_size=chunk_size)
        finally:
            with lock:
                flying[0] -= 1

    store.read_range = read_range
    progress = zip_it(store, make_plan([(k, k) for k in objects]))
    zf = verify_zip(saved(store, tmp_path), objects)
    assert {r.method for r in progress.entries} == {"deflate"}
    assert all(zf.getinfo(k).flag_bits & 0x08 for k in objects), "streamed members"
    # the first MiB by the opening GET, the rest by 256 KiB ranges
    assert store.opens == {"big.log": 1, "next.log": 1}
    # one member at a time reads by ranges (the first to ask; the other too if it asks later)
    assert store.ranged.get("big.log", 0) in (0, 9) and store.ranged.get("next.log", 0) in (0, 5)
    assert store.ranged, "no member was read by ranges"
    assert 2 <= peak[0] <= pipeline.RANGED_PARALLEL * pipeline.RANGED_STREAMS
    assert progress.bytes_read == sum(map(len, objects.values()))


def test_a_large_deflated_member_replaced_while_read_by_ranges_fails_the_job(monkeypatch):
    small_ranges(monkeypatch)
    store = FakeStore({"big.log": log_text(3, 3 * MiB)})
    original = store.read_range

    def read_range(source, start, end, *, chunk_size):
        if store.ranged.get("big.log", 0) >= 2:
            store.objects["big.log"] = log_text(4, 3 * MiB)
        return original(source, start, end, chunk_size=chunk_size)

    store.read_range = read_range
    with pytest.raises(StorageError, match="big.log changed"):
        zip_it(store, make_plan([("big.log", "big.log")]))
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)
    assert not pipeline_threads()


def test_a_members_copies_are_placed_before_its_crc_is_known(tmp_path, monkeypatch):
    """The store copies while the CRC pass reads: the part with the header is held back, not the
    copies (the server-side ceiling does both at once too)."""
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    objects = media_objects()
    store = FakeStore(objects)
    copying = threading.Event()
    original_copy, original_read = FakeUpload.copy_part, store.read_range
    first_reads: dict[str, bool] = {}

    def copy_part(self, number, source, start, end):
        copying.set()
        return original_copy(self, number, source, start, end)

    def read_range(source, start, end, *, chunk_size):
        if source.key == "two.mp4" and start == 0 and "two.mp4" not in first_reads:
            first_reads["two.mp4"] = copying.wait(10)  # a CRC read of two.mp4 waits for a copy
        return original_read(source, start, end, chunk_size=chunk_size)

    monkeypatch.setattr(FakeUpload, "copy_part", copy_part)
    store.read_range = read_range
    plan = make_plan([("two.mp4", "two.mp4"), ("a.txt", "a.txt"), ("one.mp4", "one.mp4")])
    zip_it(store, plan, limits=COPYING)
    verify_zip(saved(store, tmp_path), {k: objects[k] for k in ("two.mp4", "a.txt", "one.mp4")})
    assert first_reads == {"two.mp4": True}, "the copies waited for the CRC pass"
    (upload,) = store.uploads
    sizes = [len(upload.parts[n]) for n in sorted(upload.parts)]
    assert sorted(upload.parts) == list(range(1, len(sizes) + 1))
    assert all(size >= COPYING.copy_floor for size in sizes[:-1]), sizes


def test_the_next_adjacent_members_copies_are_placed_while_the_first_crc_is_read(
    tmp_path, monkeypatch
):
    """Adjacent large stored members: the second's copies do not wait for the first's CRC-32
    (as the server-side ceiling, the store copies everything while the CRC passes read); each
    keeps a held part of its own for its header and head, so the parts still come in order."""
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    objects = media_objects()
    store = FakeStore(objects)
    second_copied = threading.Event()
    original_copy, original_read = FakeUpload.copy_part, store.read_range
    waited: list[bool] = []

    def copy_part(self, number, source, start, end):
        if source.key == "one.mp4":
            second_copied.set()
        return original_copy(self, number, source, start, end)

    def read_range(source, start, end, *, chunk_size):
        if source.key == "two.mp4" and start == 0 and not waited:
            waited.append(second_copied.wait(10))  # two.mp4's CRC pass waits for one.mp4's copy
        return original_read(source, start, end, chunk_size=chunk_size)

    monkeypatch.setattr(FakeUpload, "copy_part", copy_part)
    store.read_range = read_range
    order = ["two.mp4", "one.mp4", "three.mov", "a.txt", "photo.jpg"]
    zip_it(store, make_plan([(k, k) for k in order]), limits=COPYING)
    verify_zip(saved(store, tmp_path), {k: objects[k] for k in order})
    assert waited == [True], "one.mp4's copies waited for two.mp4's CRC-32"
    (upload,) = store.uploads
    sizes = [len(upload.parts[n]) for n in sorted(upload.parts)]
    assert sorted(upload.parts) == list(range(1, len(sizes) + 1))
    assert all(size >= COPYING.copy_floor for size in sizes[:-1]), sizes
    assert sum(store.copied) >= sum(len(objects[k]) for k in order[:3]) - 3 * COPYING.copy_floor


@pytest.mark.parametrize("missing", ["fail", "skip"])
def test_a_copied_input_deleted_during_its_crc_pass(missing, monkeypatch):
    """CONTRACT §4: an input that disappears is ``missing_input`` (not ``storage_error``), also
    once its part copies are placed. Under ``skip`` it can no longer be left out then (its copies
    are in the upload): the job fails ``missing_input`` too (README: where the daemon departs
    from CONTRACT.md). No upload is left and nothing is written."""
    monkeypatch.setattr(pipeline, "BUFFER_LIMIT", 512 * 1024)
    store = FakeStore(media_objects())
    original_copy, original_read = FakeUpload.copy_part, store.read_range
    copying = threading.Event()

    def copy_part(self, number, source, start, end):
        copying.set()
        return original_copy(self, number, source, start, end)

    def read_range(source, start, end, *, chunk_size):
        if source.key == "two.mp4":  # its CRC pass: the object is deleted once copies are placed
            assert copying.wait(10), "no part copy was placed"
            store.objects.pop("two.mp4", None)
        if source.key not in store.objects:
            raise MissingInput(f"s3://{source.bucket}/{source.key} does not exist")
        return original_read(source, start, end, chunk_size=chunk_size)

    monkeypatch.setattr(FakeUpload, "copy_part", copy_part)
    store.read_range = read_range
    plan = make_plan([("a.txt", "a.txt"), ("two.mp4", "two.mp4")], missing=missing)
    with pytest.raises(MissingInput) as info:
        zip_it(store, plan, limits=COPYING)
    assert "two.mp4" in info.value.message
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)
    assert not pipeline_threads()


def test_small_reads_are_gathered_into_read_chunks():
    """A body that arrives in 64 KiB pieces (the lean GET's) is handled per READ_CHUNK: the
    first group only as big as decide() needs, then groups of at least READ_CHUNK, nothing
    lost, reordered or copied."""
    rng = random.Random(5)
    pieces = [rng.randbytes(rng.randrange(1, 64 * 1024)) for _ in range(200)] + [b""]
    groups = list(pipeline._gather(iter(pieces), first=pipeline.SAMPLE_BYTES))
    assert [p for g in groups for p in g] == [p for p in pieces if p]
    assert all(any(p is q for q in pieces) for g in groups for p in g)  # the same objects
    assert pipeline.SAMPLE_BYTES <= sum(map(len, groups[0])) < 2 * pipeline.SAMPLE_BYTES
    for group in groups[1:-1]:
        assert pipeline.READ_CHUNK <= sum(map(len, group)) < pipeline.READ_CHUNK + 64 * 1024
    assert len(groups) <= 2 + sum(map(len, pieces)) // pipeline.READ_CHUNK
