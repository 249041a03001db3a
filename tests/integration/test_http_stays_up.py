"""HTTP that stays up (issue 13): the health routes answer with 300 slow connections open and
while the store hangs. The daemon is a subprocess; its store sits behind tests/faultproxy.py."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

from conftest import SHARED_SECRET, free_port
from daemonproc import DaemonProcess, wait_until, write_config
from faultproxy import Fault, FaultProxy

SLOW_CONNECTIONS = 300


def get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, float]:
    """(status, seconds); the timeout is generous: failing it means the route did not answer."""
    started = time.monotonic()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {SHARED_SECRET}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.monotonic() - started


def test_health_answers_behind_300_slow_connections_and_while_the_store_hangs(
    tmp_path, s3_server, s3_env
):
    proxy = FaultProxy(s3_server.port).start()
    port = free_port()
    config = write_config(tmp_path / "c.yaml", http={"enabled": True, "port": port})
    proc = DaemonProcess(
        config,
        {**s3_env, "AWS_ENDPOINT_URL": proxy.endpoint_url, "SHARED_SECRET": SHARED_SECRET},
        tmp_path / "d.log",
    ).start()
    slow: list[socket.socket] = []
    try:
        wait_until(lambda: _answers(port), 60, "the HTTP server")
        wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "readiness")

        # Slowloris: connections that never finish their headers and carry no token.
        for _ in range(SLOW_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        latencies = []
        for _ in range(5):
            for sock in slow[::10]:
                sock.sendall(b"a")  # keep them alive (not idle)
            status, seconds = get(port, "/healthz")
            assert status == 200
            latencies.append(seconds)
        assert get(port, "/metrics")[0] == 200
        print(f"/healthz with {len(slow)} slow connections: max {max(latencies) * 1000:.0f} ms")
        for sock in slow:
            sock.close()
        slow.clear()

        # A store that accepts connections and never answers.
        proxy.add(Fault("hang", seconds=120, times=10**9))
        hung = []
        for _ in range(4):
            status, seconds = get(port, "/healthz")
            assert status == 200
            hung.append(seconds)
            assert get(port, "/metrics")[0] == 200
            time.sleep(1)
        not_ready = wait_until(lambda: get(port, "/readyz")[0] == 503, 60, "readyz to say 503")
        assert not_ready
        status, seconds = get(port, "/healthz")
        assert status == 200
        hung.append(seconds)
        print(f"/healthz while the store hangs: max {max(hung) * 1000:.0f} ms")
    finally:
        for sock in slow:
            sock.close()
        proc.kill()
        proxy.stop()


def _answers(port: int) -> bool:
    try:
        return get(port, "/healthz", timeout=2)[0] == 200
    except OSError:
        return False
