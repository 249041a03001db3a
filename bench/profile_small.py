"""Where a many-small job's CPU goes: `b2-zip-watcher zip` over N small text objects (the `small`
dataset: 2-8 KiB each), summed by area (botocore's per-call machinery, HTTP, signing, deflate,
framing, thread hand-offs, ...).

    python -m bench.profile_small [--objects 2000]
    python -m bench.profile_small --server seaweedfs --sampler py-spy --objects 5000 \
        [--repeat 3] [--before REV] [--startup]

``--sampler cprofile`` (the default, on moto's server): one cProfile per thread timed in thread
CPU time. Profiling inflates every Python call (≈4x here), so read the shares, not the
milliseconds; moto closes each connection after its response, so connection set-up is
over-counted against a store that keeps connections alive (SeaweedFS, B2).

``--sampler py-spy`` (on SeaweedFS, as bench.many_small uses; ``pip install py-spy``): the job
first runs ``--repeat`` times unprofiled — its CPU ms per object (user and system, from the
child's rusage), and once over a single object, which is the process's start-up and the job's
fixed cost — then once under py-spy (sampling from outside, on-CPU samples only), whose samples
are summed by area from the innermost frame outwards. ``--before REV`` measures git revision
REV's code the same way, in the same run. ``--startup`` measures only the 1-object job (the
process's start-up), ``--repeat`` times for each code. The watcher package is byte-compiled
first, as an installed one is.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "profile"

AREAS = [  # (area, pattern on "file:line(function)"), first match wins
    ("startup: imports", r"importlib|<frozen"),
    ("deflate + CRC", r"watcher/deflate\.py|isal|zlib_ng|crc32|compress"),
    (
        "SigV4 signing (botocore's, or the lean GET's)",
        r"botocore/auth\.py|botocore/signers\.py|hmac|hashlib|smallget\.py:\d+\((headers|_signing)",
    ),
    ("botocore: response parsing", r"botocore/parsers\.py|botocore/response\.py|dateutil"),
    (
        "botocore: request build/headers",
        r"botocore/serialize\.py|botocore/validate\.py|botocore/awsrequest\.py|botocore/model\.py",
    ),
    ("botocore: endpoint rules", r"botocore/regions\.py|endpoint_provider"),
    (
        "botocore: event hooks",
        r"botocore/hooks\.py|botocore/handlers\.py|botocore/retries|botocore/utils\.py"
        r"|botocore/context\.py",
    ),
    ("http: urllib3/http.client/socket", r"urllib3|http/client\.py|socket|ssl|select|email/"),
    ("botocore: other", r"botocore/|boto3/|s3transfer|urllib/parse"),
    ("stream-zip framing", r"stream_zip"),
    ("markers / json", r"watcher/markers\.py|json/"),
    ("logging", r"structlog|logging/|watcher/logs\.py"),
    ("pipeline", r"watcher/pipeline\.py"),
    ("lean GET (smallget)", r"watcher/smallget\.py"),
    ("store edge", r"watcher/store\.py"),
    ("threads / locks", r"threading\.py|queue\.py|concurrent/futures|acquire|release|_thread"),
]
# helpers whose time belongs to whoever called them
GENERIC = r"^~|_collections_abc|email/|functools|enum|re/|dataclasses|uuid|datetime|typing|copy"


def profiled_zip(out: str, args: list[str]) -> int:
    """Run the CLI with one CPU-time profiler per thread; all of them saved into ``out``."""
    profiles = []
    run = threading.Thread.run

    def profiled(self):  # type: ignore[no-untyped-def]
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    main = cProfile.Profile(time.thread_time)
    main.enable()
    try:
        from watcher.cli import main as cli

        return cli(args)
    finally:
        main.disable()
        stats = pstats.Stats(main)
        for profile in profiles:
            stats.add(profile)
        stats.dump_stats(out)


def areas(path: str) -> tuple[float, collections.Counter]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]

    def area_of(func, depth=0) -> dict[str, float]:
        name = f"{func[0]}:{func[1]}({func[2]})"
        hit = next((area for area, rx in AREAS if re.search(rx, name)), None)
        if hit:
            return {hit: 1.0}
        if depth < 4 and re.search(GENERIC, func[0]):
            callers = stats[func][4]
            total = sum(v[2] for v in callers.values()) or 1.0
            shares: collections.Counter = collections.Counter()
            for caller, v in callers.items():
                for area, w in area_of(caller, depth + 1).items():
                    shares[area] += w * v[2] / total
            if shares:
                return shares
        return {"other": 1.0}

    counts: collections.Counter = collections.Counter()
    total = 0.0
    for func, (_, _, own, _, _) in stats.items():
        total += own
        for area, w in area_of(func).items():
            counts[area] += own * w
    return total, counts


def spy_areas(path: Path) -> tuple[int, collections.Counter]:
    """py-spy's raw (collapsed) stacks summed by area: the innermost frame that names one, past
    the generic helpers (as :func:`areas` does with cProfile's callers)."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            func, _, where = frame.rpartition(" (")
            frames.append(f"{where.rstrip(')')}({func})")
        total += int(n)
        hit = "other" if stack.strip() else "(no Python frame on the sampled thread)"
        for name in reversed(frames):
            found = next((area for area, rx in AREAS if re.search(rx, name)), None)
            if found:
                hit = found
                break
            if not re.search(GENERIC, name.split(":")[0]):
                break
        counts[hit] += int(n)
    return total, counts


def spy_main(args: argparse.Namespace) -> int:
    """``--sampler py-spy`` on SeaweedFS: unprofiled CPU per object, start-up, then py-spy."""
    import resource
    import shutil
    import statistics

    from bench.many_small import compiled, export, seeded_small_server
    from bench.run import BUCKET, verify
    from bench.servers import ACCESS_KEY, SECRET_KEY

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is missing: pip install py-spy")
    here = WORK / "seaweedfs"
    here.mkdir(parents=True, exist_ok=True)
    codes = {"after": compiled(ROOT)}
    if args.before:
        codes[f"before ({args.before})"] = compiled(export(args.before))
    out: list[str] = []
    with seeded_small_server(here / "data", args.objects) as (server, s3, objs):
        config = here / "config.yaml"
        config.write_text("logging:\n  format: json\n  level: WARNING\n")

        def zip_job(code: Path, keys: list[str], prefix: list[str]) -> tuple[float, float, int]:
            manifest = here / "manifest.json"
            manifest.write_text(json.dumps({"files": keys, "target": "zips/profile.zip"}))
            env = {
                **os.environ,
                "PYTHONPATH": str(code),
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": server.endpoint_url,
                "AWS_DEFAULT_REGION": "us-east-1",
                "BUCKET_NAME": BUCKET,
            }
            command = [*prefix, sys.executable, "-m", "watcher", "zip", str(manifest)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                command + ["--config", str(config)],
                env=env,
                check=True,
                cwd=here,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            switches = after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw
            return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, switches

        keys = [o.key for o in objs]
        n = len(keys)
        out.append(
            f"{n} objects of 2-8 KiB on SeaweedFS, load average {os.getloadavg()[0]:.1f} at the "
            f"start, {time.strftime('%H:%M UTC', time.gmtime())}"
        )
        if args.startup:
            for label, code in codes.items():
                one = sorted(sum(zip_job(code, keys[:1], [])[:2]) for _ in range(args.repeat))
                out.append(
                    f"{label}: a 1-object job (start-up and fixed cost): CPU median "
                    f"{statistics.median(one):.3f} s, min {one[0]:.3f} s over {args.repeat} runs "
                    f"(" + ", ".join(f"{t:.3f}" for t in one) + ")"
                )
                print(out[-1], flush=True)
            codes = {}
        for label, code in codes.items():
            runs = [zip_job(code, keys, []) for _ in range(args.repeat)]
            verify(s3, objs, "zips/profile.zip")
            one = [zip_job(code, keys[:1], []) for _ in range(args.repeat)]
            user = statistics.median(r[0] for r in runs)
            system = statistics.median(r[1] for r in runs)
            switches = statistics.median(r[2] for r in runs)
            fixed = statistics.median(r[0] + r[1] for r in one)
            whole = user + system
            out.append(
                f"{label}: CPU {whole / n * 1000:.3f} ms/object (user {user / n * 1000:.3f}, "
                f"system {system / n * 1000:.3f}; median of {args.repeat}, runs "
                + ", ".join(f"{(r[0] + r[1]) / n * 1000:.3f}" for r in runs)
                + f"; {switches / n:.1f} context switches/object); "
                f"a 1-object job {fixed:.2f} s (start-up and fixed cost) = "
                f"{fixed / n * 1000:.3f} ms/object, without it {(whole - fixed) / n * 1000:.3f}"
            )
            print(out[-1], flush=True)
            raw = here / f"spy-{len(out)}.txt"
            zip_job(code, keys, [spy, "record", "-r", "250", "-f", "raw", "-o", str(raw), "--"])
            total, counts = spy_areas(raw)
            out.append(f"  py-spy, {total} on-CPU samples at 250 Hz:")
            for area, count in counts.most_common():
                out.append(f"  {count / total * 100:5.1f} %  {area}")
            print("\n".join(out[-len(counts) - 1 :]), flush=True)
    (WORK / "seaweedfs.txt").write_text("\n".join(out) + "\n")
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return profiled_zip(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--server", choices=("moto", "seaweedfs"), default="moto")
    parser.add_argument("--sampler", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--repeat", type=int, default=3, help="unprofiled runs (py-spy)")
    parser.add_argument("--before", default="", help="a git revision to compare with (py-spy)")
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only the 1-object job's CPU, --repeat times (py-spy)",
    )
    args = parser.parse_args()
    if (args.server == "seaweedfs") != (args.sampler == "py-spy"):
        raise SystemExit("--server seaweedfs goes with --sampler py-spy, moto with cprofile")
    if args.sampler == "py-spy":
        return spy_main(args)
    import boto3

    from bench.run import body_of, dataset

    WORK.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    server = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        keys = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **keys)
        for _ in range(100):
            try:
                s3.create_bucket(Bucket="bench")
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        objs = dataset("small", False)[: args.objects]
        with ThreadPoolExecutor(16) as pool:
            put = lambda o: s3.put_object(Bucket="bench", Key=o.key, Body=body_of(o))  # noqa: E731
            list(pool.map(put, objs))
        manifest = WORK / "manifest.json"
        manifest.write_text(json.dumps({"files": [o.key for o in objs], "target": "z/small.zip"}))
        config = WORK / "config.yaml"
        config.write_text("logging:\n  format: json\n  level: WARNING\n")
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_ENDPOINT_URL": url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "BUCKET_NAME": "bench",
        }
        out = WORK / "zip.prof"
        command = [sys.executable, "-m", "bench.profile_small", "--child", str(out)]
        command += ["zip", str(manifest), "--config", str(config)]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    total, counts = areas(str(out))
    n = len(objs)
    print(
        f"{n} objects, wall {wall:.1f} s (profiled), CPU in the zip process's threads "
        f"{total:.1f} s = {total / n * 1000:.2f} ms/object with the profiler's overhead"
    )
    for area, seconds in counts.most_common():
        print(f"{seconds / total * 100:5.1f} %  {area}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
