"""The pure decisions of watcher.jobs: a job's view, list order and cursors, what may be retried."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from watcher.jobs import (
    BadRequest,
    Listed,
    cancel_key,
    cancellable,
    decode_cursor,
    encode_cursor,
    job_view,
    newest_first,
    parse_limit,
    parse_state,
    retryable,
)

ENTRY = {"job_id": "j1", "target": "out/a.zip", "bucket": "b", "manifest": "zip-requests/j1.json"}


def test_view_is_pending_then_status_with_error_then_result_without_entries():
    assert job_view(ENTRY, None, None) == {**ENTRY, "state": "pending", "error": None}
    other = {"job_id": "someone-else", "state": "running"}
    assert job_view(ENTRY, other, None)["state"] == "pending"
    running = {"job_id": "j1", "state": "running", "files_done": 1}
    assert job_view(ENTRY, running, None) == {**running, "error": None}
    result = {
        "job_id": "j1",
        "state": "failed",
        "entries": [{"name": "x"}],
        "error": {"code": "missing_input", "message": "s3://b/x does not exist"},
        "finished_at": "2026-11-29T00:00:00Z",
    }
    view = job_view(ENTRY, running, result)
    assert "entries" not in view and view["error"]["code"] == "missing_input"
    assert view["finished_at"] == result["finished_at"]


def test_list_order_is_newest_first_and_the_cursor_resumes_after_the_last_item():
    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    items = [Listed(f"j{i}", t0 + timedelta(seconds=i % 3)) for i in range(6)]
    ordered = newest_first(items, None)
    keys = [(i.indexed_at, i.job_id) for i in ordered]
    assert keys == sorted(keys, reverse=True)
    pages, cursor = [], None
    while True:
        rest = newest_first(items, cursor)
        if not rest:
            break
        pages.append(rest[:2])
        cursor = encode_cursor(rest[:2][-1])
    assert [i for page in pages for i in page] == ordered, "no item lost or repeated"
    assert decode_cursor(encode_cursor(ordered[0])) == (ordered[0].indexed_at, ordered[0].job_id)
    with pytest.raises(BadRequest):
        decode_cursor("not a cursor!")


@pytest.mark.parametrize("text", ["0", "501", "-1", "x", "1.5"])
def test_limit_outside_1_to_500_is_a_bad_request(text):
    with pytest.raises(BadRequest):
        parse_limit(text)


def test_limit_and_state_defaults():
    assert parse_limit(None) == 50 and parse_limit("500") == 500
    assert parse_state(None) is None and parse_state("failed") == "failed"
    with pytest.raises(BadRequest):
        parse_state("done")


def test_only_a_failed_job_from_the_requests_prefix_can_be_retried():
    assert retryable({"job_id": "j", "state": "failed", "manifest": "zip-requests/j.json"}) is None
    assert "succeeded" in retryable({"job_id": "j", "state": "succeeded", "manifest": "m"})
    assert "zip" in retryable({"job_id": "j", "state": "failed", "manifest": None})


def test_only_a_job_that_has_not_finished_can_be_cancelled():
    assert cancellable({"job_id": "j", "state": "pending"}) is None
    assert cancellable({"job_id": "j", "state": "running"}) is None
    assert "succeeded" in cancellable({"job_id": "j", "state": "succeeded"})
    assert "failed" in cancellable({"job_id": "j", "state": "failed"})


def test_a_cancel_request_lives_beside_the_job_index_not_among_manifests():
    from watcher.layout import is_manifest_key

    key = cancel_key("zip-requests/", "j-1")
    assert key == "zip-requests/.cancel/j-1.json"
    assert not is_manifest_key(key, "zip-requests/")
