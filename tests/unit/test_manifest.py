"""Manifest validation (CONTRACT §3): every rejected case names its culprit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.errors import InvalidManifest, TargetConflict
from watcher.manifest import (
    MAX_ENTRIES,
    MAX_MANIFEST_BYTES,
    FileSpec,
    guess_target,
    is_job_id,
    job_id_for,
    parse_manifest,
    validate_entry_name,
)

PREFIX = "zip-requests/"


def parse(document: object) -> object:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_manifest(raw, requests_prefix=PREFIX)


def ok(**extra: object) -> dict:
    return {"files": ["a.txt"], "target": "out/a.zip", **extra}


REJECTED = [
    # (case, document, code, text the message must contain)
    ("not json", b"{nope", "invalid_manifest", "not valid JSON"),
    ("not utf-8", b'{"files": ["\xff"]}', "invalid_manifest", "UTF-8"),
    ("not an object", [1, 2], "invalid_manifest", "JSON object"),
    ("unknown field", ok(colour="red"), "invalid_manifest", "colour"),
    ("files missing", {"target": "t.zip"}, "invalid_manifest", "files"),
    ("target missing", {"files": ["a"]}, "invalid_manifest", "target"),
    ("files not a list", {"files": "a", "target": "t.zip"}, "invalid_manifest", "files"),
    ("files empty", {"files": [], "target": "t.zip"}, "invalid_manifest", "files"),
    ("entry wrong type", {"files": [3], "target": "t.zip"}, "invalid_manifest", "files[0]"),
    (
        "entry unknown field",
        {"files": [{"key": "a", "size": 1}], "target": "t.zip"},
        "invalid_manifest",
        "size",
    ),
    (
        "entry key and prefix",
        {"files": [{"key": "a", "prefix": "b/"}], "target": "t.zip"},
        "invalid_manifest",
        "files[0]",
    ),
    (
        "entry neither",
        {"files": [{"name": "a"}], "target": "t.zip"},
        "invalid_manifest",
        "files[0]",
    ),
    (
        "key not string",
        {"files": [{"key": 5}], "target": "t.zip"},
        "invalid_manifest",
        "files[0].key",
    ),
    ("empty key", {"files": [""], "target": "t.zip"}, "invalid_manifest", "files[0]"),
    (
        "absolute name",
        {"files": ["/etc/passwd"], "target": "t.zip"},
        "invalid_manifest",
        "absolute",
    ),
    (
        "dotdot name",
        {"files": [{"key": "a", "name": "x/../../y"}], "target": "t.zip"},
        "invalid_manifest",
        "'..'",
    ),
    (
        "backslash name",
        {"files": [{"key": "a", "name": "x\\y"}], "target": "t.zip"},
        "invalid_manifest",
        "backslash",
    ),
    (
        "nul name",
        {"files": [{"key": "a", "name": "x\u0000y"}], "target": "t.zip"},
        "invalid_manifest",
        "control",
    ),
    (
        "control name",
        {"files": [{"key": "a", "name": "x\u001by"}], "target": "t.zip"},
        "invalid_manifest",
        "control",
    ),
    (
        "empty name",
        {"files": [{"key": "a", "name": ""}], "target": "t.zip"},
        "invalid_manifest",
        "empty",
    ),
    (
        "name not string",
        {"files": [{"key": "a", "name": 1}], "target": "t.zip"},
        "invalid_manifest",
        "files[0].name",
    ),
    (
        "directory name",
        {"files": [{"key": "a", "name": "dir/"}], "target": "t.zip"},
        "invalid_manifest",
        "dir/",
    ),
    (
        "duplicate names",
        {"files": ["a", {"key": "b", "name": "a"}], "target": "t.zip"},
        "invalid_manifest",
        "files[1]",
    ),
    (
        "unsafe prefix name",
        {"files": [{"prefix": "p/", "name": "../"}], "target": "t.zip"},
        "invalid_manifest",
        "'..'",
    ),
    ("target not string", {"files": ["a"], "target": 7}, "invalid_manifest", "target"),
    ("target empty", {"files": ["a"], "target": ""}, "invalid_manifest", "target"),
    ("target folder", {"files": ["a"], "target": "out/"}, "invalid_manifest", "target"),
    (
        "target in requests prefix",
        {"files": ["a"], "target": PREFIX + "x.zip"},
        "target_conflict",
        "requests prefix",
    ),
    (
        "target is an input",
        {"files": ["a", "out.zip"], "target": "out.zip"},
        "target_conflict",
        "files[1]",
    ),
    ("bad compression", ok(compression="zstd"), "invalid_manifest", "compression"),
    ("bad missing", ok(missing="ignore"), "invalid_manifest", "missing"),
    ("bad id", ok(id="../x"), "invalid_manifest", "id"),
    (
        "duplicate json field",
        b'{"files": ["a"], "target": "t", "target": "u"}',
        "invalid_manifest",
        "target",
    ),
    ("too deep", b"[" * 5000 + b"]" * 5000, "invalid_manifest", "deeper"),
    (
        "too many entries",
        {"files": [f"k{i}" for i in range(MAX_ENTRIES + 1)], "target": "t"},
        "invalid_manifest",
        str(MAX_ENTRIES),
    ),
    ("too large", b" " * (MAX_MANIFEST_BYTES + 1), "invalid_manifest", "larger"),
    ("long key", {"files": ["k" * 1100], "target": "t.zip"}, "invalid_manifest", "1024"),
    # CONTRACT §7.6: rejected, with a clear message
    (
        "byte order mark",
        b'\xef\xbb\xbf{"files": ["a"], "target": "t.zip"}',
        "invalid_manifest",
        "BOM",
    ),
    # CONTRACT §7.8: targets are safe keys
    (
        "target is a result marker",
        {"files": ["a"], "target": "out/r.zip.result.json"},
        "invalid_manifest",
        ".result.json",
    ),
    (
        "target is a status marker",
        {"files": ["a"], "target": "out/r.zip.status.json"},
        "invalid_manifest",
        ".status.json",
    ),
    (
        "target leaves no room for its markers",
        {"files": ["a"], "target": "t" * 1013},
        "invalid_manifest",
        "1024",
    ),
    (
        "target with a control character",
        {"files": ["a"], "target": "out/\u0001.zip"},
        "invalid_manifest",
        "control",
    ),
    (
        "target with DEL",
        {"files": ["a"], "target": "out/\u007f.zip"},
        "invalid_manifest",
        "control",
    ),
    (
        "key with a control character",
        {"files": [{"key": "in/\u001f", "name": "x"}], "target": "t.zip"},
        "invalid_manifest",
        "control",
    ),
    (
        "key with DEL",
        {"files": [{"prefix": "in/\u007f/", "name": "x/"}], "target": "t.zip"},
        "invalid_manifest",
        "control",
    ),
    # CONTRACT §7.9: entry names extract as written
    (
        "dot segment",
        {"files": [{"key": "a", "name": "x/./y"}], "target": "t.zip"},
        "invalid_manifest",
        "'.' segment",
    ),
    (
        "leading dot segment",
        {"files": ["./a"], "target": "t.zip"},
        "invalid_manifest",
        "'.' segment",
    ),
    (
        "empty segment",
        {"files": [{"key": "a", "name": "x//y"}], "target": "t.zip"},
        "invalid_manifest",
        "empty segment",
    ),
    (
        "dot segment in a prefix name",
        {"files": [{"prefix": "p/", "name": "x/./"}], "target": "t.zip"},
        "invalid_manifest",
        "'.' segment",
    ),
    (
        "right-to-left override",
        {"files": [{"key": "a", "name": "evil\u202etxt.exe"}], "target": "t.zip"},
        "invalid_manifest",
        "bidirectional",
    ),
    (
        "isolate control",
        {"files": [{"key": "a", "name": "a\u2066b"}], "target": "t.zip"},
        "invalid_manifest",
        "bidirectional",
    ),
    (
        "duplicate names after NFC",
        {
            "files": [{"key": "a", "name": "caf\u00e9"}, {"key": "b", "name": "cafe\u0301"}],
            "target": "t.zip",
        },
        "invalid_manifest",
        "files[1]",
    ),
]


@pytest.mark.parametrize(
    ("case", "document", "code", "needle"), REJECTED, ids=[r[0] for r in REJECTED]
)
def test_rejected_manifest_has_code_and_names_the_culprit(case, document, code, needle):
    with pytest.raises((InvalidManifest, TargetConflict)) as info:
        parse(document)
    assert info.value.code == code
    assert needle in info.value.message
    assert len(info.value.message) < 400


def test_every_accepted_form_parses_into_file_specs():
    manifest = parse(
        {
            "files": [
                "path/to/first/file.pdf",
                {"key": "path/to/second.txt", "name": "docs/second.txt"},
                {"prefix": "photos/2024/", "name": "2024/"},
                {"prefix": "raw/"},
                {"key": "caf\u00e9/\u65e5\u672c\u8a9e-\U0001f600.txt"},
                {"key": "e\u0301.txt", "name": "\u00e9 combined.txt"},
            ],
            "target": "path/to/output/file.zip",
            "compression": "store",
            "missing": "skip",
            "id": "client-id_1.0",
        }
    )
    assert manifest.files == (
        FileSpec("path/to/first/file.pdf", None, "path/to/first/file.pdf"),
        FileSpec("path/to/second.txt", None, "docs/second.txt"),
        FileSpec(None, "photos/2024/", "2024/"),
        FileSpec(None, "raw/", "raw/"),
        FileSpec(
            "caf\u00e9/\u65e5\u672c\u8a9e-\U0001f600.txt",
            None,
            "caf\u00e9/\u65e5\u672c\u8a9e-\U0001f600.txt",
        ),
        FileSpec("e\u0301.txt", None, "\u00e9 combined.txt"),
    )
    assert (manifest.target, manifest.compression, manifest.missing, manifest.id) == (
        "path/to/output/file.zip",
        "store",
        "skip",
        "client-id_1.0",
    )


def test_same_key_under_two_names_is_allowed():
    manifest = parse({"files": ["a", {"key": "a", "name": "copy/a"}], "target": "t.zip"})
    assert [f.name for f in manifest.files] == ["a", "copy/a"]


def test_null_in_an_optional_field_means_the_field_is_absent():
    files = ["a.txt", {"key": "b.txt", "name": None}, {"prefix": "p/", "name": None}]
    manifest = parse(ok(files=files, compression=None, missing=None, id=None))
    assert manifest == parse(ok(files=["a.txt", {"key": "b.txt"}, {"prefix": "p/"}]))
    assert [f.name for f in manifest.files] == ["a.txt", "b.txt", "p/"]
    assert (manifest.compression, manifest.missing, manifest.id) == (None, None, None)


def test_job_id_is_stable_for_a_manifest_key_and_the_id_field_wins():
    manifest = parse(ok())
    first = job_id_for(manifest, PREFIX + "nightly backup.json")
    assert first == job_id_for(manifest, PREFIX + "nightly backup.json")
    assert first.startswith("nightly_backup-")
    assert first != job_id_for(manifest, PREFIX + "other.json")
    assert job_id_for(parse(ok(id="mine")), PREFIX + "x.json") == "mine"
    assert job_id_for(None, None) != job_id_for(None, None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_every_assigned_job_id_has_the_form_of_an_id(name):
    # GET /jobs/<id> answers 404 without a store request for anything that is not of this form.
    assert is_job_id(job_id_for(None, PREFIX + name + ".json"))
    assert is_job_id(job_id_for(None, None))


def test_guess_id_keeps_a_rejected_manifests_own_valid_id():
    from watcher.manifest import guess_id

    assert guess_id(b'{"files": [], "target": "t", "id": "mine-1"}') == "mine-1"
    assert guess_id(b'{"files": [], "id": "../bad"}') is None
    assert guess_id(b"{broken") is None


def test_guess_target_only_returns_usable_targets():
    assert guess_target(b'{"files": [], "target": "out/x.zip"}', requests_prefix=PREFIX) == (
        "out/x.zip"
    )
    assert guess_target(b"{broken", requests_prefix=PREFIX) is None
    assert guess_target(b'{"target": "zip-requests/x.zip"}', requests_prefix=PREFIX) is None
    assert guess_target(b'{"target": 5}', requests_prefix=PREFIX) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["files", "target", "key", "prefix", "name", "id", "missing", "compression", "x"]
            )
            | st.text(),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_either_accepted_or_rejected_cleanly(value):
    raw = json.dumps(value).encode()
    try:
        manifest = parse_manifest(raw, requests_prefix=PREFIX)
    except (InvalidManifest, TargetConflict) as exc:
        assert exc.message
        return
    for spec in manifest.files:
        if spec.key is not None:
            assert validate_entry_name(spec.name) is None


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=0, max_size=60)
    | st.lists(st.sampled_from(["a", ".", "", "..", "b\u202e", "\u2067", "c/"]), max_size=5).map(
        "/".join
    )
)
def test_accepted_names_are_always_safe(name):
    document = {"files": [{"key": "k", "name": name}], "target": "t.zip"}
    try:
        manifest = parse(document)
    except InvalidManifest:
        return
    accepted = manifest.files[0].name
    assert accepted and not accepted.startswith("/")
    assert ".." not in accepted.split("/") and "\\" not in accepted and "\x00" not in accepted
    assert not {".", ""} & set(accepted.split("/")), accepted
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in accepted)


def test_a_target_that_leaves_exactly_room_for_its_markers_is_accepted():
    longest = max(len(".status.json"), len(".result.json"))
    target = "t" * (1024 - longest)
    assert parse({"files": ["a"], "target": target}).target == target
    multibyte = "\u00e9" * ((1024 - longest) // 2)  # 2 bytes each in UTF-8
    assert parse({"files": ["a"], "target": multibyte}).target == multibyte
    with pytest.raises(InvalidManifest, match="1024"):
        parse({"files": ["a"], "target": multibyte + "xx"})


def test_names_equal_only_after_nfc_are_duplicates_but_each_keeps_its_own_form():
    manifest = parse({"files": [{"key": "a", "name": "cafe\u0301/x"}], "target": "t.zip"})
    assert manifest.files[0].name == "cafe\u0301/x"
    with pytest.raises(InvalidManifest, match="files\\[1\\]"):
        parse({"files": ["caf\u00e9", "cafe\u0301"], "target": "t.zip"})


# CONTRACT §7.6: a rejected manifest whose target can be read leaves a failed result marker.
READABLE_TARGETS = [
    ("duplicate field", b'{"files": ["a"], "files": ["b"], "target": "out/x.zip"}'),
    (
        "duplicate target, same value",
        b'{"target": "out/x.zip", "files": [], "target": "out/x.zip"}',
    ),
    ("byte order mark", b'\xef\xbb\xbf{"files": ["a"], "target": "out/x.zip"}'),
    ("deep nesting", b'{"files": ' + b"[" * 5000 + b"]" * 5000 + b', "target": "out/x.zip"}'),
    ("deep nesting, unclosed", b'{"target": "out/x.zip", "files": ' + b"[" * 100_000),
    ("head of a big manifest", b'{"target": "out/x.zip", "files": ["a", "b", "c'),
    ("broken after the target", b'{"files": [{"key": "a"}], "target": "out/x.zip", oops'),
    ("escaped target", b'{"target": "out/\\u0078.zip", "files": {"target": "no"}}'),
    ("invalid utf-8 elsewhere", b'{"files": ["\xff"], "target": "out/x.zip"}'),
    ("a field named target inside files", b'{"files": [{"target": "no"}], "target": "out/x.zip"}'),
]


@pytest.mark.parametrize(("case", "raw"), READABLE_TARGETS, ids=[r[0] for r in READABLE_TARGETS])
def test_guess_target_reads_the_target_of_a_rejected_manifest(case, raw):
    assert guess_target(raw, requests_prefix=PREFIX) == "out/x.zip"


UNREADABLE_TARGETS = [
    ("two different targets", b'{"files": [], "target": "out/x.zip", "target": "out/y.zip"}'),
    ("target only nested", b'{"files": [{"target": "out/x.zip"}]}'),
    ("target as a value", b'{"files": ["target"], "name": "target"}'),
    ("not an object", b'["target", "out/x.zip"]'),
    ("target a marker key", b'{"target": "out/x.zip.result.json"}'),
    ("target too long", b'{"target": "' + b"t" * 1013 + b'"}'),
    ("target cut off", b'{"files": [], "target": "out/x.z'),
    ("target not a string", b'{"target": ["out/x.zip"]}'),
    ("target a number then a string", b'{"target": 5, "target": "out/x.zip"}'),
    ("target with invalid utf-8", b'{"target": "out/\xff.zip"}'),
    ("target with a bad escape", b'{"target": "out/\\q.zip"}'),
]


@pytest.mark.parametrize(
    ("case", "raw"), UNREADABLE_TARGETS, ids=[r[0] for r in UNREADABLE_TARGETS]
)
def test_guess_target_gives_none_when_no_single_safe_target_can_be_read(case, raw):
    assert guess_target(raw, requests_prefix=PREFIX) is None


def test_guess_id_reads_the_id_of_manifests_json_cannot_parse():
    from watcher.manifest import guess_id

    assert guess_id(b'\xef\xbb\xbf{"id": "mine-1", "id": "mine-1", "files": [[[[') == "mine-1"
    assert guess_id(b'{"id": "mine-1", "id": "mine-2"}') is None


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_guess_target_agrees_with_the_parser_on_valid_json(value):
    raw = json.dumps(value).encode()
    try:
        expected = parse_manifest(raw, requests_prefix=PREFIX).target
    except (InvalidManifest, TargetConflict):
        return
    assert guess_target(raw, requests_prefix=PREFIX) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=30), st.data())
def test_guess_target_finds_a_leading_target_in_any_head_of_the_manifest(keys, data):
    # The first bytes of an oversized manifest: cut anywhere after the target's value.
    raw = json.dumps({"target": "out/\u00e9 x.zip", "files": keys}, ensure_ascii=False).encode()
    end = len(json.dumps({"target": "out/\u00e9 x.zip"}, ensure_ascii=False).encode()) - 1
    cut = data.draw(st.integers(min_value=end, max_value=len(raw)))
    assert guess_target(raw[:cut], requests_prefix=PREFIX) == "out/\u00e9 x.zip"


def test_a_notify_url_is_accepted_only_for_an_allowed_host():
    """CONTRACT §9: a manifest's ``notify_url`` must name a host of ``notify.allowed_hosts``;
    any other is ``invalid_manifest`` (the URL is never fetched)."""
    hook = "https://hooks.example.com:8443/zip?token=t"

    def parse_with(hosts: tuple[str, ...], url: object) -> object:
        raw = json.dumps(ok(notify_url=url)).encode()
        return parse_manifest(raw, requests_prefix=PREFIX, notify_hosts=hosts)

    assert parse_with(("hooks.example.com",), hook).notify_url == hook
    assert parse_with(("HOOKS.example.com:8443",), hook).notify_url == hook
    assert parse(ok()).notify_url is None
    assert parse(ok(notify_url=None)).notify_url is None
    for hosts, url, needle in [
        ((), hook, "'hooks.example.com' is not in notify.allowed_hosts (none allowed)"),
        (("other.example.com",), hook, "'hooks.example.com' is not in notify.allowed_hosts"),
        (("hooks.example.com:9000",), hook, "is not in notify.allowed_hosts"),
        (("evil.example.com",), "https://hooks.example.com@evil.example.com/", "user info"),
        (("hooks.example.com",), "ftp://hooks.example.com/x", "http:// or https://"),
        (("hooks.example.com",), "hooks.example.com/zip", "http:// or https://"),
        (("hooks.example.com",), 5, "must be a string"),
    ]:
        with pytest.raises(InvalidManifest) as info:
            parse_with(hosts, url)
        assert info.value.code == "invalid_manifest"
        assert info.value.message.startswith("notify_url: "), info.value.message
        assert needle in info.value.message, info.value.message
        assert "token=t" not in info.value.message, "a callback URL may carry a token"


def test_notify_hosts_match_ipv6_literals_and_the_schemes_default_port():
    """``[::1]:8080`` in ``notify.allowed_hosts`` (config accepts it) allows ``http://[::1]:8080/``;
    ``host:443`` allows ``https://host/`` whose port is implied, and not ``http://host/``."""

    def parse_with(hosts: tuple[str, ...], url: str) -> object:
        raw = json.dumps(ok(notify_url=url)).encode()
        return parse_manifest(raw, requests_prefix=PREFIX, notify_hosts=hosts)

    for hosts, url in [
        (("[::1]:8080",), "http://[::1]:8080/hook"),
        (("[::1]",), "http://[::1]:8080/hook"),
        (("[::1]:80",), "http://[::1]/hook"),
        (("hooks.example.com:443",), "https://hooks.example.com/hook"),
        (("hooks.example.com:80",), "http://hooks.example.com/hook"),
    ]:
        assert parse_with(hosts, url).notify_url == url
    for hosts, url in [
        (("[::1]:8080",), "http://[::1]:9090/hook"),
        (("[::2]",), "http://[::1]/hook"),
        (("hooks.example.com:443",), "http://hooks.example.com/hook"),
    ]:
        with pytest.raises(InvalidManifest, match="is not in notify.allowed_hosts"):
            parse_with(hosts, url)
