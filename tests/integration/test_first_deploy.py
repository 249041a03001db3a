"""First deploy (CONTRACT §9): every command turns the common mistakes into one line naming the
culprit and exit 2, never a traceback. Each mistake goes through each command as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port
from daemonproc import run_cli, write_config
from faultproxy import Fault, FaultProxy

# Store-agnostic: runs on moto only (docs/b2.md).
pytestmark = pytest.mark.moto_only(
    "start-up mistakes in the configuration, answered before any store dialect matters"
)

COMMANDS = ("run", "check", "submit", "status", "zip")


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("BUCKET_NAME", "AWS_ENDPOINT_URL")}
    return run_cli(*args, env={**environ, **env}, cwd=cwd)


def command_args(command: str, tmp_path: Path, config: Path) -> list[str]:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": ["a.txt"], "target": "out/a.zip"}))
    extra = {"submit": [str(manifest)], "zip": [str(manifest)], "status": ["out/a.zip"]}
    return [command, *extra.get(command, []), "--config", str(config)]


@pytest.fixture(scope="module")
def refusing_proxy(moto_server):
    """Answers every request as a store refusing the access key would."""
    proxy = FaultProxy(moto_server.port).start()
    proxy.add(Fault("status", status=403, code="InvalidAccessKeyId", times=10**9))
    yield proxy
    proxy.stop()


def mistake_env(mistake: str, s3_server, bucket: str, proxy: FaultProxy) -> dict[str, str]:
    return {
        "missing_bucket": {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "BUCKET_NAME": "no-such-b"},
        "refused_credentials": {"AWS_ENDPOINT_URL": proxy.endpoint_url, "BUCKET_NAME": bucket},
        "endpoint_without_scheme": {
            "AWS_ENDPOINT_URL": f"127.0.0.1:{s3_server.port}",
            "BUCKET_NAME": bucket,
        },
        "endpoint_unreachable": {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "BUCKET_NAME": bucket,
        },
        "bucket_unset": {"AWS_ENDPOINT_URL": s3_server.endpoint_url},
    }[mistake]


CULPRITS = {
    "missing_bucket": ("no-such-b", "does not exist"),
    "refused_credentials": ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
    "endpoint_without_scheme": ("AWS_ENDPOINT_URL", "https://"),
    "endpoint_unreachable": ("s3.endpoint_url", "cannot connect"),
    "bucket_unset": ("is not set", "BUCKET_NAME"),
}


@pytest.mark.parametrize("mistake", sorted(CULPRITS))
def test_first_deploy_mistake_is_one_line_naming_the_culprit_and_exit_2_in_every_command(
    mistake, s3_server, bucket, refusing_proxy, tmp_path
):
    config = write_config(tmp_path / "c.yaml", http={"enabled": False})
    env = mistake_env(mistake, s3_server, bucket, refusing_proxy)
    with ThreadPoolExecutor(len(COMMANDS)) as pool:
        results = dict(
            zip(
                COMMANDS,
                pool.map(lambda c: cli(command_args(c, tmp_path, config), env, tmp_path), COMMANDS),
                strict=True,
            )
        )
    for command, result in results.items():
        output = f"{command}: {result.stdout}{result.stderr}"
        assert result.returncode == 2, output
        assert "Traceback" not in output
        for word in CULPRITS[mistake]:
            assert word in output, output
        if command != "check":
            assert len(result.stderr.strip().splitlines()) == 1, output
            assert result.stdout == "", output


def test_check_tells_unreachable_from_missing_bucket_from_refused_credentials(
    s3_server, bucket, refusing_proxy, tmp_path
):
    config = write_config(tmp_path / "c.yaml", http={"enabled": False})
    lines = {}
    for mistake in ("missing_bucket", "refused_credentials", "endpoint_unreachable"):
        env = mistake_env(mistake, s3_server, bucket, refusing_proxy)
        result = cli(["check", "--config", str(config)], env, tmp_path)
        assert result.returncode == 2
        lines[mistake] = result.stdout.strip().splitlines()[-1]
    assert len(set(lines.values())) == 3, lines
    assert lines["missing_bucket"].startswith("buckets.input: bucket 'no-such-b' does not exist")
    assert lines["refused_credentials"].startswith("AWS_ACCESS_KEY_ID: ")
    assert lines["endpoint_unreachable"].startswith("s3.endpoint_url: cannot connect")
    ok = cli(
        ["check", "--config", str(config)],
        {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "BUCKET_NAME": bucket},
        tmp_path,
    )
    assert ok.returncode == 0 and f"buckets.output: ok (s3://{bucket})" in ok.stdout, ok.stdout


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in out if isinstance(e, dict)]


def test_status_exit_code_follows_the_job_and_loglevel_debug_logs_each_request(
    s3, s3_env, bucket, tmp_path
):
    config = write_config(tmp_path / "c.yaml", http={"enabled": False})
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"alpha")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"files": ["a.txt"], "target": "out/good.zip"}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"files": ["absent.txt"], "target": "out/bad.zip"}))
    debug = cli(
        ["zip", str(good), "--config", str(config)], {**s3_env, "LOGLEVEL": "DEBUG"}, tmp_path
    )
    assert debug.returncode == 0, debug.stdout + debug.stderr
    requests = [e for e in json_lines(debug.stdout) if e.get("event") == "s3_request"]
    operations = {e["operation"] for e in requests}
    assert {"GetObject", "PutObject"} <= operations
    assert all(e["bucket"] == bucket and isinstance(e["status"], int) for e in requests), requests
    quiet = cli(["zip", str(bad), "--config", str(config)], s3_env, tmp_path)
    assert quiet.returncode == 1
    assert not [e for e in json_lines(quiet.stdout) if e.get("event") == "s3_request"]
    succeeded = cli(["status", "out/good.zip", "--config", str(config)], s3_env, tmp_path)
    assert succeeded.returncode == 0 and json.loads(succeeded.stdout)["state"] == "succeeded"
    failed = cli(["status", "out/bad.zip", "--config", str(config)], s3_env, tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert json.loads(failed.stdout)["error"]["code"] == "missing_input"


def test_help_is_written_for_users(tmp_path):
    result = cli(["--help"], {}, tmp_path)
    assert result.returncode == 0
    assert "only module" not in result.stdout and "argparse" not in result.stdout
    for word in ("ZIP", "submit", "status", "check", "exit codes"):
        assert word in result.stdout
