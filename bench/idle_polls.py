"""Count the storage requests an idle daemon makes at the default settings (issue 3).

Starts moto's S3 server and a counting proxy on 127.0.0.1, runs `b2-zip-watcher run` against the
proxy with the default configuration (only endpoint and bucket set) for --seconds, then prints the
requests it made by operation. Run: .venv/bin/python -m bench.idle_polls --seconds 600
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    port = free_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1"
    )
    env = dict(os.environ)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    time.sleep(2)
    proxy = FaultProxy(port).start()
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="idle")
    empty = ROOT / "bench" / "work" / "empty-config.yaml"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("logging:\n  format: json\n")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "watcher", "run", "--config", str(empty)],
        env={**env, "AWS_ENDPOINT_URL": proxy.endpoint_url, "BUCKET_NAME": "idle"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(args.seconds)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        proxy.stop()
        server.terminate()
    lists = sum(n for shape, n in proxy.counts.items() if "list-type" in shape)
    print(f"idle daemon, default settings, {args.seconds:.0f} s: {dict(proxy.counts)}")
    print(f"ListObjectsV2 calls: {lists} ({lists * 3600 / args.seconds:.0f} per hour)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
