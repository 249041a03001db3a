"""The reader matrix (CONTRACT §10): open one ZIP with every independent reader we know of and check
that each finds exactly the expected entries — names, sizes, CRC-32s and bytes.

    from readers import check_with_all_readers
    check_with_all_readers(path, {"a.txt": b"...", "big.bin": (size, crc32)}, parse=True)

Readers (``READERS``): Python ``zipfile``; Info-ZIP ``unzip`` (``-t``, ``-lv``, ``-p``); 7-Zip
(``t``, ``l -slt``, ``x -so``); libarchive ``bsdtar`` (``-tv``, ``-xO``) on the file and on a pipe;
Java 17 ``ZipFile`` and ``ZipInputStream`` (ZipReaders.java, compiled once into the cache);
Node ``yauzl`` 2.10 and 3.x, ``node-stream-zip``, ``unzipper`` ``Open`` and ``Parse`` (readers.cjs,
with the versions pinned in package.json/package-lock.json installed by ``npm ci`` into the
cache). The command-line readers stream every member to stdout, cut at the sizes they list. Every
reader yields one row per entry: the name, then size, CRC-32 and SHA-256 computed over the bytes it
returned, and the size and CRC-32 it declares where it has them; the rows are compared with the
expectation and every reader that disagrees or fails is named in one AssertionError.

``parse``: ``unzipper`` ``Parse`` cuts a member at the first data-descriptor signature it meets, so
the contract requires it only for archives whose members have no data descriptor; the caller says
whether this archive is one.

Installation (once per cache directory, ``.cache/readers/`` at the repository root unless
``READERS_CACHE`` names another): ``javac`` and ``npm ci`` into fresh directories named by a hash of
their sources, renamed into place when complete. Debian's tools (unzip, 7zip, libarchive-tools, the
JDK, node) are installed by ``.ci/run``. A reader that cannot be set up fails the check under
``CI=true`` (CI must prove every reader), and elsewhere — a developer without npm access, say — the
other readers still run and then the test is skipped naming what was missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
JAVA_SOURCE = HERE / "ZipReaders.java"
NODE_SCRIPT = HERE / "readers.cjs"
NODE_FILES = ("package.json", "package-lock.json")

# Every reader, in the order reports list them.
READERS = (
    "python-zipfile",
    "unzip",
    "7zip",
    "bsdtar-file",
    "bsdtar-stdin",
    "java-zipfile",
    "java-zipinputstream",
    "yauzl-2.10",
    "yauzl-3",
    "node-stream-zip",
    "unzipper-open",
    "unzipper-parse",
)
NODE_READERS = {
    "yauzl-2.10": "yauzl2",
    "yauzl-3": "yauzl3",
    "node-stream-zip": "node-stream-zip",
    "unzipper-open": "unzipper-open",
    "unzipper-parse": "unzipper-parse",
}
READER_TIMEOUT = 600.0  # seconds one reader may take on one archive before it counts as failed
CHUNK = 1 << 20


class ReaderError(Exception):
    """A reader refused the archive or returned something else than the expected entries."""


@dataclass(frozen=True)
class Expected:
    size: int
    crc32: int
    sha256: str | None  # None: the bytes are checked through their CRC-32 only


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    crc32: int
    sha256: str | None
    declared_size: int | None = None
    declared_crc32: int | None = None


def expectation(value: bytes | tuple) -> Expected:
    """``bytes``, or ``(size, crc32)``, or ``(size, crc32, sha256_hex)`` for big members."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return Expected(len(data), zlib.crc32(data), hashlib.sha256(data).hexdigest())
    size, crc, *rest = value
    return Expected(int(size), int(crc), rest[0] if rest else None)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def cache_dir() -> Path:
    return Path(os.environ.get("READERS_CACHE") or REPO / ".cache" / "readers")


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **kwargs.pop("env", {})}
    result = subprocess.run(argv, capture_output=True, timeout=READER_TIMEOUT, env=env, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).decode(errors="replace").strip()[-1500:]
        raise ReaderError(f"`{' '.join(argv[:3])} ...` exited {result.returncode}: {tail}")
    return result


def _json_rows(stdout: bytes) -> list[Row]:
    return [Row(**item) for item in json.loads(stdout)]


# --- the readers: each takes the archive and returns its rows -----------------------------------


def _python_zipfile(path: Path) -> list[Row]:
    rows = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            sha = hashlib.sha256()
            crc = size = 0
            with archive.open(info) as member:  # checks the CRC at the member's end
                while chunk := member.read(CHUNK):
                    sha.update(chunk)
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
            rows.append(Row(info.filename, size, crc, sha.hexdigest(), info.file_size, info.CRC))
    return rows


def _split_rows(argv: list[str], listing: list[tuple[str, int, int | None]], **kwargs) -> list[Row]:
    """Rows from a reader that writes every member's bytes to stdout, one after the other, in
    the order of its own ``listing`` of (name, size, declared CRC-32): each member is cut at the
    size the reader itself lists, so no file is written and the bytes are read as they stream."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env, **kwargs)
        rows = []
        try:
            for name, size, declared_crc in listing:
                sha = hashlib.sha256()
                crc = got = 0
                while got < size:
                    chunk = proc.stdout.read(min(CHUNK, size - got))
                    if not chunk:
                        break
                    sha.update(chunk)
                    crc = zlib.crc32(chunk, crc)
                    got += len(chunk)
                rows.append(Row(name, got, crc, sha.hexdigest(), size, declared_crc))
            trailing = len(proc.stdout.read())
            code = proc.wait(timeout=READER_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        errors.seek(0)
        if code != 0:
            tail = errors.read().decode(errors="replace").strip()[-1500:]
            raise ReaderError(f"`{' '.join(argv[:3])} ...` exited {code}: {tail}")
    if trailing:
        raise ReaderError(f"{trailing} bytes more than the listed sizes add up to")
    return rows


def _unzip(path: Path) -> list[Row]:
    """``unzip -t``, the ``-lv`` listing, and every member's bytes through ``unzip -p``."""
    _run(["unzip", "-t", "-qq", str(path)])
    listing = _run(["unzip", "-lv", str(path)]).stdout.decode()
    lines = listing.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("--------")]
    if len(rules) < 2:
        raise ReaderError(f"unzip -lv: unexpected listing {listing[:500]!r}")
    members = []
    for line in lines[rules[0] + 1 : rules[1]]:
        length, _method, _size, _ratio, _date, _time, crc, name = line.split(None, 7)
        members.append((name, int(length), int(crc, 16)))
    return _split_rows(["unzip", "-p", str(path)], members)


def seven_zip() -> str | None:
    return shutil.which("7zz") or shutil.which("7z") or shutil.which("7za")


def _7zip(path: Path) -> list[Row]:
    """``7z t``, the ``l -slt`` listing, and every member's bytes through ``x -so``."""
    tool = seven_zip() or "7zz"
    _run([tool, "t", "-bd", str(path)])
    listing = _run([tool, "l", "-slt", "-sccUTF-8", "-bd", str(path)]).stdout.decode()
    members = []
    _, _, body = listing.partition("\n----------\n")
    for block in body.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "Path" not in fields:
            continue
        folder = fields.get("Folder") == "+"
        name = fields["Path"] + ("/" if folder and not fields["Path"].endswith("/") else "")
        crc = fields.get("CRC") or None
        members.append((name, int(fields.get("Size") or 0), int(crc, 16) if crc else None))
    return _split_rows([tool, "x", "-so", "-bd", "-sccUTF-8", str(path)], members)


def _bsdtar_listing(output: bytes) -> list[tuple[str, int, int | None]]:
    members = []
    for line in output.decode().splitlines():
        _mode, _links, _uid, _gid, size, _month, _day, _time, name = line.split(None, 8)
        members.append((name, int(size), None))
    return members


def _bsdtar_file(path: Path) -> list[Row]:
    """The ``-tv`` listing and every member's bytes through ``-xO`` (libarchive, seeking)."""
    members = _bsdtar_listing(_run(["bsdtar", "-tvf", str(path)]).stdout)
    return _split_rows(["bsdtar", "-xOf", str(path)], members)


def _bsdtar_stdin(path: Path) -> list[Row]:
    """The same through pipes, so libarchive cannot seek to the central directory: it streams.

    Extracted into a directory rather than cut from ``-xO``: streaming, libarchive lists a member
    whose sizes follow its data (a data descriptor) as 0 bytes, so its listing cannot cut the
    concatenated output; such a member's declared size counts as unknown.
    """

    def piped(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        with path.open("rb") as handle:
            cat = subprocess.Popen(["cat"], stdin=handle, stdout=subprocess.PIPE)
            try:
                return _run(argv, stdin=cat.stdout, **kwargs)
            finally:
                cat.stdout.close()
                cat.wait()

    members = _bsdtar_listing(piped(["bsdtar", "-tvf", "-"]).stdout)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bsdtar-") as scratch:
        piped(["bsdtar", "-xf", "-", "-C", scratch])
        for name, listed, _ in members:
            target = Path(scratch, name)
            if name.endswith("/"):
                rows.append(Row(name, 0, 0, None, listed))
                continue
            sha, crc, size = hashlib.sha256(), 0, 0
            with target.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    sha.update(chunk)
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
            declared = listed if listed or not size else None
            rows.append(Row(name, size, crc, sha.hexdigest(), declared))
    return rows


class Matrix:
    """The readers set up in one cache directory; ``missing`` says which could not be, and why."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.missing: dict[str, str] = {}
        self.java_classes: Path | None = None
        self.node_modules: Path | None = None
        self.readers: dict[str, Callable[[Path], list[Row]]] = {
            "python-zipfile": _python_zipfile,
            "unzip": _unzip,
            "7zip": _7zip,
            "bsdtar-file": _bsdtar_file,
            "bsdtar-stdin": _bsdtar_stdin,
        }
        tools = {"unzip": "unzip", "bsdtar-file": "bsdtar", "bsdtar-stdin": "bsdtar"}
        for name, tool in tools.items():
            if not shutil.which(tool):
                self.missing[name] = f"`{tool}` is not installed (Debian: unzip, libarchive-tools)"
        if not seven_zip():
            self.missing["7zip"] = "none of `7zz`, `7z`, `7za` is installed (Debian: 7zip)"
        self._setup_java()
        self._setup_node()
        for name in self.missing:
            self.readers.pop(name, None)

    # Both set-ups build into a temporary directory and rename it into place, under a lock, so a
    # half-finished install is never used and concurrent sessions do not trip over each other.
    @contextlib.contextmanager
    def _locked(self):
        self.cache.mkdir(parents=True, exist_ok=True)
        with (self.cache / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _build(self, final: Path, build: Callable[[Path], None]) -> None:
        with self._locked():
            if final.is_dir():
                return
            work = Path(tempfile.mkdtemp(dir=self.cache, prefix=".build-"))
            try:
                build(work)
                work.rename(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _setup_java(self) -> None:
        names = ("java-zipfile", "java-zipinputstream")
        if not (shutil.which("javac") and shutil.which("java")):
            for name in names:
                self.missing[name] = "`javac`/`java` not installed (Debian: openjdk-17-jdk)"
            return
        tag = hashlib.sha256(JAVA_SOURCE.read_bytes()).hexdigest()[:12]
        final = self.cache / f"java-{tag}"

        def build(work: Path) -> None:
            argv = ["javac", "--release", "17", "-d", str(work), str(JAVA_SOURCE)]
            _run(argv)

        try:
            self._build(final, build)
        except (ReaderError, OSError, subprocess.TimeoutExpired) as exc:
            for name in names:
                self.missing[name] = f"compiling ZipReaders.java failed: {exc}"
            return
        self.java_classes = final
        self.readers["java-zipfile"] = self._java("zipfile")
        self.readers["java-zipinputstream"] = self._java("zipinputstream")

    def _java(self, mode: str) -> Callable[[Path], list[Row]]:
        def read(path: Path) -> list[Row]:
            argv = ["java", "-Xmx512m", "-cp", str(self.java_classes), "ZipReaders", mode]
            if mode == "zipinputstream":  # a stream, as a download would give it
                with path.open("rb") as stdin:
                    return _json_rows(_run([*argv, "-"], stdin=stdin).stdout)
            return _json_rows(_run([*argv, str(path)]).stdout)

        return read

    def _setup_node(self) -> None:
        if not (shutil.which("node") and shutil.which("npm")):
            for name in NODE_READERS:
                self.missing[name] = "`node`/`npm` not installed (Debian: nodejs, npm)"
            return
        tag = hashlib.sha256(b"".join((HERE / f).read_bytes() for f in NODE_FILES)).hexdigest()
        final = self.cache / f"node-{tag[:12]}"

        def build(work: Path) -> None:
            for name in NODE_FILES:
                shutil.copyfile(HERE / name, work / name)
            argv = ["npm", "ci", "--prefix", str(work), "--no-audit", "--no-fund", "--silent"]
            _run(argv, env={"npm_config_update_notifier": "false"})

        try:
            self._build(final, build)
        except (ReaderError, OSError, subprocess.TimeoutExpired) as exc:
            for name in NODE_READERS:
                self.missing[name] = f"`npm ci` of tests/readers/package.json failed: {exc}"
            return
        self.node_modules = final / "node_modules"
        for name, mode in NODE_READERS.items():
            self.readers[name] = self._node(mode)

    def _node(self, mode: str) -> Callable[[Path], list[Row]]:
        def read(path: Path) -> list[Row]:
            argv = ["node", str(NODE_SCRIPT), mode, str(path)]
            return _json_rows(_run(argv, env={"NODE_PATH": str(self.node_modules)}).stdout)

        return read

    def read(self, reader: str, path: Path) -> list[Row]:
        return self.readers[reader](path)


_MATRIX: dict[Path, Matrix] = {}
_MATRIX_LOCK = threading.Lock()


def matrix() -> Matrix:
    """The readers of this process's cache directory, set up on first use."""
    with _MATRIX_LOCK:
        cache = cache_dir()
        if cache not in _MATRIX:
            _MATRIX[cache] = Matrix(cache)
        return _MATRIX[cache]


def compare(rows: list[Row], wanted: Mapping[str, Expected]) -> list[str]:
    """What is wrong with one reader's rows; empty when they match ``wanted`` exactly."""
    problems: list[str] = []
    seen: dict[str, Row] = {}
    for row in rows:
        if row.name in seen:
            problems.append(f"{row.name!r} listed twice")
        seen[row.name] = row
    missing = sorted(set(wanted) - set(seen))
    extra = sorted(set(seen) - set(wanted))
    if missing:
        problems.append(f"{len(missing)} expected entries missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected entries, e.g. {extra[:3]}")
    for name in sorted(set(wanted) & set(seen)):
        want, row = wanted[name], seen[name]
        if row.size != want.size:
            problems.append(f"{name!r}: returned {row.size} bytes, expected {want.size}")
        if row.crc32 != want.crc32:
            problems.append(f"{name!r}: bytes' CRC-32 {row.crc32:08x}, expected {want.crc32:08x}")
        if want.sha256 is not None and row.sha256 is not None and row.sha256 != want.sha256:
            problems.append(f"{name!r}: bytes differ (SHA-256)")
        if row.declared_size not in (None, -1) and row.declared_size != want.size:
            problems.append(f"{name!r}: declares size {row.declared_size}, expected {want.size}")
        if row.declared_crc32 not in (None, -1) and row.declared_crc32 != want.crc32:
            problems.append(
                f"{name!r}: declares CRC-32 {row.declared_crc32:08x}, expected {want.crc32:08x}"
            )
    if len(problems) > 8:
        problems = [*problems[:8], f"... and {len(problems) - 8} more"]
    return problems


def run_readers(
    zip_path: Path,
    expected: Mapping[str, bytes | tuple],
    readers: Iterable[str],
    *,
    workers: int = 2,
) -> dict[str, list[str]]:
    """Run ``readers`` on the archive; {reader: problems}, an empty list where it read it right.

    A reader that is not set up is not in the answer (see ``Matrix.missing``).
    """
    m = matrix()
    wanted = {name: expectation(value) for name, value in expected.items()}
    path = Path(zip_path)

    def one(reader: str) -> tuple[str, list[str]]:
        try:
            rows = m.read(reader, path)
        except ReaderError as exc:
            return reader, [f"failed: {exc}"]
        except subprocess.TimeoutExpired:
            return reader, [f"failed: no answer within {READER_TIMEOUT:.0f} s"]
        except Exception as exc:  # Python's zipfile raises its own errors: a failure like others
            return reader, [f"failed: {type(exc).__name__}: {exc}"]
        return reader, compare(rows, wanted)

    chosen = [r for r in readers if r in m.readers]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, chosen))


def check_with_all_readers(
    zip_path: Path,
    expected: Mapping[str, bytes | tuple],
    *,
    parse: bool,
    readers: Iterable[str] | None = None,
) -> dict[str, list[str]]:
    """Assert that every reader (or those named in ``readers``) reads exactly ``expected``.

    ``parse``: include ``unzipper`` ``Parse`` (only for archives whose members have no data
    descriptor). One AssertionError names every reader that failed and why. Readers that are not
    installed fail the check under CI=true; elsewhere the test is skipped after the others passed.
    """
    chosen = list(readers or READERS)
    unknown = set(chosen) - set(READERS)
    assert not unknown, f"unknown readers {sorted(unknown)}; known: {READERS}"
    if not parse:
        chosen = [r for r in chosen if r != "unzipper-parse"]
    m = matrix()
    absent = {r: m.missing[r] for r in chosen if r in m.missing}
    if absent and in_ci():
        raise AssertionError(f"readers not installed under CI: {absent}")
    results = run_readers(zip_path, expected, chosen)
    failed = {reader: problems for reader, problems in results.items() if problems}
    if failed:
        report = "\n".join(
            f"  {reader}: " + "\n      ".join(problems) for reader, problems in failed.items()
        )
        raise AssertionError(
            f"{len(failed)} of {len(results)} readers disagree on {Path(zip_path).name}:\n{report}"
        )
    if absent:
        import pytest

        pytest.skip(f"{len(results)} readers agreed, but these are not set up here: {absent}")
    return results
