"""systemd integration: the unit passes systemd-analyze, and the daemon speaks sd_notify."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemonproc import DaemonProcess, write_config

from watcher import sdnotify

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "b2-zip-watcher.service"


def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's script (verify checks the binary exists)."""
    script = Path(sys.executable).parent / "b2-zip-watcher"
    text = UNIT.read_text().replace("/opt/b2-zip-watcher/bin/b2-zip-watcher", str(script))
    path = tmp_path / "b2-zip-watcher.service"
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd (.ci/run does)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = analyze("verify", str(installed_unit(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "b2-zip-watcher.service" not in result.stderr, result.stderr


def test_unit_exposure_is_at_most_2(tmp_path):
    result = analyze("security", "--offline=true", str(installed_unit(tmp_path)))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 2.0


def test_unit_is_type_notify_with_watchdog_and_secrets_from_an_environment_file():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "EnvironmentFile=-/etc/b2-zip-watcher/env",
        "--config /etc/b2-zip-watcher/config.yaml",
        "Restart=on-failure",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
    ):
        assert line in text


def test_notify_sends_datagrams_to_the_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert sock.recv(100) == b"READY=1"
    assert not sdnotify.notify("READY=1", environ={})
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


@pytest.mark.moto_only("the sd_notify protocol between the daemon and systemd")
def test_daemon_sends_ready_watchdog_and_stopping_in_order(tmp_path, s3_env):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        proc = DaemonProcess(
            write_config(tmp_path / "c.yaml"),
            {**s3_env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
            tmp_path / "d.log",
        ).start()
        try:
            messages = [sock.recv(100).decode() for _ in range(3)]
            proc.signal(signal.SIGTERM)
            while messages[-1] != "STOPPING=1":
                messages.append(sock.recv(100).decode())
            assert proc.wait(timeout=20) == 0
        finally:
            proc.stop()
    assert messages[0] == "READY=1"
    assert messages[1:3] == ["WATCHDOG=1", "WATCHDOG=1"]
    assert messages[-1] == "STOPPING=1"
