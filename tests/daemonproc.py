"""Run ``b2-zip-watcher run`` as a real subprocess for tests, with its JSON logs captured."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def write_config(path: Path, **sections: dict) -> Path:
    """A config.yaml for tests: fast polling, short leases, JSON logs; ``sections`` override."""
    config: dict = {
        "watch": {
            "interval_seconds": 0.5,
            "max_idle_interval_seconds": 1,
            "lease_seconds": 6,
            "max_concurrent_jobs": 2,
            # conditional on moto, versions on the B2-faithful server (which has no conditional
            # writes): the suite runs on both (docs/b2.md)
            "coordination": "auto",
        },
        "logging": {"level": "INFO", "format": "json"},
        "shutdown_grace_seconds": 20,
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    path.write_text(yaml.safe_dump(config))
    return path


# Daemons still running when the test process ends (a test's finally that never ran: a worker
# that aborted) are killed then rather than left behind on the machine.
_LIVE: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


@dataclass
class DaemonProcess:
    """One daemon subprocess; its stdout+stderr go to ``log_path``."""

    config: Path
    env: dict[str, str]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "watcher",
                "run",
                "--config",
                str(self.config),
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        _LIVE.add(self.proc)
        return self

    def events(self) -> list[dict]:
        """Every JSON log line written so far (non-JSON lines are kept as {"raw": line})."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"raw": line}
            out.append(event if isinstance(event, dict) else {"raw": line})
        return out

    def wait_for_event(self, name: str, timeout: float = 30.0, **fields: object) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {name} event; log:\n{self.log_path.read_text()[-4000:]}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        """Terminate if still running (test clean-up); never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def run_cli(
    *args: str, env: dict[str, str], cwd: Path, config: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """One ``b2-zip-watcher`` command (``python -m watcher …``) run to its end, output captured;
    ``--config`` appended when a config file is given."""
    tail = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args, *tail],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def list_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def read_json(s3, bucket: str, key: str) -> dict | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(body)


MANIFEST_PREFIX = "zip-requests/"


def drop(s3, bucket: str, name: str, manifest: dict | bytes, prefix: str = MANIFEST_PREFIX) -> str:
    """Drop a manifest (a dict as JSON, or bytes) as ``<prefix><name>.json``; returns its key."""
    key = f"{prefix}{name}.json"
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return key


def result_of(s3, bucket: str, target: str) -> dict | None:
    """The result marker next to ``target``, or None while there is none."""
    return read_json(s3, bucket, f"{target}.result.json")
