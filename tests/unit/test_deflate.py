"""watcher.deflate: the level table, and chunk-parallel deflate (one valid stream, CRC, order,
bounded chunks in flight, errors, no deadlock between members sharing a pool)."""

from __future__ import annotations

import random
import threading
import time
import zlib

import deflate as _libdeflate
import pytest

from bench.run import text_bytes
from watcher import deflate
from watcher.deflate import (
    LEVELS,
    WINDOW,
    ChunkedDeflater,
    DeflatePool,
    compressobj,
    deflate_backend,
)

KiB = 1024
SMALL_CHUNK = 64 * KiB


def one_shot(level: int, data: bytes) -> bytes:
    comp = compressobj(level)
    return comp.compress(data) + comp.flush()


def run(data: bytes, *, level: int = 6, pool=None, chunk=SMALL_CHUNK, pieces=None) -> tuple:
    """Feed ``data`` in pieces of the given sizes (cycled); the stream and the deflater."""
    deflater = ChunkedDeflater(level, pool, chunk=chunk)
    out, pos, sizes = [], 0, pieces or [len(data) or 1]
    for n in iter(lambda: sizes[len(out) % len(sizes)], None):
        if pos >= len(data):
            break
        out.append(deflater.feed(data[pos : pos + n]))
        pos += n
    out.append(deflater.finish())
    return b"".join(out), deflater


def check(data: bytes, stream: bytes, deflater: ChunkedDeflater) -> None:
    assert zlib.decompress(stream, -15) == data
    assert deflater.crc == zlib.crc32(data)
    assert deflater.size == len(data)
    assert deflater.compressed == len(stream)


SIZES = [
    0,
    1,
    WINDOW - 1,
    WINDOW,
    WINDOW + 1,
    SMALL_CHUNK - 1,
    SMALL_CHUNK,
    SMALL_CHUNK + 1,
    2 * SMALL_CHUNK,
    5 * SMALL_CHUNK + 7,
]


@pytest.fixture
def pool():
    with DeflatePool(workers=3, in_flight=4) as shared:
        yield shared
        assert shared.alive == 0  # every chunk was taken back


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "random"])
def test_round_trip_at_chunk_and_window_boundaries(size, kind, pool):
    data = text_bytes(size, size) if kind == "text" else random.Random(size).randbytes(size)
    for pieces in ([size or 1], [1000, 1, 65536, 7], [SMALL_CHUNK]):
        stream, deflater = run(data, pool=pool, pieces=pieces)
        check(data, stream, deflater)
    stream, deflater = run(data, pool=None)  # no pool: every chunk in the calling thread
    check(data, stream, deflater)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_round_trips_chunked(level, pool):
    data = text_bytes(level, 3 * SMALL_CHUNK + 100) + random.Random(level).randbytes(50_000)
    stream, deflater = run(data, level=level, pool=pool, pieces=[40_000])
    check(data, stream, deflater)


def test_default_megabyte_chunks_round_trip(pool):
    data = text_bytes(7, 3 * deflate.CHUNK + 12345)
    deflater = ChunkedDeflater(6, pool)
    stream = b"".join(deflater.feed(data[i : i + 999_999]) for i in range(0, len(data), 999_999))
    stream += deflater.finish()
    check(data, stream, deflater)


def test_primed_chunks_cost_almost_nothing_over_one_stream(pool):
    """zlib-ng and ISA-L chunks are primed with the previous 32 KiB: unprimed 64 KiB chunks would
    cost ~3 %."""
    level = 3  # ISA-L 3
    data = text_bytes(3, 2 * 1024 * KiB)
    whole = len(one_shot(level, data))
    stream, _ = run(data, level=level, pool=pool)
    unprimed = sum(
        len(one_shot(level, data[i : i + SMALL_CHUNK])) for i in range(0, len(data), SMALL_CHUNK)
    )
    assert len(stream) <= whole * 1.005
    assert unprimed > whole * 1.01  # the check above can tell priming from no priming


def test_libdeflate_megabyte_chunks_cost_little_over_one_shot_of_the_whole(pool):
    """libdeflate cannot be primed: at the default 1 MiB chunks that costs ~1 %, not more."""
    assert deflate.HAVE_LIBDEFLATE
    data = text_bytes(4, 4 * deflate.CHUNK)
    name, native = deflate.deflate_backend(deflate.DEFAULT_LEVEL)
    assert name == "libdeflate"
    whole = len(_libdeflate.deflate_compress(data, native))
    deflater = ChunkedDeflater(deflate.DEFAULT_LEVEL, pool)
    stream = deflater.feed(data) + deflater.finish()
    check(data, stream, deflater)
    assert len(stream) <= whole * 1.02


def test_a_stitched_libdeflate_piece_is_not_final_and_ends_with_a_sync_flush():
    data = text_bytes(8, 300 * KiB)
    piece, crc = deflate.deflate_chunk(deflate.DEFAULT_LEVEL, data, b"", False)
    assert crc == zlib.crc32(data)
    assert piece.endswith(b"\x00\x00\xff\xff")
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(piece) == data
    assert not inflater.eof  # BFINAL was cleared: a reader goes on to the next piece
    last, _ = deflate.deflate_chunk(deflate.DEFAULT_LEVEL, b"tail", b"", True)
    assert inflater.decompress(last) == b"tail" and inflater.eof


def test_stitching_is_right_whatever_bit_a_piece_ends_on():
    """The empty stored block goes in the last byte's padding, or in one more byte: the 8 bit
    positions a piece can end on all occur here, and every stream decodes."""
    seen = set()
    real = deflate._scan_at

    def spy(source, length, size, out, room=deflate.SCAN_OUT):
        found = real(source, length, size, out, room)
        seen.add(found[1] % 8)
        return found

    deflate._scan_at, saved = spy, deflate._scan_at
    try:
        rng = random.Random(9)
        for n in range(60):
            parts = [text_bytes(n * 10 + k, rng.randrange(1, 40 * KiB)) for k in range(3)]
            if n % 3 == 0:
                parts[1] = rng.randbytes(len(parts[1]))  # stored blocks too
            pieces = [deflate.deflate_chunk(4 + n % 6, p, b"", False)[0] for p in parts[:2]]
            pieces.append(deflate.deflate_chunk(4 + n % 6, parts[2], b"", True)[0])
            assert zlib.decompress(b"".join(pieces), -15) == b"".join(parts)
    finally:
        deflate._scan_at = saved
    assert seen == set(range(8))


def test_chunks_use_the_kept_compressors_and_match_the_package(monkeypatch, pool):
    """A big member's chunks are compressed by the kept libdeflate compressors (no compressor
    and output buffer made per chunk), byte for byte as the package's stitched pieces."""
    kept = deflate._KEPT
    assert kept is not None
    data = text_bytes(21, 5 * deflate.CHUNK + 777)
    chunks = [data[i : i + deflate.CHUNK] for i in range(0, len(data), deflate.CHUNK)]
    _, native = deflate_backend(deflate.DEFAULT_LEVEL)
    expected = []
    for n, chunk in enumerate(chunks):
        piece = _libdeflate.deflate_compress(chunk, native)
        assert n == len(chunks) - 1 or deflate._unfinal(piece, len(chunk))
        expected.append(bytes(piece))
    made = []
    package = _libdeflate.deflate_compress
    monkeypatch.setattr(
        deflate._libdeflate, "deflate_compress", lambda *a: made.append(1) or package(*a)
    )
    pieces = [
        deflate.deflate_chunk(deflate.DEFAULT_LEVEL, c, b"", n == len(chunks) - 1)[0]
        for n, c in enumerate(chunks)
    ]
    assert pieces == expected
    deflater = ChunkedDeflater(deflate.DEFAULT_LEVEL, pool)
    stream = deflater.feed(data) + deflater.finish()
    check(data, stream, deflater)
    assert stream == b"".join(expected)
    assert made == []  # every chunk went through a kept compressor
    assert kept._made[native] <= kept.limit
    assert len(kept._free[native]) == kept._made[native]  # all given back


def test_a_chunk_bigger_than_the_kept_buffer_and_no_free_compressor_still_work(monkeypatch):
    data = text_bytes(22, deflate.KEPT_OUT + 5000)
    piece, crc = deflate.deflate_chunk(deflate.DEFAULT_LEVEL, data, b"", False)
    last, _ = deflate.deflate_chunk(deflate.DEFAULT_LEVEL, b"end", b"", True)
    assert crc == zlib.crc32(data)
    assert zlib.decompress(piece + last, -15) == data + b"end"
    monkeypatch.setattr(deflate._KEPT, "limit", 0)
    monkeypatch.setattr(deflate._KEPT, "_made", {})
    monkeypatch.setattr(deflate._KEPT, "_free", {})
    again, _ = deflate.deflate_chunk(deflate.DEFAULT_LEVEL, data, b"", False)
    assert again == piece  # the package's compressor, the same bytes


def test_a_failed_scan_falls_back_to_zlib_ng_for_that_chunk(monkeypatch):
    monkeypatch.setattr(deflate, "_scan_at", lambda *args: None)
    data = text_bytes(12, 3 * SMALL_CHUNK + 5)
    stream, deflater = run(data, pool=None)
    check(data, stream, deflater)
    bad = bytearray(_libdeflate.deflate_compress(data, 4))
    monkeypatch.undo()
    assert deflate._unfinal(bytearray(bad[:-100]), len(data)) is False  # truncated
    assert deflate._unfinal(bytearray(bad), len(data) + 1) is False  # wrong length
    bad[len(bad) // 2] ^= 0x5A
    assert deflate._scan(bad, len(data)) is None  # corrupt


def test_pieces_come_back_in_order_whatever_order_the_pool_finishes(monkeypatch):
    real = deflate.deflate_chunk
    rng = random.Random(5)

    def slow(level, data, zdict, last):
        time.sleep(rng.random() * 0.01)
        return real(level, data, zdict, last)

    monkeypatch.setattr(deflate, "deflate_chunk", slow)
    data = text_bytes(11, 40 * 4 * KiB) + random.Random(1).randbytes(30 * 4 * KiB)
    with DeflatePool(workers=4, in_flight=8) as shared:
        stream, deflater = run(data, pool=shared, chunk=4 * KiB, pieces=[3000, 9000])
        assert shared.peak > 1  # chunks really were compressed side by side
    check(data, stream, deflater)


def test_chunks_in_flight_never_exceed_the_pool_cap_across_members(monkeypatch):
    """8 members share a pool of 2 chunks: all finish (nobody waits for another member), the
    pool never holds more than 2, and work still completes while the pool is blocked."""
    alive, most = [0], [0]
    lock = threading.Lock()
    real = deflate.deflate_chunk

    def counted(level, data, zdict, last):
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        try:
            time.sleep(0.002)
            return real(level, data, zdict, last)
        finally:
            with lock:
                alive[0] -= 1

    monkeypatch.setattr(deflate, "deflate_chunk", counted)
    inputs = [text_bytes(n, 20 * 8 * KiB + n) for n in range(8)]
    results: dict[int, tuple] = {}
    with DeflatePool(workers=2, in_flight=2) as shared:

        def member(n):
            results[n] = run(inputs[n], pool=shared, chunk=8 * KiB, pieces=[5000])

        threads = [threading.Thread(target=member, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert shared.peak <= 2
        assert shared.alive == 0
    # at most 2 in the pool, plus at most one per member compressing in its own thread
    assert most[0] <= 2 + 8
    for n, data in enumerate(inputs):
        check(data, *results[n])


def test_a_member_compresses_in_its_own_thread_when_the_pool_is_full(monkeypatch):
    gate = threading.Event()
    real = deflate.deflate_chunk

    def held(level, data, zdict, last):
        if data.startswith(b"HOLD"):
            assert gate.wait(60)
        return real(level, data, zdict, last)

    monkeypatch.setattr(deflate, "deflate_chunk", held)
    with DeflatePool(workers=1, in_flight=1) as shared:
        blocker = ChunkedDeflater(6, shared, chunk=4 * KiB)
        blocker.feed(b"HOLD" + bytes(4 * KiB))  # takes the pool's only slot, and its thread
        data = text_bytes(2, 50 * 4 * KiB)
        stream, deflater = run(data, pool=shared, chunk=4 * KiB, pieces=[4 * KiB])
        check(data, stream, deflater)  # finished while the pool stayed blocked
        gate.set()
        tail = blocker.finish()
        assert zlib.decompress(tail, -15) == b"HOLD" + bytes(4 * KiB)
        assert shared.alive == 0


def test_a_pool_error_is_raised_to_the_member_and_close_frees_its_chunks(monkeypatch):
    real = deflate.deflate_chunk
    gate = threading.Event()

    def failing(level, data, zdict, last):
        if data.startswith(b"BAD"):
            raise MemoryError("boom")
        if data.startswith(b"SLOW"):
            assert gate.wait(60)
        return real(level, data, zdict, last)

    monkeypatch.setattr(deflate, "deflate_chunk", failing)
    chunk = 4 * KiB
    with DeflatePool(workers=2, in_flight=4) as shared:
        deflater = ChunkedDeflater(6, shared, chunk=chunk)
        with pytest.raises(MemoryError, match="boom"):
            deflater.feed(b"BAD".ljust(chunk, b"x"))
            for _ in range(20):
                deflater.feed(bytes(chunk))
            deflater.finish()
        deflater.close()
        assert shared.alive == 0
        # close() also gives back chunks still queued or running
        other = ChunkedDeflater(6, shared, chunk=chunk)
        for _ in range(3):
            other.feed(b"SLOW".ljust(chunk, b"y"))
        assert shared.alive == 3
        gate.set()
        other.close()
        assert shared.alive == 0
        with pytest.raises(ValueError):
            other.feed(b"more")


def test_finish_twice_and_bad_level_are_refused():
    deflater = ChunkedDeflater(6)
    assert zlib.decompress(deflater.finish(), -15) == b""
    with pytest.raises(ValueError):
        deflater.finish()
    with pytest.raises(ValueError):
        ChunkedDeflater(10)


# -- the level table, on the benchmark's text (sizes are deterministic; speed is bench's job) --


def test_higher_levels_are_never_larger_on_the_benchmark_text():
    data = text_bytes(1000, 2 * 1024 * KiB)
    sizes = [len(one_shot(level, data)) for level in sorted(LEVELS)]
    assert sizes == sorted(sizes, reverse=True)


def test_default_level_is_within_5_percent_of_zlib_6_and_the_fast_level_is_isal():
    data = text_bytes(1000, 4 * 1024 * KiB)
    reference = zlib.compressobj(6, zlib.DEFLATED, -15)
    zlib6 = len(reference.compress(data) + reference.flush())
    assert len(one_shot(deflate.DEFAULT_LEVEL, data)) <= 1.05 * zlib6
    assert deflate_backend(deflate.FAST_LEVEL) == ("isal", 1)


def test_the_level_table_isal_for_speed_libdeflate_for_size_never_isal_level_0():
    assert deflate.HAVE_LIBDEFLATE  # the self-test passed: libdeflate and the scan both work
    assert [deflate_backend(n) for n in range(4)] == [("isal", n) for n in (1, 1, 2, 3)]
    assert [deflate_backend(n) for n in range(4, 10)] == [
        ("libdeflate", n) for n in (2, 3, 4, 6, 7, 9)
    ]


def test_without_libdeflate_its_levels_fall_back_to_zlib_ng(monkeypatch):
    monkeypatch.setattr(deflate, "HAVE_LIBDEFLATE", False)
    assert [deflate_backend(n) for n in range(4, 10)] == [
        ("zlib-ng", n) for n in (4, 4, 5, 6, 7, 8)
    ]
    data = text_bytes(13, 2 * SMALL_CHUNK + 3)
    stream, deflater = run(data, pool=None)
    check(data, stream, deflater)
    assert len(one_shot(6, data)) > 0
