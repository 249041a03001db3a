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

Memory: a pool has at most ``in_flight`` chunks submitted and not yet taken back by their
member (each: the raw chunk, a 32 KiB window and its compressed piece), across every member that
uses it. When the pool is full a member waits for its own oldest chunk, or — with none in flight
— compresses the chunk in the calling thread, as a plain compressor would: no member ever waits
for another one, so nothing can deadlock.
"""

from __future__ import annotations

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

MiB = 1024 * 1024
CHUNK = 1 * MiB
WINDOW = 32 * 1024  # deflate's window: the dictionary that primes each chunk

# zip.level -> (library, its own level). Measured on the benchmark's text (bench/deflate.py,
# README's zip.level table): ISA-L for speed, zlib-ng from 5 up for zlib's sizes; 6, the default,
# is zlib-ng 5, ~3 % larger than zlib's level 6 at 2.8-3.0x its speed per core. ISA-L's level 0
# is never used: it grows incompressible data by ~23 %.
LEVELS: dict[int, tuple[str, int]] = {
    0: ("isal", 1),
    1: ("isal", 1),
    2: ("isal", 2),
    3: ("isal", 2),
    4: ("isal", 3),
    5: ("zlib-ng", 4),
    6: ("zlib-ng", 5),
    7: ("zlib-ng", 6),
    8: ("zlib-ng", 7),
    9: ("zlib-ng", 8),  # zlib-ng 9 is larger than 8 on the benchmark text
}
DEFAULT_LEVEL = 6
FAST_LEVEL = 1


def deflate_backend(level: int) -> tuple[Any, int]:
    """The deflate library and its own level for the configuration's 0–9.

    Each falls back to the stdlib ``zlib`` at the same level (at least 1) when its wheel is
    missing.
    """
    name, native = LEVELS[level]
    library = _isal if name == "isal" else _zng
    if library is None:  # pragma: no cover
        return zlib, max(1, level)
    return library, native


def compressobj(level: int, zdict: bytes = b"") -> Any:
    """A raw (headerless) deflate compressor, zlib's interface, primed with ``zdict`` if any."""
    library, native = deflate_backend(level)
    if zdict:
        return library.compressobj(native, library.DEFLATED, -15, 8, 0, zdict)
    return library.compressobj(native, library.DEFLATED, -15)


def crc32(data: bytes, value: int = 0) -> int:
    """CRC-32 as zlib computes it (ISA-L's, several times faster, when installed)."""
    return (_isal or zlib).crc32(data, value)


def _crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC-32 of A + B from those of A and B (ISA-L's or zlib-ng's; both are dependencies)."""
    return (_isal or _zng).crc32_combine(first, second, second_length)  # type: ignore[union-attr]


def deflate_chunk(level: int, data: bytes, zdict: bytes, last: bool) -> tuple[bytes, int]:
    """One chunk's piece of the stream and the chunk's CRC-32 (runs on a pool thread; the
    libraries release the GIL while they compress)."""
    comp = compressobj(level, zdict)
    piece = comp.compress(data) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return piece, crc32(data)


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
        """The first ``n`` buffered bytes, without a copy when one piece is exactly that."""
        if len(self._buffer) == 1 and len(self._buffer[0]) == n:
            block = self._buffer.pop()
        else:
            joined = b"".join(self._buffer)
            block, rest = joined[:n], joined[n:]
            self._buffer = [rest] if rest else []
        self._buffered -= n
        return block

    def _send(self, block: bytes, out: list[bytes]) -> None:
        zdict = self._window
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
