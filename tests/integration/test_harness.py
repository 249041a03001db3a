"""The test harness itself: a daemon a test started never outlives the test process, even when
the test's own clean-up never ran (a worker that aborted mid-test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemonproc import wait_until, write_config

TESTS = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.moto_only("the harness, not the store: one server is enough")
def test_a_daemon_left_running_by_an_aborted_test_process_is_killed_when_it_exits(s3_env, tmp_path):
    config = write_config(tmp_path / "c.yaml")
    log = tmp_path / "d.log"
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from pathlib import Path\n"
        "from daemonproc import DaemonProcess\n"
        "proc = DaemonProcess(Path(sys.argv[1]), {}, Path(sys.argv[2])).start()\n"
        "print(proc.proc.pid, flush=True)\n"
        "proc.wait_for_event('daemon_started', timeout=60)\n"
        "sys.exit(3)  # no stop(), no kill(): as if the test's finally never ran\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config), str(log)],
        env={**os.environ, **s3_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    pid = int(done.stdout.split()[0])
    try:
        assert done.returncode == 3, done.stderr
        assert wait_until(lambda: not _alive(pid), 10, "the left-over daemon to end")
    finally:
        if _alive(pid):
            os.kill(pid, 9)
