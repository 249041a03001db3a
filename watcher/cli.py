"""Command line: argparse subcommands. The only module that prints and picks exit codes.

Exit codes (CONTRACT §1): 0 ok; 1 job failed; 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from watcher.errors import ConfigError, WatcherError
from watcher.preflight import StoreUnusable, probe, require_usable

ALL_BUCKETS = ("buckets.input", "buckets.output", "watch.bucket")

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2

DESCRIPTION = (
    "Zip lists of objects of a Backblaze B2 (or any S3-compatible) bucket into one ZIP object. "
    "Drop a JSON manifest into the requests prefix, POST it to the HTTP API, or run it here."
)
EPILOG = (
    "exit codes: 0 ok; 1 the job failed; 2 bad configuration or usage, or a store, bucket or "
    "credentials that cannot be used (one line naming the culprit). "
    "Configuration: ./config.yaml, environment variables and ./.env; see the README."
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message, drop nothing else."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="b2-zip-watcher", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default ./config.yaml, then /etc/b2-zip-watcher/config.yaml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="config file")
        return p

    run = add("run", "run the daemon")
    run.add_argument("--local", action="store_true", help="use the embedded local S3 server")
    zip_ = add("zip", "run one job synchronously in the foreground")
    zip_.add_argument("manifest", metavar="MANIFEST.json")
    submit = add("submit", "drop a manifest into the requests prefix")
    submit.add_argument("manifest", metavar="MANIFEST.json")
    submit.add_argument("--wait", action="store_true", help="follow progress until the result")
    status = add("status", "print a target's status / result marker")
    status.add_argument("target", metavar="TARGET")
    status.add_argument(
        "--url", action="store_true", help="print a fresh download link of the ZIP instead"
    )
    jobs = add("jobs", "list recent jobs, newest first")
    jobs.add_argument("--state", choices=("pending", "running", "succeeded", "failed"))
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    cancel = add("cancel", "cancel a queued or running job (it ends failed, code cancelled)")
    cancel.add_argument("job_id", metavar="JOB_ID")
    retry = add("retry", "re-queue a failed job under the same id")
    retry.add_argument("job_id", metavar="JOB_ID")
    add("check", "validate the configuration and reach the buckets")
    demo = add("demo", "one-shot demo on the embedded local S3 server")
    demo.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser


def _tune_malloc() -> None:
    """Keep the heap near what is really in flight (glibc only).

    Part and chunk buffers of a MiB or more are allocated and freed by many threads; glibc's
    adaptive mmap threshold would otherwise move them into per-thread arenas that keep the
    memory. A fixed 256 KiB threshold returns them to the OS at once. And a job has dozens of
    threads (fetchers, uploaders, the deflate pool), each of which glibc would give an arena of
    its own (up to 8 per core), every arena keeping its freed small blocks: two arenas are
    enough (`mixed`: 130–136 MiB peak RSS instead of 142–148, no slower;
    bench/results/idle_session6.md). An operator's ``MALLOC_ARENA_MAX`` wins (and is how the
    two were compared: ``MALLOC_ARENA_MAX=16 python -m bench.run --datasets mixed``).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        # the process's own symbols, libc's among them (ctypes.util.find_library would run
        # ldconfig in a subprocess at every start)
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


# Commands whose work is all done, and said, when their handler returns.
ONE_SHOT = frozenset({"zip", "submit", "status", "check", "jobs", "cancel", "retry"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command of ``argv``; return its exit code.

    Without ``argv`` this is the process's entry (the ``b2-zip-watcher`` script, ``python -m
    watcher``): a one-shot command then ends the process itself once its output is flushed
    (:func:`_exit_now`) instead of returning.
    """
    _tune_malloc()
    args = build_parser().parse_args(argv)
    code = _dispatch(args)
    if argv is None and args.command in ONE_SHOT and _only_daemon_threads():
        _exit_now(code)
    if argv is None and args.command == "run":
        # The daemon has stopped: every job drained or cleaned up after (CONTRACT §6, §7.10), its
        # services stopped, its last line logged. What is left (idle pool workers, botocore's
        # tables) the interpreter would take seconds to tear down on a busy machine, inside the
        # shutdown_grace_seconds + 5 s a SIGTERM'd daemon has to exit in.
        _exit_now(code)
    return code


def _only_daemon_threads() -> bool:
    """No thread but the main one that the interpreter's exit would wait for (a worker still
    busy, an executor's idle worker): then leaving at once skips nothing but the tear-down."""
    import threading

    main_thread = threading.main_thread()
    return all(t is main_thread or t.daemon for t in threading.enumerate())


def _exit_now(code: int) -> NoReturn:
    """End the process at once with ``code``, its output flushed.

    Python's own exit tears down every module and object the process loaded — botocore's S3
    model and endpoint tables among them — which costs ~0.2 s of CPU, a third of a ``zip`` of one
    object, for a process whose work is done: every request answered, every marker written (a
    one-shot command returns only then), and no thread left that the exit would wait for.
    """
    import logging

    try:
        logging.shutdown()  # what the exit would do for the log handlers: flush them
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed or broken pipe: nothing more can be said
    os._exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        handler = _HANDLERS[args.command]
        return handler(args)
    except StoreUnusable as exc:
        print(f"b2-zip-watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"b2-zip-watcher: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatcherError as exc:
        print(f"b2-zip-watcher: {exc.code}: {exc.message}", file=sys.stderr)
        # an unknown job, or one in the wrong state for what was asked, is a usage error
        usage = exc.code in ("not_found", "conflict", "bad_request")
        return EXIT_USAGE if usage else EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


def _logs():
    """:mod:`watcher.logs`, imported before any other module imports structlog (it keeps rich,
    which structlog would import for nothing, out of the process)."""
    from watcher import logs

    return logs


def _settings(args: argparse.Namespace):
    """Settings from --config, the environment and ./.env (whose AWS credentials boto3 needs)."""
    from watcher.config import dotenv_credentials, load_settings

    os.environ.update(dotenv_credentials(os.environ))
    return load_settings(getattr(args, "config", None), os.environ)


def _read_manifest_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("MANIFEST.json", f"cannot read {path}: {exc.strerror}") from None


def _owner_id() -> str:
    import secrets
    import socket

    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _services(settings, *, log):
    """Client, store and claimer for ``settings``, shared by ``run`` and ``demo``."""
    from watcher.claims import make_claimer
    from watcher.store import Store

    client = _client(
        settings, log, max_pool_connections=max(32, 16 * settings.watch.max_concurrent_jobs)
    )
    store = Store(client)
    claimer = make_claimer(
        settings.watch.coordination,
        store,
        settings.watch_bucket,
        settings.watch.prefix,
        owner=_owner_id(),
        lease_seconds=settings.watch.lease_seconds,
    )
    if claimer.mode == "single":
        log.warning(
            "coordination_single",
            message="this store supports neither conditional writes nor versions: "
            "only ONE daemon may watch this prefix",
        )
    return store, claimer


def _nothing_configured(settings) -> bool:
    return settings.s3.endpoint_url is None and not (
        settings.buckets.input or settings.buckets.output or settings.watch.bucket
    )


def _start_local(settings):
    from watcher.local import LocalS3

    local = LocalS3()
    local.start()
    os.environ.update(local.environ())
    settings = local.settings(settings)
    from watcher.store import make_client

    local.seed(make_client(settings.s3))
    return local, settings


def _with_local_http(settings):
    """The embedded server's daemon serves the HTTP API too, with a generated secret unless one
    is configured, so ``make run`` can show a working curl line."""
    import dataclasses
    import secrets

    from watcher.config import Secret

    secret = settings.http.shared_secret or Secret(secrets.token_urlsafe(18))
    port = settings.http.port if _port_free(settings.http.host, settings.http.port) else 0
    return dataclasses.replace(
        settings,
        http=dataclasses.replace(settings.http, enabled=True, shared_secret=secret, port=port),
    )


def _port_free(host: str, port: int) -> bool:
    """For the embedded demo only: a busy port (another ``make run``) falls back to a free one."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _local_instructions(local, settings, http_port: int | None) -> str:
    env = " ".join(f"{k}={v}" for k, v in local.environ().items())
    lines = [
        f"Embedded S3 server at {local.endpoint_url}, bucket '{local.bucket}' (samples inside).",
        "Submit a job from another shell with:",
        f"  {env} .venv/bin/b2-zip-watcher submit examples/sample-manifest.json --wait",
    ]
    if http_port is not None and settings.http.shared_secret is not None:
        lines += [
            "or over HTTP:",
            f"  curl -sS -X POST -H 'Authorization: Bearer {settings.http.shared_secret.reveal()}'"
            f" -H 'Content-Type: application/json' --data @examples/sample-manifest.json"
            f" http://127.0.0.1:{http_port}/jobs",
        ]
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    local = None
    if not (args.local or _nothing_configured(settings)):
        require_usable(settings, ALL_BUCKETS)  # before the heavy imports: a mistake answers fast
    logs = _logs()
    import signal

    from watcher.daemon import Daemon
    from watcher.retention import Housekeeping
    from watcher.service import CancelRequests
    from watcher.wakeup import Listener

    if args.local or _nothing_configured(settings):
        local, settings = _start_local(settings)
        settings = _with_local_http(settings)
    log = logs.configure_logging(settings.logging, secrets=_secret_values(settings))
    try:
        try:
            store, claimer = _services(settings, log=log)
        except WatcherError as exc:
            # The claim probe writes into the requests prefix: a key that may only read fails here.
            raise StoreUnusable("watch.bucket", f"{exc.code}: {exc.message}") from None
        metrics = _metrics(store)
        daemon = Daemon(settings, store, claimer, metrics=metrics, log=log)
        CancelRequests(daemon, store, settings, log).install()
        http = _start_http(settings, store, daemon, metrics, log=log)
        notifier = _start_notifier(settings, daemon, log)
        housekeeping = Housekeeping(settings, store, metrics=metrics, log=log)
        housekeeping.start()
        wakeup = Listener(settings, daemon.wake)
        if wakeup.start():
            log.info("wakeup_listening")
        if local is not None:
            port = http.port if http is not None else None
            print(_local_instructions(local, settings, port), file=sys.stderr, flush=True)

        def on_signal(signum: int, _frame: object) -> None:
            daemon.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            return daemon.run()
        finally:
            if notifier is not None:
                notifier.stop()
            housekeeping.stop()
            wakeup.stop()
            if http is not None:
                http.stop()
    finally:
        if local is not None:
            local.stop()


def _start_notifier(settings, daemon, log):
    """Completion callbacks: every finished job's result marker POSTed to notify.url, and to the
    manifest's own notify_url (its host was checked against notify.allowed_hosts at parse)."""
    if not (settings.notify.url or settings.notify.allowed_hosts):
        return None
    from watcher.notify import Notifier

    notifier = Notifier(
        secret=settings.notify.secret.reveal(), max_attempts=settings.notify.max_attempts, log=log
    )

    def on_finished(result: dict, own_url: str | None) -> None:
        for url in dict.fromkeys(u for u in (settings.notify.url, own_url) if u):
            notifier.submit(url, result)

    daemon.set_on_finished(on_finished)
    return notifier


def _secret_values(settings) -> list[str]:
    secrets = (settings.http.shared_secret, settings.http.b2_event_secret, settings.notify.secret)
    values = [s.reveal() for s in secrets if s]
    values += [os.environ[k] for k in ("AWS_SECRET_ACCESS_KEY",) if os.environ.get(k)]
    return values


def _metrics(store):
    from watcher.metrics import Metrics

    return Metrics(request_counts=store.request_counts)


def _start_http(settings, store, daemon, metrics, *, log):
    if not settings.http.enabled:
        return None
    from watcher.api import HttpServer, make_app
    from watcher.service import DaemonBackend

    backend = DaemonBackend(store, settings, daemon)
    app = make_app(
        shared_secret=settings.http.shared_secret.reveal() if settings.http.shared_secret else None,
        b2_event_secret=(
            settings.http.b2_event_secret.reveal() if settings.http.b2_event_secret else None
        ),
        backend=backend,
        metrics=metrics,
    )
    server = HttpServer(app, settings.http.host, settings.http.port)
    server.start()
    log.info("http_listening", host=settings.http.host, port=server.port)
    return server


def _cmd_submit(args: argparse.Namespace) -> int:
    logs = _logs()
    from watcher.intake import submit_manifest

    settings = _settings(args)
    raw = _read_manifest_file(args.manifest)
    require_usable(settings, ("watch.bucket", "buckets.output"))
    log = logs.configure_logging(settings.logging, secrets=_secret_values(settings))
    store = _services_store_only(settings, log)
    from watcher import wakeup

    submitted = submit_manifest(store, settings, raw)
    woke = wakeup.notify(settings, submitted.manifest_key)
    log.debug("submitted", job_id=submitted.job_id, woke_local_daemon=woke)
    print(
        f"submitted job {submitted.job_id}: s3://{settings.watch_bucket}/"
        f"{submitted.manifest_key} -> s3://{settings.buckets.output}/{submitted.target}"
    )
    if not args.wait:
        return EXIT_OK
    return _follow(store, settings, submitted.target, submitted.job_id)


def _services_store_only(settings, log=None):
    from watcher.store import Store

    return Store(_client(settings, log))


def _client(settings, log, **options):
    """An S3 client; with ``logging.level: DEBUG`` every request is logged (``s3_request``)."""
    from watcher.logs import log_store_requests
    from watcher.store import make_client

    client = make_client(settings.s3, **options)
    if log is not None and settings.logging.level == "DEBUG":
        log_store_requests(client, log)
    return client


def _follow(store, settings, target: str, job_id: str, *, timeout: float | None = None) -> int:
    """Show progress from the status marker until this job's result marker exists."""
    import json
    import time

    from watcher.markers import result_key, status_key

    bucket = settings.buckets.output
    tty = sys.stdout.isatty()
    began = time.monotonic()
    deadline = None if timeout is None else began + timeout
    last_line = ""
    while deadline is None or time.monotonic() < deadline:
        raw = store.get_bytes(bucket, result_key(target), max_bytes=1 << 30)
        result = json.loads(raw) if raw else None
        if result is not None and result.get("job_id") == job_id:
            if tty:
                print()
            return _print_result(result)
        raw = store.get_bytes(bucket, status_key(target), max_bytes=1 << 20)
        status = json.loads(raw) if raw else None
        if status is not None and status.get("job_id") == job_id:
            line = _progress_line(status)
        else:
            waited = f" ({time.monotonic() - began:.0f} s)" if tty else ""
            line = f"queued: waiting for a daemon to start job {job_id}{waited}"
        if tty:
            print("\r" + line.ljust(len(last_line)), end="", flush=True)
        elif line != last_line:
            print(line, flush=True)
        last_line = line
        time.sleep(1.0)
    print(f"b2-zip-watcher: gave up waiting for job {job_id}", file=sys.stderr)
    return EXIT_JOB_FAILED


def _progress_line(status: dict) -> str:
    total = status.get("files_total") or 0
    done = status.get("files_done") or 0
    width = 30
    filled = int(width * done / total) if total else 0
    mib = (status.get("bytes_read") or 0) / (1 << 20)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files, "
        f"{mib:.1f} MiB read, {status.get('state')}"
    )


def _print_result(result: dict) -> int:
    error = result.get("error")
    if result.get("state") == "succeeded":
        print(
            f"succeeded: s3://{result.get('bucket')}/{result.get('target')} "
            f"({result.get('files_done')} files, {result.get('bytes_written')} bytes, "
            f"{result.get('duration_seconds')} s)"
        )
        return EXIT_OK
    print(f"failed: {error.get('code') if error else '?'}: {error.get('message') if error else ''}")
    return EXIT_JOB_FAILED


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from watcher.markers import result_key, status_key

    settings = _settings(args)
    require_usable(settings, ("buckets.output",))
    store = _services_store_only(settings)
    bucket = settings.buckets.output
    if args.url:
        return _print_url(store, settings, args.target)
    for key in (result_key(args.target), status_key(args.target)):
        raw = store.get_bytes(bucket, key, max_bytes=1 << 30)
        if raw is not None:
            marker = json.loads(raw)
            print(json.dumps(marker, indent=2, ensure_ascii=False))
            failed = isinstance(marker, dict) and marker.get("state") == "failed"
            return EXIT_JOB_FAILED if failed else EXIT_OK
    print(
        f"b2-zip-watcher: no status or result marker for s3://{bucket}/{args.target}",
        file=sys.stderr,
    )
    return EXIT_JOB_FAILED


def _print_url(store, settings, target: str) -> int:
    """A fresh presigned link to the ZIP at ``target`` (exit 1 when its job did not succeed)."""
    import json

    from watcher.jobs import presign
    from watcher.markers import result_key

    if settings.links.expires_seconds == 0:
        raise ConfigError("links.expires_seconds", "is 0: download links are turned off")
    raw = store.get_bytes(settings.buckets.output, result_key(target), max_bytes=1 << 30)
    result = json.loads(raw) if raw else None
    if not isinstance(result, dict) or result.get("state") != "succeeded":
        state = result.get("state") if isinstance(result, dict) else "not finished"
        print(f"b2-zip-watcher: no ZIP to link at {target} (job {state})", file=sys.stderr)
        return EXIT_JOB_FAILED
    print(presign(store, settings.buckets.output, target, settings.links.expires_seconds).url)
    return EXIT_OK


def _cmd_jobs(args: argparse.Namespace) -> int:
    from watcher.jobs import list_jobs, parse_limit

    settings = _settings(args)
    require_usable(settings, ("watch.bucket", "buckets.output"))
    store = _services_store_only(settings)
    page = list_jobs(store, settings, state=args.state, limit=parse_limit(str(args.limit)))
    for job in page["jobs"]:
        error = job.get("error") or {}
        print(
            f"{job['indexed_at']}  {job['state']:<9}  {job['job_id']}  {job['target']}"
            + (f"  {error.get('code')}: {error.get('message')}" if error else "")
        )
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    """Write a cancel request: the daemon that claims or runs the job ends it ``cancelled``."""
    from watcher import wakeup
    from watcher.jobs import request_cancel

    settings = _settings(args)
    require_usable(settings, ("watch.bucket", "buckets.output"))
    store = _services_store_only(settings)
    view = request_cancel(store, settings, args.job_id)
    wakeup.notify(settings, view.get("manifest") or settings.watch.prefix)
    print(f"cancel requested for job {args.job_id} ({view['state']})")
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    from watcher.jobs import retry_job

    settings = _settings(args)
    require_usable(settings, ("watch.bucket", "buckets.output"))
    store = _services_store_only(settings)
    retried = retry_job(store, settings, args.job_id)
    print(f"re-queued job {args.job_id}: s3://{settings.watch_bucket}/{retried['manifest']}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    """Embedded server, sample objects, one manifest dropped, the result shown; then exit."""
    import dataclasses
    import io
    import json
    import threading
    import zipfile

    logs = _logs()
    from watcher.daemon import Daemon
    from watcher.intake import submit_manifest
    from watcher.local import sample_manifest_bytes

    settings = _settings(args)
    local, settings = _start_local(settings)
    settings = dataclasses.replace(
        settings,
        watch=dataclasses.replace(
            settings.watch, interval_seconds=1.0, max_idle_interval_seconds=2.0
        ),
    )
    log = logs.configure_logging(settings.logging, secrets=_secret_values(settings))
    try:
        store, claimer = _services(settings, log=log)
        daemon = Daemon(settings, store, claimer, log=log)
        daemon.start()
        submitted = submit_manifest(store, settings, sample_manifest_bytes())
        daemon.wake()
        print(f"demo: dropped s3://{settings.watch_bucket}/{submitted.manifest_key}")
        code = _follow(store, settings, submitted.target, submitted.job_id, timeout=args.timeout)
        from watcher.markers import result_key

        marker = store.get_bytes(
            settings.buckets.output, result_key(submitted.target), max_bytes=1 << 24
        )
        if marker:
            print(f"\nresult marker s3://{settings.buckets.output}/{result_key(submitted.target)}:")
            print(json.dumps(json.loads(marker), indent=2, ensure_ascii=False))
        if code == EXIT_OK:
            body = store.get_bytes(settings.buckets.output, submitted.target, max_bytes=1 << 30)
            print(f"\nZIP listing of s3://{settings.buckets.output}/{submitted.target}:")
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                for info in archive.infolist():
                    print(f"  {info.file_size:>10}  {info.date_time}  {info.filename}")
                bad = archive.testzip()
            if bad is not None:
                print(f"demo: entry {bad} failed its CRC check", file=sys.stderr)
                code = EXIT_JOB_FAILED
        stopper = threading.Thread(target=daemon.shutdown)
        stopper.start()
        stopper.join()
        return code
    finally:
        local.stop()


def _cmd_zip(args: argparse.Namespace) -> int:
    """One job in the foreground: the daemon's pipeline and markers, no claims."""
    logs = _logs()
    from watcher.job import run_foreground
    from watcher.store import Store

    settings = _settings(args)
    raw = _read_manifest_file(args.manifest)
    require_usable(settings, ("buckets.input", "buckets.output"))
    log = logs.configure_logging(settings.logging, secrets=_secret_values(settings))
    store = Store(_client(settings, log, max_pool_connections=64))
    try:
        outcome = run_foreground(store, settings, raw, log=log)
    except KeyboardInterrupt:
        print("interrupted: the job was cancelled", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)  # a worker thread stuck in a read would otherwise hold the exit up
    result = outcome.result or {}
    if outcome.state == "succeeded":
        print(
            f"succeeded: s3://{settings.buckets.output}/{outcome.target} "
            f"({result.get('files_done')} files, {result.get('bytes_read')} bytes in, "
            f"{result.get('bytes_written')} bytes out, {result.get('duration_seconds')} s)"
        )
        return EXIT_OK
    assert outcome.error is not None
    print(f"failed: {outcome.error.code}: {outcome.error.message}", file=sys.stderr)
    return EXIT_JOB_FAILED


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate the configuration, then reach every bucket it names; one line per check.

    An unreachable endpoint, refused credentials, a missing bucket and a bucket the key may not
    use each get their own message (see ``preflight.classify``).
    """
    settings = _settings(args)
    print(f"configuration: ok (endpoint {settings.s3.endpoint_url or 'AWS default'})")
    problems = probe(settings, ALL_BUCKETS)
    for problem in problems:
        print(problem.line())
    if problems:
        return EXIT_USAGE
    for key, bucket in zip(
        ALL_BUCKETS,
        (settings.buckets.input, settings.buckets.output, settings.watch_bucket),
        strict=True,
    ):
        print(f"{key}: ok (s3://{bucket})")
    return EXIT_OK


_HANDLERS = {
    "run": _cmd_run,
    "zip": _cmd_zip,
    "submit": _cmd_submit,
    "status": _cmd_status,
    "check": _cmd_check,
    "jobs": _cmd_jobs,
    "cancel": _cmd_cancel,
    "retry": _cmd_retry,
    "demo": _cmd_demo,
}
