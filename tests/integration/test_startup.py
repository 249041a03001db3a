"""What a `zip` process costs around its job (issues 14 and 16: its start-up is a fixed cost of
every job): the modules it imports, and how it leaves. Each case runs this checkout's CLI in a
process of its own against the test server, and checks the ZIP it wrote."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import download, put_objects, verify_zip
from daemonproc import wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]

# What a `zip` never needs: the HTTP API and its server, the daemon, claims, housekeeping and its
# scheduler, the metrics, boto3 and s3transfer (the edge makes botocore clients), and rich (which
# structlog would import only to draw exceptions on a console).
NOT_FOR_ZIP = (
    "waitress",
    "apscheduler",
    "prometheus_client",
    "boto3",
    "s3transfer",
    "rich",
    "moto",
    "watcher.api",
    "watcher.daemon",
    "watcher.claims",
    "watcher.retention",
    "watcher.metrics",
    "watcher.service",
)


def _python(script: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _entry_script(*command: str) -> str:
    """A script whose process enters the CLI as the console script does (main() reads sys.argv),
    running `command` followed by the script's own arguments; an atexit handler prints
    INTERPRETER-EXIT if the interpreter's tear-down runs."""
    return (
        "import atexit, sys\n"
        "atexit.register(lambda: print('INTERPRETER-EXIT', flush=True))\n"
        "from watcher.cli import main\n"
        f"sys.argv = ['b2-zip-watcher', *{list(command)!r}, *sys.argv[1:]]\n"
        "sys.exit(main())\n"
    )


def _manifest(tmp_path: Path, name: str, files: list[str], target: str) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"files": files, "target": target}))
    return str(path)


def test_a_zip_process_imports_nothing_a_zip_does_not_need(s3, bucket, s3_env, tmp_path):
    put_objects(s3, bucket, {"a.txt": b"alpha", "b/c.txt": b"gamma" * 100})
    manifest = _manifest(tmp_path, "m.json", ["a.txt", "b/c.txt"], "out/lean.zip")
    script = (
        "import json, sys\n"
        "from watcher.cli import main\n"
        "code = main(['zip', sys.argv[1]])\n"
        "print('MODULES ' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    done = _python(script, [manifest], s3_env, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    modules = set(json.loads(line.removeprefix("MODULES ")))
    assert "watcher.pipeline" in modules and "botocore" in modules  # it did run the job
    imported = sorted(
        name for name in modules if any(name == m or name.startswith(m + ".") for m in NOT_FOR_ZIP)
    )
    assert imported == []
    verify_zip(
        download(s3, bucket, "out/lean.zip", tmp_path / "lean.zip"),
        {"a.txt": b"alpha", "b/c.txt": b"gamma" * 100},
    )


def test_a_zip_process_leaves_without_the_interpreter_tear_down_and_says_everything(
    s3, bucket, s3_env, tmp_path
):
    """As the process's entry (no argv), a finished `zip` ends the process itself (no atexit
    handler runs), its output and every log line flushed, with the exit codes of CONTRACT §1."""
    put_objects(s3, bucket, {"a.txt": b"alpha"})
    good = _manifest(tmp_path, "good.json", ["a.txt"], "out/quick.zip")
    bad = _manifest(tmp_path, "bad.json", ["absent.txt"], "out/quick-bad.zip")
    script = _entry_script("zip")
    ok = _python(script, [good], s3_env, tmp_path)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "INTERPRETER-EXIT" not in ok.stdout
    assert "succeeded: s3://" in ok.stdout and "out/quick.zip" in ok.stdout
    events = [json.loads(x) for x in ok.stdout.splitlines() if x.startswith("{")]
    assert [e["event"] for e in events if e["event"].startswith("job_")][-1] == "job_finished"
    verify_zip(download(s3, bucket, "out/quick.zip", tmp_path / "quick.zip"), {"a.txt": b"alpha"})

    failed = _python(script, [bad], s3_env, tmp_path)
    assert failed.returncode == 1 and "failed: missing_input" in failed.stderr
    assert "INTERPRETER-EXIT" not in failed.stdout

    # called with its arguments (from a program, a test), main() returns like any function
    returned = _python(
        "import sys\nfrom watcher.cli import main\n"
        "print('CODE', main(['zip', sys.argv[1]]), flush=True)\n",
        [good],
        s3_env,
        tmp_path,
    )
    assert returned.returncode == 0 and "CODE 0" in returned.stdout, returned.stderr


def test_a_stopped_daemon_leaves_without_the_interpreter_tear_down(s3_env, bucket, tmp_path):
    """`run`, SIGTERM'd with nothing to drain, ends the process itself once it has stopped (no
    atexit handler runs: on a busy machine the tear-down took seconds of the grace + 5 s a
    SIGTERM'd daemon has, CONTRACT §7.10), exit code 0, its last log line written."""
    config = write_config(tmp_path / "c.yaml")
    script = _entry_script("run", "--config")
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(config)],
            env={**s3_env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            wait_until(lambda: "daemon_started" in log.read_text(), 60, "the daemon's start")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "INTERPRETER-EXIT" not in text
    assert json.loads(text.splitlines()[-1])["event"] == "daemon_stopped", text[-2000:]
