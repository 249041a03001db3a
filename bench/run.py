"""`make bench`: the pipeline against the limits of this machine, measured in the same run.

For each dataset: upload it (deterministic bytes) to a local SeaweedFS, measure the limits (raw
parallel GET, raw multipart PUT, a raw pipelined GET→PUT copy, one-core compressor rates, one-by-
one fetches for `small`), then run `b2-zip-watcher zip` as a subprocess through a counting (and
optionally delaying) proxy several times: wall time, input/output MB/s, peak RSS, requests by
kind. `media` runs with nothing between the job and the server, as its server-side ceiling is
measured: bytes uploaded and read are the server's own per-bucket counts (SeaweedFS's Prometheus
metrics), requests by class the job's own (its result marker). Every ZIP is downloaded and
checked (names, sizes, CRCs; `unzip -t` when installed).
Writes bench/results/<dataset>.json and bench/results/latest.md.

    python -m bench.run [--datasets small,mixed,large] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from bench.servers import ACCESS_KEY, SECRET_KEY, LatencyProxy, SeaweedS3
from watcher.b2classes import cost_usd

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
BUCKET = "bench"
CRC_CACHE = "zip-requests/.crc/"  # the pipeline's CRC cache in the watch bucket (= BUCKET)
MiB = 1024 * 1024


def client(endpoint: str, pool: int = 64):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            max_pool_connections=pool,
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 5},
        ),
    )


# -- datasets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    key: str
    size: int
    seed: int
    kind: str  # "text" | "random"


def text_bytes(seed: int, size: int) -> bytes:
    """CSV/log-like text: compressible, but not trivially (ratio near real logs)."""
    rng = random.Random(seed)
    words = [rng.choice(["GET", "PUT", "POST"]) for _ in range(8)]
    paths = [f"/api/v{rng.randint(1, 3)}/items/{rng.randint(1, 99999)}" for _ in range(500)]
    lines, total, i = [], 0, 0
    while total < size:
        line = (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d},{rng.choice(words)},"
            f"{rng.choice(paths)},{rng.choice([200, 200, 200, 404, 500])},"
            f"{rng.randint(1, 5000)},user{rng.randint(1, 2000)},{rng.random():.6f}\n"
        )
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()[:size]


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def body_of(obj: Obj) -> bytes:
    return (text_bytes if obj.kind == "text" else random_bytes)(obj.seed, obj.size)


def dataset(name: str, quick: bool) -> list[Obj]:
    rng = random.Random(name)
    if name == "small":
        count = 500 if quick else 5000
        return [Obj(f"small/{i:05d}.txt", rng.randint(2048, 8192), i, "text") for i in range(count)]
    if name == "mixed":
        objs, total, i = [], 0, 0
        goal = (64 if quick else 1024) * MiB
        while total < goal:
            media = i % 2 == 1
            size = rng.randint(1 * MiB, (8 if quick else 64) * MiB)
            ext = rng.choice(["jpg", "mp4"]) if media else rng.choice(["csv", "log"])
            objs.append(Obj(f"mixed/{i:04d}.{ext}", size, 1000 + i, "random" if media else "text"))
            total += size
            i += 1
        return objs
    if name == "media":
        clip, photos = (32 * MiB, 20) if quick else (256 * MiB, 100)
        objs = [Obj(f"media/clip{i}.mp4", clip, 2000 + i, "random") for i in range(4)]
        return objs + [
            Obj(f"media/photo{i:03d}.jpg", 200 * 1024, 3000 + i, "random") for i in range(photos)
        ]
    if name == "large":
        size = (256 * MiB) if quick else int(4.5 * 1024 * MiB)
        return [Obj("large/huge.mp4", size, 7, "random")]
    raise SystemExit(f"unknown dataset {name!r}")


def upload(s3, objs: list[Obj]) -> None:
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=objs[0].key.split("/")[0]
    ):
        existing.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})

    def put(obj: Obj) -> None:
        if existing.get(obj.key) == obj.size:
            return
        if obj.size <= 64 * MiB:
            s3.put_object(Bucket=BUCKET, Key=obj.key, Body=body_of(obj))
            return
        block = 64 * MiB
        rng = random.Random(obj.seed)
        upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=obj.key)["UploadId"]
        parts, done, number = [], 0, 1
        while done < obj.size:
            data = rng.randbytes(min(block, obj.size - done))
            etag = s3.upload_part(
                Bucket=BUCKET, Key=obj.key, UploadId=upload_id, PartNumber=number, Body=data
            )["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
            done += len(data)
            number += 1
        s3.complete_multipart_upload(
            Bucket=BUCKET, Key=obj.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objs))


def expected_crc(obj: Obj) -> int:
    if obj.size <= 64 * MiB:
        return zlib.crc32(body_of(obj))
    rng, crc, done = random.Random(obj.seed), 0, 0
    while done < obj.size:
        data = rng.randbytes(min(64 * MiB, obj.size - done))
        crc = zlib.crc32(data, crc)
        done += len(data)
    return crc


# -- limits -----------------------------------------------------------------------------------


def raw_get(s3, objs: list[Obj], threads: int = 16) -> float:
    """MB/s of reading every input in parallel and throwing the bytes away."""

    def get(obj: Obj) -> int:
        body = s3.get_object(Bucket=BUCKET, Key=obj.key)["Body"]
        n = 0
        while chunk := body.read(MiB):
            n += len(chunk)
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, objs))
    return total / (time.perf_counter() - start) / 1e6


def raw_put(s3, nbytes: int, threads: int = 4, part: int = 8 * MiB) -> float:
    """MB/s of a parallel multipart PUT of ``nbytes`` (pre-made buffers: no generation cost)."""
    buffers = [random.Random(i).randbytes(part) for i in range(threads)]
    key = "limits/raw-put.bin"
    start = time.perf_counter()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    count = max(1, -(-nbytes // part))

    def put(number: int) -> dict:
        size = min(part, nbytes - (number - 1) * part)
        data = buffers[number % threads][:size]
        etag = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )["ETag"]
        return {"PartNumber": number, "ETag": etag}

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(put, range(1, count + 1)))
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    elapsed = time.perf_counter() - start
    s3.delete_object(Bucket=BUCKET, Key=key)
    return nbytes / elapsed / 1e6


def raw_copy(s3, objs: list[Obj], gets: int = 16, puts: int = 4, part: int = 8 * MiB) -> float:
    """MB/s of a pipelined copy: parallel GETs feeding a parallel multipart PUT, no ZIP."""
    key = "limits/raw-copy.bin"
    chunks: queue.Queue = queue.Queue(maxsize=64)
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts: list[dict] = []
    start = time.perf_counter()

    def reader() -> None:
        def get(obj: Obj) -> None:
            body = s3.get_object(Bucket=BUCKET, Key=obj.key)["Body"]
            while chunk := body.read(MiB):
                chunks.put(chunk)

        with ThreadPoolExecutor(gets) as pool:
            list(pool.map(get, objs))
        chunks.put(None)

    threading.Thread(target=reader, daemon=True).start()
    with ThreadPoolExecutor(puts) as pool:
        futures, buffer, size = [], [], 0

        def send(pieces: list[bytes]) -> None:
            futures.append(
                pool.submit(
                    s3.upload_part,
                    Bucket=BUCKET,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(futures) + 1,
                    Body=b"".join(pieces),
                )
            )

        while (chunk := chunks.get()) is not None:
            buffer.append(chunk)
            size += len(chunk)
            if size >= part:
                send(buffer)
                buffer, size = [], 0
        if buffer:
            send(buffer)
        parts = [{"PartNumber": i + 1, "ETag": f.result()["ETag"]} for i, f in enumerate(futures)]
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    elapsed = time.perf_counter() - start
    s3.delete_object(Bucket=BUCKET, Key=key)
    return sum(o.size for o in objs) / elapsed / 1e6


def server_side(s3, objs: list[Obj], readers: int = 8, copiers: int = 4) -> float:
    """MB/s of the least a server-side assembly must do, on this machine: every input read once
    (parallel 32 MiB ranged GETs, CRC-32 computed) while the server itself assembles the inputs
    of 16 MiB and more by ranged UploadPartCopy (128 MiB pieces); the small ones are uploaded
    once in one part."""
    key = "limits/server-side.bin"
    large = [o for o in objs if o.size >= 16 * MiB]
    small = [o for o in objs if o.size < 16 * MiB]
    start = time.perf_counter()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    def crc_range(obj: Obj, first: int, last: int) -> int:
        body = s3.get_object(Bucket=BUCKET, Key=obj.key, Range=f"bytes={first}-{last - 1}")["Body"]
        value = 0
        while chunk := body.read(256 * 1024):
            value = zlib.crc32(chunk, value)
        return value

    def copy(number: int, obj: Obj, first: int, last: int) -> dict:
        etag = s3.upload_part_copy(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": BUCKET, "Key": obj.key},
            CopySourceRange=f"bytes={first}-{last - 1}",
        )["CopyPartResult"]["ETag"]
        return {"PartNumber": number, "ETag": etag}

    def small_part(number: int) -> dict:  # last: the only part allowed under 5 MiB
        data = b"".join(s3.get_object(Bucket=BUCKET, Key=o.key)["Body"].read() for o in small)
        response = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    pieces = [
        (o, a, min(a + 128 * MiB, o.size)) for o in large for a in range(0, o.size, 128 * MiB)
    ]
    spans = [(o, a, min(a + 32 * MiB, o.size)) for o in large for a in range(0, o.size, 32 * MiB)]
    with ThreadPoolExecutor(readers) as read_pool, ThreadPoolExecutor(copiers) as copy_pool:
        reads = [read_pool.submit(crc_range, *span) for span in spans]
        parts = [copy_pool.submit(copy, n, *p) for n, p in enumerate(pieces, start=1)]
        if small:
            parts.append(copy_pool.submit(small_part, len(pieces) + 1))
        for future in reads:
            future.result()
        done = sorted((f.result() for f in parts), key=lambda p: p["PartNumber"])
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    elapsed = time.perf_counter() - start
    s3.delete_object(Bucket=BUCKET, Key=key)
    return sum(o.size for o in objs) / elapsed / 1e6


def request_class(shape: str) -> str:
    """B2's transaction class of a request shape: a (uploads, deletes), b (downloads, HEAD),
    c (listings, copies)."""
    method, _, rest = shape.partition(" ")
    if "(copy)" in rest or "list-type" in rest or "versions" in rest:
        return "c"
    if method in ("GET", "HEAD"):
        return "c" if rest.startswith(("prefix", "uploads")) else "b"
    return "a"


def request_budget(name: str, objs: list[Obj], parts: int) -> int:
    """Requests a job may need: one GET per input, its parts, 10 for listings and markers; per
    large deflated input (text over 8 MiB) a ranged GET per 2 MiB after its first 2 MiB; and
    per large stored input (random bytes over 8 MiB) one HEAD, a ranged GET per 32 MiB for its
    CRC-32 and one for its head — plus, with the CRC cache (media), one lookup and one write."""
    large = [o for o in objs if o.kind == "random" and o.size > 8 * MiB]
    cache = 2 if name == "media" else 0
    # a large deflated input may be read by 2 MiB ranged GETs after its first 2 MiB
    ranged = sum(
        -(-(o.size - 2 * MiB) // (2 * MiB)) for o in objs if o.kind == "text" and o.size > 8 * MiB
    )
    return (
        len(objs) + parts + 10 + ranged + sum(-(-o.size // (32 * MiB)) + 2 + cache for o in large)
    )


def compressor_rates(objs: list[Obj]) -> dict:
    """One core, the compressible half: the pipeline's deflate at levels 2, 6 (ISA-L) and 7, 8
    (zlib-ng) against stdlib zlib at level 6."""
    from watcher.deflate import compressobj as _compressobj

    sample = b"".join(body_of(o) for o in objs if o.kind == "text")[: 128 * MiB]

    def measure(make) -> dict:
        comp = make()
        start = time.perf_counter()
        size = sum(len(comp.compress(sample[i : i + MiB])) for i in range(0, len(sample), MiB))
        size += len(comp.flush())
        return {
            "mb_s": len(sample) / (time.perf_counter() - start) / 1e6,
            "ratio": size / len(sample),
        }

    out = {"zlib6": measure(lambda: zlib.compressobj(6, zlib.DEFLATED, -15))}
    for level in (2, 6, 7, 8):
        out[f"level{level}"] = measure(lambda level=level: _compressobj(level))
    return out


def one_by_one(s3, objs: list[Obj], limit: int = 300) -> float:
    """MB/s of fetching objects sequentially (the sample app's way), over ``limit`` objects."""
    subset = objs[:limit]
    start = time.perf_counter()
    total = sum(len(s3.get_object(Bucket=BUCKET, Key=o.key)["Body"].read()) for o in subset)
    return total / (time.perf_counter() - start) / 1e6


def clear_crc_cache(s3) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=CRC_CACHE):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])


def parts_of(s3, key: str) -> int:
    """Parts of a completed multipart object, from its ETag's ``-N`` (1: a single PUT)."""
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    return int(etag.rpartition("-")[2]) if "-" in etag else 1


def direct_run(
    server: SeaweedS3, s3, objs: list[Obj], name: str, label: str, args, extra: str = ""
) -> dict:
    """One job straight against the server, as the limits it is compared with are measured: no
    proxy in the path. Bytes uploaded and read are the server's own per-bucket counts (request
    and response bodies; a part copy moves none), requests by class the job's own count (its
    result marker), requests by HTTP method the server's."""
    total = sum(o.size for o in objs)
    target = f"zips/{name}.zip"
    before = server.counters(BUCKET)
    measured = run_pipeline(
        server.endpoint_url, objs, target, "auto", args.level, extra, server=server
    )
    after = server.counters(BUCKET)
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key=target + ".result.json")["Body"].read())
    parts = parts_of(s3, target)
    zip_bytes = verify(s3, objs, target)
    classes = marker.get("requests") or {}
    uploaded = after["received"] - before["received"]
    downloaded = after["sent"] - before["sent"]
    measured.update(
        input_mb_s=total / measured["wall"] / 1e6,
        output_mb_s=zip_bytes / measured["wall"] / 1e6,
        job_seconds=marker.get("duration_seconds"),
        zip_bytes=zip_bytes,
        parts=parts,
        requests=dict(after["requests"] - before["requests"]),
        request_classes=classes,
        uploaded_bytes=uploaded,
        downloaded_bytes=downloaded,
    )
    print(
        f"[{name}] {label}: {measured['wall']:.2f} s (job {measured['job_seconds']} s), "
        f"{measured['input_mb_s']:.1f} MB/s in, RSS {measured['peak_rss_mib']:.0f} MiB, "
        f"{sum(classes.values())} requests {classes}, {parts} parts, uploaded "
        f"{uploaded / total:.2%}, read {downloaded / total:.2%} of the input",
        flush=True,
    )
    return measured


def bench_media(server: SeaweedS3, objs: list[Obj], args: argparse.Namespace) -> dict:
    """``--runs`` cold jobs (the CRC cache emptied first), each right after a measure of the
    server-side ceiling, then one job with the cache warm. Nothing between the jobs and the
    server: the ceiling is measured that way too."""
    s3 = client(server.endpoint_url)
    total = sum(o.size for o in objs)
    limits: dict = {
        "raw_get_mb_s": raw_get(s3, objs),
        "raw_put_mb_s": raw_put(s3, total),
        "raw_copy_mb_s": raw_copy(s3, objs),
    }
    extra = "pipeline:\n  crc_cache: true\n"
    ceilings, results = [], []
    for run in range(args.runs):
        clear_crc_cache(s3)
        ceilings.append(server_side(s3, objs))
        print(f"[media] server-side ceiling {run + 1}: {ceilings[-1]:.1f} MB/s", flush=True)
        results.append(direct_run(server, s3, objs, "media", f"cold run {run + 1}", args, extra))
    warm = direct_run(server, s3, objs, "media", "warm CRC cache", args, extra)
    limits["server_side_mb_s"] = statistics.median(ceilings)
    limits["server_side_runs_mb_s"] = ceilings
    return direct_summary("media", objs, limits, results, ceilings, warm_cache=warm)


def direct_summary(
    name: str, objs: list[Obj], limits: dict, results: list[dict], run_limits: list[float], **more
) -> dict:
    """The summary of jobs run straight against the server (:func:`direct_run`), each against
    the limit measured right before it (``run_limits``); written to bench/results/NAME.json."""
    first = results[0]
    summary = {
        "dataset": name,
        "objects": len(objs),
        "input_bytes": sum(o.size for o in objs),
        "runs": len(results),
        "latency_ms": 0,
        "proxy": None,  # bytes and requests counted by the server and the job, not by a proxy
        "limits": limits,
        "wall_s": median_range([r["wall"] for r in results]),
        "input_mb_s": median_range([r["input_mb_s"] for r in results]),
        "output_mb_s": median_range([r["output_mb_s"] for r in results]),
        "peak_rss_mib": median_range([r["peak_rss_mib"] for r in results]),
        "per_run_ratio": [r["input_mb_s"] / c for r, c in zip(results, run_limits, strict=True)],
        "requests": first["requests"],
        "requests_total": sum(first["request_classes"].values()),
        "request_classes": first["request_classes"],
        "status_refreshes_included": True,
        "request_budget": request_budget(name, objs, first["parts"]),
        "runs_detail": results,
        **more,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


# -- the pipeline -----------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pipeline(
    endpoint: str,
    objs: list[Obj],
    target: str,
    compression: str,
    level: int,
    extra: str = "",
    server: SeaweedS3 | None = None,
) -> dict:
    """One ``zip`` job as a subprocess: wall time, peak RSS, and the CPU seconds it used (its
    own, the store server's and this process's — the proxy — over the same span: the three
    share the cores, so the job's CPU per input MB decides its rate on a loaded machine)."""
    manifest = {"files": [o.key for o in objs], "target": target, "compression": compression}
    path = WORK / "manifest.json"
    path.write_text(json.dumps(manifest))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "BUCKET_NAME": BUCKET,
    }
    script = Path(sys.executable).parent / "b2-zip-watcher"
    config = WORK / "bench-config.yaml"
    config.write_text(
        f"logging:\n  format: json\n  level: WARNING\nzip:\n  level: {level}\n{extra}"
    )
    log = WORK / "pipeline.log"
    server_pid = server.proc.pid if server is not None and server.proc is not None else None
    server_before = process_cpu_s(server_pid) if server_pid else 0.0
    own_before = time.process_time()
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(script), "zip", str(path), "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=WORK,
        )
        spy = None
        if os.environ.get("BENCH_PYSPY"):  # a profile of the job: py-spy's collapsed stacks
            spy = subprocess.Popen(
                [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")]
                + ["record", "--pid", str(proc.pid), "--nonblocking", "-r", "200", "-f", "raw"]
                + ["-o", os.environ["BENCH_PYSPY"]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        perf = None
        if os.environ.get("BENCH_PERF"):  # native samples of the job, by library and symbol
            perf = subprocess.Popen(
                ["perf", "record", "-F", "499", "-g", "-p", str(proc.pid)]
                + ["-o", os.environ["BENCH_PERF"]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        peak, cpu = peak_rss_kib(proc)
        for sampler in (spy, perf):
            if sampler is not None:
                sampler.wait(60)
    wall = time.perf_counter() - start
    own = time.process_time() - own_before
    server_cpu = process_cpu_s(server_pid) - server_before if server_pid else None
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed: {log.read_text()[-2000:]}")
    megabytes = sum(o.size for o in objs) / 1e6
    print(
        f"  job CPU {cpu:.1f} s ({cpu / megabytes * 1000:.1f} ms/MB), server "
        f"{server_cpu or 0:.1f} s, bench process {own:.1f} s, wall {wall:.1f} s",
        flush=True,
    )
    return {
        "wall": wall,
        "peak_rss_mib": peak / 1024,
        "job_cpu_s": cpu,
        "server_cpu_s": server_cpu,
        "bench_cpu_s": own,
    }


def peak_rss_kib(proc: subprocess.Popen) -> tuple[int, float]:
    """The child's VmHWM (peak resident set), polled until it exits, and the CPU seconds (user
    + system) it used, from its exit's resource usage.

    Not ru_maxrss: that would count the forked copy of this (large) benchmark process that
    exists for a moment before exec.
    """
    status = Path(f"/proc/{proc.pid}/status")
    peak = 0
    while True:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(code)
            return peak, usage.ru_utime + usage.ru_stime
        time.sleep(0.02)


def verify(s3, objs: list[Obj], target: str) -> int:
    """Download the ZIP and check every entry against the dataset; returns its size."""
    local = WORK / "check.zip"
    s3.download_file(BUCKET, target, str(local))
    try:
        with zipfile.ZipFile(local) as archive:
            infos = archive.infolist()
            assert [i.filename for i in infos] == [o.key for o in objs], "entry names differ"
            for info, obj in zip(infos, objs, strict=True):
                assert info.file_size == obj.size, f"{obj.key}: size"
                assert info.CRC == expected_crc(obj), f"{obj.key}: CRC"
                with archive.open(info) as member:  # decompresses and checks the CRC again
                    while member.read(8 * MiB):
                        pass
        if shutil.which("unzip"):
            subprocess.run(["unzip", "-tqq", str(local)], check=True)
        return local.stat().st_size
    finally:
        local.unlink(missing_ok=True)


def median_range(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_dataset(name: str, server: SeaweedS3, args: argparse.Namespace) -> dict:
    s3 = client(server.endpoint_url)
    objs = dataset(name, args.quick)
    print(
        f"[{name}] uploading {len(objs)} objects, {sum(o.size for o in objs) / MiB:.0f} MiB",
        flush=True,
    )
    upload(s3, objs)
    total = sum(o.size for o in objs)
    if name == "media":
        return bench_media(server, objs, args)
    if name == "small":
        return bench_small(server, objs, args)
    limits: dict = {"raw_get_mb_s": raw_get(s3, objs), "raw_put_mb_s": raw_put(s3, total)}
    if name == "mixed":
        limits["compressor"] = compressor_rates(objs)
    runs = 1 if name == "large" and not args.quick else args.runs
    # The copy-through limit is measured right before each run, as media's ceiling is: on this
    # shared machine one measure of it moved by up to 35 % within the hour (60 to 81 MB/s).
    copies, results = [], []
    for run in range(runs):
        copies.append(raw_copy(s3, objs))
        print(f"[{name}] GET→PUT copy {run + 1}: {copies[-1]:.1f} MB/s", flush=True)
        results.append(direct_run(server, s3, objs, name, f"run {run + 1}", args))
    limits["raw_copy_mb_s"] = statistics.median(copies)
    limits["raw_copy_runs_mb_s"] = copies
    return direct_summary(name, objs, limits, results, copies)


def bench_small(server: SeaweedS3, objs: list[Obj], args: argparse.Namespace) -> dict:
    """``small``: the job through a proxy that adds ``--latency-ms`` to every request (a store
    across a network), against fetching the objects one by one through the same proxy."""
    name = "small"
    s3 = client(server.endpoint_url)
    total = sum(o.size for o in objs)
    proxy = LatencyProxy(server.port, args.latency_ms / 1000).start()
    proxied = client(proxy.endpoint_url)
    limits: dict = {"one_by_one_mb_s": one_by_one(proxied, objs)}
    runs = args.runs
    compression = "auto"
    results = []
    for run in range(runs):
        proxy.reset()
        proxy.take_bytes()
        target = f"zips/{name}.zip"
        measured = run_pipeline(
            proxy.endpoint_url, objs, target, compression, args.level, server=server
        )
        counts = proxy.reset()
        uploaded, downloaded = proxy.take_bytes()
        zip_bytes = verify(s3, objs, target)
        classes: dict[str, int] = {"a": 0, "b": 0, "c": 0}
        for shape, n in counts.items():
            classes[request_class(shape)] += n
        measured.update(
            input_mb_s=total / measured["wall"] / 1e6,
            output_mb_s=zip_bytes / measured["wall"] / 1e6,
            zip_bytes=zip_bytes,
            requests=dict(counts),
            request_classes=classes,
            uploaded_bytes=uploaded,
            downloaded_bytes=downloaded,
        )
        print(
            f"[{name}] run {run + 1}: {measured['wall']:.2f} s, "
            f"{measured['input_mb_s']:.1f} MB/s in, RSS {measured['peak_rss_mib']:.0f} MiB, "
            f"{sum(counts.values())} requests {classes}, uploaded {uploaded / total:.2%}, "
            f"downloaded {downloaded / total:.2%} of the input",
            flush=True,
        )
        results.append(measured)
    proxy.stop()
    parts = sum(n for k, n in results[0]["requests"].items() if "partNumber" in k)
    requests = sum(results[0]["requests"].values())
    summary = {
        "dataset": name,
        "objects": len(objs),
        "input_bytes": total,
        "runs": runs,
        "latency_ms": args.latency_ms,
        "limits": limits,
        "wall_s": median_range([r["wall"] for r in results]),
        "input_mb_s": median_range([r["input_mb_s"] for r in results]),
        "output_mb_s": median_range([r["output_mb_s"] for r in results]),
        "peak_rss_mib": median_range([r["peak_rss_mib"] for r in results]),
        "requests": results[0]["requests"],
        "requests_total": requests,
        "request_classes": results[0]["request_classes"],
        "request_budget": request_budget(name, objs, parts),
        "runs_detail": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summaries: list[dict]) -> str:
    rows = [
        "| dataset | figure | pipeline (median, min–max) | limit | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(ds, figure, value, limit, ratio, target, ok):
        rows.append(
            f"| {ds} | {figure} | {value} | {limit} | {ratio} | {target} | "
            f"{'PASS' if ok else 'FAIL'} |"
        )

    for s in summaries:
        name, inp = s["dataset"], s["input_mb_s"]
        fmt = f"{inp['median']:.1f} MB/s ({inp['min']:.1f}–{inp['max']:.1f})"
        if name == "small":
            base = s["limits"]["one_by_one_mb_s"]
            ratio = inp["median"] / base
            row(
                name,
                f"input @ {s['latency_ms']} ms latency",
                fmt,
                f"one by one {base:.2f} MB/s",
                f"{ratio:.1f}×",
                "≥ 15×",
                ratio >= 15,
            )
        elif name == "media":
            ceiling = s["limits"]["server_side_mb_s"]
            runs = ", ".join(f"{c:.0f}" for c in s["limits"].get("server_side_runs_mb_s", []))
            copy = s["limits"]["raw_copy_mb_s"]
            cold = s["runs_detail"][0]
            per_run = ", ".join(f"{r:.2f}" for r in s.get("per_run_ratio", []))
            row(
                name,
                "input throughput, cold CRC cache (no proxy in the path)",
                fmt,
                f"server-side ceiling {ceiling:.0f} (median of {runs}, each measured just before"
                f" a run) / GET→PUT copy {copy:.0f} MB/s",
                f"{inp['median'] / ceiling:.2f} × ceiling (per run: {per_run}), "
                f"{inp['median'] / copy:.2f} × copy",
                "≥ 0.8 × ceiling",
                inp["median"] >= 0.8 * ceiling,
            )
            jobs = [r["job_seconds"] for r in s["runs_detail"] if r.get("job_seconds")]
            if len(jobs) == len(s["runs_detail"]):
                job_in = [s["input_bytes"] / t / 1e6 for t in jobs]
                ceilings = s["limits"].get("server_side_runs_mb_s") or [ceiling] * len(jobs)
                ratios = ", ".join(f"{v / c:.2f}" for v, c in zip(job_in, ceilings, strict=True))
                rows.append(
                    f"| {name} | the job alone (its result marker's duration: no process "
                    f"start-up) | {statistics.median(job_in):.1f} MB/s ({min(job_in):.1f}–"
                    f"{max(job_in):.1f}) | the same ceilings | "
                    f"{statistics.median(job_in) / ceiling:.2f} × ceiling (per run: {ratios}) "
                    "| informational | |"
                )
            share = cold["uploaded_bytes"] / s["input_bytes"]
            row(name, "bytes uploaded ÷ input", f"{share:.2%}", "", "", "≤ 4 %", share <= 0.04)
            warm = s["warm_cache"]
            read = warm["downloaded_bytes"] / s["input_bytes"]
            row(
                name,
                "warm CRC cache: bytes read ÷ input",
                f"{read:.2%} ({warm['input_mb_s']:.0f} MB/s in)",
                "the photos alone are 1.9 %",
                "",
                "≤ 1 %",
                read <= 0.01,
            )
            rows.append(
                f"| {name} | B2 transactions by class, warm run (a, b, c; cost) | "
                + ", ".join(str(warm["request_classes"][c]) for c in "abc")
                + f"; ${cost_usd(warm['request_classes']):.6f} per job | | | | |"
            )
        else:
            copy = s["limits"]["raw_copy_mb_s"]
            ratio = inp["median"] / copy
            goal = 1.0 if name == "mixed" else 0.7  # mixed at the default level: issue 15
            copies = ", ".join(f"{c:.0f}" for c in s["limits"].get("raw_copy_runs_mb_s", []))
            per_run = ", ".join(f"{r:.2f}" for r in s.get("per_run_ratio", []))
            row(
                name,
                "input throughput (no proxy in the path)",
                fmt,
                f"raw GET {s['limits']['raw_get_mb_s']:.0f} / PUT "
                f"{s['limits']['raw_put_mb_s']:.0f} / GET→PUT copy {copy:.0f} MB/s (median of "
                f"{copies}, each measured just before a run)",
                f"{ratio:.2f} (per run: {per_run})",
                f"≥ {goal:.1f} × copy",
                ratio >= goal,
            )
        if "compressor" in s["limits"]:
            c = s["limits"]["compressor"]
            base = c["zlib6"]
            for level in (2, 6, 7, 8):
                mine = c[f"level{level}"]
                speed, size = mine["mb_s"] / base["mb_s"], mine["ratio"] / base["ratio"]
                row(
                    name,
                    f"deflate level {level}, one core (text half)",
                    f"{mine['mb_s']:.0f} MB/s, ratio {mine['ratio']:.3f}",
                    f"zlib-6 {base['mb_s']:.0f} MB/s, ratio {base['ratio']:.3f}",
                    f"{speed:.1f}× speed, size {size:.3f}×",
                    "≥ 3×, size ≤ 1.05×",
                    speed >= 3 and size <= 1.05,
                )
        rss = s["peak_rss_mib"]
        row(
            name,
            "peak RSS",
            f"{rss['median']:.0f} MiB ({rss['min']:.0f}–{rss['max']:.0f})",
            "",
            "",
            "≤ 150 MiB",
            rss["max"] <= 150,
        )
        allowed = 3 + int(s["wall_s"]["median"] // 10)
        budget = (
            f"inputs + parts + 10 (+ large deflated: 2 MiB ranges; large stored: HEAD, CRC, head)"
            f" = {s['request_budget']}"
        )
        if s.get("status_refreshes_included"):  # counted by the job: markers not told apart
            row(
                name,
                "storage requests (the job's count)",
                f"{s['requests_total']} (status refreshes included)",
                budget,
                "",
                f"≤ budget + the {allowed} status refreshes the contract allows (≥ 1 per 10 s)",
                s["requests_total"] <= s["request_budget"] + allowed,
            )
        else:
            markers = sum(n for k, n in s["requests"].items() if k.endswith("(status marker)"))
            refreshes = max(0, markers - 2)  # beyond the first and the final status marker
            row(
                name,
                "storage requests",
                f"{s['requests_total']} ({refreshes} status refreshes)",
                budget,
                "",
                "≤ budget, besides the status refreshes the contract asks for (≥ 1 per 10 s)",
                s["requests_total"] - refreshes <= s["request_budget"] and refreshes <= allowed,
            )
        if s.get("request_classes"):
            classes = s["request_classes"]
            rows.append(
                f"| {name} | B2 transactions by class (a, b, c; cost past the free daily calls) | "
                f"{classes['a']}, {classes['b']}, {classes['c']}; ${cost_usd(classes):.6f} per job"
                " | A free, B $0.004 / 10,000, C $0.004 / 1,000 | | | |"
            )
        cpu = [r["job_cpu_s"] for r in s["runs_detail"] if r.get("job_cpu_s") is not None]
        if cpu:
            server = [r.get("server_cpu_s") or 0.0 for r in s["runs_detail"]]
            bench = [r.get("bench_cpu_s") or 0.0 for r in s["runs_detail"]]
            per_mb = statistics.median(cpu) / (s["input_bytes"] / 1e6) * 1000
            rows.append(
                f"| {name} | CPU seconds of the job (its process, user + system) | "
                f"{statistics.median(cpu):.1f} s ({min(cpu):.1f}–{max(cpu):.1f}), "
                f"{per_mb:.1f} ms per input MB | the store server "
                f"{statistics.median(server):.1f} s, this process "
                f"({'the proxy, ' if name == 'small' else ''}polling) "
                f"{statistics.median(bench):.1f} s, over the same runs | | informational | |"
            )
        out = s["output_mb_s"]
        rows.append(
            f"| {name} | output, wall | {out['median']:.1f} MB/s, "
            f"{s['wall_s']['median']:.2f} s | | | | |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="small,mixed,large,media")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="tiny datasets, for a smoke test")
    parser.add_argument("--level", type=int, default=6, help="zip.level of the pipeline runs")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "seaweedfs", ignore_errors=True)  # a fresh store every run
    server = SeaweedS3(WORK / "seaweedfs").start(client)
    started = time.perf_counter()
    try:
        s3 = client(server.endpoint_url)
        if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=BUCKET)
        summaries = [bench_dataset(name, server, args) for name in args.datasets.split(",")]
    finally:
        server.stop()
    report = (
        f"# Benchmark results\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, `python -m bench.run --datasets {args.datasets} "
        f"--runs {args.runs} --level {args.level}{' --quick' if args.quick else ''}`, "
        f"{time.perf_counter() - started:.0f} s in all.\n\n{table(summaries)}\n"
    )
    (RESULTS / "latest.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
