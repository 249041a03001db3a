"""`make bench` deflate rows: every zip.level, one core and all cores, against zlib's level 6.

Two workloads, both the benchmark's CSV/log text (bench.run.text_bytes):

* ``member``: one text member of ``--member-mib`` (512 MiB), fed in 1 MiB pieces. Its source is
  a 32 MiB text block repeated: deflate only sees 32 KiB back, so the repetition changes no size,
  and the process stays small enough to measure its peak RSS (source block included);
* ``mixed-text``: the text members of the ``mixed`` dataset, the first ``--text-mib`` of them,
  each compressed as its own member.

For each level: MB/s of wall time (one core: no pool, every chunk in the calling thread; all
cores: a DeflatePool of os.cpu_count() threads), MB/s per CPU second, CPU seconds per wall second
(how many cores really worked), compressed size relative to zlib level 6 on the same input, speed
relative to zlib level 6 on one core. The machine may be shared: the load average is printed
with the results.

Two more sections justify the level table: ``candidates`` (one core, per CPU second, on the
first ``--candidate-mib`` of the member's text: zlib-ng 3-5, ISA-L 3 and libdeflate 2-6, each as
one stream and chunked, libdeflate also at other chunk sizes; best of interleaved rounds) and
``gil`` (each library compresses 16 MiB in a thread while this one sleeps 20 ms with forced GIL
switches off: this thread wakes during the call only if the call released the GIL).
Writes bench/results/deflate.json and deflate.md.

    python -m bench.deflate [--levels 0,1,2,3,4,5,6,7,8,9] [--member-mib 512]
                            [--member-levels 1,6] [--text-mib 128] [--candidate-mib 32]
                            [--candidate-rounds 3] [--scaling-repeats 3] [--wait-idle 30]
                            [--scaling-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import deflate as libdeflate
from isal import isal_zlib
from zlib_ng import zlib_ng

from bench.run import RESULTS, dataset, text_bytes
from watcher import deflate as wd
from watcher.deflate import (
    DEFAULT_LEVEL,
    WINDOW,
    ChunkedDeflater,
    DeflatePool,
    deflate_backend,
)

MiB = 1024 * 1024
BLOCK = 32 * MiB


def member_pieces(size: int, block: bytes) -> Callable[[], Iterator[bytes]]:
    def pieces() -> Iterator[bytes]:
        for start in range(0, size, MiB):
            offset = start % len(block)
            yield block[offset : offset + min(MiB, size - start)]

    return pieces


def zlib6(members: list[Callable[[], Iterator[bytes]]]) -> int:
    total = 0
    for pieces in members:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        total += sum(len(comp.compress(p)) for p in pieces()) + len(comp.flush())
    return total


def chunked(level: int, pool: DeflatePool | None):
    def run(members: list[Callable[[], Iterator[bytes]]]) -> int:
        total = 0
        for pieces in members:
            deflater = ChunkedDeflater(level, pool)
            total += sum(len(deflater.feed(p)) for p in pieces()) + len(deflater.finish())
        return total

    return run


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: VmHWM starts again from the current RSS
    except OSError:
        pass


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- candidates: what each library and chunking costs, one core -----------------------------


def stream(library, level: int) -> Callable[[bytes], int]:
    def run(data: bytes) -> int:
        comp = library.compressobj(level, library.DEFLATED, -15)
        size = sum(len(comp.compress(data[i : i + MiB])) for i in range(0, len(data), MiB))
        return size + len(comp.flush())

    return run


def primed(library, level: int, chunk: int = MiB) -> Callable[[bytes], int]:
    """pigz: chunks primed with the 32 KiB before them, each ended by a sync flush."""

    def run(data: bytes) -> int:
        size = 0
        for i in range(0, len(data), chunk):
            zdict = data[max(0, i - WINDOW) : i]
            comp = (
                library.compressobj(level, library.DEFLATED, -15, 8, 0, zdict)
                if zdict
                else library.compressobj(level, library.DEFLATED, -15)
            )
            size += len(comp.compress(data[i : i + chunk]) + comp.flush(zlib.Z_SYNC_FLUSH))
        return size

    return run


def libdeflate_chunks(level: int, chunk: int = MiB, stitch: bool = True) -> Callable:
    """libdeflate one-shot per chunk; stitched (scan + BFINAL cleared + sync flush) or not
    (then not a valid single stream: the cost of the scan is the difference)."""

    def run(data: bytes) -> int:
        size = 0
        for i in range(0, len(data), chunk):
            piece = libdeflate.deflate_compress(data[i : i + chunk], level)
            if stitch:
                assert wd._unfinal(piece, len(data[i : i + chunk]))
            size += len(piece)
        return size

    return run


def candidates(data: bytes, rounds: int) -> list[dict]:
    todo: list[tuple[str, Callable[[bytes], int]]] = [("zlib 6, one stream", stream(zlib, 6))]
    for level in (3, 4, 5):
        todo.append((f"zlib-ng {level}, one stream", stream(zlib_ng, level)))
        todo.append((f"zlib-ng {level}, 1 MiB primed chunks", primed(zlib_ng, level)))
    todo.append(("ISA-L 3, one stream", stream(isal_zlib, 3)))
    todo.append(("ISA-L 3, 1 MiB primed chunks", primed(isal_zlib, 3)))
    for level in (2, 3, 4, 5, 6):
        name = f"libdeflate {level}, 1 MiB chunks"
        todo.append((f"{name}, not stitched", libdeflate_chunks(level, MiB, False)))
        todo.append((f"{name}, stitched", libdeflate_chunks(level)))
    for chunk in (256 * 1024, 4 * MiB):
        name = f"libdeflate 4, {chunk // 1024} KiB chunks, stitched"
        todo.append((name, libdeflate_chunks(4, chunk)))
    best: dict[str, tuple[float, int]] = {}
    for _ in range(max(1, rounds)):  # interleaved rounds, the least CPU time of each
        for name, fn in todo:
            cpu = time.process_time()
            size = fn(data)
            cpu = time.process_time() - cpu
            best[name] = min(best.get(name, (cpu, size)), (cpu, size))
    rows = []
    base_cpu, base_size = best[todo[0][0]]
    for name, _ in todo:
        cpu, size = best[name]
        rows.append(
            {
                "candidate": name,
                "cpu_mb_s": len(data) / cpu / 1e6,
                "size": size,
                "speed_x": base_cpu / cpu,
                "size_x": size / base_size,
            }
        )
        print(
            f"[candidates] {name}: {rows[-1]['cpu_mb_s']:.1f} MB/s per CPU second, "
            f"{rows[-1]['speed_x']:.2f}x zlib-6, size {rows[-1]['size_x']:.4f}x",
            flush=True,
        )
    return rows


def candidates_table(rows: list[dict]) -> str:
    lines = ["| candidate (one core) | MB/s per CPU second | × zlib-6 speed | size × zlib-6 |"]
    lines.append("| --- | --- | --- | --- |")
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['cpu_mb_s']:.1f} | {r['speed_x']:.2f}× | {r['size_x']:.4f}× |"
        )
    return "\n".join(lines)


# -- the GIL: does each compressor let another thread run? ----------------------------------


def gil_probe() -> list[dict]:
    """Each call runs in a thread while this one sleeps 20 ms, with no forced GIL switches: if
    the call releases the GIL this thread wakes at once, if it holds it this thread waits for
    the call to end (the sorted() control)."""
    data = text_bytes(77, 16 * MiB)
    unstitched = libdeflate.deflate_compress(data, 4)
    shuffled = list(range(2_000_000))
    random.Random(1).shuffle(shuffled)
    calls = {
        "ISA-L 3 (zip.level 3)": lambda: wd.deflate_chunk(3, data, b"", False),
        "zlib-ng 5": lambda: zlib_ng.compressobj(5, zlib.DEFLATED, -15).compress(data),
        "libdeflate 4, compress alone": lambda: libdeflate.deflate_compress(data, 4),
        "zlib-ng inflate(Z_BLOCK) scan alone (ctypes)": lambda: wd._scan(unstitched, len(data)),
        f"zip.level {DEFAULT_LEVEL}: libdeflate 4 + scan (deflate_chunk)": (
            lambda: wd.deflate_chunk(DEFAULT_LEVEL, data, b"", False)
        ),
        "control: sorted() of 2M ints (holds the GIL)": lambda: sorted(shuffled),
    }
    rows = []
    interval = sys.getswitchinterval()
    for name, call in calls.items():
        times: dict[str, float] = {}

        def work(call=call, times=times) -> None:
            times["start"] = time.perf_counter()
            call()
            times["end"] = time.perf_counter()

        sys.setswitchinterval(100.0)
        try:
            thread = threading.Thread(target=work)
            thread.start()
            time.sleep(0.02)
            resumed = time.perf_counter()
            thread.join()
        finally:
            sys.setswitchinterval(interval)
        row = {
            "call": name,
            "call_ms": (times["end"] - times["start"]) * 1000,
            "resumed_ms": (resumed - times["start"]) * 1000,
        }
        row["released"] = row["resumed_ms"] < row["call_ms"]
        rows.append(row)
        print(f"[gil] {name}: call {row['call_ms']:.0f} ms, other thread resumed after "
              f"{row['resumed_ms']:.0f} ms", flush=True)  # fmt: skip
    return rows


def gil_table(rows: list[dict]) -> str:
    lines = [
        "| call on 16 MiB of text, in a thread | call (ms) | a thread sleeping 20 ms resumed "
        "after (ms) | GIL released |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        released = "yes" if r["released"] else "no"
        lines.append(f"| {r['call']} | {r['call_ms']:.0f} | {r['resumed_ms']:.0f} | {released} |")
    return "\n".join(lines)


# -- two-core scaling of one member: needs idle cores, so wait for them -----------------------


def idle_cores(seconds: float = 2.0) -> float:
    """Cores idle over the next ``seconds`` (/proc/stat), for the whole machine."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(n) for n in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    idle, total = snap()
    time.sleep(seconds)
    idle2, total2 = snap()
    return (idle2 - idle) / max(1, total2 - total) * (os.cpu_count() or 1)


@contextlib.contextmanager
def per_thread() -> Iterator[dict[str, list[float]]]:
    """{thread name: [chunks, CPU seconds]} of the chunks compressed meanwhile."""
    counts: dict[str, list[float]] = {}
    lock = threading.Lock()
    real = wd.deflate_chunk

    def counted(*args):  # the pool and the deflater look the name up at each call
        start = time.thread_time()
        try:
            return real(*args)
        finally:
            with lock:
                mine = counts.setdefault(threading.current_thread().name, [0, 0.0])
                mine[0] += 1
                mine[1] += time.thread_time() - start

    wd.deflate_chunk = counted
    try:
        yield counts
    finally:
        wd.deflate_chunk = real


def scaling(member, size: int, workers: int, repeats: int, wait: float) -> list[dict]:
    """The default level on the member, one core then ``workers``, ``repeats`` times; before
    each pair, wait up to ``wait`` seconds for ``workers`` - 0.3 idle cores."""
    rows = []
    with DeflatePool(workers) as pool:
        for n in range(repeats):
            deadline, idle = time.monotonic() + wait, idle_cores()
            while idle < workers - 0.3 and time.monotonic() < deadline:
                idle = idle_cores()
            pair: dict = {"idle_before": idle}
            for cores, use in ((1, None), (workers, pool)):
                with per_thread() as threads:
                    wall, cpu, _ = timed(chunked(DEFAULT_LEVEL, use), [member])
                pair[cores] = {"mb_s": size / wall / 1e6, "busy": cpu / wall, "threads": threads}
            pair["scale"] = pair[workers]["mb_s"] / pair[1]["mb_s"]
            rows.append(pair)
            print(
                f"[scaling {n + 1}] idle before {idle:.2f} cores: 1 core "
                f"{pair[1]['mb_s']:.1f} MB/s ({pair[1]['busy']:.2f} CPU s/s), {workers} cores "
                f"{pair[workers]['mb_s']:.1f} MB/s ({pair[workers]['busy']:.2f} CPU s/s): "
                f"{pair['scale']:.2f}x",
                flush=True,
            )
    return rows


def scaling_table(rows: list[dict], workers: int) -> str:
    lines = [
        f"| pair | idle cores before | 1 core MB/s (CPU s per s) | {workers} cores MB/s "
        f"(CPU s per s) | scaling | {workers}-core run: chunks and CPU time by thread |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, r in enumerate(rows, 1):
        lines.append(
            f"| {n} | {r['idle_before']:.2f} | {r[1]['mb_s']:.1f} ({r[1]['busy']:.2f}) | "
            f"{r[workers]['mb_s']:.1f} ({r[workers]['busy']:.2f}) | {r['scale']:.2f}× | "
            + ", ".join(
                f"{name}: {n:.0f} chunks, {cpu:.1f} CPU s"
                for name, (n, cpu) in sorted(r[workers]["threads"].items())
            )
            + " |"
        )
    return "\n".join(lines)


def timed(fn, members) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    size = fn(members)
    return time.perf_counter() - wall, time.process_time() - cpu, size


def workload(name: str, members, raw: int, levels: list[int], workers: int) -> list[dict]:
    rows = []
    wall, cpu, size = timed(zlib6, members)
    base = {"mb_s": raw / wall / 1e6, "size": size}
    rows.append(
        {"workload": name, "level": "zlib-6", "cores": 1, "mb_s": base["mb_s"],
         "cpu_mb_s": raw / cpu / 1e6, "busy": cpu / wall, "ratio": size / raw, "size_x": 1.0,
         "speed_x": 1.0}
    )  # fmt: skip
    print(f"[{name}] zlib-6: {base['mb_s']:.1f} MB/s, ratio {size / raw:.4f}", flush=True)
    with DeflatePool(workers) as pool:
        for level in levels:
            for cores, use in ((1, None), (workers, pool)):
                wall, cpu, size = timed(chunked(level, use), members)
                row = {
                    "workload": name,
                    "level": level,
                    "backend": "{} {}".format(*deflate_backend(level)),
                    "cores": cores,
                    "mb_s": raw / wall / 1e6,
                    "cpu_mb_s": raw / cpu / 1e6,
                    "busy": cpu / wall,
                    "ratio": size / raw,
                    "size_x": size / base["size"],
                    "speed_x": raw / wall / 1e6 / base["mb_s"],
                }
                rows.append(row)
                print(
                    f"[{name}] level {level} ({row['backend']}), {cores} core(s): "
                    f"{row['mb_s']:.1f} MB/s ({row['speed_x']:.2f}x zlib-6), "
                    f"{row['busy']:.2f} CPU s per s, "
                    f"size {row['size_x']:.4f}x",
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | zip.level | library | cores | MB/s (wall) | MB/s per CPU second "
        "| CPU s per wall s | × zlib-6 speed (wall) | × zlib-6 speed (CPU) | size × zlib-6 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    bases = {r["workload"]: r for r in rows if r["level"] == "zlib-6"}
    for r in rows:
        cpu_x = r["cpu_mb_s"] / bases[r["workload"]]["cpu_mb_s"]
        lines.append(
            f"| {r['workload']} | {r['level']} | {r.get('backend', 'zlib 6')} | {r['cores']} | "
            f"{r['mb_s']:.1f} | {r['cpu_mb_s']:.1f} | {r['busy']:.2f} | {r['speed_x']:.2f}× | "
            f"{cpu_x:.2f}× | {r['size_x']:.3f}× |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict], rss_mib: float, pairs: list[dict] | None = None) -> str:
    member = {(r["level"], r["cores"]): r for r in rows if r["workload"] == "member"}
    one = member.get((DEFAULT_LEVEL, 1))
    many = [r for (lvl, c), r in member.items() if lvl == DEFAULT_LEVEL and c > 1]
    if one is None or not many:
        return ""
    scale = many[0]["mb_s"] / one["mb_s"]
    scaled = f"{scale:.2f}× ({many[0]['busy']:.2f})"
    if pairs:
        scales = sorted(p["scale"] for p in pairs)
        scale = scales[len(scales) // 2]
        scaled += f"; scaling pairs: median {scale:.2f}×, best {scales[-1]:.2f}×"
    base = next(r for r in rows if r["workload"] == "member" and r["level"] == "zlib-6")
    cpu_speed = one["cpu_mb_s"] / base["cpu_mb_s"]
    checks = [
        ("default level size ≤ 1.05× zlib-6", f"{one['size_x']:.3f}×", one["size_x"] <= 1.05),
        (
            "default level one core ≥ 3× zlib-6 (per CPU second; wall in brackets)",
            f"{cpu_speed:.2f}× ({one['speed_x']:.2f}×)",
            cpu_speed >= 3,
        ),
        (
            f"default level {many[0]['cores']} cores ≥ 1.8× its one core (wall: needs idle cores; "
            f"CPU seconds per wall second of the {many[0]['cores']}-core run in brackets)",
            scaled,
            scale >= 1.8,
        ),
        ("peak RSS ≤ 150 MiB (32 MiB source included)", f"{rss_mib:.0f} MiB", rss_mib <= 150),
    ]
    lines = ["| target (512 MiB member) | measured | result |", "| --- | --- | --- |"]
    lines += [f"| {what} | {got} | {'PASS' if ok else 'FAIL'} |" for what, got, ok in checks]
    return "\n".join(lines)


def scaling_only(args: argparse.Namespace, member, size: int) -> int:
    load = os.getloadavg()
    pairs = scaling(member, size, args.workers, args.scaling_repeats, args.wait_idle)
    after = os.getloadavg()
    scales = sorted(p["scale"] for p in pairs)
    report = (
        f"# Deflate: two cores on one {args.member_mib} MiB text member, zip.level "
        f"{DEFAULT_LEVEL}\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average (1 min) {load[0]:.1f} before, {after[0]:.1f} "
        f"after, niceness {os.nice(0)}, `python -m bench.deflate --scaling-only --member-mib "
        f"{args.member_mib} --scaling-repeats {args.scaling_repeats} --wait-idle "
        f"{args.wait_idle:g} --workers {args.workers}`. Each pair: one core (no pool), then a "
        f"pool of {args.workers}, after waiting up to {args.wait_idle:g} s for "
        f"{args.workers - 0.3:g} idle cores.\n\n{scaling_table(pairs, args.workers)}\n\n"
        f"Median {scales[len(scales) // 2]:.2f}×, best {scales[-1]:.2f}× (target ≥ 1.8×).\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deflate.scaling.json").write_text(
        json.dumps({"pairs": pairs, "niceness": os.nice(0)}, indent=2)
    )
    (RESULTS / "deflate.scaling.md").write_text(report)
    print(report)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--member-mib", type=int, default=512)
    parser.add_argument("--member-levels", default="1,6", help="levels run on the big member")
    parser.add_argument("--text-mib", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--candidate-mib", type=int, default=32, help="0: no candidates")
    parser.add_argument("--candidate-rounds", type=int, default=3, help="best of, per candidate")
    parser.add_argument("--scaling-repeats", type=int, default=3, help="0: no scaling pairs")
    parser.add_argument("--wait-idle", type=float, default=30, help="seconds, per pair")
    parser.add_argument("--out", default="deflate", help="bench/results/OUT.md and .json")
    parser.add_argument(
        "--scaling-only",
        action="store_true",
        help="only the pairs; results in deflate.scaling.md/json (run it under `nice -n -10` to "
        "get the cores of a shared machine, and say so)",
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    started = time.perf_counter()

    size = args.member_mib * MiB
    block = text_bytes(4242, min(BLOCK, size))
    if args.scaling_only:
        return scaling_only(args, member_pieces(size, block), size)
    member_levels = [int(n) for n in args.member_levels.split(",")]
    load_before = os.getloadavg()
    reset_peak_rss()  # generating the text peaks far above what compressing it takes
    rows = workload("member", [member_pieces(size, block)], size, member_levels, args.workers)
    rss_mib = peak_rss_mib()
    load_member = (load_before, os.getloadavg())
    pairs = scaling(
        member_pieces(size, block), size, args.workers, args.scaling_repeats, args.wait_idle
    )
    sample = block[: args.candidate_mib * MiB]  # after the member: its RSS is the member's alone
    tried = candidates(sample, args.candidate_rounds) if args.candidate_mib else []
    del block, sample
    gil = gil_probe()

    texts, total = [], 0
    for obj in dataset("mixed", False):
        if obj.kind == "text" and total < args.text_mib * MiB:
            body = text_bytes(obj.seed, min(obj.size, args.text_mib * MiB - total))
            texts.append(member_pieces(len(body), body))
            total += len(body)
    if total:
        rows += workload("mixed-text", texts, total, levels, args.workers)

    load = os.getloadavg()
    command = (
        f"python -m bench.deflate --levels {args.levels} --member-mib {args.member_mib} "
        f"--member-levels {args.member_levels} "
        f"--text-mib {args.text_mib} --workers {args.workers} --candidate-mib {args.candidate_mib} "
        f"--candidate-rounds {args.candidate_rounds} --scaling-repeats {args.scaling_repeats} "
        f"--wait-idle {args.wait_idle:g}" + (f" --out {args.out}" if args.out != "deflate" else "")
    )
    report = (
        f"# Deflate levels\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(the machine is shared: wall-time rates are noisy, sizes are exact), `{command}`, "
        f"{time.perf_counter() - started:.0f} s in all. `member`: one {args.member_mib} MiB text "
        f"member; `mixed-text`: the first {total / MiB:.0f} MiB of the `mixed` dataset's text "
        f"members. Peak RSS of this process while it compressed the member (the 32 MiB source "
        f"block and the bench's imports included): {rss_mib:.0f} MiB. Wall-time MB/s counts "
        f"whatever else the machine runs; MB/s per CPU second does not, and shows what one core "
        f"does alone; CPU s per wall s shows how many cores the run really had. Load average "
        f"(1 min) before / after the member rows: {load_member[0][0]:.1f} / "
        f"{load_member[1][0]:.1f}.\n\n"
        f"{table(rows)}\n\n{verdict(rows, rss_mib, pairs)}\n\n"
        f"## Two cores on one {args.member_mib} MiB member, zip.level {DEFAULT_LEVEL}\n\n"
        f"Each pair: one core, then a pool of {args.workers}, after waiting up to "
        f"{args.wait_idle:g} s for {args.workers - 0.3:g} idle cores (/proc/stat over 2 s). "
        f"Wall-time scaling needs the cores free; CPU s per s shows how many it had.\n\n"
        f"{scaling_table(pairs, args.workers) if pairs else '(not run)'}\n\n"
        f"## Candidates, one core, the first {args.candidate_mib} MiB of the member's text\n\n"
        f"Best of {args.candidate_rounds} interleaved rounds (least CPU time) of each.\n\n"
        f"{candidates_table(tried) if tried else '(not run)'}\n\n"
        f"## The GIL\n\n{gil_table(gil)}\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps(
            {"rows": rows, "rss_mib": rss_mib, "candidates": tried, "gil": gil, "scaling": pairs},
            indent=2,
        )
    )
    (RESULTS / f"{args.out}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
