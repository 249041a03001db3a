"""The storage edge's clients share one botocore session (start-up cost, issues 14 and 16) while
the AWS environment they were made in holds; a changed environment gets a session of its own."""

from __future__ import annotations

import threading

from watcher import store
from watcher.cli import _only_daemon_threads
from watcher.config import S3Settings
from watcher.store import Store, make_client

SETTINGS = S3Settings("http://127.0.0.1:9", "us-east-1")


def test_clients_share_one_session_and_keep_their_own_settings():
    first = make_client(SETTINGS, connect_timeout=5, max_attempts=2, max_pool_connections=4)
    session = store._SESSION
    second = make_client(SETTINGS, max_pool_connections=64)
    quick = Store(second).with_timeouts(seconds=3, attempts=3).raw_client
    assert store._SESSION is session  # no second session loaded the S3 model again
    attempts = {c: c.meta.config.retries["total_max_attempts"] for c in (first, second, quick)}
    assert (first.meta.config.connect_timeout, attempts[first]) == (5, 3)  # retries + 1
    assert (second.meta.config.max_pool_connections, attempts[second]) == (64, 9)
    assert (quick.meta.config.read_timeout, attempts[quick]) == (3, 4)
    # each client has its own event hooks (a Store's request counting is its client's alone)
    heard = []
    first.meta.events.register("probe-event.s3", lambda **_: heard.append("first"))
    for client in (second, quick, first):
        client.meta.events.emit("probe-event.s3")
    assert heard == ["first"]
    for client in (first, second, quick):
        assert client.meta.endpoint_url == "http://127.0.0.1:9"
        assert client.meta.config.s3 == {"addressing_style": "path"}
        assert client.meta.config.request_checksum_calculation == "when_required"


def test_changed_credentials_get_a_new_session(monkeypatch):
    make_client(SETTINGS)
    session = store._SESSION[1]
    assert session.get_credentials().secret_key == "testing-secret-key-value"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret")
    make_client(SETTINGS)
    assert store._SESSION[1] is not session
    assert store._SESSION[1].get_credentials().secret_key == "another-secret"


def test_the_loader_finds_s3_without_listing_every_service():
    loader = store._s3_loader(None)
    assert loader.list_available_services("service-2") == ["s3"]
    assert loader.list_available_services("no-such-model-type") == []
    assert loader.load_service_model("s3", "service-2")["metadata"]["serviceId"] == "S3"


def test_a_process_may_leave_at_once_only_when_no_thread_would_hold_its_exit():
    assert _only_daemon_threads()
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    try:
        assert not _only_daemon_threads()
    finally:
        release.set()
        worker.join()
    helper = threading.Thread(target=release.wait, daemon=True)  # set: returns at once
    helper.start()
    helper.join()
    assert _only_daemon_threads()
