"""Pure decisions of the pipeline: part sizes, compression choice, levels, timestamps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from watcher.pipeline import (
    MAX_PART,
    MIN_PART,
    MiB,
    choose_method,
    clamp_mtime,
    deflate_backend,
    part_size,
)

GiB = 1024 * MiB


@pytest.mark.parametrize("planned", [0, 1, 100 * MiB, 10 * GiB, 100 * GiB, 4 * 1024 * GiB])
def test_ten_thousand_parts_always_carry_the_planned_size(planned):
    sizes = [part_size(planned, n) for n in range(1, 10_001)]
    assert all(MIN_PART <= s <= MAX_PART for s in sizes)
    assert sum(sizes) >= planned
    assert sum(sizes[:9000]) >= planned, "9,000 parts carry the plan"
    assert all(s % MiB == 0 for s in sizes)


def test_parts_grow_past_the_plan_when_unknown_sizes_make_the_archive_bigger():
    assert sum(part_size(0, n) for n in range(1, 10_001)) > 5 * 1024 * GiB
    assert part_size(0, 1000) == MIN_PART < part_size(0, 1001)
    assert part_size(100 * GiB, 1) == part_size(100 * GiB, 1000) > MIN_PART


def test_media_and_archives_are_stored_by_extension():
    for name in ("a/photo.JPG", "clip.mp4", "x.zip", "y.tar.gz", "doc.docx"):
        assert choose_method(name, b"text " * 1000) == "store"


def test_incompressible_bytes_are_stored_and_text_is_deflated():
    noise = random.Random(1).randbytes(64 * 1024)
    assert choose_method("data.bin", noise) == "store"
    assert choose_method("log.txt", b"GET /index.html 200\n" * 4000) == "deflate"
    assert choose_method("tiny.bin", b"\x00\x01") == "deflate"


def test_levels_up_to_6_use_isal_without_its_level_zero_and_7_to_9_zlib_ng():
    from isal import isal_zlib
    from zlib_ng import zlib_ng

    assert [deflate_backend(n) for n in range(7)] == [(isal_zlib, 1)] * 4 + [(isal_zlib, 2)] * 3
    assert [deflate_backend(n) for n in (7, 8, 9)] == [(zlib_ng, 5), (zlib_ng, 6), (zlib_ng, 9)]


def test_timestamps_are_clamped_to_what_the_zip_can_hold():
    assert clamp_mtime(datetime(1970, 1, 1, tzinfo=UTC)) == datetime(1980, 1, 1, tzinfo=UTC)
    assert clamp_mtime(datetime(2100, 1, 1, tzinfo=UTC)).year == 2038
    local = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert clamp_mtime(local) == datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    assert clamp_mtime(datetime(2024, 6, 1)).tzinfo is UTC
