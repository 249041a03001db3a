"""Parse and validate a job manifest (CONTRACT §3). Pure: bytes in, a frozen Manifest out.

Everything a manifest can get wrong is caught here, before anything is written anywhere, and
reported as :class:`InvalidManifest` (or :class:`TargetConflict` for an unusable target) with a
message that names the culprit: the field, the index in ``files``, the offending name.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import urllib.parse
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from watcher.errors import InvalidManifest, TargetConflict
from watcher.layout import MARKER_SUFFIXES  # a target must be none of these keys (§7.8)

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 100_000
MAX_KEY_BYTES = 1024
COMPRESSIONS = ("auto", "deflate", "store")
MISSING_MODES = ("fail", "skip")
_FIELDS = {"files", "target", "compression", "missing", "id", "notify_url"}
_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_MAX_DEPTH = 64
# Unicode bidirectional embeddings, overrides and isolates: they make a name display as another
# (``evil\u202etxt.exe`` shows as ``evilexe.txt``) (CONTRACT §7.9).
_BIDI_CONTROL = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, exactly
_KEY_CONTROL = re.compile("[\x00-\x1f\x7f]")  # what B2 refuses in a key (CONTRACT §8)
_SURROGATE = re.compile("[\ud800-\udfff]")
# JSON's structure as a flat token stream: strings whole, runs of brackets, separators. Strings
# are skipped at C speed, so scanning a 16 MiB manifest costs tokens, not characters.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]+|[\]}]+|[:,]', re.S)


@dataclass(frozen=True)
class FileSpec:
    """One item of ``files``: either a single ``key`` or a whole ``prefix``, and its entry name."""

    key: str | None
    prefix: str | None
    name: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileSpec, ...]
    target: str
    compression: str | None
    missing: str | None
    id: str | None
    notify_url: str | None = None  # completion callback of this job only (CONTRACT §9)


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_entry_name(name: str) -> str | None:
    """Why ``name`` is not a safe ZIP entry name, or None when it is.

    A safe name extracts as written on every reader (CONTRACT §3, §7.9): relative, no segment a
    reader would drop or resolve (``..``, ``.``, an empty one), nothing that displays as another
    name. A trailing ``/`` makes a directory entry; whether that fits the object is the plan's
    call (:func:`watcher.plan.build_plan`), since only the listing knows its size.
    """
    if not name:
        return "is empty"
    if name.startswith("/"):
        return "is absolute"
    if "\\" in name:
        return "contains a backslash"
    if _CONTROL.search(name):
        return "contains a NUL or control character"
    if _SURROGATE.search(name):
        return "contains a lone surrogate"
    if _BIDI_CONTROL.search(name):
        return "contains a Unicode bidirectional control (U+202A-U+202E, U+2066-U+2069)"
    segments = name.removesuffix("/").split("/")
    if ".." in segments:
        return "contains a '..' segment"
    if "." in segments:
        return "contains a '.' segment"
    if "" in segments:
        return "contains an empty segment ('//')"
    if len(name.encode("utf-8")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if re.match(r"^[A-Za-z]:", name):
        return "starts with a drive letter"
    return None


def name_key(name: str) -> str:
    """What two entry names are compared by: equal after Unicode NFC means the same file on
    extraction (macOS stores NFD, Linux keeps bytes), so they are duplicates (CONTRACT §7.9)."""
    return unicodedata.normalize("NFC", name)


def _check_key(key: str, where: str) -> None:
    if not key:
        raise InvalidManifest(f"{where}: the key is empty")
    if _SURROGATE.search(key):
        raise InvalidManifest(f"{where}: the key {_show(key)} is not valid UTF-8 text")
    if _KEY_CONTROL.search(key):
        raise InvalidManifest(
            f"{where}: the key {_show(key)} contains a NUL or control character (below 32, or DEL)"
        )
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidManifest(f"{where}: the key is longer than {MAX_KEY_BYTES} bytes")


def _check_name(name: str, where: str) -> None:
    reason = validate_entry_name(name)
    if reason is not None:
        raise InvalidManifest(f"{where}: entry name {_show(name)} {reason}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidManifest(f"the JSON object has the field {_show(key)} twice")
        seen[key] = value
    return seen


def _depth_ok(text: str) -> bool:
    """Cheap guard before json.loads: nesting deeper than any manifest needs is rejected."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] in "[{":
            depth += len(token)
            if depth > _MAX_DEPTH:
                return False
        elif token[0] in "]}":
            depth -= len(token)
    return True


def decode(raw: bytes) -> dict[str, Any]:
    """Bytes → the manifest's JSON object, or InvalidManifest saying why not."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidManifest("the manifest starts with a byte order mark (BOM): plain UTF-8 only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidManifest(f"the manifest is not UTF-8 (byte {exc.start})") from None
    if not _depth_ok(text):
        raise InvalidManifest(f"the manifest nests deeper than {_MAX_DEPTH} levels")
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except InvalidManifest:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidManifest(f"the manifest is not valid JSON: {_show(str(exc), 120)}") from None
    if not isinstance(document, dict):
        raise InvalidManifest("the manifest must be a JSON object")
    return document


def _optional_choice(document: dict, field: str, choices: tuple[str, ...]) -> str | None:
    value = document.get(field)
    if value is None:
        return None
    if value not in choices:
        raise InvalidManifest(f"{field}: must be one of {', '.join(choices)}, not {_show(value)}")
    return value


def _file_spec(item: object, index: int) -> FileSpec:
    where = f"files[{index}]"
    if isinstance(item, str):
        _check_key(item, where)
        if item.endswith("/"):
            raise InvalidManifest(f"{where}: {_show(item)} ends with '/': use {{\"prefix\": ...}}")
        _check_name(item, where)
        return FileSpec(key=item, prefix=None, name=item)
    if not isinstance(item, dict):
        raise InvalidManifest(f"{where}: must be a key string or an object, not {_show(item)}")
    kinds = [k for k in ("key", "prefix") if k in item]
    if len(kinds) != 1:
        raise InvalidManifest(f"{where}: needs exactly one of 'key' or 'prefix'")
    unknown = set(item) - {kinds[0], "name"}
    if unknown:
        raise InvalidManifest(f"{where}: unknown field {_show(sorted(unknown)[0])}")
    value = item[kinds[0]]
    if not isinstance(value, str):
        raise InvalidManifest(f"{where}.{kinds[0]}: must be a string, not {_show(value)}")
    _check_key(value, f"{where}.{kinds[0]}")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidManifest(f"{where}.name: must be a string, not {_show(name)}")
    if kinds[0] == "key":
        name = value if name is None else name
        if name.endswith("/"):
            raise InvalidManifest(f"{where}.name: {_show(name)} ends with '/': not a file name")
        _check_name(name, f"{where}.name")
        return FileSpec(key=value, prefix=None, name=name)
    name = value if name is None else name
    if name:
        # A prefix's name is a directory part; check it as a name with a stand-in remainder.
        _check_name(name + "x", f"{where}.name")
    return FileSpec(key=None, prefix=value, name=name)


def check_target(target: object, *, requests_prefix: str) -> str:
    if not isinstance(target, str):
        raise InvalidManifest(f"target: must be a string, not {_show(target)}")
    if not target or target.endswith("/"):
        raise InvalidManifest(f"target: {_show(target)} is not an object key")
    _check_key(target, "target")
    for suffix in MARKER_SUFFIXES:
        if target.endswith(suffix):
            raise InvalidManifest(
                f"target: {_show(target)} ends with {suffix!r}: that is another job's marker key"
            )
    room = MAX_KEY_BYTES - max(len(suffix) for suffix in MARKER_SUFFIXES)
    if len(target.encode("utf-8")) > room:
        raise InvalidManifest(
            f"target: longer than {room} bytes: its markers would pass the store's "
            f"{MAX_KEY_BYTES}-byte key limit"
        )
    if target.startswith(requests_prefix):
        raise TargetConflict(f"target: {_show(target)} is inside the requests prefix")
    return target


DEFAULT_PORTS = {"http": 80, "https": 443}


def host_forms(host: str, port: int) -> set[str]:
    """The ways ``notify.allowed_hosts`` may name ``host`` reached on ``port`` (pure): the host
    alone (any port) or ``host:port``; an IPv6 literal as ``[addr]`` (``urlsplit`` drops the
    brackets that config entries carry)."""
    name = f"[{host}]" if ":" in host else host
    return {name, f"{name}:{port}"}


def check_notify_url(url: object, allowed_hosts: Collection[str]) -> str:
    """The manifest's ``notify_url`` when its host is in ``notify.allowed_hosts`` (CONTRACT §9).

    An entry is a host name (any port) or ``host:port``, compared without regard to case; a URL
    without a port has its scheme's (80, 443). The message names the host, never the URL: its
    path or query may carry a token.
    """
    if not isinstance(url, str):
        raise InvalidManifest(f"notify_url: must be a string, not {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidManifest("notify_url: must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise InvalidManifest("notify_url: must not carry user info (user@host)")
    host = parts.hostname.lower()
    allowed = {entry.lower() for entry in allowed_hosts}
    if not allowed & host_forms(host, port or DEFAULT_PORTS[parts.scheme]):
        listed = "none allowed" if not allowed else "allowed: " + ", ".join(sorted(allowed))
        raise InvalidManifest(
            f"notify_url: the host {host!r} is not in notify.allowed_hosts ({listed})"
        )
    return url


def parse_manifest(
    raw: bytes, *, requests_prefix: str, notify_hosts: Collection[str] = ()
) -> Manifest:
    """Validate ``raw`` completely; raise InvalidManifest/TargetConflict naming the problem.

    ``notify_hosts`` is ``notify.allowed_hosts``: the hosts a ``notify_url`` may name.
    """
    document = decode(raw)
    unknown = set(document) - _FIELDS
    if unknown:
        raise InvalidManifest(f"unknown field {_show(sorted(unknown)[0])}")
    for field in ("files", "target"):
        if field not in document:
            raise InvalidManifest(f"{field}: is required")
    files = document["files"]
    if not isinstance(files, list):
        raise InvalidManifest(f"files: must be a list, not {_show(files)}")
    if not files:
        raise InvalidManifest("files: must not be empty")
    if len(files) > MAX_ENTRIES:
        raise InvalidManifest(f"files: more than {MAX_ENTRIES} entries")
    specs = tuple(_file_spec(item, i) for i, item in enumerate(files))
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.key is None:
            continue
        compared = name_key(spec.name)
        if compared in seen:
            raise InvalidManifest(
                f"files[{i}]: entry name {_show(spec.name)} is used by files[{seen[compared]}] too"
            )
        seen[compared] = i
    target = check_target(document["target"], requests_prefix=requests_prefix)
    for i, spec in enumerate(specs):
        if spec.key == target:
            raise TargetConflict(f"target: {_show(target)} is also an input (files[{i}])")
    job_id = document.get("id")
    if job_id is not None and not is_job_id(job_id):
        raise InvalidManifest(
            f"id: {_show(job_id)} must be 1-128 characters of A-Z a-z 0-9 . _ - "
            "(not starting with '.')"
        )
    notify_url = document.get("notify_url")
    if notify_url is not None:
        notify_url = check_notify_url(notify_url, notify_hosts)
    return Manifest(
        files=specs,
        target=target,
        compression=_optional_choice(document, "compression", COMPRESSIONS),
        missing=_optional_choice(document, "missing", MISSING_MODES),
        id=job_id,
        notify_url=notify_url,
    )


def is_job_id(value: object) -> bool:
    """Whether ``value`` has the form of a job id (every id :func:`job_id_for` gives has it)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def job_id_for(manifest: Manifest | None, manifest_key: str | None) -> str:
    """The manifest's ``id``; else one derived from its key (stable across retries); else random."""
    if manifest is not None and manifest.id is not None:
        return manifest.id
    if manifest_key:
        stem = manifest_key.rsplit("/", 1)[-1].removesuffix(".json")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:100] or "job"
        digest = hashlib.sha256(manifest_key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        return f"{stem}-{digest}"
    return uuid.uuid4().hex


_UNREADABLE = object()  # a top-level value that is not a (decodable) JSON string
# Broken JSON is scanned token by token in Python: only this much of it, so a hostile manifest
# costs a bounded time (the head of an oversized one is read for the same purpose).
GUESS_SCAN_CHARS = 1 << 20


def _top_level_strings(raw: bytes, field: str) -> list[object]:
    """Every value of the top-level ``field`` in what may be broken JSON, in order.

    Tolerates what :func:`decode` rejects — a BOM, duplicate fields, any nesting, invalid UTF-8
    elsewhere, a text cut short (the head of an oversized manifest) — so a rejected manifest can
    still be traced to its target. A value that is not a string counts as :data:`_UNREADABLE`.
    JSON the parser reads (duplicates, a BOM) is read by it; other text by :func:`_scan`.
    """
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    if not text.lstrip().startswith("{"):
        return []
    try:
        pairs = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    except (ValueError, RecursionError):
        return _scan(text[:GUESS_SCAN_CHARS], field)
    return [value if isinstance(value, str) else _UNREADABLE for k, value in pairs if k == field]


def _scan(text: str, field: str) -> list[object]:
    """:func:`_top_level_strings` of text that is not JSON, without recursion."""
    found: list[object] = []
    depth = 0
    state = "key"  # at depth 1: "key" -> "colon" -> "value" -> "after" -> "key"
    key: str | None = None
    for match in _TOKENS.finditer(text):
        token = match.group()
        first = token[0]
        if first in "[{":
            if depth == 1 and state == "value":
                if key == field:
                    found.append(_UNREADABLE)
                state = "after"
            depth += len(token)
            continue
        if first in "]}":
            if depth == 1 and state == "value" and key == field:
                found.append(_UNREADABLE)
            depth -= len(token)
            if depth <= 0:
                break
            continue
        if depth != 1:
            continue
        if first == '"':
            try:
                string = json.loads(token)
            except ValueError:
                string = _UNREADABLE
            if state == "key":
                key = string if isinstance(string, str) else None
                state = "colon"
            elif state == "value":
                if key == field:
                    found.append(string)
                state = "after"
        elif first == ":":
            state = "value"
        else:  # ","
            if state == "value" and key == field:
                found.append(_UNREADABLE)  # a number, true, false or null
            state = "key"
    if state == "value" and key == field:
        found.append(_UNREADABLE)  # cut short before the value
    return found


def _single(values: list[object]) -> object:
    """The one value given (repeated identically at most), else :data:`_UNREADABLE`."""
    if not values or any(value != values[0] for value in values):
        return _UNREADABLE
    return values[0]


def guess_target(raw: bytes, *, requests_prefix: str) -> str | None:
    """The target of a rejected manifest when it names one usable target, so a failed result
    marker can be written there (CONTRACT §7.6). Reads broken JSON too: see
    :func:`_top_level_strings`; ``raw`` may be just the head of an oversized manifest."""
    target = _single(_top_level_strings(raw, "target"))
    if not isinstance(target, str):
        return None
    try:
        return check_target(target, requests_prefix=requests_prefix)
    except (InvalidManifest, TargetConflict):
        return None


def guess_id(raw: bytes) -> str | None:
    """The ``id`` of a rejected manifest when it gave a valid one, so its markers carry it."""
    job_id = _single(_top_level_strings(raw, "id"))
    return job_id if is_job_id(job_id) else None
