"""The ZIP format's few structures, as pure functions: values in, bytes out, no I/O.

Layout follows PKWARE's APPNOTE 6.3.10 (local file header 4.3.7, data descriptor 4.3.9, central
directory header 4.3.12, ZIP64 end records 4.3.14-4.3.15, end of central directory 4.3.16,
ZIP64 extra field 4.5.3, Info-ZIP's extended timestamp ``UT``). The archive is ours to lay out,
so it is laid out for every reader (CONTRACT §10):

* ZIP64 only where a value needs it: a member's local header carries the ZIP64 extra only when
  its sizes may reach 4 GiB; its central directory header carries only the fields that do not
  fit (size, compressed size, local header offset — in that order); the ZIP64 end records appear
  only when the entry count, the directory's size or its offset do not fit, with disk numbers 0.
  A member below 4 GiB that starts past the 4 GiB offset keeps a ZIP32 local header.
* A data descriptor only for a member whose CRC-32 and sizes are unknown when its header is
  written (``Member.crc32 is None``); 16 bytes unless its local header is ZIP64.
* Names are UTF-8 (general purpose bit 11); each member carries the ``UT`` extra with its
  modification time (signed 32-bit UNIX seconds: callers clamp to 1980-2038).
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

STORED = 0
DEFLATED = 8
LIMIT32 = 0xFFFFFFFF
LIMIT16 = 0xFFFF
FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755

_UTF8 = 0x0800
_DESCRIPTOR = 0x0008
_UNIX = 3
_V20 = 20
_V45 = 45  # ZIP64
_ZIP64_EXTRA = 0x0001
_UT_EXTRA = 0x5455

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_DESCRIPTOR32 = struct.Struct("<4sIII")
_DESCRIPTOR64 = struct.Struct("<4sIQQ")
_END64 = struct.Struct("<4sQHHIIQQQQ")
_LOCATOR64 = struct.Struct("<4sIQI")
_END = struct.Struct("<4sHHHHIIH")
_UT = struct.Struct("<HHBl")

LOCAL_SIG = b"PK\x03\x04"
CENTRAL_SIG = b"PK\x01\x02"
DESCRIPTOR_SIG = b"PK\x07\x08"
END64_SIG = b"PK\x06\x06"
LOCATOR64_SIG = b"PK\x06\x07"
END_SIG = b"PK\x05\x06"


class FrameError(ValueError):
    """Values the ZIP format cannot hold (a name over 65,535 bytes, a streamed member that
    outgrew the ZIP32 descriptor it announced)."""


@dataclass(frozen=True)
class Member:
    """What a local header says about one member.

    ``crc32``, ``size`` and ``compressed_size`` are all set when they are known before the
    member's data is written (then no data descriptor follows), or all ``None`` (streamed: a
    descriptor follows the data). ``large`` marks a streamed member that may reach 4 GiB: its
    local header carries a ZIP64 extra and its descriptor 64-bit sizes.
    """

    name: str
    modified: datetime
    method: int
    crc32: int | None = None
    size: int | None = None
    compressed_size: int | None = None
    large: bool = False

    @property
    def streamed(self) -> bool:
        return self.crc32 is None

    @property
    def zip64_local(self) -> bool:
        if self.streamed:
            return self.large
        assert self.size is not None and self.compressed_size is not None
        return max(self.size, self.compressed_size) >= LIMIT32


@dataclass(frozen=True)
class Written:
    """A member once its data is written: what its central directory header records."""

    member: Member
    offset: int
    crc32: int
    size: int
    compressed_size: int


def _name(member: Member) -> bytes:
    encoded = member.name.encode("utf-8")
    if len(encoded) > LIMIT16:
        raise FrameError(f"entry name of {len(encoded)} bytes: at most 65,535 fit")
    return encoded


def dos_time(moment: datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS format, two-second resolution, of a 1980-2107 UTC moment."""
    moment = moment.astimezone(UTC)
    return (
        moment.second // 2 | moment.minute << 5 | moment.hour << 11,
        moment.day | moment.month << 5 | (moment.year - 1980) << 9,
    )


def _ut_extra(moment: datetime) -> bytes:
    return _UT.pack(_UT_EXTRA, 5, 1, int(moment.timestamp()))


# (DOS time, DOS date, UT extra) by moment: the members of a job share few modification times,
# and each member needs them twice (local and central header).
_STAMPS: dict[datetime, tuple[int, int, bytes]] = {}


def _stamps(moment: datetime) -> tuple[int, int, bytes]:
    found = _STAMPS.get(moment)
    if found is None:
        if len(_STAMPS) > 4096:
            _STAMPS.clear()
        found = _STAMPS[moment] = (*dos_time(moment), _ut_extra(moment))
    return found


def _flags(member: Member) -> int:
    return _UTF8 | (_DESCRIPTOR if member.streamed else 0)


def local_header(member: Member) -> bytes:
    """The local file header (with name and extras) that precedes a member's data."""
    name = _name(member)
    extra = b""
    zip64 = member.zip64_local
    if zip64:
        extra = struct.pack(
            "<HHQQ", _ZIP64_EXTRA, 16, member.size or 0, member.compressed_size or 0
        )
        sizes = (LIMIT32, LIMIT32)
    else:
        sizes = (member.compressed_size or 0, member.size or 0)
    time, date, ut = _stamps(member.modified)
    extra += ut
    return (
        _LOCAL.pack(
            LOCAL_SIG,
            _V45 if zip64 else _V20,
            _flags(member),
            member.method,
            time,
            date,
            member.crc32 or 0,
            *sizes,
            len(name),
            len(extra),
        )
        + name
        + extra
    )


def data_descriptor(member: Member, crc32: int, size: int, compressed_size: int) -> bytes:
    """The descriptor after a streamed member's data; 64-bit sizes only if its header said so."""
    if member.large:
        return _DESCRIPTOR64.pack(DESCRIPTOR_SIG, crc32, compressed_size, size)
    if max(size, compressed_size) >= LIMIT32:
        raise FrameError(f"{member.name}: {size:,} bytes outgrew its ZIP32 data descriptor")
    return _DESCRIPTOR32.pack(DESCRIPTOR_SIG, crc32, compressed_size, size)


def central_header(written: Written) -> bytes:
    """One central directory header; a ZIP64 extra holds exactly the values that do not fit."""
    member = written.member
    name = _name(member)
    wide = (
        [
            value
            for value in (written.size, written.compressed_size, written.offset)
            if value >= LIMIT32
        ]
        if max(written.size, written.compressed_size, written.offset) >= LIMIT32
        else None
    )
    extra = struct.pack(f"<HH{len(wide)}Q", _ZIP64_EXTRA, 8 * len(wide), *wide) if wide else b""
    time, date, ut = _stamps(member.modified)
    extra += ut
    version = _V45 if wide or member.zip64_local else _V20
    is_dir = member.name.endswith("/")
    mode = DIR_MODE if is_dir else FILE_MODE
    return (
        _CENTRAL.pack(
            CENTRAL_SIG,
            _UNIX << 8 | version,
            version,
            _flags(member),
            member.method,
            time,
            date,
            written.crc32,
            min(written.compressed_size, LIMIT32),
            min(written.size, LIMIT32),
            len(name),
            len(extra),
            0,  # comment length
            0,  # disk number
            0,  # internal attributes
            mode << 16 | (0x10 if is_dir else 0),  # UNIX mode; MS-DOS directory bit
            min(written.offset, LIMIT32),
        )
        + name
        + extra
    )


def end_records(count: int, directory_offset: int, directory_size: int) -> bytes:
    """What follows the central directory: ZIP64 end record and locator only when a value needs
    them, then the end of central directory record. Every disk number is 0 (one disk)."""
    needs64 = count >= LIMIT16 or directory_offset >= LIMIT32 or directory_size >= LIMIT32
    out = b""
    if needs64:
        end64_offset = directory_offset + directory_size
        out += _END64.pack(
            END64_SIG,
            _END64.size - 12,
            _UNIX << 8 | _V45,
            _V45,
            0,  # this disk
            0,  # disk where the directory starts
            count,
            count,
            directory_size,
            directory_offset,
        )
        out += _LOCATOR64.pack(LOCATOR64_SIG, 0, end64_offset, 1)
    entries = min(count, LIMIT16)
    return out + _END.pack(
        END_SIG,
        0,
        0,
        entries,
        entries,
        min(directory_size, LIMIT32),
        min(directory_offset, LIMIT32),
        0,
    )


class Directory:
    """The central directory as members are written: their headers, in order, and its size.

    Holds only the encoded headers (about 60 bytes plus the name each), so 100,000 entries stay
    a few MiB.
    """

    def __init__(self) -> None:
        self._headers: list[bytes] = []
        self.size = 0

    def add(self, written: Written) -> None:
        header = central_header(written)
        self._headers.append(header)
        self.size += len(header)

    def __len__(self) -> int:
        return len(self._headers)

    def finish(self, offset: int) -> bytes:
        """The directory and end records for a directory that starts at ``offset``."""
        return b"".join(self._headers) + end_records(len(self._headers), offset, self.size)
