"""Configuration: YAML file, then environment variables, then a ``.env`` file → frozen Settings.

The schema below is the single source of truth: each key's type, default, check and the
environment variables that override it (CONTRACT §2). Every problem is a :class:`ConfigError`
naming the dotted key (or the variable, when the value came from the environment). Credentials
are never read from the file: they come from the standard AWS chain only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

from watcher.errors import ConfigError

DEFAULT_PATHS = (Path("config.yaml"), Path("/etc/b2-zip-watcher/config.yaml"))


class Secret:
    """A value that prints as ``<SECRET>``; ``reveal()`` gives it to the one place that needs it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<SECRET>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class BucketSettings:
    input: str | None = None
    output: str | None = None


@dataclass(frozen=True)
class WatchSettings:
    enabled: bool = True
    bucket: str | None = None
    prefix: str = "zip-requests/"
    interval_seconds: float = 5.0
    max_idle_interval_seconds: float = 30.0
    lease_seconds: float = 60.0
    max_concurrent_jobs: int = 2
    coordination: str = "auto"
    max_attempts: int = 5


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    shared_secret: Secret | None = None
    b2_event_secret: Secret | None = None


@dataclass(frozen=True)
class ZipSettings:
    compression: str = "auto"
    level: int = 6
    missing: str = "fail"


@dataclass(frozen=True)
class PipelineSettings:
    read_ahead_bytes: int = 32 * 1024 * 1024
    max_parallel_gets: int = 32
    small_in_flight: int = 64  # small-object GETs in flight (issue 16)
    upload_concurrency: int = 3
    part_size_mib: int = 0
    # server-side assembly and the CRC cache (CONTRACT §11)
    copy_min_mib: int = 16
    crc_cache: bool = False


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "auto"


# -- user (issue 13): links ------------------------------------------------------------------
MAX_LINK_SECONDS = 604_800  # SigV4 presigned URLs live at most 7 days


@dataclass(frozen=True)
class LinksSettings:
    expires_seconds: int = 86_400  # 0: no download links


@dataclass(frozen=True)
class NotifySettings:
    url: str | None = None
    secret: Secret | None = None
    max_attempts: int = 8
    allowed_hosts: tuple[str, ...] = ()  # hosts a manifest's notify_url may name


_HOST_ENTRY = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


def _host_list(v: list) -> str | None:
    for entry in v:
        if not isinstance(entry, str) or not _HOST_ENTRY.fullmatch(entry):
            return (
                f"must list host names (or host:port), e.g. hooks.example.com; {entry!r} is not one"
            )
    return None


def _http_url(v: str) -> str | None:
    return None if _endpoint(v) is None else "must be an http:// or https:// URL"


@dataclass(frozen=True)
class RetentionSettings:
    done_days: float = 30.0  # 0: keep forever
    failed_days: float = 90.0
    stale_upload_hours: float = 24.0
    interval_seconds: float = 3600.0


# -- end user (issue 13) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    s3: S3Settings = S3Settings()
    buckets: BucketSettings = BucketSettings()
    watch: WatchSettings = WatchSettings()
    http: HttpSettings = HttpSettings()
    zip: ZipSettings = ZipSettings()
    pipeline: PipelineSettings = PipelineSettings()
    logging: LoggingSettings = LoggingSettings()
    links: LinksSettings = LinksSettings()
    retention: RetentionSettings = RetentionSettings()
    notify: NotifySettings = NotifySettings()
    shutdown_grace_seconds: float = 30.0

    @property
    def watch_bucket(self) -> str | None:
        return self.watch.bucket or self.buckets.input


# -- the schema -------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # returns why the value is impossible, or None


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _at_least(n: float) -> Check:
    return lambda v: None if v >= n else f"must be at least {n}"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number (0-65535)"


def _prefix(v: str) -> str | None:
    if not v.endswith("/") or v.startswith("/"):
        return "must end with '/' and not start with '/'"
    return None


def _level_name(v: str) -> str | None:
    names = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return None if v.upper() in names else f"must be one of {', '.join(names)}"


def _nonempty(v: str) -> str | None:
    return None if v else "must not be empty"


def _endpoint(v: str) -> str | None:
    """An absolute http(s) URL: boto3 refuses anything else with a bare ``Invalid endpoint``."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be a URL starting with https:// (or http://), e.g. https://s3.us-west-004.backblazeb2.com"
    return None


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    check: Check | None = None
    env: tuple[str, ...] = ()
    nullable: bool = False
    secret: bool = False


SCHEMA: dict[str, dict[str, Key]] = {
    "s3": {
        "endpoint_url": Key(str, _endpoint, ("AWS_ENDPOINT_URL",), nullable=True),
        "region": Key(str, _nonempty, ("AWS_DEFAULT_REGION", "AWS_REGION"), nullable=True),
    },
    "buckets": {
        "input": Key(str, _nonempty, ("INPUT_BUCKET_NAME", "BUCKET_NAME"), nullable=True),
        "output": Key(str, _nonempty, ("OUTPUT_BUCKET_NAME", "BUCKET_NAME"), nullable=True),
    },
    "watch": {
        "enabled": Key(bool),
        "bucket": Key(str, _nonempty, nullable=True),
        "prefix": Key(str, _prefix, ("WATCH_PREFIX",)),
        "interval_seconds": Key((int, float), _positive),
        "max_idle_interval_seconds": Key((int, float), _positive),
        "lease_seconds": Key((int, float), _at_least(2)),
        "max_concurrent_jobs": Key(int, _at_least(1)),
        "coordination": Key(str, _one_of("auto", "conditional", "versions", "single")),
        "max_attempts": Key(int, _at_least(1)),
    },
    "http": {
        "enabled": Key(
            (bool, str),
            lambda v: None if v in (True, False, "auto") else "must be true, false or auto",
        ),
        "host": Key(str, _nonempty),
        "port": Key(int, _port, ("PORT",)),
        "shared_secret": Key(str, _nonempty, ("SHARED_SECRET",), nullable=True, secret=True),
        "b2_event_secret": Key(str, _nonempty, ("B2_EVENT_SECRET",), nullable=True, secret=True),
    },
    "zip": {
        "compression": Key(str, _one_of("auto", "deflate", "store")),
        "level": Key(int, lambda v: None if 0 <= v <= 9 else "must be 0-9"),
        "missing": Key(str, _one_of("fail", "skip")),
    },
    "pipeline": {
        "read_ahead_bytes": Key(int, _at_least(1024 * 1024)),
        "max_parallel_gets": Key(int, lambda v: None if 1 <= v <= 256 else "must be 1-256"),
        "small_in_flight": Key(int, lambda v: None if 1 <= v <= 1024 else "must be 1-1024"),
        "upload_concurrency": Key(int, lambda v: None if 1 <= v <= 64 else "must be 1-64"),
        "part_size_mib": Key(
            int, lambda v: None if v == 0 or 5 <= v <= 5120 else "must be 0 (automatic) or 5-5120"
        ),
        "copy_min_mib": Key(int, lambda v: None if v >= 0 else "must be 0 (never) or more"),
        "crc_cache": Key(bool),
    },
    "logging": {
        "level": Key(str, _level_name, ("LOGLEVEL",)),
        "format": Key(str, _one_of("auto", "json", "console")),
    },
    "links": {
        "expires_seconds": Key(
            int,
            lambda v: (
                None
                if 0 <= v <= MAX_LINK_SECONDS
                else f"must be 0 (off) to {MAX_LINK_SECONDS} (7 days)"
            ),
            ("LINK_EXPIRES_SECONDS",),
        ),
    },
    "notify": {
        "url": Key(str, _http_url, ("NOTIFY_URL",), nullable=True),
        "secret": Key(str, _nonempty, ("NOTIFY_SECRET",), nullable=True, secret=True),
        "max_attempts": Key(int, lambda v: None if 1 <= v <= 100 else "must be 1-100"),
        "allowed_hosts": Key(list, _host_list, ("NOTIFY_ALLOWED_HOSTS",)),
    },
    "retention": {
        "done_days": Key((int, float), _at_least(0)),
        "failed_days": Key((int, float), _at_least(0)),
        "stale_upload_hours": Key((int, float), _at_least(0)),
        "interval_seconds": Key((int, float), _positive),
    },
}
TOP_LEVEL = {"shutdown_grace_seconds": Key((int, float), _at_least(0))}
_SECTIONS = {
    "s3": S3Settings,
    "buckets": BucketSettings,
    "watch": WatchSettings,
    "http": HttpSettings,
    "zip": ZipSettings,
    "pipeline": PipelineSettings,
    "logging": LoggingSettings,
    "links": LinksSettings,
    "retention": RetentionSettings,
    "notify": NotifySettings,
}


def _type_ok(value: Any, spec: Key) -> bool:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _describe(spec: Key) -> str:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
    }
    return " or ".join(names[t] for t in types if not (t is int and float in types))


def _from_env(name: str, text: str, spec: Key) -> Any:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    if str in types:
        return text
    if list in types:  # comma-separated
        return [item.strip() for item in text.split(",") if item.strip()]
    try:
        return int(text) if int in types and float not in types else float(text)
    except ValueError:
        raise ConfigError(name, f"must be {_describe(spec)}, not {text!r}") from None


def _validate(where: str, value: Any, spec: Key) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(where, "must not be null")
    shown = "<SECRET>" if spec.secret else repr(value)
    if not _type_ok(value, spec):
        raise ConfigError(where, f"must be {_describe(spec)}, not {shown}")
    if spec.check is not None:
        reason = spec.check(value)
        if reason is not None:
            raise ConfigError(where, f"{reason} (got {shown})")
    if isinstance(value, list):
        return tuple(value)  # Settings are frozen, and hashable
    return Secret(value) if spec.secret else value


def from_mapping(data: Mapping[str, Any] | None, environ: Mapping[str, str]) -> Settings:
    """Build Settings from parsed YAML ``data`` and the environment (which wins)."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError("config", "the file must hold a YAML mapping of sections")
    for name in data:
        if name not in SCHEMA and name not in TOP_LEVEL:
            raise ConfigError(str(name), "unknown key")
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = data.get(section)
        given = {} if given is None else given
        if not isinstance(given, Mapping):
            raise ConfigError(section, "must be a mapping of keys")
        for name in given:
            if name not in keys:
                raise ConfigError(f"{section}.{name}", "unknown key")
        values: dict[str, Any] = {}
        for name, spec in keys.items():
            where = f"{section}.{name}"
            if name in given:
                values[name] = _validate(where, given[name], spec)
            for var in spec.env:
                if environ.get(var):
                    values[name] = _validate(var, _from_env(var, environ[var], spec), spec)
                    break
        sections[section] = values
    top = {
        name: _validate(name, data[name], spec) for name, spec in TOP_LEVEL.items() if name in data
    }
    secret_file = environ.get("SHARED_SECRET_FILE")
    if secret_file and not environ.get("SHARED_SECRET"):
        try:
            text = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise ConfigError("SHARED_SECRET_FILE", f"cannot read it: {exc.strerror}") from None
        sections["http"]["shared_secret"] = _validate(
            "SHARED_SECRET_FILE", text, SCHEMA["http"]["shared_secret"]
        )
    http = sections["http"]
    enabled = http.get("enabled", "auto")
    if enabled == "auto":
        # Without a shared secret an enabled server answers only the health routes (and the
        # B2 webhook when its own secret is set): every other route is 401.
        http["enabled"] = http.get("shared_secret") is not None
    if "level" in sections["logging"]:
        sections["logging"]["level"] = sections["logging"]["level"].upper()
    watch = WatchSettings(**sections["watch"])
    if watch.max_idle_interval_seconds < watch.interval_seconds:
        raise ConfigError("watch.max_idle_interval_seconds", "must be >= watch.interval_seconds")
    notify = sections["notify"]
    if (notify.get("url") or notify.get("allowed_hosts")) and not notify.get("secret"):
        raise ConfigError(
            "notify.secret", "must be set (or NOTIFY_SECRET) when callbacks are on: it signs them"
        )
    built = {name: cls(**sections[name]) for name, cls in _SECTIONS.items() if name != "watch"}
    return Settings(watch=watch, **built, **top)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            str(path), f"cannot read the configuration file: {exc.strerror}"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), f"is not valid YAML{where}") from None


def find_config(path: str | None, cwd: Path) -> Path | None:
    if path is not None:
        explicit = Path(path)
        if not explicit.is_file():
            raise ConfigError("--config", f"{path} does not exist")
        return explicit
    for candidate in DEFAULT_PATHS:
        resolved = candidate if candidate.is_absolute() else cwd / candidate
        if resolved.is_file():
            return resolved
    return None


def load_settings(
    path: str | None, environ: Mapping[str, str], *, cwd: Path | None = None
) -> Settings:
    """Settings from ``path`` (or the default places), ``environ`` and ``cwd/.env``.

    The ``.env`` file fills in only variables that ``environ`` does not already have, as
    python-dotenv's ``load_dotenv`` does for the original sample app.
    """
    cwd = Path.cwd() if cwd is None else cwd
    merged = dict(environ)
    dotenv = cwd / ".env"
    if dotenv.is_file():
        for name, value in dotenv_values(dotenv).items():
            if value is not None and name not in merged:
                merged[name] = value
    found = find_config(path, cwd)
    data = _read_yaml(found) if found is not None else None
    return from_mapping(data, merged)


def dotenv_credentials(environ: Mapping[str, str], *, cwd: Path | None = None) -> dict[str, str]:
    """AWS credential variables from ``cwd/.env`` that ``environ`` lacks (for boto3's chain)."""
    cwd = Path.cwd() if cwd is None else cwd
    dotenv = cwd / ".env"
    if not dotenv.is_file():
        return {}
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    values = dotenv_values(dotenv)
    return {n: values[n] for n in names if values.get(n) and n not in environ}
