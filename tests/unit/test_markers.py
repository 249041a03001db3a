"""Markers: every field of the contract, the ticker's pace, the order of the final writes."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from conftest import RESULT_FIELDS

from watcher import markers
from watcher.errors import MissingInput
from watcher.markers import EntryResult, JobInfo, MarkerWriter, Progress, result_doc


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[tuple[str, dict, float]] = []
        self.lock = threading.Lock()

    def put_json(self, bucket: str, key: str, document: dict) -> str:
        with self.lock:
            self.writes.append((key, document, time.monotonic()))
        return '"etag"'


INFO = JobInfo(
    "job-1", "out/a.zip", "bucket", "zip-requests/a.json", datetime(2026, 1, 1, tzinfo=UTC)
)


def test_result_marker_has_every_field_and_the_error_code():
    progress = Progress(files_total=2)
    progress.entry_done(EntryResult("a", "a", 3, 5, 123, "deflate"))
    progress.skip("gone", "missing")
    doc = result_doc(
        INFO,
        progress,
        error=MissingInput("s3://b/gone does not exist"),
        finished_at=datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC),
    )
    assert RESULT_FIELDS <= set(doc)
    assert doc["state"] == "failed" and doc["error"]["code"] == "missing_input"
    assert doc["duration_seconds"] == 2.0 and doc["started_at"] == "2026-01-01T00:00:00.000Z"
    assert doc["entries"] == [
        {
            "name": "a",
            "key": "a",
            "size": 3,
            "compressed_size": 5,
            "crc32": 123,
            "method": "deflate",
        }
    ]
    assert doc["skipped"] == [{"key": "gone", "reason": "missing"}]
    assert doc["files_total"] == 1


def test_status_is_made_final_before_the_result_marker_is_written_last(monkeypatch):
    monkeypatch.setattr(markers, "MIN_INTERVAL", 0.05)
    store, progress = FakeStore(), Progress(files_total=1)
    writer = MarkerWriter(store, INFO, progress)
    writer.started()
    writer.finished(None)
    keys = [k for k, _, _ in store.writes]
    assert keys[0] == "out/a.zip.status.json" and keys[-1] == "out/a.zip.result.json"
    assert keys[-2] == "out/a.zip.status.json" and store.writes[-2][1]["state"] == "succeeded"
    assert keys.count("out/a.zip.result.json") == 1


def test_a_failed_jobs_final_status_marker_already_says_why(monkeypatch):
    """The final status marker is written before the result marker; ``GET /jobs/<id>`` answers
    from it in between, and a ``failed`` view must carry its ``error`` (CONTRACT §9), not null."""
    monkeypatch.setattr(markers, "MIN_INTERVAL", 0.05)
    store, progress = FakeStore(), Progress(files_total=1)
    writer = MarkerWriter(store, INFO, progress)
    writer.started()
    writer.finished(MissingInput("s3://b/gone does not exist"))
    (key, status, _), (last, result, _) = store.writes[-2:]
    assert key == "out/a.zip.status.json" and last == "out/a.zip.result.json"
    assert status["state"] == "failed" and status["error"] == result["error"]
    assert status["error"]["code"] == "missing_input"
    writer = MarkerWriter(store, INFO, Progress(files_total=1))
    writer.started()
    writer.finished(None)
    assert "error" not in store.writes[-2][1] or store.writes[-2][1]["error"] is None


def test_refreshes_back_off_but_keep_a_heartbeat(monkeypatch):
    monkeypatch.setattr(markers, "MIN_INTERVAL", 0.05)
    monkeypatch.setattr(markers, "HEARTBEAT", 0.4)
    store, progress = FakeStore(), Progress(files_total=1)
    writer = MarkerWriter(store, INFO, progress)
    writer.started()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        progress.add(bytes_read=1)  # always changing
        time.sleep(0.01)
    writer.stop()
    times = [t for k, _, t in store.writes]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert 4 <= len(store.writes) <= 12, len(store.writes)
    assert gaps[0] < 0.2 and max(gaps) <= 0.4 + 0.2
