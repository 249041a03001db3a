"""Schemathesis against openapi.yaml: generated requests, every answer checked against the spec.

The server is the daemon's own (waitress serving ``make_app`` over ``DaemonBackend`` on a free
loopback port: the real manifest validation, the real store writing into a bucket on moto's
server over HTTP); only the scheduler is replaced by a recorder of wake-ups. Schemathesis
generates valid and invalid requests for each operation and runs its checks on every answer: no
5xx, a documented status code, content type, headers and body schema, invalid data refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import schemathesis
from conftest import EVENT_SECRET, SHARED_SECRET, event_signature
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from watcher.api import HttpServer, make_app
from watcher.config import from_mapping
from watcher.metrics import Metrics
from watcher.service import DaemonBackend
from watcher.store import Store, make_client

# Store-agnostic: runs on moto only (docs/b2.md).
pytestmark = pytest.mark.moto_only(
    "the HTTP API's answers against openapi.yaml (test_http.py, test_jobs_api.py: on both)"
)

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


class WakeRecorder:
    """Stands in for the daemon: the API only asks it to wake up and whether it is stopping."""

    stopping = False

    def __init__(self) -> None:
        self.woken: list[list[str] | None] = []

    def wake(self, keys: list[str] | None = None) -> None:
        self.woken.append(keys)


# Loaded at import for parametrize; the server (which needs the per-test bucket) comes from a
# fixture. (``schemathesis.pytest.from_fixture`` does not work with pytest 9.)
schema = schemathesis.openapi.from_path(SPEC)


@pytest.fixture
def daemon():
    return WakeRecorder()


@pytest.fixture
def api_url(s3_server, bucket, daemon):
    settings_ = from_mapping(
        {"http": {"shared_secret": SHARED_SECRET, "b2_event_secret": EVENT_SECRET}},
        {
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "BUCKET_NAME": bucket,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    store = Store(make_client(settings_.s3))
    app = make_app(
        shared_secret=SHARED_SECRET,
        b2_event_secret=EVENT_SECRET,
        backend=DaemonBackend(store, settings_, daemon),
        metrics=Metrics(request_counts=store.request_counts),
    )
    server = HttpServer(app, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


SIGNATURE = "X-Bz-Event-Notification-Signature"


def send_signed(case, api_url: str) -> requests.Response:
    """Send a generated webhook call signed as B2 would sign it, so the body itself is tested.

    (Unsigned and badly signed calls are left to tests/unit/test_api.py.)
    """
    kwargs = case.as_transport_kwargs(base_url=api_url)
    if "json" in kwargs:
        kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
    kwargs["headers"][SIGNATURE] = event_signature(kwargs.get("data") or b"", EVENT_SECRET)
    return requests.request(**kwargs, timeout=10)


# A schema-valid manifest may still break a rule JSON Schema cannot state (a `..` segment, two
# entries with one name, a target equal to an input: see the Manifest description), so "valid
# data is accepted" is not checked on the two submit routes; tests/unit/test_manifest.py covers
# those rules one by one. Likewise a list's `next` must be a cursor the API gave out (any other
# string is 400), which no schema can state; tests/unit/test_jobs.py covers cursors. Every other
# check runs on every operation.
SEMANTIC_RULES = {("POST", "/"), ("POST", "/jobs"), ("GET", "/jobs")}


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, api_url, daemon, s3, bucket):
    excluded = (
        [positive_data_acceptance]
        if (case.operation.method.upper(), case.operation.path) in SEMANTIC_RULES
        else []
    )
    if case.operation.path == "/b2-events" and SIGNATURE in (case.headers or {}):
        response = send_signed(case, api_url)
        case.validate_response(response)
    else:
        response = case.call_and_validate(
            base_url=api_url,
            headers={"Authorization": f"Bearer {SHARED_SECRET}"},
            excluded_checks=excluded,
        )
    if response.status_code == 202:
        # Accepted means durable: the manifest is in the requests prefix, and the daemon was woken.
        key = f"zip-requests/{response.json()['job_id']}.json"
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] > 0
        assert daemon.woken[-1] == [key]
