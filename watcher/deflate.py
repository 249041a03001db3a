"""Deflate for ZIP members: the level table, and one member's stream compressed on every core.

Pure compression, no I/O. Two verbs:

* :func:`compressobj` — a raw deflate compressor for ``zip.level`` 0–9 (zlib's meaning: higher
  is smaller), from the library :func:`deflate_backend` picks;
* :class:`ChunkedDeflater` — one member's raw deflate stream, compressed in independent chunks
  on a :class:`DeflatePool` (the pigz technique): chunk *i* is primed with the last 32 KiB of the
  bytes before it as a preset dictionary and ended with a sync flush (byte-aligned, not final),
  the last with ``Z_FINISH``; their concatenation is one valid deflate stream whose size is
  within a few bytes per MiB of the single-threaded one. CRC-32s are computed per chunk and
  combined in order.

Default levels use libdeflate (the ``deflate`` package): the smallest output per CPU second, but
one-shot only, with no preset dictionary and no sync flush. Its chunks are stitched: each
non-final chunk is compressed alone (unprimed: ~1 % larger than primed), then scanned once with
zlib-ng's ``inflate(Z_BLOCK)`` (through ctypes, ~7x faster than libdeflate compresses) to find
where its last block starts and where its last bit is; that block's BFINAL bit is cleared and an
empty stored block (a sync flush: ``00 00 ff ff``) is appended at that bit, so the next chunk
starts on a byte boundary. The scan also checks the piece decodes to the chunk's length. When
libdeflate or the scan is unavailable (import or self-test failed), those levels fall back to
zlib-ng (:data:`ZLIB_NG_FALLBACK`), and a chunk whose scan fails is compressed with zlib-ng.
libdeflate's compressors are kept for reuse through ctypes (:class:`_KeptCompressors`), each with
its output and scan buffers: a chunk is compressed, scanned and stitched in place and copied out
once, instead of a compressor and two buffers made and freed per chunk.

Memory: a pool has at most ``in_flight`` chunks submitted and not yet taken back by their
member (each: the raw chunk, a 32 KiB window and its compressed piece), across every member that
uses it. When the pool is full a member waits for its own oldest chunk, or — with none in flight
— compresses the chunk in the calling thread, as a plain compressor would: no member ever waits
for another one, so nothing can deadlock. The kept libdeflate compressors are at most
``2 × cores + 2`` per level in use, each ~0.35 MiB (level 4) with an output buffer of
:data:`KEPT_OUT` and a 64 KiB scan buffer of which only the pages written become resident: a few
MiB in all, kept for the life of the process.
"""

from __future__ import annotations

import ctypes
import os
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

try:
    from isal import isal_zlib as _isal

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - the wheel exists for every supported platform
    _isal = None
    HAVE_ISAL = False
try:
    from zlib_ng import zlib_ng as _zng
except ImportError:  # pragma: no cover
    _zng = None
try:
    import deflate as _libdeflate  # libdeflate; releases the GIL while it compresses
except ImportError:  # pragma: no cover - a dependency, with wheels for every supported platform
    _libdeflate = None

MiB = 1024 * 1024
CHUNK = 1 * MiB
WINDOW = 32 * 1024  # deflate's window: the dictionary that primes each chunk

# zip.level -> (library, its own level). Measured on the benchmark's text, 1 MiB chunks, one core
# (bench/deflate.py; README's zip.level table): ISA-L for speed (1-3), libdeflate for zlib's sizes
# (4-9). 6, the default, is libdeflate 4: ~2 % larger than zlib's level 6 at ~4x its speed per
# core (stitching included). ISA-L's level 0 is never used: it grows incompressible data by ~23 %.
LEVELS: dict[int, tuple[str, int]] = {
    0: ("isal", 1),
    1: ("isal", 1),
    2: ("isal", 2),
    3: ("isal", 3),
    4: ("libdeflate", 2),
    5: ("libdeflate", 3),
    6: ("libdeflate", 4),
    7: ("libdeflate", 6),
    8: ("libdeflate", 7),
    9: ("libdeflate", 9),  # 10-12 (near-optimal parsing): ~5 % smaller, 2-3x slower again
}
# The libdeflate levels' zlib-ng stand-ins when libdeflate cannot be used (the previous table).
ZLIB_NG_FALLBACK = {4: 4, 5: 4, 6: 5, 7: 6, 8: 7, 9: 8}
DEFAULT_LEVEL = 6
FAST_LEVEL = 1


def deflate_backend(level: int) -> tuple[str, int]:
    """The deflate library (``isal``, ``libdeflate``, ``zlib-ng`` or ``zlib``) and its own level
    for the configuration's 0–9, as this process will run it (fallbacks applied)."""
    name, native = LEVELS[level]
    if name == "libdeflate" and not HAVE_LIBDEFLATE:
        name, native = "zlib-ng", ZLIB_NG_FALLBACK[level]
    if (name == "isal" and _isal is None) or (name == "zlib-ng" and _zng is None):
        return "zlib", max(1, level)  # pragma: no cover - both are dependencies
    return name, native


def _zlib_like(name: str, native: int, zdict: bytes = b"") -> Any:
    library = {"isal": _isal, "zlib-ng": _zng}.get(name, zlib)
    if zdict:
        return library.compressobj(native, library.DEFLATED, -15, 8, 0, zdict)
    return library.compressobj(native, library.DEFLATED, -15)


def compressobj(level: int) -> Any:
    """A raw (headerless) deflate compressor with zlib's ``compress``/``flush`` interface."""
    name, native = deflate_backend(level)
    if name == "libdeflate":
        return _OneThread(level)
    return _zlib_like(name, native)


class _OneThread:
    """zlib's compressor interface over a pool-less :class:`ChunkedDeflater` (libdeflate is
    one-shot): ``compress`` returns whole chunks' pieces, ``flush`` ends the stream."""

    def __init__(self, level: int) -> None:
        self._deflater = ChunkedDeflater(level)

    def compress(self, data: bytes) -> bytes:
        return self._deflater.feed(data)

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        if mode != zlib.Z_FINISH:
            raise ValueError("only Z_FINISH is supported")
        return self._deflater.finish()


def compress_whole(level: int, data: bytes) -> bytes:
    """``data``'s whole raw deflate stream in one call, as :func:`compressobj`'s ``compress`` +
    ``flush`` make it, without a stream object (small members held whole, issue 16)."""
    name, native = deflate_backend(level)
    if name == "libdeflate":
        kept = _KEPT.compress(native, data) if _KEPT is not None else None
        if kept is not None:
            return kept
        return bytes(_libdeflate.deflate_compress(data, native))  # type: ignore[union-attr]
    library = {"isal": _isal, "zlib-ng": _zng}.get(name, zlib)
    return library.compress(data, native, wbits=-15)  # type: ignore[union-attr]


# Output room kept with each compressor: a 1 MiB chunk's bound and the 5 bytes stitching may
# add. A bigger input gets a buffer of its own for that call. Both it and the scan's output are
# plain malloc'd memory: only the pages written become resident (a ctypes array is zeroed).
KEPT_OUT = CHUNK + CHUNK // 64 + 4096
_STITCH_FAILED = object()  # :meth:`_KeptCompressors.chunk`: the scan failed, use zlib-ng
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]


class _Kept:
    """One libdeflate compressor, with the output buffer and scan buffer that go with it."""

    __slots__ = ("compressor", "out", "scan")

    def __init__(self, compressor: int) -> None:
        self.compressor = compressor
        self.out = 0  # addresses, malloc'd at first use and kept as long as the compressor
        self.scan = 0


class _KeptCompressors:
    """libdeflate compressors kept for reuse, each with its output buffer, through ctypes.

    The ``deflate`` package makes and frees a compressor (~350 KiB at level 4) and a bound-sized
    output buffer per call, and the stitched chunks were copied once more: every 1 MiB chunk
    touched ~1.3 MiB of fresh memory (page faults: the kernel's share of a job's CPU) besides
    its input. Here a chunk is compressed into a kept buffer, scanned and stitched there, and
    copied out once. At most ``limit`` are kept per level; a call that finds none free makes
    its own through the package, as before. ctypes releases the GIL during the calls."""

    def __init__(self, path: str, limit: int) -> None:
        lib = ctypes.CDLL(path)
        self._alloc = lib.libdeflate_alloc_compressor
        self._alloc.restype = ctypes.c_void_p
        self._alloc.argtypes = [ctypes.c_int]
        self._bound = lib.libdeflate_deflate_compress_bound
        self._bound.restype = ctypes.c_size_t
        self._bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._compress = lib.libdeflate_deflate_compress
        self._compress.restype = ctypes.c_size_t
        self._compress.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        self.limit = limit
        self._free: dict[int, list[_Kept]] = {}
        self._made: dict[int, int] = {}
        self._lock = threading.Lock()

    def _take(self, level: int) -> _Kept | None:
        with self._lock:
            free = self._free.setdefault(level, [])
            if free:
                return free.pop()
            if self._made.get(level, 0) >= self.limit:
                return None
            compressor = self._alloc(level)
            if not compressor:  # pragma: no cover - out of memory
                return None
            self._made[level] = self._made.get(level, 0) + 1
            return _Kept(compressor)

    def _give(self, level: int, kept: _Kept) -> None:
        with self._lock:
            self._free[level].append(kept)

    def _deflated(self, kept: _Kept, data: bytes, last: bool) -> object:
        """``data``'s stream compressed into the kept buffer (or one of its own for an input
        too big for it), stitched when not ``last``, copied out once."""
        need = self._bound(kept.compressor, len(data)) + 8
        own = 0
        if need <= KEPT_OUT:
            if not kept.out:
                kept.out = _libc.malloc(KEPT_OUT)
                if not kept.out:  # pragma: no cover - out of memory
                    raise MemoryError("libdeflate's output buffer")
            out = kept.out
        else:
            out = own = _libc.malloc(need)
            if not own:  # pragma: no cover - out of memory
                raise MemoryError("libdeflate's output buffer")
        try:
            size = self._compress(kept.compressor, data, len(data), out, need - 8)
            if not size:  # pragma: no cover - the bound always fits
                raise RuntimeError("libdeflate: the output did not fit its bound")
            if not last:
                if not kept.scan:
                    kept.scan = _libc.malloc(SCAN_OUT)
                    if not kept.scan:  # pragma: no cover - out of memory
                        raise MemoryError("the scan's output buffer")
                stitched = _unfinal_at(out, size, len(data), kept.scan)
                if stitched is None:
                    return _STITCH_FAILED
                size = stitched
            return ctypes.string_at(out, size)
        finally:
            if own:
                _libc.free(own)

    def compress(self, level: int, data: bytes) -> bytes | None:
        """``data`` deflated, or None when no compressor is free and no more may be made."""
        piece = self.chunk(level, data, True)
        assert piece is None or isinstance(piece, bytes)
        return piece

    def chunk(self, level: int, data: bytes, last: bool) -> object:
        """One chunk's piece of a member's stream (:func:`deflate_chunk`): ``bytes``; None when
        no compressor is free; :data:`_STITCH_FAILED` when a non-last piece could not be
        stitched (then zlib-ng compresses that chunk)."""
        kept = self._take(level)
        if kept is None:
            return None
        try:
            return self._deflated(kept, bytes(data), last)
        finally:
            self._give(level, kept)


def _kept_compressors() -> _KeptCompressors | None:
    """The compressor pool, if libdeflate's library answers through ctypes exactly as the
    package does (else None: one compressor per call)."""
    if _libdeflate is None:
        return None
    try:
        kept = _KeptCompressors(_libdeflate._deflate.__file__, 2 * usable_cores() + 2)
        sample = b"".join(b"line %d of a small text member\n" % i for i in range(300))
        for level in (4, 6):
            piece = kept.compress(level, sample)
            if piece != bytes(_libdeflate.deflate_compress(sample, level)):
                return None
            if zlib.decompress(piece, -15) != sample:
                return None
            first = kept.chunk(level, sample, False)
            if not isinstance(first, bytes):
                return None
            if zlib.decompress(first + piece, -15) != sample + sample:
                return None
        return kept
    except (OSError, AttributeError, zlib.error):  # pragma: no cover - no such library
        return None


def crc32(data: bytes, value: int = 0) -> int:
    """CRC-32 as zlib computes it (ISA-L's, several times faster, when installed)."""
    return (_isal or zlib).crc32(data, value)


def _crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC-32 of A + B from those of A and B (ISA-L's or zlib-ng's; both are dependencies)."""
    return (_isal or _zng).crc32_combine(first, second, second_length)  # type: ignore[union-attr]


def deflate_chunk(level: int, data: bytes, zdict: bytes, last: bool) -> tuple[bytes, int]:
    """One chunk's piece of the stream and the chunk's CRC-32 (runs on a pool thread; every
    library here releases the GIL while it compresses, and ctypes while it scans).

    ``zdict`` (the 32 KiB before the chunk) primes zlib-ng and ISA-L; libdeflate cannot use it.
    A non-last piece ends on a byte boundary with a sync flush, the last one ends the stream.
    """
    name, native = deflate_backend(level)
    if name == "libdeflate":
        kept = _KEPT.chunk(native, data, last) if _KEPT is not None else None
        if isinstance(kept, bytes):
            return kept, crc32(data)
        if kept is None:  # no kept compressor free: one of the package's, as before
            piece = _libdeflate.deflate_compress(data, native)  # type: ignore[union-attr]
            if last or _unfinal(piece, len(data)):
                return bytes(piece), crc32(data)
        name, native = "zlib-ng", ZLIB_NG_FALLBACK[level]  # the scan failed
    comp = _zlib_like(name, native, zdict)
    piece = comp.compress(data) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return piece, crc32(data)


# -- stitching libdeflate's one-shot streams: zlib-ng's inflate(Z_BLOCK) through ctypes --------


class _ZStream(ctypes.Structure):
    """zlib-ng's ``zng_stream`` (zlib-ng.h, native API)."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint32),
        ("total_in", ctypes.c_size_t),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint32),
        ("total_out", ctypes.c_size_t),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_uint32),
        ("reserved", ctypes.c_ulong),
    ]


Z_OK, Z_STREAM_END, Z_BLOCK = 0, 1, 5
SCAN_OUT = 64 * 1024  # the scan's output buffer, kept with a compressor (inflate has a window)


def _load_inflate() -> Any:
    """zlib-ng's inflate from the ``zlib_ng`` extension (it exports the native API), or None."""
    try:
        lib = ctypes.CDLL(_zng.__file__)  # type: ignore[union-attr]
        ptr = ctypes.POINTER(_ZStream)
        for fn, args in (
            ("zng_inflateInit2", [ptr, ctypes.c_int32]),
            ("zng_inflate", [ptr, ctypes.c_int32]),
            ("zng_inflateEnd", [ptr]),
        ):
            getattr(lib, fn).argtypes = args
            getattr(lib, fn).restype = ctypes.c_int32
        return lib
    except (AttributeError, OSError, TypeError):  # pragma: no cover - no such symbols
        return None


_inflate = _load_inflate() if _libdeflate is not None and _zng is not None else None


def _scan(piece: bytes | bytearray, size: int) -> tuple[int, int] | None:
    """(bit where the last block starts, bit after its end-of-block code) of one complete raw
    deflate stream that decodes to ``size`` bytes; None if it is not one."""
    source = ctypes.create_string_buffer(bytes(piece), len(piece))
    out = ctypes.create_string_buffer(min(SCAN_OUT, max(1, size)))
    return _scan_at(ctypes.addressof(source), len(piece), size, ctypes.addressof(out), len(out))


def _scan_at(
    source: int, length: int, size: int, out: int, room: int = SCAN_OUT
) -> tuple[int, int] | None:
    """:func:`_scan` of the ``length`` bytes at address ``source``, decoding into the ``room``
    bytes at ``out`` (thrown away)."""
    stream = _ZStream()
    if _inflate is None or _inflate.zng_inflateInit2(ctypes.byref(stream), -15) != Z_OK:
        return None
    try:
        stream.next_in, stream.avail_in = source, length
        last_start = 0
        while True:
            if stream.avail_out == 0:
                stream.next_out, stream.avail_out = out, room
            code = _inflate.zng_inflate(ctypes.byref(stream), Z_BLOCK)
            if code != Z_OK:
                return None  # an error, or the end without the boundary stop below
            # data_type: bits left unused in the input, +64 once the last block is decoded,
            # +128 when stopped at a block boundary (zlib.h, inflate() with Z_BLOCK)
            if stream.data_type & 128:
                position = stream.total_in * 8 - (stream.data_type & 63)
                if stream.data_type & 64:
                    break
                last_start = position
            elif stream.avail_out != 0:
                return None  # stopped neither at a boundary nor for room: truncated
        if stream.total_out != size or stream.avail_in != 0 or length != (position + 7) // 8:
            return None
        return last_start, position
    finally:
        _inflate.zng_inflateEnd(ctypes.byref(stream))


def _unfinal(piece: bytearray, size: int) -> bool:
    """Turn libdeflate's stream of ``size`` bytes into a non-final piece ending with a sync
    flush, in place; False (piece unchanged) if the scan fails."""
    found = _scan(piece, size)
    if found is None:
        return False
    last_start, end = found
    byte, bit = divmod(last_start, 8)
    if not piece[byte] >> bit & 1:
        return False  # pragma: no cover - not a BFINAL bit: never trust the scan blindly
    piece[byte] &= ~(1 << bit) & 0xFF
    piece += _sync_flush(end)
    return True


def _unfinal_at(out: int, length: int, size: int, scan: int) -> int | None:
    """:func:`_unfinal` of the stream in the ``length`` bytes at address ``out`` (with at least
    5 bytes of room after them), scanned into the :data:`SCAN_OUT` bytes at ``scan``: its new
    length, or None (unchanged)."""
    found = _scan_at(out, length, size, scan)
    if found is None:
        return None
    last_start, end = found
    byte, bit = divmod(last_start, 8)
    header = ctypes.c_ubyte.from_address(out + byte)
    if not header.value >> bit & 1:
        return None  # pragma: no cover - not a BFINAL bit: never trust the scan blindly
    header.value &= ~(1 << bit) & 0xFF
    flush = _sync_flush(end)
    ctypes.memmove(out + length, flush, len(flush))
    return length + len(flush)


def _sync_flush(end: int) -> bytes:
    """An empty stored block at bit ``end``: 3 header bits (all 0) in the padding left in the
    last byte (zeros) if there are 3, else in one more byte; then LEN 0000 and NLEN ffff."""
    return b"\x00\x00\xff\xff" if 1 <= end % 8 <= 5 else b"\x00\x00\x00\xff\xff"


def _self_test() -> bool:
    """libdeflate stitched to itself decodes back (the ctypes layout matches the library)."""
    if _inflate is None:
        return False
    try:
        data = b"".join(b"%d stitched chunk line %d\n" % (n, n * n) for n in range(6000))
        first = _libdeflate.deflate_compress(data, 4)  # type: ignore[union-attr]
        if not _unfinal(first, len(data)):
            return False
        second = _libdeflate.deflate_compress(data[::-1], 4)  # type: ignore[union-attr]
        return zlib.decompress(bytes(first + second), -15) == data + data[::-1]
    except Exception:  # pragma: no cover - whatever breaks, use zlib-ng instead
        return False


HAVE_LIBDEFLATE = _self_test()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which container limits set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class DeflatePool:
    """Threads that compress chunks, shared by the members of a job, with a cap on the chunks
    alive in it (submitted and not yet taken back by their member)."""

    def __init__(self, workers: int | None = None, in_flight: int | None = None) -> None:
        self.workers = max(1, workers or usable_cores())
        self.in_flight = max(1, in_flight or 2 * self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="deflate")
        self._lock = threading.Lock()
        self.alive = 0
        self.peak = 0  # most chunks alive at once, for tests and the benchmark

    def try_acquire(self) -> bool:
        with self._lock:
            if self.alive >= self.in_flight:
                return False
            self.alive += 1
            self.peak = max(self.peak, self.alive)
            return True

    def release(self) -> None:
        with self._lock:
            self.alive -= 1

    def submit(self, *args: Any) -> Future:
        return self._executor.submit(deflate_chunk, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DeflatePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChunkedDeflater:
    """One member's raw deflate stream, fed in order and handed back in order.

    ``feed(data)`` returns the compressed bytes ready so far (often ``b""``), ``finish()`` the
    rest, ending the stream; ``size``, ``compressed`` and ``crc`` describe the member once
    finished. Call ``close()`` when abandoning a member (it is a no-op after ``finish()``). An
    error in a pool thread is raised by the ``feed``/``finish`` that takes its chunk back.
    Without a pool every chunk is compressed in the calling thread.
    """

    def __init__(self, level: int, pool: DeflatePool | None = None, chunk: int = CHUNK) -> None:
        if level not in LEVELS:
            raise ValueError(f"deflate level must be 0-9, not {level!r}")
        self.level = level
        self.pool = pool
        self.chunk = max(1, chunk)
        self.size = 0
        self.compressed = 0
        self.crc = 0
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._window = b""
        # libdeflate cannot be primed: no window is kept for it (a scan that fails gives a
        # zlib-ng chunk without one: valid, ~1 % larger)
        self._primed = deflate_backend(level)[0] != "libdeflate"
        self._pending: deque[tuple[Future, int]] = deque()  # (future, raw length), in order
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            raise ValueError("feed() after finish() or close()")
        if not data:
            return b""
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        out: list[bytes] = []
        while self._buffered >= self.chunk:
            self._send(self._take(self.chunk), out)
        while self._pending and self._pending[0][0].done():
            out.append(self._take_back())
        return b"".join(out)

    def finish(self) -> bytes:
        """The rest of the stream: the last chunk is compressed here while the pool finishes."""
        if self._done:
            raise ValueError("finish() called twice")
        self._done = True
        last = self._take(self._buffered)
        piece, crc = deflate_chunk(self.level, last, self._window, True)
        out = [self._take_back() for _ in range(len(self._pending))]
        out.append(self._account(piece, crc, len(last)))
        self._window = b""
        return b"".join(out)

    def close(self) -> None:
        """Drop the work still in flight (after an error elsewhere); releases its pool slots."""
        self._done = True
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.cancel():
                future.exception()  # running: a chunk's compression is short
            assert self.pool is not None
            self.pool.release()
        self._buffer, self._buffered, self._window = [], 0, b""

    # -- internals ----------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes: without a copy when one piece is exactly that, else
        joined once (only a piece that straddles the end is cut)."""
        buffer = self._buffer
        if len(buffer[0]) == n if buffer else not n:
            block = buffer.pop(0) if buffer else b""
        else:
            count = total = 0
            while total < n:
                total += len(buffer[count])
                count += 1
            parts, rest = buffer[:count], buffer[count:]
            over = total - n
            if over:
                last = memoryview(parts[-1])
                parts[-1], tail = last[: len(last) - over], bytes(last[len(last) - over :])
                rest.insert(0, tail)
            block = b"".join(parts)
            self._buffer = rest
        self._buffered -= n
        return block

    def _send(self, block: bytes, out: list[bytes]) -> None:
        zdict = self._window
        if self._primed:
            self._window = (zdict + block)[-WINDOW:] if len(block) < WINDOW else block[-WINDOW:]
        while self.pool is not None:
            if self.pool.try_acquire():
                future = self.pool.submit(self.level, block, zdict, False)
                self._pending.append((future, len(block)))
                return
            if not self._pending:
                break
            out.append(self._take_back())  # the pool is full: wait for our own oldest chunk
        piece, crc = deflate_chunk(self.level, block, zdict, False)
        out.append(self._account(piece, crc, len(block)))

    def _take_back(self) -> bytes:
        future, length = self._pending.popleft()
        assert self.pool is not None
        try:
            piece, crc = future.result()
        finally:
            self.pool.release()
        return self._account(piece, crc, length)

    def _account(self, piece: bytes, crc: int, length: int) -> bytes:
        self.crc = _crc32_combine(self.crc, crc, length) if length else self.crc
        self.compressed += len(piece)
        return piece


_KEPT = _kept_compressors() if HAVE_LIBDEFLATE else None  # compress_whole and deflate_chunk
