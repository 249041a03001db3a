"""Manifest + listings → the ordered entries of one archive. Pure apart from the lister it is given.

Plain keys keep ``size``/``last_modified`` unknown: the GET that reads them supplies both, so no
HEAD request is spent per file. Prefix entries come from the listing, which already has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from watcher.errors import InvalidManifest, MissingInput
from watcher.layout import MARKER_SUFFIXES
from watcher.manifest import MAX_ENTRIES, Manifest, name_key, validate_entry_name


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    etag: str | None = None


@dataclass(frozen=True)
class Entry:
    key: str
    name: str
    size: int | None
    last_modified: datetime | None


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]
    skipped: tuple[Skipped, ...]
    compression: str
    missing: str
    level: int

    @property
    def known_bytes(self) -> int:
        """Input bytes known before reading (prefix entries); plain keys count when read."""
        return sum(e.size for e in self.entries if e.size is not None)


class ZipDefaults(Protocol):
    compression: str
    level: int
    missing: str


def build_plan(
    manifest: Manifest,
    list_prefix: Callable[[str], Iterable[ObjectInfo]],
    *,
    defaults: ZipDefaults,
    target_key: str,
    same_bucket: bool,
) -> Plan:
    """Expand prefixes, check every name, and fix the archive's order (manifest order).

    Every name extracts as written (CONTRACT §7.9): names equal after NFC are duplicates, no
    name is both a file and a directory of another entry, and an object whose key ends in ``/``
    becomes a directory entry only when it holds no data (else its bytes would be lost).
    """
    missing = manifest.missing or defaults.missing
    own_outputs = {target_key, *(target_key + s for s in MARKER_SUFFIXES)} if same_bucket else set()
    entries: list[Entry] = []
    skipped: list[Skipped] = []
    names: dict[str, str] = {}

    def add(entry: Entry) -> None:
        compared = name_key(entry.name)
        if compared in names:
            raise InvalidManifest(
                f"entry name {entry.name!r} is used twice (by {names[compared]!r} and "
                f"{entry.key!r})"
            )
        names[compared] = entry.key
        entries.append(entry)
        if len(entries) > MAX_ENTRIES:
            raise InvalidManifest(f"the archive would have more than {MAX_ENTRIES} entries")

    for spec in manifest.files:
        if spec.key is not None:
            add(Entry(spec.key, spec.name, None, None))
            continue
        assert spec.prefix is not None
        found = False
        for obj in list_prefix(spec.prefix):
            if obj.key in own_outputs:
                skipped.append(Skipped(obj.key, "the job's own output"))
                continue
            name = spec.name + obj.key[len(spec.prefix) :]
            if not name and obj.key == spec.prefix:
                continue  # the folder object of a prefix flattened into the archive's root
            reason = validate_entry_name(name)
            if reason is not None:
                raise InvalidManifest(f"object {obj.key!r} would be entry {name!r}, which {reason}")
            if name.endswith("/") and obj.size:
                raise InvalidManifest(
                    f"object {obj.key!r} holds {obj.size} bytes but its key ends in '/': "
                    f"entry {name!r} would extract as an empty directory"
                )
            found = True
            add(Entry(obj.key, name, obj.size, obj.last_modified))
        if not found:
            if missing == "fail":
                raise MissingInput(f"no objects under the prefix {spec.prefix!r}")
            skipped.append(Skipped(spec.prefix, "no objects under this prefix"))
    _no_file_is_a_directory(entries)
    return Plan(
        entries=tuple(entries),
        skipped=tuple(skipped),
        compression=manifest.compression or defaults.compression,
        missing=missing,
        level=defaults.level,
    )


def _no_file_is_a_directory(entries: list[Entry]) -> None:
    """A file entry ``d/a`` next to ``d/a/b`` (or a directory entry ``d/a/``) cannot both be
    extracted: one of them would fail or replace the other."""
    files = {name_key(e.name): e.name for e in entries if not e.name.endswith("/")}
    for entry in entries:
        parts = name_key(entry.name).removesuffix("/").split("/")
        for depth in range(1, len(parts) + (1 if entry.name.endswith("/") else 0)):
            parent = "/".join(parts[:depth])
            if parent in files:
                raise InvalidManifest(
                    f"entry name {files[parent]!r} is both a file and a directory (of "
                    f"{entry.name!r})"
                )
