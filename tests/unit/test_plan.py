"""Planning: prefix expansion, names, duplicates, the job's own outputs, missing prefixes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from watcher.config import ZipSettings
from watcher.errors import InvalidManifest, MissingInput
from watcher.manifest import parse_manifest
from watcher.plan import Entry, ObjectInfo, build_plan

WHEN = datetime(2024, 5, 1, tzinfo=UTC)


def lister(keys: dict[str, int]):
    calls: list[str] = []

    def list_prefix(prefix: str):
        calls.append(prefix)
        return (
            ObjectInfo(k, size, WHEN) for k, size in sorted(keys.items()) if k.startswith(prefix)
        )

    list_prefix.calls = calls
    return list_prefix


def plan_for(
    document: dict,
    keys: dict[str, int],
    *,
    same_bucket: bool = True,
    defaults: ZipSettings = ZipSettings(),
):
    document = {"target": "out.zip", **document}
    manifest = parse_manifest(json.dumps(document).encode(), requests_prefix="zip-requests/")
    return build_plan(
        manifest,
        lister(keys),
        defaults=defaults,
        target_key=manifest.target,
        same_bucket=same_bucket,
    )


def test_plain_keys_leave_size_to_the_get_and_prefixes_use_the_listing():
    plan = plan_for(
        {"files": ["a.txt", {"prefix": "photos/", "name": "p/"}], "target": "out.zip"},
        {"a.txt": 3, "photos/1.jpg": 10, "photos/sub/2.jpg": 20, "other/x": 1},
    )
    assert plan.entries == (
        Entry("a.txt", "a.txt", None, None),
        Entry("photos/1.jpg", "p/1.jpg", 10, WHEN),
        Entry("photos/sub/2.jpg", "p/sub/2.jpg", 20, WHEN),
    )
    assert plan.known_bytes == 30
    assert (plan.compression, plan.missing, plan.level) == ("auto", "fail", 6)


def test_prefix_name_defaults_to_the_prefix_and_empty_folder_objects_are_directories():
    plan = plan_for(
        {"files": [{"prefix": "docs/"}], "target": "out.zip"},
        {"docs/": 0, "docs/a": 1, "docs/b/": 0, "docs/b/c": 2},
    )
    assert [e.name for e in plan.entries] == ["docs/", "docs/a", "docs/b/", "docs/b/c"]
    assert [e.size for e in plan.entries] == [0, 1, 0, 2]


def test_a_flattened_prefix_drops_only_its_own_folder_object():
    plan = plan_for(
        {"files": [{"prefix": "docs/", "name": ""}], "target": "out.zip"},
        {"docs/": 0, "docs/a": 1, "docs/b/": 0},
    )
    assert [e.name for e in plan.entries] == ["a", "b/"]


def test_a_folder_object_holding_data_is_rejected_naming_the_key_and_size():
    # CONTRACT §7.9: extracted as a directory, its 31 bytes would be lost.
    with pytest.raises(InvalidManifest, match="'p/dir/'.*31 bytes"):
        plan_for({"files": [{"prefix": "p/"}], "target": "out.zip"}, {"p/a": 1, "p/dir/": 31})


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ({"p/a//b": 1}, "empty segment"),
        ({"p/a/./b": 1}, "'.' segment"),
        ({"p/./": 0}, "'.' segment"),
        ({"p/evil\u202etxt.exe": 1}, "bidirectional"),
        ({"p/x\x7f": 1}, "control"),
    ],
)
def test_expanded_names_that_would_not_extract_as_written_are_rejected(keys, reason):
    with pytest.raises(InvalidManifest, match=reason):
        plan_for({"files": [{"prefix": "p/"}], "target": "out.zip"}, keys)


def test_names_equal_after_nfc_are_duplicates_across_plain_and_expanded_entries():
    with pytest.raises(InvalidManifest, match="used twice"):
        plan_for(
            {"files": [{"key": "x", "name": "d/caf\u00e9"}, {"prefix": "src/", "name": "d/"}]},
            {"src/cafe\u0301": 1},
        )
    with pytest.raises(InvalidManifest, match="used twice"):
        plan_for({"files": [{"prefix": "src/"}]}, {"src/caf\u00e9": 1, "src/cafe\u0301": 2})


def test_a_file_name_that_is_also_a_directory_of_another_entry_is_rejected():
    with pytest.raises(InvalidManifest, match="'d/a'.*both a file and a directory"):
        plan_for(
            {"files": [{"key": "x", "name": "d/a"}, {"prefix": "src/", "name": "d/"}]},
            {"src/a/b": 1},
        )
    with pytest.raises(InvalidManifest, match="both a file and a directory"):
        plan_for({"files": [{"prefix": "src/"}, {"key": "x", "name": "src/a"}]}, {"src/a/": 0})


def test_expansion_over_thousands_of_keys_keeps_listing_order():
    keys = {f"many/{i:05d}.txt": i for i in range(2500)}
    plan = plan_for({"files": [{"prefix": "many/", "name": ""}], "target": "out.zip"}, keys)
    assert len(plan.entries) == 2500
    assert plan.entries[0].name == "00000.txt" and plan.entries[-1].name == "02499.txt"


def test_duplicate_name_between_plain_and_expanded_entries_is_rejected():
    with pytest.raises(InvalidManifest, match="'d/a' is used twice"):
        plan_for(
            {
                "files": [{"key": "x", "name": "d/a"}, {"prefix": "src/", "name": "d/"}],
                "target": "out.zip",
            },
            {"src/a": 1},
        )


def test_unsafe_expanded_name_is_rejected_naming_the_key():
    with pytest.raises(InvalidManifest, match="src/a.*backslash"):
        plan_for({"files": [{"prefix": "src/"}], "target": "out.zip"}, {"src/a\\b": 1})


def test_target_and_its_markers_under_the_zipped_prefix_are_skipped():
    keys = {
        "data/a": 1,
        "data/all.zip": 5,
        "data/all.zip.status.json": 1,
        "data/all.zip.result.json": 1,
    }
    plan = plan_for({"files": [{"prefix": "data/"}], "target": "data/all.zip"}, keys)
    assert [e.key for e in plan.entries] == ["data/a"]
    assert {s.key for s in plan.skipped} == {
        "data/all.zip",
        "data/all.zip.status.json",
        "data/all.zip.result.json",
    }
    other_bucket = plan_for(
        {"files": [{"prefix": "data/"}], "target": "data/all.zip"}, keys, same_bucket=False
    )
    assert len(other_bucket.entries) == 4


def test_empty_prefix_fails_or_is_skipped_per_missing_mode():
    with pytest.raises(MissingInput, match="nothing/"):
        plan_for({"files": ["a", {"prefix": "nothing/"}], "target": "o.zip"}, {"a": 1})
    plan = plan_for(
        {"files": ["a", {"prefix": "nothing/"}], "target": "o.zip", "missing": "skip"}, {"a": 1}
    )
    assert [s.key for s in plan.skipped] == ["nothing/"]


def test_manifest_overrides_win_over_configuration():
    plan = plan_for(
        {"files": ["a"], "target": "o.zip", "compression": "store"},
        {},
        defaults=ZipSettings(compression="deflate", level=9, missing="skip"),
    )
    assert (plan.compression, plan.missing, plan.level) == ("store", "skip", 9)


def test_too_many_entries_after_expansion_is_rejected():
    keys = {f"p/{i:06d}": 0 for i in range(100_001)}
    with pytest.raises(InvalidManifest, match="100000"):
        plan_for({"files": [{"prefix": "p/"}], "target": "o.zip"}, keys)
