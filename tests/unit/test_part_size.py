"""pipeline.part_size_mib: what config.yaml documents (0, or 5-5120) is what the job uses."""

from __future__ import annotations

import pytest

from watcher.config import from_mapping
from watcher.errors import ConfigError
from watcher.job import limits_from
from watcher.pipeline import part_size

MiB = 1024 * 1024
B2_MIN_PART = 5_000_000  # B2's floor for every part but the last; S3's is 5 MiB


def settings_with(part_size_mib: object):
    return from_mapping(
        {"pipeline": {"part_size_mib": part_size_mib}},
        {"BUCKET_NAME": "bucket", "AWS_DEFAULT_REGION": "us-east-1"},
    )


@pytest.mark.parametrize("mib", [5, 6, 7, 8, 64, 5120])
def test_every_documented_part_size_is_used_as_written(mib):
    minimum = limits_from(settings_with(mib)).minimum_part
    assert minimum == mib * MiB, f"{mib} MiB became {minimum / MiB} MiB"
    assert part_size(0, 1, minimum) == mib * MiB


def test_automatic_part_size_is_8_mib():
    assert limits_from(settings_with(0)).minimum_part == 8 * MiB


@pytest.mark.parametrize("mib", [1, 4, -1, 5121])
def test_part_sizes_outside_the_documented_range_are_refused(mib):
    with pytest.raises(ConfigError, match="pipeline.part_size_mib"):
        settings_with(mib)


@pytest.mark.parametrize("mib", [0, 5, 7])
def test_no_part_but_the_last_is_below_the_floor_of_s3_or_b2(mib):
    minimum = limits_from(settings_with(mib)).minimum_part
    for number in (1, 2, 1000, 1001, 9999, 10_000):
        size = part_size(10 * 1024 * MiB, number, minimum)
        assert size >= 5 * MiB > B2_MIN_PART
