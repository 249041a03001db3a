"""Pure parts of the versions protocol: who owns a generation, and what a listing says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from watcher.claims import Version, read_generations, winner

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_oldest_version_wins_and_ties_break_on_the_version_id():
    versions = [Version("c", T0 + timedelta(milliseconds=5)), Version("b", T0), Version("a", T0)]
    assert winner(versions).version_id == "a"
    assert winner(list(reversed(versions))).version_id == "a", "order of the listing is irrelevant"
    assert winner([Version("z", T0), Version("a", T0 + timedelta(seconds=1))]).version_id == "z"


def test_generations_and_heartbeat_from_a_listing():
    base = "zip-requests/.claims/m.json"
    listing = [
        (f"{base}/g-000001", T0),
        (f"{base}/g-000001.lease", T0 + timedelta(seconds=20)),
        (f"{base}/g-000002", T0 + timedelta(seconds=90)),
        (f"{base}/junk", T0 + timedelta(seconds=500)),
    ]
    generations = read_generations(listing, base)
    assert generations.newest == 2
    assert generations.heartbeat == T0 + timedelta(seconds=90)
    assert read_generations([], base).newest == 0
