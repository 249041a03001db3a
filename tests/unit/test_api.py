"""The WSGI app of CONTRACT §5 with a fake backend: every route and status code."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from wsgiref.util import setup_testing_defaults

import pytest
import structlog
from conftest import event_signature

from watcher.api import bearer_ok, make_app, manifest_keys, parse_events, signature_ok
from watcher.errors import InvalidManifest, StorageError
from watcher.jobs import BadRequest, Conflict, NotFound
from watcher.metrics import Metrics

SECRET = "s3cret-token-value"
EVENT_SECRET = "event-signing-secret"


@dataclass
class Submitted:
    job_id: str
    target: str


@dataclass
class FakeBackend:
    requests_prefix: str = "zip-requests/"
    watch_bucket: str = "bucket"
    is_ready: bool = True
    submitted: list[bytes] = field(default_factory=list)
    woken: list[list[str]] = field(default_factory=list)
    fail_with: Exception | None = None
    listed: list = field(default_factory=list)

    def submit(self, raw: bytes) -> Submitted:
        if self.fail_with is not None:
            raise self.fail_with
        document = json.loads(raw)
        if "target" not in document:
            raise InvalidManifest("target: is required")
        self.submitted.append(raw)
        return Submitted(document.get("id", "generated"), document["target"])

    def job_status(self, job_id: str) -> dict | None:
        if job_id != "known":
            return None
        return {
            "job_id": job_id,
            "state": "running",
            "target": "o.zip",
            "bucket": "bucket",
            "error": None,
        }

    def ready(self) -> bool:
        return self.is_ready

    def wake(self, keys: list[str]) -> None:
        self.woken.append(keys)

    def list_jobs(self, *, state, limit, cursor) -> dict:
        self.listed.append((state, limit, cursor))
        if limit == "0":
            raise BadRequest("limit: must be an integer from 1 to 500")
        return {"jobs": [{"job_id": "known", "state": "running"}], "next": None}

    def retry(self, job_id: str) -> dict:
        if job_id != "failed-one":
            raise Conflict(f"job {job_id!r} is running: only a failed job can be retried")
        return {"job_id": job_id, "target": "o.zip", "manifest": "zip-requests/f.json"}

    def cancel(self, job_id: str) -> dict:
        if job_id == "missing":
            raise NotFound("no job 'missing'")
        if job_id != "known":
            raise Conflict(f"job {job_id!r} has already succeeded")
        return {"job_id": job_id, "state": "running", "target": "o.zip"}

    def download_url(self, job_id: str) -> str:
        if job_id == "missing":
            raise NotFound("no job 'missing'")
        return "http://127.0.0.1:1/bucket/o.zip?X-Amz-Signature=abc"


def call(
    app,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict | None = None,
    content_length: int | None = None,
):
    environ: dict = {}
    setup_testing_defaults(environ)
    path, _, query = path.partition("?")
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body) if content_length is None else content_length)
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE",) else f"HTTP_{key}"] = value
    captured: dict = {}

    def start_response(status, response_headers, exc_info=None):
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    chunks = app(environ, start_response)
    captured["body"] = b"".join(chunks)
    captured["input_left"] = len(environ["wsgi.input"].read())
    return captured


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def app(backend):
    return make_app(
        shared_secret=SECRET,
        b2_event_secret=EVENT_SECRET,
        backend=backend,
        metrics=Metrics(request_counts=lambda: {"GetObject": 3}),
    )


AUTH = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/", "/jobs"])
def test_post_manifest_is_accepted_with_location(app, backend, path):
    r = call(
        app,
        "POST",
        path,
        json.dumps({"files": ["a"], "target": "o.zip", "id": "j1"}).encode(),
        AUTH,
    )
    assert r["status"] == 202
    assert json.loads(r["body"]) == {"job_id": "j1", "target": "o.zip", "status_url": "/jobs/j1"}
    assert r["headers"]["Location"] == "/jobs/j1"
    assert len(backend.submitted) == 1


def test_sample_app_client_with_charset_is_accepted(app):
    headers = {**AUTH, "Content-Type": "application/json; charset=utf-8"}
    assert call(app, "POST", "/", b'{"files": ["a"], "target": "o.zip"}', headers)["status"] == 202


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "Bearer",
        f"bearer {SECRET}",
        f"Bearer  {SECRET}",
        f"Bearer {SECRET} ",
        f"Bearer {SECRET[:-1]}",
        f"Bearer {SECRET.upper()}",
        SECRET,
        f"Basic {SECRET}",
    ],
)
def test_missing_wrong_and_near_miss_tokens_are_401(app, backend, token):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    r = call(app, "POST", "/jobs", b'{"files": ["a"], "target": "o.zip"}', headers)
    assert r["status"] == 401
    assert r["headers"]["WWW-Authenticate"].startswith("Bearer")
    assert backend.submitted == []


def test_invalid_json_and_manifest_are_400_with_a_code(app, backend):
    backend.fail_with = InvalidManifest("files: must not be empty")
    r = call(app, "POST", "/jobs", b'{"files": []}', AUTH)
    assert r["status"] == 400
    assert json.loads(r["body"])["error"] == {
        "code": "invalid_manifest",
        "message": "files: must not be empty",
    }


def test_storage_trouble_is_503(app, backend):
    backend.fail_with = StorageError("s3://b/k: SlowDown")
    assert call(app, "POST", "/jobs", b"{}", AUTH)["status"] == 503


def test_too_large_is_refused_before_the_body_is_read(backend):
    app = make_app(shared_secret=SECRET, b2_event_secret=None, backend=backend, max_body=100)
    r = call(app, "POST", "/jobs", b"x" * 50, AUTH, content_length=10**9)
    assert r["status"] == 413
    assert r["input_left"] == 50, "the body was read"


def test_not_json_is_415(app):
    headers = {**AUTH, "Content-Type": "text/plain"}
    assert call(app, "POST", "/jobs", b"hello", headers)["status"] == 415


def test_job_status_known_and_unknown(app):
    assert json.loads(call(app, "GET", "/jobs/known", headers=AUTH)["body"])["state"] == "running"
    assert call(app, "GET", "/jobs/unknown", headers=AUTH)["status"] == 404
    assert call(app, "GET", "/jobs/known")["status"] == 401


def test_health_routes_need_no_token(app, backend):
    assert call(app, "GET", "/healthz")["status"] == 200
    assert call(app, "GET", "/readyz")["status"] == 200
    backend.is_ready = False
    assert call(app, "GET", "/readyz")["status"] == 503


def test_metrics_need_the_token_and_expose_counters(app):
    assert call(app, "GET", "/metrics")["status"] == 401
    r = call(app, "GET", "/metrics", headers=AUTH)
    text = r["body"].decode()
    assert r["status"] == 200
    for name in (
        "b2zip_jobs_started_total",
        "b2zip_bytes_read_total",
        "b2zip_job_duration_seconds",
        "b2zip_manifests_pending",
        'b2zip_storage_requests_total{operation="GetObject"} 3.0',
    ):
        assert name in text


def test_unknown_routes_and_methods(app):
    assert call(app, "GET", "/nope", headers=AUTH)["status"] == 404
    assert call(app, "GET", "/jobs/a/b", headers=AUTH)["status"] == 404
    put = call(app, "PUT", "/jobs", headers=AUTH)
    assert put["status"] == 405 and put["headers"]["Allow"] == "POST, GET"
    assert call(app, "PATCH", "/jobs/known", headers=AUTH)["status"] == 405
    assert call(app, "GET", "/jobs/known/retry", headers=AUTH)["headers"]["Allow"] == "POST"
    assert call(app, "POST", "/healthz")["status"] == 405
    assert call(app, "PUT", "/jobs")["status"] == 401, "no route's methods leak without a token"


def test_job_list_passes_its_query_and_maps_a_bad_one_to_400(app, backend):
    r = call(app, "GET", "/jobs?state=running&limit=5&next=abc", headers=AUTH)
    assert r["status"] == 200 and json.loads(r["body"])["next"] is None
    assert backend.listed == [("running", "5", "abc")]
    bad = call(app, "GET", "/jobs?limit=0", headers=AUTH)
    assert bad["status"] == 400 and json.loads(bad["body"])["error"]["code"] == "bad_request"
    assert call(app, "GET", "/jobs")["status"] == 401


def test_retry_is_202_for_a_failed_job_and_409_otherwise(app):
    r = call(app, "POST", "/jobs/failed-one/retry", headers=AUTH)
    assert r["status"] == 202 and r["headers"]["Location"] == "/jobs/failed-one"
    busy = call(app, "POST", "/jobs/known/retry", headers=AUTH)
    assert busy["status"] == 409 and json.loads(busy["body"])["error"]["code"] == "conflict"


def test_cancel_is_202_for_a_live_job_409_for_a_finished_one_404_for_none(app):
    r = call(app, "DELETE", "/jobs/known", headers=AUTH)
    assert r["status"] == 202 and r["headers"]["Location"] == "/jobs/known"
    assert json.loads(r["body"])["target"] == "o.zip"
    done = call(app, "DELETE", "/jobs/done-one", headers=AUTH)
    assert done["status"] == 409 and json.loads(done["body"])["error"]["code"] == "conflict"
    assert call(app, "DELETE", "/jobs/missing", headers=AUTH)["status"] == 404
    assert call(app, "DELETE", "/jobs/known")["status"] == 401


def test_download_redirects_to_a_fresh_link_that_is_never_logged(app):
    with structlog.testing.capture_logs() as logs:
        r = call(app, "GET", "/jobs/known/download", headers=AUTH)
        missing = call(app, "GET", "/jobs/missing/download", headers=AUTH)
    assert r["status"] == 302 and "X-Amz-Signature" in r["headers"]["Location"]
    assert missing["status"] == 404
    assert "X-Amz-Signature" not in json.dumps(logs, default=str)


def sign(body: bytes, secret: str = EVENT_SECRET) -> str:
    return event_signature(body, secret)


def events_body(*events: dict) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def created(key: str, event_id: str = "e1") -> dict:
    return {
        "eventType": "b2:ObjectCreated:Upload",
        "objectName": key,
        "bucketName": "bucket",
        "eventId": event_id,
        "eventTimestamp": 1700000000000,
    }


def test_signed_event_wakes_the_daemon_for_manifests_only(app, backend):
    body = events_body(
        created("zip-requests/a.json", "e1"),
        created("zip-requests/done/a.json", "e2"),
        created("elsewhere/b.json", "e3"),
        {
            "eventType": "b2:ObjectDeleted:Delete",
            "objectName": "zip-requests/c.json",
            "eventId": "e4",
        },
    )
    r = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert r["status"] == 200
    assert backend.woken == [["zip-requests/a.json"]]
    again = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert again["status"] == 200 and backend.woken == [["zip-requests/a.json"]], "deduped"


def test_event_signature_may_be_one_of_several(app, backend):
    body = events_body(created("zip-requests/x.json", "e9"))
    header = f"v1={'0' * 64}, {sign(body)}"
    r = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": header})
    assert r["status"] == 200 and backend.woken == [["zip-requests/x.json"]]


@pytest.mark.parametrize("header", [None, "", "v1=", "v1=" + "0" * 64, "v2=abc", "sha256=whatever"])
def test_bad_or_missing_signature_is_401(app, backend, header):
    body = events_body(created("zip-requests/a.json"))
    headers = {} if header is None else {"X-Bz-Event-Notification-Signature": header}
    assert call(app, "POST", "/b2-events", body, headers)["status"] == 401
    assert backend.woken == []


def test_replayed_body_with_changed_signature_or_changed_body_is_401(app):
    body = events_body(created("zip-requests/a.json"))
    tampered = body.replace(b"a.json", b"b.json")
    r = call(app, "POST", "/b2-events", tampered, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert r["status"] == 401
    assert (
        call(
            app,
            "POST",
            "/b2-events",
            body,
            {"X-Bz-Event-Notification-Signature": sign(body, "other")},
        )["status"]
        == 401
    )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[]", "events"),
        (events_body(), "1 to 50"),
        (events_body(*[created(f"zip-requests/{i}.json", f"e{i}") for i in range(51)]), "1 to 50"),
        (events_body("text"), "events[0]: must be an object"),
        (events_body({**created("zip-requests/a.json"), "eventTimestamp": {}}), "eventTimestamp"),
        (events_body({**created("zip-requests/a.json"), "eventTimestamp": True}), "eventTimestamp"),
        (events_body(created("zip-requests/a.json"), {"objectName": None}), "events[1].objectName"),
    ],
)
def test_signed_body_that_is_not_a_b2_notification_is_400(app, backend, body, needle):
    r = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert r["status"] == 400
    assert needle in json.loads(r["body"])["error"]["message"]
    assert backend.woken == []


def test_events_of_other_buckets_are_ignored(app, backend):
    body = events_body(
        {**created("zip-requests/a.json", "b1"), "bucketName": "someone-else"},
        created("zip-requests/b.json", "b2"),
    )
    r = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert json.loads(r["body"]) == {"accepted": 1, "ignored": 1}
    assert backend.woken == [["zip-requests/b.json"]]


def test_test_event_gets_200(app, backend):
    body = events_body({"eventType": "b2:TestEvent", "eventId": "t"})
    r = call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})
    assert r["status"] == 200 and backend.woken == []


def test_webhook_is_absent_without_its_secret(backend):
    app = make_app(shared_secret=SECRET, b2_event_secret=None, backend=backend)
    body = events_body(created("zip-requests/a.json"))
    assert (
        call(app, "POST", "/b2-events", body, {"X-Bz-Event-Notification-Signature": sign(body)})[
            "status"
        ]
        == 404
    )


def test_the_presented_token_is_never_logged(backend):
    with structlog.testing.capture_logs() as logs:
        app = make_app(shared_secret=SECRET, b2_event_secret=None, backend=backend)
        call(
            app,
            "POST",
            "/jobs",
            b"{}",
            {"Authorization": "Bearer wrong-token-123", "Content-Type": "application/json"},
        )
        call(app, "POST", "/jobs", b'{"target": "t"}', AUTH)
    text = json.dumps(logs, default=str)
    assert "wrong-token-123" not in text and SECRET not in text
    assert any(e.get("event") == "http_request" and e.get("status") == 401 for e in logs)


def test_pure_helpers():
    assert bearer_ok(f"Bearer {SECRET}", SECRET) and not bearer_ok(None, SECRET)
    assert signature_ok(sign(b"x"), b"x", EVENT_SECRET)
    assert manifest_keys(
        [
            created("zip-requests/.claims/x.json"),
            created("zip-requests/a.txt"),
            created("zip-requests/ok.json"),
        ],
        "zip-requests/",
    ) == ["zip-requests/ok.json"]
    extra_fields = {**created("zip-requests/a.json"), "eventVersion": 1, "objectSize": 5}
    assert parse_events(events_body(extra_fields)) == [extra_fields]


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        target = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_every_answer_of_the_app_is_documented_in_openapi(app, backend):
    """Each route and status the app produced is in openapi.yaml, with its required fields."""
    import pathlib

    import yaml

    spec = yaml.safe_load(
        (pathlib.Path(__file__).resolve().parents[2] / "openapi.yaml").read_text()
    )
    manifest = json.dumps({"files": ["a"], "target": "o.zip", "id": "known"}).encode()
    body = events_body(created("zip-requests/a.json", "oa"))
    cases = [
        ("POST", "/", "/", manifest, AUTH),
        ("POST", "/jobs", "/jobs", manifest, AUTH),
        ("POST", "/jobs", "/jobs", b"{}", AUTH),
        ("POST", "/jobs", "/jobs", manifest, {}),
        ("POST", "/jobs", "/jobs", b"x", {**AUTH, "Content-Type": "text/plain"}),
        ("GET", "/jobs/known", "/jobs/{job_id}", b"", AUTH),
        ("GET", "/jobs/other", "/jobs/{job_id}", b"", AUTH),
        ("GET", "/jobs", "/jobs", b"", AUTH),
        ("GET", "/jobs?limit=0", "/jobs", b"", AUTH),
        ("POST", "/jobs/failed-one/retry", "/jobs/{job_id}/retry", b"", AUTH),
        ("POST", "/jobs/known/retry", "/jobs/{job_id}/retry", b"", AUTH),
        ("DELETE", "/jobs/known", "/jobs/{job_id}", b"", AUTH),
        ("DELETE", "/jobs/done-one", "/jobs/{job_id}", b"", AUTH),
        ("DELETE", "/jobs/missing", "/jobs/{job_id}", b"", AUTH),
        ("GET", "/jobs/known/download", "/jobs/{job_id}/download", b"", AUTH),
        ("GET", "/jobs/missing/download", "/jobs/{job_id}/download", b"", AUTH),
        ("GET", "/healthz", "/healthz", b"", {}),
        ("GET", "/readyz", "/readyz", b"", {}),
        ("GET", "/metrics", "/metrics", b"", AUTH),
        (
            "POST",
            "/b2-events",
            "/b2-events",
            body,
            {"X-Bz-Event-Notification-Signature": sign(body)},
        ),
        ("POST", "/b2-events", "/b2-events", body, {}),
    ]
    for method, path, template, payload, headers in cases:
        answer = call(app, method, path, payload, headers)
        operation = spec["paths"][template][method.lower()]
        documented = operation["responses"].get(str(answer["status"]))
        assert documented is not None, f"{method} {path} -> {answer['status']} undocumented"
        documented = _resolve(spec, documented)
        content = documented.get("content", {})
        if "application/json" in content:
            schema = _resolve(spec, content["application/json"]["schema"])
            document = json.loads(answer["body"])
            assert set(schema.get("required", [])) <= set(document), (method, path, document)
        for header in documented.get("headers", {}):
            assert header in answer["headers"], (method, path, header)
