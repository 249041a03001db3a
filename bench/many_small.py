"""`many-small` rows of `make bench` (issue 16): thousands of 2-8 KiB objects zipped by
`b2-zip-watcher zip`, at 0 ms and at 50 ms added to every request, beside the raw-GET limit
measured in the same run through the same proxy.

    python -m bench.many_small [--objects 5000] [--runs 3] [--sweep 32,64,128,256] [--before REV]

Server: SeaweedFS on 127.0.0.1 (bench/servers.py), behind bench.servers.LatencyProxy (which
delays every request by the added latency and counts requests). Limits: boto3 GETs of every
object with 16 threads (0 ms) and 128 threads (50 ms; also quoted: the ceiling 128 requests in
flight could reach, 128 / RTT). Tool: wall time, objects/s, CPU ms per object (user + system of
the zip process), peak RSS (VmHWM), requests per object; every ZIP is downloaded and checked
(names, sizes, CRCs, bytes). ``--sweep`` runs the tool at 50 ms with each
``pipeline.small_in_flight``; ``--before REV`` also runs git revision REV's code (exported to
bench/work) for a same-run comparison. Results: bench/results/many_small.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.run import (
    BUCKET,
    RESULTS,
    WORK,
    client,
    dataset,
    peak_rss_kib,
    upload,
    verify,
)
from bench.servers import ACCESS_KEY, SECRET_KEY, LatencyProxy, SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
HERE = WORK / "many_small"


@contextlib.contextmanager
def seeded_small_server(data: Path, count: int) -> Iterator[tuple[SeaweedS3, object, list]]:
    """SeaweedFS in ``data`` (emptied first) with the bench bucket holding the first ``count``
    objects of the ``small`` dataset: ``(server, client, objects)``; stopped on leaving."""
    shutil.rmtree(data, ignore_errors=True)
    server = SeaweedS3(data).start(client)
    try:
        s3 = client(server.endpoint_url)
        s3.create_bucket(Bucket=BUCKET)
        objs = dataset("small", False)[:count]
        upload(s3, objs)
        yield server, s3, objs
    finally:
        server.stop()


def compiled(code: Path) -> Path:
    """``code``'s watcher package with its bytecode written, as an installed package has it
    (pip compiles on install): with PYTHONDONTWRITEBYTECODE set, or a stale ``__pycache__``,
    every timed process would otherwise compile the package again (~0.15 s CPU)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(code / "watcher")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return code


def raw_get_rate(endpoint: str, keys: list[str], threads: int) -> dict:
    """:func:`raw_get` in a process of its own (not beside the proxy's event loop)."""
    listing = HERE / "keys.json"
    listing.write_text(json.dumps(keys))
    command = [sys.executable, "-m", "bench.many_small", "--raw", endpoint, str(threads)]
    out = subprocess.run(command + [str(listing)], check=True, capture_output=True, cwd=ROOT)
    return json.loads(out.stdout)


def raw_get(endpoint: str, keys: list[str], threads: int) -> dict:
    """Objects/s of boto3 GETs of every key with ``threads`` threads, and their CPU ms/object."""
    s3 = client(endpoint, pool=threads)

    def get(key: str) -> int:
        return len(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    list(ThreadPoolExecutor(4).map(get, keys[:8]))  # connections and the client warmed up
    cpu = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, keys))
    wall = time.perf_counter() - start
    return {
        "threads": threads,
        "objects_s": len(keys) / wall,
        "mb_s": total / wall / 1e6,
        "cpu_ms_per_object": (time.process_time() - cpu) / len(keys) * 1000,
    }


def run_tool(endpoint: str, keys: list[str], extra: str, pythonpath: Path) -> dict:
    """One `zip` job as a subprocess of ``pythonpath``'s code: wall, CPU, peak RSS."""
    manifest = HERE / "manifest.json"
    manifest.write_text(json.dumps({"files": keys, "target": "zips/many-small.zip"}))
    config = HERE / "config.yaml"
    config.write_text(f"logging:\n  format: json\n  level: WARNING\n{extra}")
    env = {
        **os.environ,
        "PYTHONPATH": str(pythonpath),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "BUCKET_NAME": BUCKET,
    }
    log = HERE / "zip.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "zip", str(manifest), "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=HERE,
        )
        peak, cpu = peak_rss_kib(proc)  # CPU seconds from the child's own exit status
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"zip failed: {log.read_text()[-2000:]}")
    return {
        "wall": wall,
        "objects_s": len(keys) / wall,
        "cpu_ms_per_object": cpu / len(keys) * 1000,
        "peak_rss_mib": peak / 1024,
    }


def tool_runs(proxy: LatencyProxy, s3, objs, runs: int, extra: str, code: Path) -> dict:
    keys = [o.key for o in objs]
    results = []
    for _ in range(runs):
        proxy.reset()
        measured = run_tool(proxy.endpoint_url, keys, extra, code)
        counts = proxy.reset()
        gets = sum(n for shape, n in counts.items() if shape.startswith("GET"))
        heads = sum(n for shape, n in counts.items() if shape.startswith("HEAD"))
        measured.update(
            gets_per_object=gets / len(objs),
            heads=heads,
            requests_per_object=sum(counts.values()) / len(objs),
            requests=dict(counts),
        )
        verify(s3, objs, "zips/many-small.zip")
        results.append(measured)
        print(
            f"    {measured['wall']:.2f} s, {measured['objects_s']:.0f} objects/s, "
            f"{measured['cpu_ms_per_object']:.2f} ms CPU/object, "
            f"RSS {measured['peak_rss_mib']:.0f} MiB, {measured['gets_per_object']:.3f} GET/object",
            flush=True,
        )
    best = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "requests"}
    best["runs"] = results
    return best


def export(rev: str) -> Path:
    """Revision ``rev``'s watcher package, exported for a same-run comparison."""
    where = HERE / f"code-{rev}"
    if not (where / "watcher").exists():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "watcher"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--raw":
        keys = json.loads(Path(sys.argv[4]).read_text())
        print(json.dumps(raw_get(sys.argv[2], keys, int(sys.argv[3]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--sweep", default="", help="small_in_flight values to run at latency")
    parser.add_argument("--before", default="", help="a git revision to compare with")
    args = parser.parse_args()
    HERE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load = os.getloadavg()
    rows: list[dict] = []
    with seeded_small_server(HERE / "seaweedfs", args.objects) as (server, s3, objs):
        keys = [o.key for o in objs]
        codes = {"after": compiled(ROOT)}
        if args.before:
            codes[f"before ({args.before})"] = compiled(export(args.before))
        for latency_ms, threads in ((0.0, 16), (args.latency_ms, 128)):
            proxy = LatencyProxy(server.port, latency_ms / 1000).start()
            try:
                print(f"[many-small @ {latency_ms:g} ms] raw GET, {threads} threads", flush=True)
                raw = raw_get_rate(proxy.endpoint_url, keys, threads)
                print(f"    {raw['objects_s']:.0f} objects/s", flush=True)
                for label, code in codes.items():
                    print(f"[many-small @ {latency_ms:g} ms] {label}", flush=True)
                    tool = tool_runs(proxy, s3, objs, args.runs, "", code)
                    rows.append({"latency_ms": latency_ms, "code": label, "raw": raw, "tool": tool})
                if latency_ms and args.sweep:
                    for n in [int(v) for v in args.sweep.split(",")]:
                        print(f"[many-small @ {latency_ms:g} ms] small_in_flight {n}", flush=True)
                        extra = f"pipeline:\n  small_in_flight: {n}\n"
                        tool = tool_runs(proxy, s3, objs, 1, extra, ROOT)
                        rows.append(
                            {
                                "latency_ms": latency_ms,
                                "code": f"after, small_in_flight {n}",
                                "raw": raw,
                                "tool": tool,
                            }
                        )
            finally:
                proxy.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "many_small.json").write_text(json.dumps(rows, indent=1))
    command = f"python -m bench.many_small --objects {args.objects} --runs {args.runs}"
    command += f" --sweep {args.sweep}" if args.sweep else ""
    command += f" --before {args.before}" if args.before else ""
    report = table(rows, command, load, time.perf_counter() - started, len(objs))
    (RESULTS / "many_small_latest.md").write_text(report)
    print(report)
    return 0


def table(rows: list[dict], command: str, load, seconds: float, count: int) -> str:
    lines = [
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} at the start, `{command}`, {seconds:.0f} s in all; "
        f"{count} objects of 2-8 KiB (text) on SeaweedFS behind the latency proxy.",
        "",
        "| latency | code | tool objects/s | raw GET objects/s | ratio | CPU ms/object | "
        "peak RSS MiB | GETs/object | requests/object |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        raw, tool = row["raw"], row["tool"]
        lines.append(
            f"| {row['latency_ms']:g} ms | {row['code']} | {tool['objects_s']:.0f} | "
            f"{raw['objects_s']:.0f} ({raw['threads']} threads) | "
            f"{tool['objects_s'] / raw['objects_s']:.2f}x | {tool['cpu_ms_per_object']:.2f} | "
            f"{tool['peak_rss_mib']:.0f} | {tool['gets_per_object']:.3f} | "
            f"{tool['requests_per_object']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
