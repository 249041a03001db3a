"""The pipeline: its pure decisions (part sizes, compression choice, levels, timestamps), then
write_zip end to end against an in-memory store (ZIP64, parts, failures, cancel)."""

from __future__ import annotations

import itertools
import random
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
    MiB,
    PipelineLimits,
    choose_method,
    clamp_mtime,
    part_size,
    write_zip,
)
from watcher.plan import Entry, Plan

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


class FakeReader:
    def __init__(self, body: bytes, etag: str, on_chunk=None) -> None:
        self.body, self.etag, self.on_chunk = body, etag, on_chunk
        self.size = len(body)
        self.last_modified = datetime(2024, 5, 6, 7, 8, 10, tzinfo=UTC)

    def iter_chunks(self, n: int):
        for start in range(0, self.size, n):
            if self.on_chunk is not None:
                self.on_chunk()
            yield self.body[start : start + n]

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

    def open_object(self, bucket: str, key: str) -> FakeReader:
        with self.lock:
            self.opens[key] = self.opens.get(key, 0) + 1
        if key not in self.objects:
            raise MissingInput(f"s3://{bucket}/{key} does not exist")
        body = self.objects[key]
        return FakeReader(body, f'"{zlib.crc32(body):08x}"', self.on_chunk)

    def multipart(self, bucket: str, key: str) -> FakeUpload:
        return FakeUpload(self, key)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> str:
        self.outputs[key] = bytes(data)
        return '"etag"'


def make_plan(files, *, compression="auto", missing="fail", level=6) -> Plan:
    entries = tuple(Entry(key, name, None, None) for key, name in files)
    return Plan(entries, (), compression, missing, level)


SMALL_PARTS = PipelineLimits(read_ahead_bytes=4 * MiB, max_parallel_gets=4, minimum_part=MiB)


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
    prefixes = ("get_", "put_", "deflate_")
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


def test_switches_to_zip64_before_an_offset_could_pass_the_zip32_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ZIP32_LIMIT", 3 * MiB)
    objects = {f"{i}.bin": random.Random(i).randbytes(MiB) for i in range(6)}
    store = FakeStore(objects)
    zip_it(store, make_plan([(k, k) for k in objects], compression="store"))
    path = saved(store, tmp_path)
    zf = verify_zip(path, objects)
    zip64 = [b"\x01\x00" in info.extra[:2] for info in zf.infolist()]
    assert zip64[0] is False and zip64[-1] is True, zip64
    assert zip64 == sorted(zip64), "once ZIP64, every later entry stays ZIP64"
    assert b"PK\x06\x06" in path.read_bytes()[-200:]


def test_more_than_65535_entries_get_a_zip64_directory(tmp_path):
    store = FakeStore({"one": b"1", "two": b"22"})
    files = [("one" if i % 2 else "two", f"d{i // 1000}/{i}") for i in range(65_537)]
    progress = zip_it(store, make_plan(files))
    path = saved(store, tmp_path)
    verify_zip(path, {name: store.objects[key] for key, name in files})
    assert b"PK\x06\x06" in path.read_bytes()[-200:]
    assert progress.files_done == 65_537


def test_big_entry_under_explicit_store_gets_a_crc_pass_and_is_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "STORE_BUFFER_LIMIT", 64 * 1024)
    body = b"compressible " * 50_000
    store = FakeStore({"big.txt": body})
    progress = zip_it(store, make_plan([("big.txt", "big.txt")], compression="store"))
    zf = verify_zip(saved(store, tmp_path), {"big.txt": body})
    assert zf.getinfo("big.txt").compress_type == zipfile.ZIP_STORED
    assert store.opens["big.txt"] == 2
    assert progress.entries[0].compressed_size == len(body)


def test_big_incompressible_entry_under_auto_is_deflated_at_no_cost_in_size(tmp_path):
    body = random.Random(4).randbytes(pipeline.STORE_BUFFER_LIMIT + MiB)
    store = FakeStore({"noise.bin": body})
    progress = zip_it(store, make_plan([("noise.bin", "noise.bin")]))
    verify_zip(saved(store, tmp_path), {"noise.bin": body})
    (result,) = progress.entries
    assert result.method == "deflate" and store.opens["noise.bin"] == 1
    assert result.compressed_size <= len(body) * 1.001


@pytest.mark.parametrize("same_etag", [False, True])
def test_an_input_changed_between_its_two_reads_fails_the_job(monkeypatch, same_etag):
    monkeypatch.setattr(pipeline, "STORE_BUFFER_LIMIT", 64 * 1024)
    store = FakeStore({"big.bin": b"x" * 200_000})
    original = store.open_object

    def open_object(bucket, key):
        reader = original(bucket, key)
        if store.opens[key] == 2:
            reader.body = b"y" * 200_000
            reader.etag = reader.etag if same_etag else '"changed"'
        return reader

    store.open_object = open_object
    with pytest.raises(StorageError, match="big.bin changed"):
        zip_it(store, make_plan([("big.bin", "big.bin")], compression="store"))
    assert not store.outputs and all(u.state == "aborted" for u in store.uploads)


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
