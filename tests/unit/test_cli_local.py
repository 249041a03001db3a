"""`run --local` (make run) turns the HTTP API on with a generated secret, on a free port when the
configured one is taken (another `make run`)."""

from __future__ import annotations

import socket

from watcher.cli import _with_local_http
from watcher.config import from_mapping


def test_local_http_gets_a_generated_secret_and_falls_back_from_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = _with_local_http(from_mapping({"http": {"port": port}}, {}))
        assert settings.http.enabled and settings.http.port == 0
        secret = settings.http.shared_secret.reveal()
        assert len(secret) >= 20 and secret not in repr(settings)
    kept = _with_local_http(from_mapping({"http": {"port": port}}, {"SHARED_SECRET": "mine-123"}))
    assert kept.http.port == port and kept.http.shared_secret.reveal() == "mine-123"
