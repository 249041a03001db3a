"""Plan entries → stream-zip → multipart parts, with every stage overlapped and memory bounded.

Three kinds of threads work at once:

* fetchers (``max_parallel_gets``) GET the upcoming entries in archive order and queue their
  chunks; all queued bytes together stay under ``read_ahead_bytes`` — except for the entry being
  zipped right now, which may always proceed, so the window can never deadlock;
* the calling thread runs stream-zip over those chunks; deflated entries arrive compressed: each
  fetcher deflates its entry in 1 MiB chunks on a :class:`~watcher.deflate.DeflatePool` of one
  thread per core, so one big entry uses every core (levels and libraries: :mod:`watcher.deflate`);
* uploaders (``upload_concurrency``) send finished parts; a semaphore caps the part buffers alive.

Peak memory is therefore about ``read_ahead_bytes + HEAD_ALLOWANCE + (upload_concurrency + 1) ×
part size`` (32 + 8 + 4 × 9 MiB with the defaults, ~140 MiB RSS in all), plus the deflate pool's
``2 × cores`` chunks in flight (each ≤ 2 MiB + 32 KiB), whatever the archive's size. An archive
that fits in its first part is sent with one PutObject; anything larger goes through a multipart
upload that is aborted on any failure.

Compression (``compression: auto``) is decided per entry by :func:`choose_method`. A truly STORED
entry needs its CRC-32 before its bytes (stream-zip buffers it otherwise), so: stored entries up
to :data:`STORE_BUFFER_LIMIT` are buffered (no more than the head allowance holds anyway); larger
entries that ``auto`` finds incompressible are deflated at ISA-L's fastest level, which costs
0.01 % over their size at several hundred MB/s; larger entries under an explicit
``compression: store`` get a CRC pass (one extra GET) and are then streamed stored.
"""

from __future__ import annotations

import collections
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stream_zip import (
    NO_COMPRESSION_32,
    NO_COMPRESSION_64,
    ZIP_32,
    ZIP_64,
    ZipIntegrityError,
    stream_zip,
)

from watcher.deflate import ChunkedDeflater, DeflatePool, crc32
from watcher.deflate import compressobj as _compressobj
from watcher.errors import InternalError, JobCancelled, JobError, MissingInput, StorageError
from watcher.markers import EntryResult, Progress

if TYPE_CHECKING:
    from watcher.plan import Entry, Plan
    from watcher.store import MultipartUpload, Store

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART = 8 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
READ_CHUNK = 1 * MiB
HEAD_ALLOWANCE = 8 * MiB
# A buffered stored entry is the head entry's bytes held at once: no more than its allowance, so
# buffering never adds to the memory bound.
STORE_BUFFER_LIMIT = HEAD_ALLOWANCE
SAMPLE_BYTES = 64 * 1024
ZIP32_LIMIT = 0xFFFFFFFF
ZIP32_ENTRIES = 0xFFFF
FILE_MODE = stat.S_IFREG | 0o644
ZIP_EPOCH = datetime(1980, 1, 1, tzinfo=UTC)
# Extended (UNIX) timestamps are signed 32-bit seconds; stream-zip writes them.
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


def clamp_mtime(moment: datetime | None) -> datetime:
    """A timestamp the ZIP can hold: DOS time starts in 1980, UNIX extra time ends in 2038."""
    if moment is None:
        return datetime.now(UTC).replace(microsecond=0)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return min(max(moment.astimezone(UTC), ZIP_EPOCH), UNIX32_END)


# -- read-ahead -------------------------------------------------------------------------------


class _Budget:
    """Bytes queued by fetchers, capped at ``limit``.

    The entry being zipped (the head) does not count against the cap — it may always queue up to
    ``head_allowance`` of its own — so the window can never deadlock with later entries holding
    the whole budget, and memory stays bounded by ``limit + head_allowance``.
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


@dataclass
class _Fetch:
    """One entry's GET, read (and, for deflated entries, compressed) by a fetch thread.

    Compressing where the bytes arrive spreads deflate over as many cores as there are entries
    in flight; the zipping thread then only passes the compressed pieces through, in order.
    """

    index: int
    entry: Entry
    opened: threading.Event = field(default_factory=threading.Event)
    chunks: collections.deque = field(default_factory=collections.deque)
    ready: threading.Condition = field(default_factory=threading.Condition)
    size: int | None = None
    last_modified: datetime | None = None
    etag: str | None = None
    method: str = "deflate"
    level: int = 1
    compressed: collections.deque = field(default_factory=collections.deque)
    tail: bytes = b""
    crc: int = 0  # of the raw bytes: as read (stored) or once deflated to the end (deflate)
    error: BaseException | None = None

    def put(self, item: object) -> None:
        with self.ready:
            self.chunks.append(item)
            self.ready.notify()

    def get(self, cancelled: Callable[[], bool]) -> object:
        with self.ready:
            while not self.chunks:
                if cancelled():
                    raise JobCancelled("the job was cancelled")
                self.ready.wait(0.5)
            return self.chunks.popleft()


def decide(compression: str, level: int, name: str, first: bytes, size: int) -> tuple[str, int]:
    """(method, deflate level) of one entry, from the job's setting and its first bytes.

    ``auto`` stores what is already compressed when it is small enough to buffer for its CRC;
    bigger incompressible entries are deflated at the fastest level instead (+0.01 %).
    """
    if compression == "store":
        return "store", 0
    if compression == "deflate":
        return "deflate", level
    if choose_method(name, first) == "deflate":
        return "deflate", level
    return ("store", 0) if size <= STORE_BUFFER_LIMIT else ("deflate", 1)


class _ReadAhead:
    """Fetches entries in archive order, up to ``parallel`` at once and ``limit`` bytes ahead."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        plan: Plan,
        *,
        parallel: int,
        limit: int,
        cancelled: Callable[[], bool],
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.plan = plan
        self.entries = plan.entries
        self.budget = _Budget(limit)
        self.cancelled = cancelled
        self.window = max(1, parallel) * 4
        self.pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="get")
        self.deflate_pool = DeflatePool()  # chunks of big members on every core
        self.fetches: dict[int, _Fetch] = {}
        self.next_to_submit = 0

    def _fill(self, upto: int) -> None:
        while self.next_to_submit < min(len(self.entries), upto):
            fetch = _Fetch(self.next_to_submit, self.entries[self.next_to_submit])
            self.fetches[fetch.index] = fetch
            self.pool.submit(self._run, fetch)
            self.next_to_submit += 1

    def _run(self, fetch: _Fetch) -> None:
        """GET one entry; every chunk's memory is reserved in the budget *before* it is read."""
        held = 0
        compressor: ChunkedDeflater | None = None
        try:
            if self.budget.closed:
                return
            with self.store.open_object(self.bucket, fetch.entry.key) as reader:
                fetch.size = reader.size
                fetch.last_modified = reader.last_modified
                fetch.etag = reader.etag
                # a raw chunk and its compressed piece, at the very worst
                reserve = 2 * min(READ_CHUNK, reader.size) + 4096
                self.budget.acquire(fetch.index, reserve)
                held = reserve
                chunks = reader.iter_chunks(READ_CHUNK)
                chunk = next(chunks, b"")
                fetch.method, fetch.level = decide(
                    self.plan.compression, self.plan.level, fetch.entry.name, chunk, reader.size
                )
                fetch.opened.set()
                if fetch.method == "deflate":
                    compressor = ChunkedDeflater(fetch.level, self.deflate_pool)
                while chunk:
                    if compressor is not None:
                        packed = compressor.feed(chunk)  # computes the CRC-32 too
                    else:
                        fetch.crc, packed = crc32(chunk, fetch.crc), b""
                    self.budget.release(fetch.index, held - len(chunk) - len(packed))
                    held = 0
                    if self.budget.closed:
                        return
                    fetch.put((chunk, packed))  # the consumer releases its bytes
                    self.budget.acquire(fetch.index, reserve)
                    held = reserve
                    chunk = next(chunks, b"")
                if compressor is not None:
                    fetch.tail = compressor.finish()
                    fetch.crc = compressor.crc
        except BaseException as exc:  # handed to the consumer, which decides
            fetch.error = exc
            fetch.opened.set()
        finally:
            if compressor is not None:
                compressor.close()  # gives back its chunks still in the pool, if it failed
            if held:
                self.budget.release(fetch.index, held)
            fetch.put(_END)

    def take(self, index: int) -> _Fetch:
        """The fetch of entry ``index``, opened (or failed); later entries start meanwhile."""
        self.budget.advance(index)
        self._fill(index + self.window)
        fetch = self.fetches.pop(index)
        while not fetch.opened.wait(0.5):
            if self.cancelled():
                raise JobCancelled("the job was cancelled")
        return fetch

    def chunks(self, fetch: _Fetch) -> Iterator[bytes]:
        """The entry's raw bytes; the compressed piece of each waits in ``fetch.compressed``."""
        while True:
            item = fetch.get(self.cancelled)
            if item is _END:
                if fetch.error is not None:
                    raise fetch.error
                return
            raw, packed = item  # type: ignore[misc]
            self.budget.release(fetch.index, len(raw) + len(packed))
            fetch.compressed.append(packed)
            yield raw

    def close(self) -> None:
        self.budget.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.deflate_pool.close()


# -- upload -----------------------------------------------------------------------------------


class _PartWriter:
    """Collects ZIP bytes into parts and uploads them concurrently, in bounded memory."""

    def __init__(
        self,
        store: Store,
        bucket: str,
        key: str,
        *,
        known_bytes: int,
        concurrency: int,
        minimum_part: int,
        progress: Progress,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.key = key
        self.known_bytes = known_bytes
        self.minimum_part = minimum_part
        self.progress = progress
        self.slots = threading.Semaphore(max(1, concurrency))
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="put")
        self.futures: list[Future] = []
        self.upload: MultipartUpload | None = None
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.part_number = 1
        self.total = 0

    def write(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        self.total += len(data)
        limit = part_size(self.known_bytes, self.part_number, self.minimum_part)
        if self.buffered >= limit:
            self._flush_part()

    def _check(self) -> None:
        for future in [f for f in self.futures if f.done()]:
            future.result()
            self.futures.remove(future)

    def _flush_part(self) -> None:
        self._check()
        if self.upload is None:
            self.upload = self.store.multipart(self.bucket, self.key).__enter__()
        # A slot first, then the join: a waiting part stays in pieces, never in two copies.
        self.slots.acquire()
        body = b"".join(self.buffer)
        self.buffer, self.buffered = [], 0
        number, self.part_number = self.part_number, self.part_number + 1
        self.futures.append(self.pool.submit(self._send, number, body))

    def _send(self, number: int, body: bytes) -> None:
        try:
            assert self.upload is not None
            self.upload.upload_part(number, body)
            self.progress.add(bytes_written=len(body))
        finally:
            self.slots.release()

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
        if self.upload is not None:
            self.upload.abort()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# -- the archive ------------------------------------------------------------------------------


@dataclass
class _Member:
    """The entry stream-zip is working on."""

    entry: Entry
    fetch: _Fetch
    compressed: int = 0
    size: int = 0
    crc: int = 0


class _Precompressed:
    """What stream-zip takes for a compressor: hands back, in order, the pieces the fetch thread
    compressed for each raw chunk, and counts them for the result marker."""

    def __init__(self, member: _Member) -> None:
        self._member = member

    def compress(self, data: bytes) -> bytes:
        out = self._member.fetch.compressed.popleft()
        self._member.compressed += len(out)
        return out

    def flush(self) -> bytes:
        out = self._member.fetch.tail
        self._member.compressed += len(out)
        return out


@dataclass(frozen=True)
class PipelineLimits:
    read_ahead_bytes: int = 32 * MiB
    max_parallel_gets: int = 32
    upload_concurrency: int = 3
    minimum_part: int = MIN_PART


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
) -> None:
    """Stream the plan's entries into a ZIP at ``s3://output_bucket/target``.

    On return the object is complete and visible; on any exception nothing was written to the
    target (a previous object there is untouched) and no multipart upload is left behind.
    """

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    progress.files_total = len(plan.entries)
    zip64_all = len(plan.entries) > ZIP32_ENTRIES
    state: dict[str, Any] = {"member": None, "zip64": zip64_all, "written": 0, "kept": 0}
    reads = _ReadAhead(
        store,
        input_bucket,
        plan,
        parallel=limits.max_parallel_gets,
        limit=limits.read_ahead_bytes,
        cancelled=cancelled,
    )
    writer = _PartWriter(
        store,
        output_bucket,
        target,
        known_bytes=plan.known_bytes,
        concurrency=limits.upload_concurrency,
        minimum_part=limits.minimum_part,
        progress=progress,
    )

    def get_compressobj() -> _Precompressed:
        return _Precompressed(state["member"])

    def counted(member: _Member, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if cancelled():
                raise JobCancelled("the job was cancelled")
            member.size += len(chunk)
            progress.add(bytes_read=len(chunk))
            yield chunk
        member.crc = member.fetch.crc  # complete: the fetch thread has put its last chunk

    def members() -> Iterator[tuple]:
        for index, entry in enumerate(plan.entries):
            fetch = reads.take(index)
            if fetch.error is not None and fetch.size is None:
                if isinstance(fetch.error, MissingInput) and plan.missing == "skip":
                    progress.skip(entry.key, "missing")
                    continue
                raise fetch.error
            size = fetch.size or 0
            chunks = reads.chunks(fetch)
            if not state["zip64"] and state["written"] + size + size // 1000 + MiB > ZIP32_LIMIT:
                state["zip64"] = True
            crc = None
            if fetch.method == "store" and size <= STORE_BUFFER_LIMIT:
                body = list(chunks)
                crc = fetch.crc
                chunks = iter(body)
            elif fetch.method == "store":
                crc = _crc_pass(store, input_bucket, entry.key, fetch, cancelled)
            member = _Member(entry, fetch)
            state["member"] = member
            if crc is not None:
                zip_method = (NO_COMPRESSION_64 if state["zip64"] else NO_COMPRESSION_32)(size, crc)
            else:
                zip_method = ZIP_64 if state["zip64"] else ZIP_32
            yield (
                entry.name,
                clamp_mtime(entry.last_modified or fetch.last_modified),
                FILE_MODE,
                zip_method,
                counted(member, chunks),
            )
            _record(member, progress)
            state["kept"] += 1

    def _record(member: _Member, progress: Progress) -> None:
        method = member.fetch.method
        compressed = member.compressed if method == "deflate" else member.size
        progress.entry_done(
            EntryResult(
                member.entry.name, member.entry.key, member.size, compressed, member.crc, method
            )
        )

    try:
        for chunk in stream_zip(members(), chunk_size=MiB, get_compressobj=get_compressobj):
            state["written"] += len(chunk)
            writer.write(chunk)
        if state["kept"] == 0:
            raise MissingInput("every input was missing: no archive was written")
        writer.finish()
    except BaseException as exc:
        try:
            writer.abort()
        finally:
            reads.close()
        if isinstance(exc, (JobError, KeyboardInterrupt)):
            raise
        if isinstance(exc, ZipIntegrityError):
            member = state["member"]
            key = member.entry.key if member is not None else "an input"
            raise StorageError(f"{key} changed while being read; run the job again") from exc
        if type(exc).__module__.startswith("stream_zip"):
            raise InternalError(f"the ZIP could not be written: {type(exc).__name__}") from exc
        raise
    writer.close()
    reads.close()


def _crc_pass(
    store: Store, bucket: str, key: str, fetch: _Fetch, cancelled: Callable[[], bool]
) -> int:
    """CRC-32 of an object by reading it once more (explicit ``store`` of a big entry).

    The second read must see the same object as the first (size and ETag); stream-zip checks the
    CRC again as the stored bytes pass, so a change that slips between them fails the job too.
    """
    value = 0
    with store.open_object(bucket, key) as reader:
        if reader.size != fetch.size or (reader.etag and fetch.etag and reader.etag != fetch.etag):
            raise StorageError(f"s3://{bucket}/{key} changed while being read; run the job again")
        for chunk in reader.iter_chunks(READ_CHUNK):
            if cancelled():
                raise JobCancelled("the job was cancelled")
            value = crc32(chunk, value)
    return value
