"""`make run`'s setup (CONTRACT §1, §9): `run --local` prints a submit line and a curl line that
both work, and `submit` is picked up at once through the wake-up socket, not at the next poll."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port
from daemonproc import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_run_local_prints_working_submit_and_curl_lines_and_submit_starts_at_once(tmp_path):
    port = free_port()
    config = tmp_path / "c.yaml"
    # Polls 300 s apart: a job that starts within a minute was started by the wake-up.
    config.write_text(
        "watch: {interval_seconds: 300, max_idle_interval_seconds: 300}\nlogging: {format: json}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("BUCKET_NAME", None)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--local", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "PORT": str(port)},
            cwd=ROOT,
        )
    try:
        wait_until(lambda: "Stop with Ctrl-C" in log_path.read_text(), 120, "the instructions")
        text = log_path.read_text()
        submit_line = next(line for line in text.splitlines() if " submit " in line)
        curl_line = next(line for line in text.splitlines() if line.strip().startswith("curl "))
        started = wait_until(
            lambda: next(
                (e for e in _events(log_path) if e.get("event") == "daemon_started"), None
            ),
            60,
            "the daemon",
        )
        assert any(e.get("event") == "wakeup_listening" for e in _events(log_path))
        time.sleep(1.0)  # past the start-up poll

        # The submit line, as printed (its variables, then the command), with --wait.
        words = shlex.split(submit_line)
        assigned = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
        command = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
        assert command[0].endswith("b2-zip-watcher") and "--wait" in command
        t0 = time.monotonic()
        submitted_at = time.time()
        submitted = subprocess.run(
            [sys.executable, "-m", "watcher", *command[1:], "--config", str(config)],
            env={**env, **assigned},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        elapsed = time.monotonic() - t0
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "succeeded" in submitted.stdout
        job_started = next(e for e in _events(log_path) if e.get("event") == "job_started")
        waited = _at(job_started) - _at(started)
        assert 0 < waited < 60, f"the job waited {waited:.0f} s: for a periodic poll?"
        pickup = _at(job_started) - submitted_at
        print(f"submit --wait took {elapsed:.2f} s end to end; the job started {pickup:.2f} s")
        print("after the submit command was launched (its interpreter start-up included)")

        # The curl line: its token and URL accept the sample manifest.
        token = re.search(r"Bearer ([^']+)'", curl_line).group(1)
        url = re.search(r"(http://127\.0\.0\.1:\d+/jobs)", curl_line).group(1)
        assert url.endswith(f":{port}/jobs")
        body = (ROOT / "examples" / "sample-manifest.json").read_bytes()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (200, 202)
            assert json.loads(response.read())["job_id"]
        assert token not in "".join(json.dumps(e) for e in _events(log_path) if "event" in e), (
            "the generated secret reached a log event"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _at(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out
