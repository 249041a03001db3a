"""The Dockerfile, checked without a Docker engine (none runs on these machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from watcher.api import HttpServer, make_app
from watcher.config import from_mapping

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_the_run_command():
    steps = instructions()
    words = [w for w, _ in steps]
    assert words.count("FROM") == 2 and all(
        "python:3.11-slim" in r for w, r in steps if w == "FROM"
    )
    final = words[len(words) - 1 - words[::-1].index("FROM") :]
    assert "USER" in final
    user = [r for w, r in steps if w == "USER"][-1]
    assert user not in ("root", "0")
    assert ("EXPOSE", "8000") in steps and ("STOPSIGNAL", "SIGTERM") in steps
    cmd = json.loads([r for w, r in steps if w == "CMD"][-1])
    assert cmd[:2] == ["b2-zip-watcher", "run"]
    assert any(w == "HEALTHCHECK" and "/healthz" in r for w, r in steps)
    assert (ROOT / ".dockerignore").read_text().count(".venv") == 1


def test_the_image_config_loads_and_serves_health_on_all_interfaces():
    data = yaml.safe_load((ROOT / "docker" / "config.yaml").read_text())
    settings = from_mapping(data, {"BUCKET_NAME": "b"})
    assert settings.http.enabled and settings.http.host == "0.0.0.0" and settings.http.port == 8000


class _Backend:
    requests_prefix = "zip-requests/"
    watch_bucket = "b"

    def ready(self) -> bool:
        return True


def test_the_healthcheck_command_passes_against_a_running_server():
    server = HttpServer(
        make_app(shared_secret=None, b2_event_secret=None, backend=_Backend()), "127.0.0.1", 0
    ).start()
    try:
        healthcheck = [r for w, r in instructions() if w == "HEALTHCHECK"][0]
        command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
        assert command[0] == "python"
        code = command[-1]
        env = {**os.environ, "PORT": str(server.port)}
        result = subprocess.run([sys.executable, "-c", code], timeout=30, env=env)
        assert result.returncode == 0, "the healthcheck must follow PORT"
        default = subprocess.run(
            [sys.executable, "-c", code.replace("'8000'", f"'{server.port}'")],
            timeout=30,
            env={k: v for k, v in os.environ.items() if k != "PORT"},
        )
        assert default.returncode == 0, "without PORT the healthcheck must use the default"
    finally:
        server.stop()
    down = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, env=env)
    assert down.returncode != 0, "the healthcheck must fail when nothing answers"
