"""Configuration (CONTRACT §2): defaults, environment, .env, and errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watcher.config import Secret, Settings, from_mapping, load_settings
from watcher.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_config_loads_and_equals_the_defaults(tmp_path):
    settings = load_settings(str(ROOT / "config.yaml"), {}, cwd=tmp_path)
    assert settings == Settings()


def test_sample_app_environment_works_unchanged():
    settings = from_mapping(
        None,
        {
            "AWS_ENDPOINT_URL": "https://s3.us-west-004.backblazeb2.com",
            "BUCKET_NAME": "bkt",
            "SHARED_SECRET": "hunter22",
            "PORT": "9001",
            "LOGLEVEL": "debug",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "key",
        },
    )
    assert settings.s3.endpoint_url == "https://s3.us-west-004.backblazeb2.com"
    assert (settings.buckets.input, settings.buckets.output, settings.watch_bucket) == (
        "bkt",
        "bkt",
        "bkt",
    )
    assert settings.http.enabled and settings.http.port == 9001
    assert settings.http.shared_secret.reveal() == "hunter22"
    assert settings.logging.level == "DEBUG"


def test_specific_bucket_variables_win_over_bucket_name():
    settings = from_mapping(None, {"BUCKET_NAME": "both", "OUTPUT_BUCKET_NAME": "zips"})
    assert (settings.buckets.input, settings.buckets.output) == ("both", "zips")


def test_environment_overrides_the_file():
    settings = from_mapping(
        {"buckets": {"input": "file"}, "watch": {"prefix": "a/"}},
        {"INPUT_BUCKET_NAME": "env", "WATCH_PREFIX": "b/"},
    )
    assert settings.buckets.input == "env" and settings.watch.prefix == "b/"


def test_dotenv_fills_in_but_never_overrides(tmp_path):
    (tmp_path / ".env").write_text("BUCKET_NAME=from-dotenv\nPORT=7000\n")
    settings = load_settings(None, {"PORT": "7100"}, cwd=tmp_path)
    assert settings.buckets.input == "from-dotenv" and settings.http.port == 7100


def test_shared_secret_file(tmp_path):
    (tmp_path / "secret").write_text("from-a-file\n")
    settings = from_mapping(None, {"SHARED_SECRET_FILE": str(tmp_path / "secret")})
    assert settings.http.shared_secret.reveal() == "from-a-file" and settings.http.enabled


def test_secrets_never_print():
    settings = from_mapping(None, {"SHARED_SECRET": "topsecret", "B2_EVENT_SECRET": "evsecret"})
    text = repr(settings) + str(settings)
    assert "topsecret" not in text and "evsecret" not in text and "<SECRET>" in text
    assert str(Secret("x")) == "<SECRET>"


def test_http_auto_is_off_without_a_secret_and_explicit_true_serves_health_only():
    assert not from_mapping(None, {}).http.enabled
    assert from_mapping({"http": {"enabled": True}}, {}).http.enabled


BAD = [
    ({"colour": 1}, {}, "colour"),
    ({"watch": {"intervall": 5}}, {}, "watch.intervall"),
    ({"s3": {"aws_secret_access_key": "x"}}, {}, "s3.aws_secret_access_key"),
    ({"watch": {"interval_seconds": "5"}}, {}, "watch.interval_seconds"),
    ({"watch": {"interval_seconds": 0}}, {}, "watch.interval_seconds"),
    ({"watch": {"interval_seconds": True}}, {}, "watch.interval_seconds"),
    ({"watch": {"max_concurrent_jobs": 1.5}}, {}, "watch.max_concurrent_jobs"),
    ({"watch": {"max_concurrent_jobs": 0}}, {}, "watch.max_concurrent_jobs"),
    ({"watch": {"max_idle_interval_seconds": 1}}, {}, "watch.max_idle_interval_seconds"),
    ({"watch": {"lease_seconds": 1}}, {}, "watch.lease_seconds"),
    ({"watch": {"prefix": "no-slash"}}, {}, "watch.prefix"),
    ({"watch": {"prefix": "/abs/"}}, {}, "watch.prefix"),
    ({"watch": {"coordination": "magic"}}, {}, "watch.coordination"),
    ({"watch": {"enabled": "yes"}}, {}, "watch.enabled"),
    ({"watch": []}, {}, "watch"),
    ({"http": {"port": 70000}}, {}, "http.port"),
    ({"http": {"enabled": "sometimes"}}, {}, "http.enabled"),
    ({"zip": {"compression": "zstd"}}, {}, "zip.compression"),
    ({"zip": {"level": 10}}, {}, "zip.level"),
    ({"zip": {"missing": "ignore"}}, {}, "zip.missing"),
    ({"pipeline": {"part_size_mib": 3}}, {}, "pipeline.part_size_mib"),
    ({"logging": {"level": "LOUD"}}, {}, "logging.level"),
    ({"logging": {"format": "xml"}}, {}, "logging.format"),
    ({"shutdown_grace_seconds": -1}, {}, "shutdown_grace_seconds"),
    ({"buckets": {"input": ""}}, {}, "buckets.input"),
    (None, {"PORT": "eighty"}, "PORT"),
    (None, {"LOGLEVEL": "LOUD"}, "LOGLEVEL"),
    (None, {"WATCH_PREFIX": "x"}, "WATCH_PREFIX"),
    (None, {"SHARED_SECRET_FILE": "/nonexistent/secret"}, "SHARED_SECRET_FILE"),
]


@pytest.mark.parametrize(("data", "environ", "key"), BAD, ids=[b[2] for b in BAD])
def test_bad_configuration_names_the_key(data, environ, key):
    with pytest.raises(ConfigError) as info:
        from_mapping(data, environ)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_secret_values_do_not_leak_into_config_errors():
    with pytest.raises(ConfigError) as info:
        from_mapping({"http": {"shared_secret": 12345678}}, {})
    assert "12345678" not in str(info.value)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("watch: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), {}, cwd=tmp_path)
    assert info.value.key == str(path)


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_settings(str(tmp_path / "absent.yaml"), {}, cwd=tmp_path)


def test_cli_reports_config_errors_with_exit_2_and_no_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"zip": {"level": 42}}))
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "zip.level" in result.stderr and "Traceback" not in result.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "watcher", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


# -- user (issue 13): first deploy -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1:9000", "s3.us-west-004.backblazeb2.com", "ftp://host", "https://", "http://h:x"],
)
def test_an_endpoint_without_scheme_or_host_names_the_variable(value):
    with pytest.raises(ConfigError) as info:
        from_mapping({}, {"AWS_ENDPOINT_URL": value})
    assert info.value.key == "AWS_ENDPOINT_URL" and "https://" in str(info.value)


def test_http_and_https_endpoints_are_accepted():
    for value in ("https://s3.us-west-004.backblazeb2.com", "http://127.0.0.1:9000"):
        assert from_mapping({"s3": {"endpoint_url": value}}, {}).s3.endpoint_url == value


def test_links_expire_within_sigv4s_seven_days_and_zero_turns_them_off():
    assert from_mapping({}, {}).links.expires_seconds == 86_400
    assert from_mapping({}, {"LINK_EXPIRES_SECONDS": "0"}).links.expires_seconds == 0
    with pytest.raises(ConfigError) as info:
        from_mapping({"links": {"expires_seconds": 604_801}}, {})
    assert info.value.key == "links.expires_seconds"


def test_retention_ages_take_fractions_and_zero_and_refuse_negatives():
    settings = from_mapping({"retention": {"done_days": 0.5, "failed_days": 0}}, {})
    assert settings.retention.done_days == 0.5 and settings.retention.failed_days == 0
    assert settings.retention.stale_upload_hours == 24 and settings.retention.interval_seconds > 0
    with pytest.raises(ConfigError) as info:
        from_mapping({"retention": {"stale_upload_hours": -1}}, {})
    assert info.value.key == "retention.stale_upload_hours"


def test_notify_keys_and_their_checks():
    settings = from_mapping(
        {"notify": {"secret": "k" * 8, "max_attempts": 3}},
        {"NOTIFY_URL": "https://hooks.example.com/zip"},
    )
    assert settings.notify.url == "https://hooks.example.com/zip"
    assert settings.notify.max_attempts == 3 and "k" * 8 not in repr(settings)
    for data, environ, key in [
        ({}, {"NOTIFY_URL": "hooks.example.com/zip", "NOTIFY_SECRET": "s"}, "NOTIFY_URL"),
        ({}, {"NOTIFY_URL": "https://h/zip"}, "notify.secret"),
        ({"notify": {"max_attempts": 0}}, {}, "notify.max_attempts"),
    ]:
        with pytest.raises(ConfigError) as info:
            from_mapping(data, environ)
        assert info.value.key == key


def test_notify_allowed_hosts_from_the_file_or_a_comma_separated_variable():
    settings = from_mapping(
        {"notify": {"secret": "s", "allowed_hosts": ["hooks.example.com", "127.0.0.1:9000"]}}, {}
    )
    assert settings.notify.allowed_hosts == ("hooks.example.com", "127.0.0.1:9000")
    settings = from_mapping(
        {}, {"NOTIFY_ALLOWED_HOSTS": " a.example.com, b.example.com ,", "NOTIFY_SECRET": "s"}
    )
    assert settings.notify.allowed_hosts == ("a.example.com", "b.example.com")
    assert from_mapping({}, {}).notify.allowed_hosts == ()
    for data, environ, key in [
        ({"notify": {"secret": "s", "allowed_hosts": "a.example.com"}}, {}, "notify.allowed_hosts"),
        ({"notify": {"secret": "s", "allowed_hosts": [3]}}, {}, "notify.allowed_hosts"),
        (
            {"notify": {"secret": "s", "allowed_hosts": ["https://a.example.com/"]}},
            {},
            "notify.allowed_hosts",
        ),
        ({"notify": {"allowed_hosts": ["a.example.com"]}}, {}, "notify.secret"),
    ]:
        with pytest.raises(ConfigError) as info:
            from_mapping(data, environ)
        assert info.value.key == key
