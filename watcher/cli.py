"""Command line: argparse subcommands. The only module that prints and picks exit codes.

Exit codes (CONTRACT §1): 0 ok; 1 job failed; 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from watcher.errors import ConfigError, WatcherError

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message, drop nothing else."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="b2-zip-watcher", description=__doc__.splitlines()[0])
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
    add("check", "validate the configuration and reach the buckets")
    demo = add("demo", "one-shot demo on the embedded local S3 server")
    demo.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = _HANDLERS[args.command]
        return handler(args)
    except ConfigError as exc:
        print(f"b2-zip-watcher: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatcherError as exc:
        print(f"b2-zip-watcher: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


def _settings(args: argparse.Namespace, environ: dict[str, str] | None = None):
    from watcher.config import load_settings

    return load_settings(getattr(args, "config", None), os.environ if environ is None else environ)


def _read_manifest_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("MANIFEST.json", f"cannot read {path}: {exc.strerror}") from None


def _cmd_not_built(args: argparse.Namespace) -> int:
    print(f"b2-zip-watcher: '{args.command}' is not available in this build", file=sys.stderr)
    return EXIT_USAGE


_HANDLERS = {
    "run": _cmd_not_built,
    "zip": _cmd_not_built,
    "submit": _cmd_not_built,
    "status": _cmd_not_built,
    "check": _cmd_not_built,
    "demo": _cmd_not_built,
}
