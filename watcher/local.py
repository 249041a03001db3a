"""An embedded S3-compatible server for ``run --local`` and ``demo``.

moto's ``ThreadedMotoServer`` (the ``local`` extra) serves the S3 API on 127.0.0.1 from this
process's memory. It exists so that a fresh machine can see the daemon work end to end without a
B2 account; nothing written to it survives the process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watcher.errors import ConfigError

if TYPE_CHECKING:
    from watcher.config import Settings

LOCAL_BUCKET = "b2-zip-watcher-local"
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local-key-id",
    "AWS_SECRET_ACCESS_KEY": "local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SAMPLE_MANIFEST_NAME = "sample.json"

_SAMPLES: dict[str, bytes] = {
    "samples/readme.txt": b"Objects of this local bucket were made by b2-zip-watcher --local.\n",
    "samples/data/numbers.csv": "\n".join(f"{i},{i * i},{i**3}" for i in range(5000)).encode(),
    "samples/data/empty.txt": b"",
    "samples/photos/pixel.png": bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    ),
    "samples/photos/caf\u00e9-\u65e5\u672c.txt": "UTF-8 names: caf\u00e9, \u65e5\u672c.\n".encode(),
}


def sample_manifest(target: str = "zips/sample.zip") -> dict:
    """A manifest using every entry form of CONTRACT §3 against the sample objects."""
    return {
        "files": [
            "samples/readme.txt",
            {"key": "samples/data/numbers.csv", "name": "tables/numbers.csv"},
            {"prefix": "samples/photos/", "name": "photos/"},
        ],
        "target": target,
    }


@dataclass
class LocalS3:
    """The embedded server; ``start()`` returns its endpoint URL, ``stop()`` shuts it down."""

    port: int = 0
    bucket: str = LOCAL_BUCKET
    _server: object | None = None
    endpoint_url: str | None = None

    def start(self) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise ConfigError(
                "--local", "the embedded S3 server needs the 'local' extra: pip install '.[local]'"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def seed(self, client) -> None:
        """Create the bucket (versioned, as B2 buckets are) and put the sample objects in it."""
        client.create_bucket(Bucket=self.bucket)
        client.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        for key, body in _SAMPLES.items():
            client.put_object(Bucket=self.bucket, Key=key, Body=body)

    def environ(self) -> dict[str, str]:
        """Variables that point a client (or another shell's ``submit``) at this server."""
        assert self.endpoint_url is not None, "start() first"
        return {
            **LOCAL_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "BUCKET_NAME": self.bucket,
        }

    def settings(self, base: Settings) -> Settings:
        """``base`` with the endpoint and both buckets pointed at this server."""
        assert self.endpoint_url is not None, "start() first"
        return dataclasses.replace(
            base,
            s3=dataclasses.replace(base.s3, endpoint_url=self.endpoint_url, region="us-east-1"),
            buckets=dataclasses.replace(base.buckets, input=self.bucket, output=self.bucket),
            watch=dataclasses.replace(base.watch, bucket=self.bucket),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def sample_manifest_bytes(target: str = "zips/sample.zip") -> bytes:
    return json.dumps(sample_manifest(target), indent=2).encode()
