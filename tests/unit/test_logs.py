"""Logging: JSON lines, secrets scrubbed; and the suite's own leak detector."""

from __future__ import annotations

import io
import json
import logging

from conftest import SHARED_SECRET, secret_hits

from watcher.config import LoggingSettings
from watcher.logs import configure_logging


def test_json_lines_with_secrets_scrubbed_from_our_events_and_library_logs():
    stream = io.StringIO()
    log = configure_logging(
        LoggingSettings(level="INFO", format="json"), secrets=[SHARED_SECRET], stream=stream
    )
    log.info("something", detail=f"token={SHARED_SECRET}", job_id="j1")
    log.debug("hidden")
    logging.getLogger("botocore").warning("header Authorization: Bearer %s", SHARED_SECRET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in lines][0] == "something"
    assert lines[0]["job_id"] == "j1" and lines[0]["level"] == "info"
    assert len(lines) == 2, "debug is filtered at INFO"
    assert SHARED_SECRET not in stream.getvalue() and "<SECRET>" in stream.getvalue()
    logging.getLogger().handlers.clear()


def test_the_suites_leak_detector_finds_a_leak():
    assert secret_hits(f"log line with {SHARED_SECRET} in it", "x.log")
    assert secret_hits("nothing here", "x.log") == []
