"""Shared fixtures: a real S3 server over HTTP (moto's, in its own process on 127.0.0.1), buckets,
an object factory and an independent ZIP verifier."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from watcher.store import strip_checksum_headers

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# Secret values the suite configures; _no_secret_leaks fails the run if any reaches a log file or
# a marker (or any other JSON object) written during the session.
SHARED_SECRET = "suite-shared-secret-8f3a2c"
EVENT_SECRET = "suite-event-secret-51c9d4"
SECRET_VALUES = (TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], SHARED_SECRET, EVENT_SECRET)


# Every field CONTRACT §4 requires in a result marker.
RESULT_FIELDS = frozenset(
    {
        "job_id",
        "state",
        "target",
        "bucket",
        "manifest",
        "files_total",
        "files_done",
        "bytes_read",
        "bytes_written",
        "started_at",
        "updated_at",
        "finished_at",
        "duration_seconds",
        "entries",
        "skipped",
        "error",
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start listening")


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    port: int
    dialect: str = "moto"  # or "b2": moto behind tests/b2proxy.py

    def client(self, **config: object):
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                **config,
            ),
        )
        # What the product's edge does too: B2 refuses the checksum headers botocore adds to
        # DeleteObjects even with "when_required".
        client.meta.events.register("before-sign.s3", strip_checksum_headers)
        return client


@pytest.fixture(autouse=True)
def _aws_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach real AWS credentials or endpoints."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server as a separate process on a free loopback port, shared by the session
    (tests/motoserver.py: moto without the cost of deep-copying bodies in version listings)."""
    port = free_port()
    env = {**os.environ, **TEST_CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("motoserver.py")), "-H", "127.0.0.1"]
        + ["-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        _wait_for_port(port, proc)
        server = S3Server(endpoint_url=f"http://127.0.0.1:{port}", port=port)
        _SESSION_SERVER["server"] = server
        yield server
        _SESSION_SERVER.pop("server", None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def b2_proxy(moto_server: S3Server) -> Iterator[Any]:
    """The B2-faithful proxy (tests/b2proxy.py) in front of the session's moto server."""
    from b2proxy import B2Proxy

    proxy = B2Proxy(moto_server.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, moto_server: S3Server) -> S3Server:
    """The S3 server a test talks to: moto's, or moto behind the B2-faithful proxy (``"b2"``).

    Plain moto unless the test asks: ``@both_servers`` runs it on both, or
    ``@pytest.mark.parametrize("s3_server", ["b2"], indirect=True)`` on B2 only. Everything that
    goes through ``s3_server`` — the test's own client, daemons, fault proxies in front — then
    meets B2's dialect.
    """
    if getattr(request, "param", "moto") == "b2":
        proxy = request.getfixturevalue("b2_proxy")
        return S3Server(endpoint_url=proxy.endpoint_url, port=proxy.port, dialect="b2")
    return moto_server


# Run a test against moto and against the B2-faithful proxy. With ``--servers both`` every test
# that uses ``s3_server`` (through ``s3``, ``bucket``, ``s3_env``, ``daemons``…) gets both without
# asking (see ``pytest_generate_tests``); the mark is for tests that run on both in any case.
both_servers = pytest.mark.parametrize("s3_server", ["moto", "b2"], indirect=True)


def per_server(argname: str, moto: list, b2: list, *, indirect: bool = False):
    """Parametrize ``s3_server`` together with ``argname``: moto with each value of ``moto``, the
    B2-faithful server with each of ``b2`` (e.g. claim protocols: B2 has no conditional writes)."""
    cases = [pytest.param("moto", value, id=f"moto-{value}") for value in moto]
    cases += [pytest.param("b2", value, id=f"b2-{value}") for value in b2]
    return pytest.mark.parametrize(
        ("s3_server", argname), cases, indirect=["s3_server"] + ([argname] if indirect else [])
    )


# Modules whose tests choose their servers themselves (explicit ``both_servers`` / B2-only marks),
# or meet the store only where its dialect does not matter: docs/b2.md says why for each.
CHOOSE_THEIR_OWN_SERVER = {
    "test_readers.py": "the reader matrix checks the ZIP's bytes, which no store dialect changes",
    "test_small_get.py": "marks its B2 tests itself (both_servers); the rest inject faults",
}


def _moto_only_reason(metafunc: pytest.Metafunc) -> str | None:
    marker = metafunc.definition.get_closest_marker("moto_only")
    if marker is not None:
        return marker.args[0] if marker.args else "moto only"
    return CHOOSE_THEIR_OWN_SERVER.get(Path(str(metafunc.definition.fspath)).name)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--servers",
        choices=("moto", "both"),
        default="moto",
        help="both: every test that meets a store runs on moto and on the B2-faithful server "
        "(`make test`, docs/b2.md)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Issue 12: with ``--servers both`` the whole daemon suite runs on moto and on the
    B2-faithful server. A test that reaches ``s3_server`` is parametrized ``[moto]`` / ``[b2]``
    unless it parametrizes ``s3_server`` itself or is marked ``@pytest.mark.moto_only("why")``."""
    if "s3_server" not in metafunc.fixturenames or metafunc.config.getoption("servers") != "both":
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", "")
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "s3_server" in names:
            return
    if _moto_only_reason(metafunc) is None:
        metafunc.parametrize("s3_server", ["moto", "b2"], indirect=True)


@pytest.fixture
def s3(s3_server: S3Server):
    """A plain boto3 client on the test server (the tests' own, independent of watcher.store)."""
    return s3_server.client()


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, uniquely named bucket per test, so tests never see each other's objects."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server: S3Server, bucket: str) -> dict[str, str]:
    """Environment for a watcher process or ``config.load_settings`` pointed at the test server."""
    return {
        **TEST_CREDENTIALS,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "BUCKET_NAME": bucket,
    }


# Keys that need URI encoding (path-style GETs sign the encoded path: SigV4's canonical URI).
AWKWARD_KEYS = [
    "plain/a.txt",
    "with space/and+plus.txt",
    "per%cent/tilde~/q?mark#hash.txt",
    "unicodé/日本語/ファイル.txt",
    "sub//double/slash.txt",
    "brackets[1]/(x) & y=z;,'!*@$.txt",
]


def put_objects(s3, bucket: str, objects: Mapping[str, bytes]) -> None:
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def deterministic_bytes(seed: int, size: int) -> bytes:
    """Incompressible but reproducible bytes."""
    return random.Random(seed).randbytes(size)


def verify_zip(
    path: Path, expected: Mapping[str, bytes], *, readers: bool = False, parse: bool = False
) -> zipfile.ZipFile:
    """Open the ZIP with independent readers and check names, sizes, CRCs and bytes exactly.

    ``zipfile`` always; ``unzip -t`` as well when it is installed; with ``readers``, the whole
    reader matrix of CONTRACT §10 (tests/readers; ``parse``: include unzipper's ``Parse``, for
    archives whose members have no data descriptor).
    """
    zf = zipfile.ZipFile(path)
    infos = {info.filename: info for info in zf.infolist()}
    assert sorted(infos) == sorted(expected), "entry names differ"
    for name, body in expected.items():
        info = infos[name]
        assert info.file_size == len(body), f"{name}: size {info.file_size} != {len(body)}"
        assert info.CRC == zlib.crc32(body), f"{name}: CRC differs"
        assert zf.read(name) == body, f"{name}: content differs"
    assert zf.testzip() is None
    if shutil.which("unzip"):
        result = subprocess.run(["unzip", "-t", "-qq", str(path)], capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr
    if readers:
        from readers import check_with_all_readers

        check_with_all_readers(path, expected, parse=parse)
    return zf


def download(s3, bucket: str, key: str, dest: Path) -> Path:
    s3.download_file(bucket, key, str(dest))
    return dest


def event_signature(body: bytes, secret: str) -> str:
    """The ``X-Bz-Event-Notification-Signature`` B2 sends with ``body``."""
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def secret_hits(text: str, where: str) -> list[str]:
    return [f"{where}: {secret[:6]}..." for secret in SECRET_VALUES if secret in text]


@pytest.fixture(scope="session", autouse=True)
def _no_secret_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session: grep every log file the tests' daemons wrote, and every JSON object
    (markers, indexes, claims, manifests) left on the session's S3 server, for secret values."""
    yield
    leaks: list[str] = []
    for path in tmp_path_factory.getbasetemp().rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".yaml", ".txt"):
            text = path.read_text(errors="replace")
            leaks += secret_hits(text, str(path))
            if path.suffix == ".log" and "X-Amz-Signature=" in text:
                leaks.append(f"{path}: a presigned link")  # links are never logged (§9)
    server = _SESSION_SERVER.get("server")
    if server is not None:
        s3 = server.client()
        for bucket in s3.list_buckets().get("Buckets", []):
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"])
            for obj in (o for page in pages for o in page.get("Contents", [])):
                if not obj["Key"].endswith(".json") or obj["Size"] > 64 * 1024 * 1024:
                    continue
                body = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                text = body.decode(errors="replace")
                leaks += [
                    f"s3://{bucket['Name']}/{obj['Key']}: {secret[:6]}..."
                    for secret in SECRET_VALUES
                    if secret in text
                ]
    assert not leaks, "secret values leaked:\n" + "\n".join(leaks)


_SESSION_SERVER: dict[str, S3Server] = {}


@pytest.fixture
def daemons(tmp_path: Path, s3_env: dict[str, str]):
    """Start ``b2-zip-watcher run`` subprocesses: ``daemons(config, name=, env=, endpoint=)``;
    every one still running is stopped at the end of the test."""
    from daemonproc import DaemonProcess

    started: list[DaemonProcess] = []

    def start(
        config: Path, *, name: str = "d", env: dict | None = None, endpoint: str | None = None
    ) -> DaemonProcess:
        environ = {**s3_env, **(env or {})}
        if endpoint:
            environ["AWS_ENDPOINT_URL"] = endpoint
        proc = DaemonProcess(config, environ, tmp_path / f"{name}.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region for in-process moto (``moto.mock_aws``)."""
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def versioned_bucket(aws_env):
    """In-process moto with one bucket, ``bkt``, that keeps versions: its boto3 client."""
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bkt")
        client.put_bucket_versioning(Bucket="bkt", VersioningConfiguration={"Status": "Enabled"})
        yield client
