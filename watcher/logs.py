"""structlog set-up, once, at the entry point: one event per line, JSON when not on a TTY.

Library loggers (botocore, apscheduler, waitress) go through the same renderer at WARNING and
above. Configured secret values are scrubbed from every event as a last line of defence; the code
never logs them on purpose.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any


def _import_structlog_without_rich() -> None:
    """Import structlog with ``rich`` hidden from it.

    When rich is installed (a development venv has it, through the test tools; the daemon does
    not depend on it), structlog imports it, with pygments and attrs, at its own import, only to
    draw exceptions on a console: ~0.1 s of CPU in every process, a fifth of a ``zip``'s
    start-up. Without it structlog prints exceptions as plain tracebacks. Whatever else imports
    rich later still can: only structlog's own import sees it hidden.
    """
    if "structlog" in sys.modules:
        return
    hidden = [name for name in ("rich",) if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import rich" raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


_import_structlog_without_rich()

import structlog  # noqa: E402  (after the above)

if TYPE_CHECKING:
    from watcher.config import LoggingSettings

REDACTED = "<SECRET>"


def _redactor(secrets: list[str]) -> Any:
    def redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        if not secrets:
            return event
        for key, value in event.items():
            text = value if isinstance(value, str) else None
            if text is None and not isinstance(value, (int, float, bool, type(None))):
                text = str(value)
            if text is not None and any(s in text for s in secrets):
                for secret in secrets:
                    text = text.replace(secret, REDACTED)
                event[key] = text
        return event

    return redact


def configure_logging(
    settings: LoggingSettings, *, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> Any:
    """Configure structlog and stdlib logging; return the daemon's root bound logger."""
    stream = stream or sys.stdout
    level = logging.getLevelName(settings.level.upper())
    use_json = settings.format == "json" or (
        settings.format == "auto" and not getattr(stream, "isatty", lambda: False)()
    )
    secret_list = [s for s in secrets if s and len(s) >= 4]
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info
        if use_json
        else structlog.processors.StackInfoRenderer(),
        _redactor(secret_list),
    ]
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level, logging.WARNING))
    return structlog.get_logger("watcher")


def log_store_requests(client: Any, log: Any) -> None:
    """At DEBUG, one ``s3_request`` event per S3 call: operation, bucket, key, status, time.

    Request URLs and headers are never logged (a presigned URL or a signature is a credential);
    only the operation's name and the bucket and key it named.
    """
    import time

    def before(params: dict, context: dict, model: Any = None, **_: Any) -> None:
        context["watcher_started"] = time.monotonic()
        context["watcher_target"] = (params.get("Bucket"), params.get("Key"))

    def after(http_response: Any, context: dict, model: Any = None, **_: Any) -> None:
        started = context.get("watcher_started")
        bucket, key = context.get("watcher_target", (None, None))
        log.debug(
            "s3_request",
            operation=getattr(model, "name", None),
            bucket=bucket,
            key=key,
            status=getattr(http_response, "status_code", None),
            ms=None if started is None else round((time.monotonic() - started) * 1000, 1),
        )

    client.meta.events.register("before-parameter-build.s3", before)
    client.meta.events.register("after-call.s3", after)

    def lean(bucket: str, key: str, status: int | None, ms: float, **_: Any) -> None:
        """The store's lean GETs of small objects (Store.get_small), which bypass botocore."""
        log.debug(
            "s3_request",
            operation="GetObject",
            bucket=bucket,
            key=key,
            status=status,
            ms=round(ms, 1),
        )

    client.meta.events.register("lean-request.s3", lean)
