"""Peak RSS and throughput of `b2-zip-watcher zip` on a 1 GiB job against moto's S3 server.

Issue 2's measurement: moto keeps objects in memory (its own process), the pipeline does not.
Run: .venv/bin/python -m bench.moto_1gib
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.exceptions import EndpointConnectionError

from bench.run import WORK, peak_rss_kib, random_bytes, text_bytes
from bench.servers import free_port

MiB = 1024 * 1024


def main() -> int:
    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "BUCKET_NAME": "onegib",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        deadline = time.monotonic() + 60  # moto starts slowly on a busy machine
        while True:
            try:
                s3.create_bucket(Bucket="onegib")
                break
            except EndpointConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        keys = [f"in/{i:02d}.{'csv' if i % 2 else 'bin'}" for i in range(16)]

        def put(i: int) -> None:
            body = (text_bytes if i % 2 else random_bytes)(i, 64 * MiB)
            s3.put_object(Bucket="onegib", Key=keys[i], Body=body)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, range(16)))
        WORK.mkdir(parents=True, exist_ok=True)
        manifest = WORK / "onegib.json"
        manifest.write_text(json.dumps({"files": keys, "target": "out/onegib.zip"}))
        config = WORK / "onegib.yaml"
        config.write_text("logging:\n  level: WARNING\n  format: json\n")
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                str(os.path.join(os.path.dirname(sys.executable), "b2-zip-watcher")),
                "zip",
                str(manifest),
                "--config",
                str(config),
            ],
            env=env,
            cwd=WORK,
        )
        peak, _cpu = peak_rss_kib(proc)
        wall = time.perf_counter() - start
        size = s3.head_object(Bucket="onegib", Key="out/onegib.zip")["ContentLength"]
        print(
            f"1 GiB job on moto: exit {proc.returncode}, {wall:.1f} s, "
            f"{1024 / wall:.1f} MiB/s in, ZIP {size / MiB:.0f} MiB, peak RSS {peak / 1024:.0f} MiB"
        )
        return proc.returncode
    finally:
        server.terminate()


if __name__ == "__main__":
    raise SystemExit(main())
