"""Plan entries → ZIP members → multipart parts, every stage overlapped and memory bounded.

The archive's layout is ours (:mod:`watcher.zipframe`), so each member is written the way its
bytes allow, in archive order, by the calling thread (:func:`write_zip`):

* **small** members (at most :data:`BUFFER_LIMIT` of input) arrive whole from the read-ahead —
  stored as read, or already deflated by the fetch thread — and get a header with their CRC-32
  and sizes: no data descriptor;
* **large deflated** members are streamed: header, the pieces as the fetch thread compresses
  them, then a data descriptor (ZIP64 only for a member that may reach 4 GiB). Their bytes come
  by parallel ranged GETs pinned to the version the first GET answered with (one such member at
  a time; the others keep their single GET);
* **large stored** members are never read by the read-ahead. Their version is pinned (by the
  read-ahead's GET that found their size, else one HEAD), their CRC-32 comes from parallel
  ranged GETs combined with ``crc32_combine`` (or from the CRC cache), worked out ahead of the
  writer, and their bytes are placed **server-side** with ``UploadPartCopy`` when they are at
  least ``copy_min_bytes`` — the copies start once the member is pinned (and those of the large
  stored members right after it, as they get pinned); only a few MiB at its head are uploaded,
  with its header, in a part held back until the CRC-32 is in, to keep every part above the
  store's minimum — or streamed by a pinned GET otherwise. A store that refuses
  ``UploadPartCopy`` gets streaming for the rest of the job; the archive's bytes are the same.

Threads: fetchers (``small_in_flight``, at least ``max_parallel_gets``) GET upcoming entries in
archive order. An object of at most :data:`SMALL_BYTES` (or of unknown size) takes one lean GET
(:meth:`Store.get_small <watcher.store.Store.get_small>`): its body is read whole into budget
reserved first (2 × size + 4 KiB), CRC'd and compressed by that thread, and handed over as one
piece; at most ``max_parallel_gets`` fetchers stream bigger members at once, computing CRC-32
and handing deflated entries in 1 MiB chunks to a :class:`~watcher.deflate.DeflatePool` (one
thread per core: the one compression seam, so one big member uses every core), with all queued
bytes under ``read_ahead_bytes`` (the entry being written may always queue
:data:`HEAD_ALLOWANCE` of its own, so the window cannot deadlock); CRC readers
(:data:`CRC_PARALLEL`) read large stored members once, the earliest member's ranges first;
uploaders (``upload_concurrency``, a semaphore on part buffers) send parts, and copy requests
queue beside them, :data:`COPY_CONCURRENCY` at once. Peak memory is about ``read_ahead_bytes + 2 ×
HEAD_ALLOWANCE + (upload_concurrency + 1) × part size``, plus the deflate pool's ``2 × cores``
chunks in flight (each ≤ 2 MiB + 32 KiB) and the ranged spans of one large deflated member
(``RANGED_PARALLEL × RANGED_SPAN``), whatever the archive's size; small GETs in flight add
nothing to it (their bodies are in the budget) but their threads and kept connections (about 0.1
MiB each).
An archive that fits in its first part is sent with one PutObject; anything larger goes through
a multipart upload that is aborted on any failure.
"""

from __future__ import annotations

import _thread
import collections
import hashlib
import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from isal import isal_zlib

from watcher.deflate import ChunkedDeflater, DeflatePool, compress_whole, crc32
from watcher.deflate import compressobj as _compressobj
from watcher.errors import InternalError, JobCancelled, JobError, MissingInput, StorageError
from watcher.markers import EntryResult, Progress
from watcher.store import CopyRefused, Pinned
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

if TYPE_CHECKING:
    from watcher.plan import Entry, Plan
    from watcher.store import MultipartUpload, ObjectReader, Store

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART = 8 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
# The smallest part every S3-compatible store takes (S3: 5 MiB; B2: 5,000,000 bytes): what the
# uploaded part before a copied member must reach.
STORE_MIN_PART = 5 * MiB
READ_CHUNK = 1 * MiB
HEAD_ALLOWANCE = 8 * MiB
# A small member is held whole before its header is written: no more than the head's allowance,
# so holding it never adds to the memory bound. At least 8 MiB (CONTRACT §10).
BUFFER_LIMIT = HEAD_ALLOWANCE
# Objects up to this size are read whole by one lean GET and compressed by the thread that
# fetched them (issue 16); bigger ones stream in READ_CHUNK pieces from the same answer.
SMALL_BYTES = READ_CHUNK
# Small-object GETs in flight by default: a remote store answers each after tens of ms, so the
# count, not the cores, decides the rate. At 50 ms on 2 cores, 64 was as fast as 128 for 15 %
# less CPU per object, 256 slower, 32 latency-bound (bench/results/many_small.md).
SMALL_IN_FLIGHT = 64
CRC_RANGE = 32 * MiB
CRC_PARALLEL = 8
CRC_CHUNK = 256 * 1024
COPY_PIECE = 64 * MiB
COPY_CONCURRENCY = 4
# A large deflated member is read by parallel ranged GETs of RANGED_SPAN bytes, RANGED_PARALLEL
# at once (held whole until compressed), by at most RANGED_STREAMS members at a time; the others
# keep their one GET. Bytes held: RANGED_STREAMS × RANGED_PARALLEL × RANGED_SPAN (8 MiB).
RANGED_SPAN = 2 * MiB
RANGED_PARALLEL = 4
RANGED_STREAMS = 1
RANGED_MIN = BUFFER_LIMIT  # larger than this: a streamed (deflated) member
SAMPLE_BYTES = 64 * 1024
ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)
# Extended (UNIX) timestamps are signed 32-bit seconds.
UNIX32_END = datetime(2038, 1, 19, 3, 14, 6, tzinfo=UTC)

STORED_EXTENSIONS = frozenset(
    """
    jpg jpeg png gif webp heic heif avif jxl tif tiff
    mp4 m4v mov mkv webm avi wmv flv 3gp mpg mpeg
    mp3 m4a aac ogg oga opus flac wma
    zip gz tgz bz2 xz zst lz4 lzma 7z rar br cab
    jar war apk ipa whl deb rpm dmg
    docx xlsx pptx odt ods odp epub
    woff woff2 pdf
    """.split()
)


def part_size(known_bytes: int, part_number: int, minimum: int = MIN_PART) -> int:
    """Size of part ``part_number`` (1-based) for an archive planned at ``known_bytes``.

    At least ``minimum`` (8 MiB; B2's floor is 5 MB) and big enough that 9,000 parts carry the
    planned size. Entries whose size is unknown when planning (plain keys: no HEAD is spent on
    them) can make the archive bigger than planned, so the floor also doubles every 1,000 parts:
    10,000 parts then reach past S3's 5 TiB object limit whatever was planned. Never above
    5 GiB per part.
    """
    base = max(minimum, -(-known_bytes // 9000))
    base = -(-base // MiB) * MiB
    return min(MAX_PART, max(base, minimum << ((part_number - 1) // 1000)))


def copy_head(buffered: int, size: int, floor: int = STORE_MIN_PART) -> int | None:
    """How many of a member's first bytes go up with the ``buffered`` bytes before it, so that
    the uploaded part and the copied rest both reach ``floor``; None when the member is too
    small to be copied at all."""
    head = max(0, floor - buffered)
    return head if size - head >= floor else None


def copy_pieces(start: int, end: int, piece: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into near-equal ranges of at least ``piece`` bytes (one range when
    shorter) and at most 5 GiB each."""
    length = end - start
    count = max(1, length // max(piece, 1), -(-length // MAX_PART))
    bounds = [start + length * i // count for i in range(count + 1)]
    return list(zip(bounds, bounds[1:], strict=False))


def extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def choose_method(name: str, sample: bytes) -> str:
    """``"store"`` for what is already compressed (by extension, or a deflate trial on the first
    bytes saving under 5 %), else ``"deflate"``."""
    if extension(name) in STORED_EXTENSIONS:
        return "store"
    if len(sample) < 512:
        return "deflate"
    trial = _compressobj(1)
    packed = len(trial.compress(sample[:SAMPLE_BYTES])) + len(trial.flush())
    return "store" if packed > 0.95 * min(len(sample), SAMPLE_BYTES) else "deflate"


def stored_by_name(compression: str, name: str) -> bool:
    """Whether an entry is stored whatever its bytes: decided before reading any of them."""
    return compression == "store" or (
        compression == "auto" and extension(name) in STORED_EXTENSIONS
    )


def decide(compression: str, level: int, name: str, first: bytes) -> tuple[str, int]:
    """(method, deflate level) of one entry, from the job's setting and its first bytes.

    ``auto`` stores what is already compressed at any size (CONTRACT §10): no deflate pass over
    incompressible bytes.
    """
    if compression == "store":
        return "store", 0
    if compression == "deflate":
        return "deflate", level
    if first and choose_method(name, first) == "deflate":
        return "deflate", level
    return "store", 0


def pack_whole(compression: str, level: int, name: str, data: bytes) -> tuple[str, int, bytes]:
    """(method, level, member data) of a small object held whole: :func:`decide`'s choice, with
    ``auto``'s deflate trial being the real compression itself up to :data:`SAMPLE_BYTES` — a
    member that does not shrink below 95 % (and is at least 512 bytes) is stored — so its bytes
    are compressed only once."""
    if compression == "store" or len(data) > SAMPLE_BYTES:
        method, level = decide(compression, level, name, data)
        if method == "store":
            return "store", 0, data
    elif compression == "auto" and (not data or extension(name) in STORED_EXTENSIONS):
        return "store", 0, data
    packed = compress_whole(level, data)
    if compression == "auto" and len(data) >= 512 and len(packed) > 0.95 * len(data):
        return "store", 0, data
    return "deflate", level, packed


def clamp_mtime(moment: datetime | None) -> datetime:
    """A timestamp the ZIP can hold: DOS time starts in 1980, UNIX extra time ends in 2038."""
    if moment is None:
        return datetime.now(UTC).replace(microsecond=0)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(max(moment.astimezone(UTC), ZIP_EPOCH), UNIX32_END)


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC-32 of A + B from the CRC-32s of A and of B (B ``second_length`` bytes long)."""
    return isal_zlib.crc32_combine(first, second, second_length)


# -- read-ahead -------------------------------------------------------------------------------


class _Budget:
    """Bytes queued by fetchers, capped at ``limit``.

    The entry being written (the head) does not count against the cap — it may always queue up
    to ``head_allowance`` of its own — so the window can never deadlock with later entries
    holding the whole budget, and memory stays bounded by ``limit + head_allowance``.
    """

    def __init__(self, limit: int, head_allowance: int = HEAD_ALLOWANCE) -> None:
        self.limit = limit
        self.head_allowance = head_allowance
        self.used = 0
        self.queued: collections.Counter[int] = collections.Counter()
        self.head = 0
        self.closed = False
        self._cond = threading.Condition()

    def _must_wait(self, index: int, n: int) -> bool:
        if self.closed:
            return False
        if index == self.head:
            return self.queued[index] + n > self.head_allowance
        return self.used + n > self.limit

    def acquire(self, index: int, n: int) -> None:
        with self._cond:
            while self._must_wait(index, n):
                self._cond.wait(0.5)
            self.used += n
            self.queued[index] += n

    def release(self, index: int, n: int) -> None:
        with self._cond:
            self.used -= n
            self.queued[index] -= n
            if not self.queued[index]:
                del self.queued[index]
            self._cond.notify_all()

    def advance(self, index: int) -> None:
        with self._cond:
            self.head = index
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


_END = object()


def _pinned(reader: ObjectReader) -> Pinned:
    """The version a GET answered with, as :meth:`Store.pin` would have found it."""
    return Pinned(
        reader.bucket,
        reader.key,
        reader.size,
        reader.etag,
        getattr(reader, "version_id", None),
        reader.last_modified,
    )


class _Streams:
    """At most ``limit`` entries streamed at once (the rest of the GETs in flight read small
    objects whole). The entry being written — the budget's head — never waits for a slot, so
    later entries holding every slot cannot stall the archive."""

    def __init__(self, limit: int, budget: _Budget) -> None:
        self.limit = limit
        self.budget = budget
        self.active = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self, index: int) -> Iterator[None]:
        budget = self.budget
        with self._cond:
            while self.active >= self.limit and index != budget.head and not budget.closed:
                self._cond.wait(0.1)
            self.active += 1
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()


class _Latch:
    """A flag set once that threads wait for: :class:`threading.Event` without its Condition,
    on one bare lock (one per entry: a job of 100,000 small members makes 100,000)."""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:  # set by the entry's own fetch thread only
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else timeout):
            self._lock.release()  # for the next waiter
            return True
        return self._set


@dataclass(slots=True)
class _Fetch:
    """One entry as a fetch thread reads it: the pieces to write (raw bytes when stored, deflate
    output when deflated), each with the count of input bytes it stands for.

    ``large_stored`` entries are not read here at all: :class:`_Archive` pins, CRCs and places
    them itself.
    """

    index: int
    entry: Entry
    opened: _Latch = field(default_factory=_Latch)
    pieces: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    size: int | None = None
    last_modified: datetime | None = None
    method: str = "deflate"
    level: int = 1
    large_stored: bool = False
    prepared: _Prepared | None = None  # a large stored member's pin and CRC, worked out ahead
    crc: int = 0  # of the raw bytes read so far
    error: BaseException | None = None

    def put(self, item: object) -> None:
        self.pieces.put(item)

    def get(self, cancelled: Callable[[], bool]) -> object:
        pieces = self.pieces
        while True:
            try:
                return pieces.get(block=False)
            except queue.Empty:
                pass
            if cancelled():
                raise JobCancelled("the job was cancelled")
            try:
                return pieces.get(timeout=0.5)
            except queue.Empty:
                continue


class _Workers:
    """``count`` threads running ``work(item)`` for each item submitted, in submission order;
    a bare queue, no Future per item (one item per entry of the archive)."""

    def __init__(self, count: int, name: str, work: Callable[[Any], None]) -> None:
        self.count = max(1, count)
        self.name = name
        self.work = work
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def submit(self, item: object) -> None:
        if len(self.threads) < self.count:  # started as items come, up to count
            thread = threading.Thread(
                target=self._loop, name=f"{self.name}_{len(self.threads)}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        self.queue.put(item)

    def _loop(self) -> None:
        work, items = self.work, self.queue
        while (item := items.get()) is not _END:
            work(item)

    def shutdown(self) -> None:
        """Drop the items not started, wait for those running, end every thread."""
        while True:
            try:
                self.queue.get(block=False)
            except queue.Empty:
                break
        for _ in self.threads:
            self.queue.put(_END)
        for thread in self.threads:
            thread.join()


def _gather(
    chunks: Iterator[bytes], size: int = READ_CHUNK, first: int | None = None
) -> Iterator[list[bytes]]:
    """A body's pieces in lists of at least ``size`` bytes (the first: ``first``; the last:
    what is left). A store's reads may come in pieces much smaller than asked (the lean GET's:
    at most 64 KiB); the read-ahead's work per chunk (budget, queue, deflate feed) is then done
    once per ``size`` bytes, not per piece."""
    group: list[bytes] = []
    total = 0
    want = size if first is None else first
    for chunk in chunks:
        if not chunk:
            continue
        group.append(chunk)
        total += len(chunk)
        if total >= want:
            yield group
            group, total, want = [], 0, size
    if group:
        yield group


class _ReadAhead:
    """Fetches entries in archive order: up to ``small_in_flight`` GETs at once (each reads a
    small object whole), of which at most ``parallel`` stream a bigger one, and ``limit`` bytes
    ahead."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        plan: Plan,
        *,
        parallel: int,
        limit: int,
        cancelled: Callable[[], bool],
        small_in_flight: int = 0,
        sources: _Sources | None = None,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.sources = sources
        self.plan = plan
        self.entries = plan.entries
        self.budget = _Budget(limit)
        self.cancelled = cancelled
        threads = max(1, parallel, small_in_flight)
        self.window = threads * 4
        self.streams = _Streams(max(1, parallel), self.budget)
        self.pool = _Workers(threads, "get", self._run)
        self.deflate_pool = DeflatePool()  # chunks of big members on every core
        self.ranged = threading.BoundedSemaphore(RANGED_STREAMS)
        self.span_pool = ThreadPoolExecutor(
            max_workers=RANGED_STREAMS * RANGED_PARALLEL, thread_name_prefix="get_range"
        )
        self.fetches: dict[int, _Fetch] = {}
        self.next_to_submit = 0

    def _fill(self, upto: int) -> None:
        while self.next_to_submit < min(len(self.entries), upto):
            fetch = _Fetch(self.next_to_submit, self.entries[self.next_to_submit])
            self.fetches[fetch.index] = fetch
            self.pool.submit(fetch)
            self.next_to_submit += 1

    def _run(self, fetch: _Fetch) -> None:
        """GET one entry: whole when small (:meth:`_small`), else streamed (:meth:`_read`)."""
        entry = fetch.entry
        try:
            if self.budget.closed:
                return
            by_name = stored_by_name(self.plan.compression, entry.name)
            if by_name and entry.size is not None and entry.size > BUFFER_LIMIT:
                self._large_stored(fetch, None)
                return
            if entry.size is None or entry.size <= min(SMALL_BYTES, BUFFER_LIMIT):
                self._small(fetch, by_name)
                return
            with self.streams.slot(fetch.index):
                with self.store.open_object(self.bucket, entry.key) as reader:
                    self._read(fetch, reader, by_name)
        except BaseException as exc:  # handed to the consumer, which decides
            fetch.error = exc
        finally:
            fetch.opened.set()
            fetch.put(_END)

    # -- small members: one lean GET, read whole, compressed here (issue 16) ------------------

    def _small(self, fetch: _Fetch, by_name: bool) -> None:
        """One GET (:meth:`Store.get_small`): a body of at most :data:`SMALL_BYTES` is read
        whole into memory reserved first, its CRC-32 taken and — when it deflates — compressed
        right here, and handed over as one piece; a bigger one streams from the same answer."""
        held = 0
        index, entry, plan = fetch.index, fetch.entry, self.plan

        def reserve(size: int) -> None:  # the body and its compressed piece, at the very worst
            nonlocal held
            want = 2 * size + 4096
            if want > held:
                self.budget.acquire(index, want - held)
                held = want

        try:
            whole = min(SMALL_BYTES, BUFFER_LIMIT)  # a small member is also one held whole
            got = self.store.get_small(self.bucket, entry.key, max_bytes=whole, reserve=reserve)
            fetch.size, fetch.last_modified = got.size, got.last_modified
            if got.reader is not None:
                with got.reader as reader, self.streams.slot(index):
                    self._read(fetch, reader, by_name)
                return
            data = got.body
            assert data is not None
            if self.budget.closed:
                return
            method, level, piece = pack_whole(plan.compression, plan.level, entry.name, data)
            fetch.method, fetch.level, fetch.crc = method, level, crc32(data)
            if len(piece) > held:  # deflate grew it past the reservation: hold what it is
                self.budget.acquire(index, len(piece) - held)
                held = len(piece)
            self.budget.release(index, held - len(piece))
            held = 0
            fetch.put((piece, len(data)))  # the consumer releases its bytes
        finally:
            if held:
                self.budget.release(index, held)

    # -- end of small members (issue 16) ------------------------------------------------------

    def _read(self, fetch: _Fetch, reader: ObjectReader, by_name: bool) -> None:
        """Stream an open object; every chunk's memory is reserved in the budget *before* it
        is read."""
        held = 0
        entry, plan = fetch.entry, self.plan
        compressor: ChunkedDeflater | None = None
        ranged: Iterator[bytes] | None = None
        try:
            fetch.size = reader.size
            fetch.last_modified = reader.last_modified
            if by_name and reader.size > BUFFER_LIMIT:
                self._large_stored(fetch, reader)
                return
            # a raw chunk and its compressed piece, at the very worst
            reserve = 2 * min(READ_CHUNK, reader.size) + 4096
            self.budget.acquire(fetch.index, reserve)
            held = reserve
            chunks = reader.iter_chunks(READ_CHUNK)
            parts = _gather(chunks, first=SAMPLE_BYTES)  # what decide() looks at, no more
            chunk = next(parts, [])
            first = chunk[0] if len(chunk) == 1 else b"".join(chunk)
            fetch.method, fetch.level = decide(plan.compression, plan.level, entry.name, first)
            if fetch.method == "store" and reader.size > BUFFER_LIMIT:
                self._large_stored(fetch, reader)
                return
            fetch.opened.set()
            if fetch.method == "deflate":
                compressor = ChunkedDeflater(fetch.level, self.deflate_pool)
                if reader.size > RANGED_MIN and reader.etag and self.ranged.acquire(False):
                    parts = _gather(ranged := self._ranged(reader, chunks))
            while chunk:
                raw = sum(map(len, chunk))
                if raw > READ_CHUNK:  # the last part read went past the reserved chunk
                    self.budget.acquire(fetch.index, raw - READ_CHUNK)
                    held += raw - READ_CHUNK
                if compressor is not None:  # computes the CRC-32 too
                    out = [compressor.feed(part) for part in chunk]
                    pieces = [piece for piece in out if piece]
                else:
                    for part in chunk:
                        fetch.crc = crc32(part, fetch.crc)
                    pieces = chunk
                size = sum(map(len, pieces))
                self.budget.release(fetch.index, held - size)
                held = 0
                if self.budget.closed:
                    return
                fetch.put((pieces, raw))  # the consumer releases their bytes
                self.budget.acquire(fetch.index, reserve)
                held = reserve
                chunk = next(parts, [])
            if compressor is not None:
                tail = compressor.finish()
                fetch.crc = compressor.crc
                self.budget.release(fetch.index, held - len(tail))
                held = 0
                fetch.put(([tail], 0))
        finally:
            if ranged is not None:
                ranged.close()  # type: ignore[attr-defined]  # stops its span reads
                self.ranged.release()
            if compressor is not None:
                compressor.close()  # gives back its chunks still in the pool, if it failed
            if held:
                self.budget.release(fetch.index, held)

    def _large_stored(self, fetch: _Fetch, reader: ObjectReader | None) -> None:
        """Not read here: its pin (from this GET's answer, which saves a HEAD) and its CRC pass
        go to :class:`_Sources` at once, to run ahead of the writer."""
        fetch.method, fetch.large_stored = "store", True
        if self.sources is None:
            return
        source = _pinned(reader) if reader is not None and reader.etag else None
        fetch.prepared = self.sources.prepare(fetch.index, self.bucket, fetch.entry.key, source)

    def _ranged(self, reader: ObjectReader, body: Iterator[bytes]) -> Iterator[bytes]:
        """The rest of a large member, in order: its open GET's body up to the end of the first
        span, then ranged GETs of :data:`RANGED_SPAN` bytes, :data:`RANGED_PARALLEL` at once,
        pinned to the version (or, without versions, the ETag) that GET answered with — so an
        object replaced meanwhile fails the job instead of mixing two versions in one member."""
        while reader.position < min(RANGED_SPAN, reader.size):
            chunk = next(body, b"")
            if not chunk:
                break
            yield chunk
        reader.close()  # the rest comes by ranges
        source = _pinned(reader)
        starts = range(reader.position, reader.size, RANGED_SPAN)
        spans = iter([(at, min(at + RANGED_SPAN, reader.size)) for at in starts])
        stop = threading.Event()

        def read(span: tuple[int, int]) -> list[bytes]:
            chunks = []
            for chunk in self.store.read_range(source, *span, chunk_size=READ_CHUNK):
                if stop.is_set() or self.budget.closed:
                    raise JobCancelled("the member is no longer read")
                chunks.append(chunk)
            return chunks

        pending: collections.deque[Future] = collections.deque(
            self.span_pool.submit(read, span) for span in itertools.islice(spans, RANGED_PARALLEL)
        )
        try:
            while pending:
                chunks = pending.popleft().result()
                while chunks:
                    yield chunks.pop(0)
                following = next(spans, None)
                if following is not None:  # only now: at most RANGED_PARALLEL spans held
                    pending.append(self.span_pool.submit(read, following))
        finally:
            stop.set()
            for future in pending:
                future.cancel()

    def take(self, index: int) -> _Fetch:
        """The fetch of entry ``index``, opened (or failed); later entries start meanwhile."""
        self.budget.advance(index)
        self._fill(index + self.window)
        fetch = self.fetches.pop(index)
        while not fetch.opened.wait(0.5):
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
        return fetch

    def peek(self, index: int) -> _Fetch | None:
        """Entry ``index``'s fetch if it was started and not taken yet (never waits)."""
        return self.fetches.get(index)

    def pieces(self, fetch: _Fetch) -> Iterator[tuple[bytes, int]]:
        """(piece, input bytes it stands for) in order, until the entry is read."""
        while True:
            item = fetch.get(self.cancelled)
            if item is _END:
                if fetch.error is not None:
                    raise fetch.error
                return
            piece, raw = item  # type: ignore[misc]
            if isinstance(piece, list):  # a streamed member's pieces of one read chunk
                self.budget.release(fetch.index, sum(map(len, piece)))
                if not piece:
                    yield b"", raw
                for part in piece:
                    yield part, raw
                    raw = 0
                continue
            self.budget.release(fetch.index, len(piece))
            yield piece, raw

    def close(self) -> None:
        self.budget.close()
        self.pool.shutdown()
        self.span_pool.shutdown(wait=True, cancel_futures=True)
        self.deflate_pool.close()


# -- large stored members: pinned ranged reads ---------------------------------------------


@dataclass(frozen=True)
class CrcCache:
    """Where stored members' CRC-32s are kept (``pipeline.crc_cache``, CONTRACT §11): one small
    JSON object per (bucket, key, ETag, size) under ``prefix`` in ``bucket``.

    An entry is only ever used for a source pinned to that same ETag (by its version or by
    ``If-Match``), so a stale entry cannot put other bytes under its CRC; a streamed member's
    CRC is checked again as its bytes pass.
    """

    bucket: str
    prefix: str

    def key_for(self, source: Pinned) -> str:
        identity = "\n".join((source.bucket, source.key, source.etag, str(source.size)))
        return f"{self.prefix}{hashlib.sha256(identity.encode()).hexdigest()}.json"

    @staticmethod
    def document(source: Pinned, crc: int) -> dict[str, Any]:
        return {
            "bucket": source.bucket,
            "key": source.key,
            "etag": source.etag,
            "size": source.size,
            "crc32": crc,
        }

    def lookup(self, store: Store, source: Pinned) -> int | None:
        """The cached CRC-32 of exactly this source, or None (absent, unreadable, other)."""
        try:
            raw = store.get_bytes(self.bucket, self.key_for(source), max_bytes=64 * 1024)
            entry = json.loads(raw) if raw is not None else None
        except (JobError, ValueError):
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("crc32"), int):
            return None
        if entry != self.document(source, entry["crc32"]):
            return None
        return entry["crc32"]

    def keep(self, store: Store, source: Pinned, crc: int) -> None:
        """Best effort: a cache that cannot be written costs a later job one read, no more."""
        try:
            store.put_json(self.bucket, self.key_for(source), self.document(source, crc))
        except JobError:
            pass


@dataclass
class _Prepared:
    """A large stored member's pin and CRC-32, worked out ahead of the writer by :class:`_Sources`:
    ``done`` is set with ``source`` and ``crc``, or with ``error``."""

    index: int
    bucket: str
    key: str
    source: Pinned | None
    pinned: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    crc: int = 0
    error: BaseException | None = None
    placed: int | None = None  # copies placed ahead (:meth:`_Archive._place_ahead`): the head
    parts: list[int | None] = field(default_factory=list)
    left: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Sources:
    """Large stored members read by ranged GETs of their pinned version: the CRC pass in
    parallel ranges (CRC-32s combined, or the CRC cache's entry), the streaming path in order.

    The CRC passes run ahead of the writer: the read-ahead hands each large stored member over
    (:meth:`prepare`) as soon as it knows it, and ``parallel`` readers take the ranges of the
    earliest member first (a priority queue by archive index), so the readers never idle while
    the writer places the previous member, and the writer finds CRC-32s ready. Nothing is held
    in memory but the CRC-32s.
    """

    def __init__(
        self,
        store: Store,
        progress: Progress,
        cancelled: Callable[[], bool],
        parallel: int,
        cache: CrcCache | None,
    ) -> None:
        self.store = store
        self.progress = progress
        self.cancelled = cancelled
        self.cache = cache
        self.closed = False
        self._tasks: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties broken in submission order
        self._threads = [
            threading.Thread(target=self._work, name=f"crc_{n}", daemon=True)
            for n in range(max(1, parallel))
        ]
        for thread in self._threads:
            thread.start()

    def _submit(self, prepared: _Prepared, rank: int, task: Callable[[], None]) -> None:
        self._tasks.put(((prepared.index, rank, next(self._order)), prepared, task))

    def _work(self) -> None:
        while True:
            _, prepared, task = self._tasks.get()
            if task is None:
                return
            if self.closed or prepared.done.is_set():
                continue  # the job is over, or the member already failed
            try:
                task()
            except BaseException as exc:  # the writer raises it when it reaches the member
                with prepared.lock:
                    prepared.error = prepared.error or exc
                prepared.done.set()

    def prepare(self, index: int, bucket: str, key: str, source: Pinned | None = None) -> _Prepared:
        """Start pinning (unless ``source`` is already pinned) and CRC-ing a member."""
        prepared = _Prepared(index, bucket, key, source)
        if source is not None:
            prepared.pinned.set()
        self._submit(prepared, -1, lambda: self._begin(prepared))
        return prepared

    def _begin(self, prepared: _Prepared) -> None:
        if prepared.source is None:
            prepared.source = self.store.pin(prepared.bucket, prepared.key)
            prepared.pinned.set()
        source = prepared.source
        if self.cache is not None:
            cached = self.cache.lookup(self.store, source)
            if cached is not None:
                prepared.crc = cached
                prepared.done.set()
                return
        spans = copy_pieces(0, source.size, CRC_RANGE) if source.size else []
        if not spans:
            self._finish(prepared, 0)
            return
        prepared.parts, prepared.left = [None] * len(spans), len(spans)
        for rank, span in enumerate(spans):
            self._submit(prepared, rank, lambda r=rank, s=span: self._crc_span(prepared, r, s))

    def _crc_span(self, prepared: _Prepared, rank: int, span: tuple[int, int]) -> None:
        assert prepared.source is not None
        value = 0
        for chunk in self.store.read_range(prepared.source, *span, chunk_size=CRC_CHUNK):
            if self.cancelled() or self.closed:
                raise JobCancelled("the job was cancelled")
            value = crc32(chunk, value)
            self.progress.add(bytes_read=len(chunk))
        with prepared.lock:
            prepared.parts[rank] = value
            prepared.left -= 1
            last = prepared.left == 0
        if last:
            spans = copy_pieces(0, prepared.source.size, CRC_RANGE)
            combined = 0
            for (start, end), part in zip(spans, prepared.parts, strict=True):
                assert part is not None
                combined = crc32_combine(combined, part, end - start)
            self._finish(prepared, combined)

    def _finish(self, prepared: _Prepared, crc: int) -> None:
        assert prepared.source is not None
        if self.cache is not None:
            self.cache.keep(self.store, prepared.source, crc)
        prepared.crc = crc
        prepared.done.set()

    def pin(self, prepared: _Prepared) -> Pinned:
        """The member's pin, as soon as it is known (before its CRC-32)."""
        while not prepared.pinned.wait(0.5 if not prepared.done.is_set() else 0):
            if prepared.done.is_set():
                return self.result(prepared)[0]  # raises the error that kept it unpinned
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
        assert prepared.source is not None
        return prepared.source

    def result(self, prepared: _Prepared) -> tuple[Pinned, int]:
        """The member's pin and CRC-32, once its readers are done (their error, if any)."""
        while not prepared.done.wait(0.5):
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
        if prepared.error is not None:
            raise prepared.error
        assert prepared.source is not None
        return prepared.source, prepared.crc

    def chunks(self, source: Pinned, start: int, end: int) -> Iterator[bytes]:
        for chunk in self.store.read_range(source, start, end, chunk_size=READ_CHUNK):
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
            self.progress.add(bytes_read=len(chunk))
            yield chunk

    def close(self) -> None:
        self.closed = True
        for _ in self._threads:
            self._tasks.put(((-2, 0, next(self._order)), None, None))
        for thread in self._threads:
            thread.join()


# -- upload -----------------------------------------------------------------------------------


class _PartWriter:
    """Archive bytes into parts — uploaded, or copied by the store from a source's range — sent
    concurrently in bounded memory. Every part but the last is at least the store's minimum."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        key: str,
        *,
        known_bytes: int,
        concurrency: int,
        minimum_part: int,
        copy_floor: int,
        progress: Progress,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.known_bytes = known_bytes
        self.minimum_part = minimum_part
        self.copy_floor = copy_floor
        self.progress = progress
        self.slots = threading.Semaphore(max(1, concurrency))
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="put")
        # Part copies queue here without blocking the writer (a queued copy is a few numbers):
        # COPY_CONCURRENCY run at once, in the order they were placed.
        self.copy_pool = ThreadPoolExecutor(
            max_workers=COPY_CONCURRENCY, thread_name_prefix="put_copy"
        )
        self.futures: list[Future] = []
        self.upload: MultipartUpload | None = None
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.part_number = 1
        self.copy_refused = False
        self.copies = 0
        # part numbers kept for the buffer, in archive order (:meth:`hold`)
        self.held: collections.deque[int] = collections.deque()
        self._sized = (0, 0)  # (part number, its part_size), for write()

    def write(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if not self.held:
            number, size = self._sized  # part_size of the part being filled, kept
            if number != self.part_number:
                number = self.part_number
                size = part_size(self.known_bytes, number, self.minimum_part)
                self._sized = (number, size)
            if self.buffered >= size:
                self._flush_part()

    def hold(self) -> None:
        """The bytes buffered now and those written until :meth:`release` become the next part,
        sent at release; part copies placed meanwhile (:meth:`copy`) come after it. So a copied
        member's copies start before its CRC-32 is known: only its header waits for it.

        Holds queue up: a later member's part may be kept (and its copies placed after it)
        while an earlier one is still held; each :meth:`release` sends the earliest."""
        self._started()
        self.held.append(self.part_number)
        self.part_number += 1

    def _unhold(self) -> None:
        """Nothing was placed after the last held part: its bytes are ordinary buffered bytes
        again."""
        if self.held and self.held[-1] == self.part_number - 1:
            self.part_number = self.held.pop()

    def release(self) -> None:
        self._flush_part(self.held.popleft())

    def _check(self) -> None:
        for future in [f for f in self.futures if f.done()]:
            future.result()
            self.futures.remove(future)

    def _started(self) -> MultipartUpload:
        if self.upload is None:
            self.upload = self.store.multipart(self.bucket, self.key).__enter__()
        return self.upload

    def _flush_part(self, number: int | None = None) -> None:
        self._check()
        upload = self._started()
        # A slot first, then the join: a waiting part stays in pieces, never in two copies.
        self.slots.acquire()
        body = b"".join(self.buffer)
        self.buffer, self.buffered = [], 0
        if number is None:
            number, self.part_number = self.part_number, self.part_number + 1
        self.futures.append(self.pool.submit(self._send, upload, number, body))

    def _send(self, upload: MultipartUpload, number: int, body: bytes) -> None:
        try:
            upload.upload_part(number, body)
            self.progress.add(bytes_written=len(body))
        finally:
            self.slots.release()

    def copy(self, source: Pinned, start: int, end: int) -> bool:
        """Place ``[start, end)`` of ``source`` here by part copies; False, having placed
        nothing, when the store refuses them (then it is never asked again in this job).

        The caller has made the buffered bytes reach the store's minimum (:func:`copy_head`), or
        holds them (:meth:`hold`) until they do; a refusal gives the held number back.
        """
        if self.copy_refused:
            self._unhold()
            return False
        if not self.held and self.buffered:
            self._flush_part()
        upload = self._started()
        piece = max(COPY_PIECE, part_size(self.known_bytes, self.part_number, self.minimum_part))
        if not self.copies:
            # The job's first copy, alone and small, tells whether the store does them at all.
            probe = start + self.copy_floor if end - start >= 2 * self.copy_floor else end
            try:
                upload.copy_part(self.part_number, source, start, probe)
            except CopyRefused:
                self.copy_refused = True
                self._unhold()
                return False
            self.part_number += 1
            self.progress.add(bytes_written=probe - start)
            start = probe
        self.copies += 1
        self._check()
        for span in copy_pieces(start, end, piece) if start < end else []:
            number, self.part_number = self.part_number, self.part_number + 1
            self.futures.append(self.copy_pool.submit(self._copy, upload, number, source, span))
        return True

    def _copy(
        self, upload: MultipartUpload, number: int, source: Pinned, span: tuple[int, int]
    ) -> None:
        upload.copy_part(number, source, *span)
        self.progress.add(bytes_written=span[1] - span[0])

    def finish(self) -> None:
        """Send what is left and make the object visible, all at once."""
        if self.upload is None:
            body = b"".join(self.buffer)
            self.store.put_bytes(self.bucket, self.key, body, content_type="application/zip")
            self.progress.add(bytes_written=len(body))
            return
        if self.buffered:
            self._flush_part()
        for future in self.futures:
            future.result()
        self.upload.complete()

    def abort(self) -> None:
        for future in self.futures:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.copy_pool.shutdown(wait=True, cancel_futures=True)
        if self.upload is not None:
            self.upload.abort()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.copy_pool.shutdown(wait=True)


# -- the archive ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineLimits:
    read_ahead_bytes: int = 32 * MiB
    max_parallel_gets: int = 32
    # GETs in flight reading small objects whole (threads; memory bound by read_ahead_bytes).
    small_in_flight: int = SMALL_IN_FLIGHT
    upload_concurrency: int = 3
    minimum_part: int = MIN_PART
    # Large stored members of at least this many bytes are copied server-side; 0: never.
    copy_min_bytes: int = 16 * MiB
    copy_floor: int = STORE_MIN_PART
    crc_cache: CrcCache | None = None


class _Archive:
    """Writes the members one after the other, in archive order, and then the directory."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        bucket: str,
        reads: _ReadAhead,
        sources: _Sources,
        writer: _PartWriter,
        progress: Progress,
        limits: PipelineLimits,
    ) -> None:
        self.plan = plan
        self.store = store
        self.bucket = bucket
        self.reads = reads
        self.sources = sources
        self.writer = writer
        self.progress = progress
        self.limits = limits
        self.directory = Directory()
        self.offset = 0

    def _emit(self, data: bytes) -> None:
        self.writer.write(data)
        self.offset += len(data)

    def write(self) -> None:
        for index, entry in enumerate(self.plan.entries):
            fetch = self.reads.take(index)
            if fetch.large_stored:
                self._large_stored(index, entry, fetch)
            elif fetch.error is not None and fetch.size is None:
                self._missing(entry, fetch.error)
            elif fetch.method == "store" or (fetch.size or 0) <= BUFFER_LIMIT:
                self._whole(entry, fetch)
            else:
                self._streamed(entry, fetch)
        if not len(self.directory):
            raise MissingInput("every input was missing: no archive was written")
        self.writer.write(self.directory.finish(self.offset))

    def _missing(self, entry: Entry, error: BaseException) -> None:
        """An input that could not be opened: left out under ``missing: skip``, else fatal."""
        if isinstance(error, MissingInput) and self.plan.missing == "skip":
            self.progress.skip(entry.key, "missing")
            return
        raise error

    def _record(
        self, key: str, member: Member, offset: int, crc: int, size: int, packed: int
    ) -> None:
        self.directory.add(Written(member, offset, crc, size, packed))
        method = "deflate" if member.method == DEFLATED else "store"
        self.progress.entry_done(EntryResult(member.name, key, size, packed, crc, method))

    def _whole(self, entry: Entry, fetch: _Fetch) -> None:
        """A member held whole first: its header can carry its CRC-32 and sizes."""
        pieces, size = [], 0
        for piece, raw in self.reads.pieces(fetch):
            pieces.append(piece)
            size += raw
            self.progress.add(bytes_read=raw)
        packed = sum(map(len, pieces))
        method = DEFLATED if fetch.method == "deflate" else STORED
        modified = clamp_mtime(entry.last_modified or fetch.last_modified)
        member = Member(entry.name, modified, method, fetch.crc, size, packed)
        offset = self.offset
        self._emit(local_header(member))
        for piece in pieces:
            self._emit(piece)
        self._record(entry.key, member, offset, fetch.crc, size, packed)

    def _streamed(self, entry: Entry, fetch: _Fetch) -> None:
        """A large deflated member: its pieces as they come, then a data descriptor."""
        size = fetch.size or 0
        large = size + size // 1000 + MiB >= LIMIT32
        modified = clamp_mtime(entry.last_modified or fetch.last_modified)
        member = Member(entry.name, modified, DEFLATED, large=large)
        offset = self.offset
        self._emit(local_header(member))
        raw_total = packed = 0
        for piece, raw in self.reads.pieces(fetch):
            self._emit(piece)
            packed += len(piece)
            raw_total += raw
            self.progress.add(bytes_read=raw)
        self._emit(data_descriptor(member, fetch.crc, raw_total, packed))
        self._record(entry.key, member, offset, fetch.crc, raw_total, packed)

    def _copyable(self, entry: Entry, source: Pinned, buffered: int) -> tuple[int, int] | None:
        """(header length, head) of a member to be copied server-side after ``buffered`` bytes,
        or None when it is streamed."""
        modified = clamp_mtime(entry.last_modified or source.last_modified)
        size = source.size
        header = len(local_header(Member(entry.name, modified, STORED, 0, size, size)))
        head = copy_head(buffered + header, size, self.limits.copy_floor)
        if (
            not self.limits.copy_min_bytes
            or size < self.limits.copy_min_bytes
            or head is None
            or self.writer.copy_refused
        ):
            return None
        return header, head

    def _place_ahead(self, index: int) -> bool:
        """Place the copies of the large stored members that directly follow member ``index``
        (itself copied up to its end) as soon as they are pinned, each after a held part for its
        header and head: the store copies them while the CRC passes before them still read, as
        the server-side ceiling does. Only adjacent members: a held part then carries just a
        header and a head (never other members' bytes, whose size may be anything).

        True when there is nothing more to place after ``index`` (a member that is not copied
        ends the run), False while the next member may still become placeable (not pinned yet).
        """
        while self.writer.copies:
            index += 1
            fetch = self.reads.peek(index)
            if fetch is None:
                return True  # past the read-ahead's window (its turn comes), or the plan's end
            if not fetch.large_stored:
                return fetch.opened.is_set()  # something else: the run ends; else not known yet
            prepared = fetch.prepared
            if prepared is None:
                return False  # being handed over
            if prepared.placed is not None:
                continue
            if prepared.error is not None:
                return True
            if not prepared.pinned.is_set():
                return False
            assert prepared.source is not None
            layout = self._copyable(fetch.entry, prepared.source, 0)
            if layout is None:
                return True
            self.writer.hold()
            if not self.writer.copy(prepared.source, layout[1], prepared.source.size):
                return True  # pragma: no cover - only the job's first copy can be refused
            prepared.placed = layout[1]
        return True

    def _large_stored(self, index: int, entry: Entry, fetch: _Fetch) -> None:
        """Pinned, CRC'd by ranged reads, then copied server-side or streamed.

        A copied member's part copies are placed as soon as it is pinned — the part that will
        carry the bytes before it, its header and its head is held back (:meth:`_PartWriter.hold`)
        — so the store copies while its CRC-32 is still being read; only the header waits. The
        adjacent large stored members after it get their copies placed then too
        (:meth:`_place_ahead`).
        """
        prepared = fetch.prepared
        if prepared is None:  # pragma: no cover - the read-ahead always prepares them
            prepared = self.sources.prepare(-1, self.bucket, entry.key)
        try:
            source = self.sources.pin(prepared)
        except MissingInput as exc:  # nothing of the member is written yet
            self._missing(entry, exc)
            return
        size = source.size
        modified = clamp_mtime(entry.last_modified or source.last_modified)
        head = prepared.placed
        copied = head is not None
        if not copied:
            layout = self._copyable(entry, source, self.writer.buffered)
            if layout is not None:
                head = layout[1]
                self.writer.hold()
                copied = self.writer.copy(source, head, size)
        if copied:  # the next members' copies too, as they get pinned, while the CRC is read
            while not prepared.done.wait(0.5 if self._place_ahead(index) else 0.05):
                if self.sources.cancelled():
                    raise JobCancelled("the job was cancelled")
        try:
            _, crc = self.sources.result(prepared)
        except MissingInput as exc:
            if copied:  # its copies are placed: it cannot be left out any more, even on skip
                raise MissingInput(
                    f"s3://{self.bucket}/{entry.key} disappeared while it was being copied"
                ) from exc
            self._missing(entry, exc)
            return
        member = Member(entry.name, modified, STORED, crc, size, size)
        offset = self.offset
        self._emit(local_header(member))
        placed, streamed_crc = 0, 0
        if copied:
            assert head is not None
            streamed_crc = self._stream(source, 0, head, streamed_crc)
            self.writer.release()
            self.offset += size - head
            placed = size
        if placed < size:
            streamed_crc = self._stream(source, placed, size, streamed_crc)
            if streamed_crc != crc:
                raise StorageError(
                    f"s3://{self.bucket}/{entry.key} changed while being read; run the job again"
                )
        self._record(entry.key, member, offset, crc, size, size)

    def _stream(self, source: Pinned, start: int, end: int, crc: int) -> int:
        for chunk in self.sources.chunks(source, start, end):
            crc = crc32(chunk, crc)
            self._emit(chunk)
        return crc


def write_zip(
    plan: Plan,
    store: Store,
    *,
    input_bucket: str,
    output_bucket: str,
    target: str,
    progress: Progress,
    limits: PipelineLimits = PipelineLimits(),
    cancel: Any = None,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Write the plan's entries as a ZIP at ``s3://output_bucket/target``.

    On return the object is complete and visible; on any exception nothing was written to the
    target (a previous object there is untouched) and no multipart upload is left behind.
    ``before_commit`` runs after the last entry was written and before the upload is completed
    (or the single PUT sent); an exception from it aborts the upload (the daemon's claim fencing).
    """

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    progress.files_total = len(plan.entries)
    sources = _Sources(
        store, progress, cancelled, min(CRC_PARALLEL, limits.max_parallel_gets), limits.crc_cache
    )
    reads = _ReadAhead(
        store,
        input_bucket,
        plan,
        parallel=limits.max_parallel_gets,
        limit=limits.read_ahead_bytes,
        cancelled=cancelled,
        small_in_flight=limits.small_in_flight,
        sources=sources,
    )
    writer = _PartWriter(
        store,
        output_bucket,
        target,
        known_bytes=plan.known_bytes,
        concurrency=limits.upload_concurrency,
        minimum_part=limits.minimum_part,
        copy_floor=limits.copy_floor,
        progress=progress,
    )
    archive = _Archive(plan, store, input_bucket, reads, sources, writer, progress, limits)
    try:
        archive.write()
        if before_commit is not None:
            before_commit()
        writer.finish()
    except BaseException as exc:
        try:
            writer.abort()
        finally:
            reads.close()
            sources.close()
        if isinstance(exc, FrameError):
            raise InternalError(f"the ZIP could not be written: {exc}") from exc
        raise
    writer.close()
    reads.close()
    sources.close()
