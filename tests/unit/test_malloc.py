"""The process's heap settings (watcher.cli._tune_malloc, run by main() first): glibc gives each
of a job's dozens of threads an arena of its own unless told otherwise, and every arena keeps its
freed blocks. An operator's MALLOC_ARENA_MAX wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Threads that allocate at once, then glibc's own account of its heaps (malloc_info's XML).
SCRIPT = """
import ctypes, sys, threading
if sys.argv[1] == "entry":  # the CLI's entry, as every command runs it
    from watcher.cli import main
    try:
        main(["--help"])
    except SystemExit:
        pass
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(16)
def work():
    start.wait()
    for _ in range(2000):
        libc.free(libc.malloc(4096))
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
"""


def _heaps(tmp_path: Path, mode: str, **env: str) -> int:
    report = tmp_path / f"{mode}.xml"
    subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(report)],
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        timeout=60,
    )
    return report.read_text().count("<heap nr=")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_job_process_has_at_most_two_malloc_arenas_however_many_threads_allocate(tmp_path):
    untuned = _heaps(tmp_path, "plain")
    if untuned <= 2:
        pytest.skip(f"glibc made {untuned} arenas for 16 threads unasked: nothing to show here")
    assert _heaps(tmp_path, "entry") <= 2
    # an operator's setting is left alone
    assert _heaps(tmp_path, "entry", MALLOC_ARENA_MAX="16") > 2
