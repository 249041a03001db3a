"""`make bench` deflate rows: every zip.level, one core and all cores, against zlib's level 6.

Two workloads, both the benchmark's CSV/log text (bench.run.text_bytes):

* ``member``: one text member of ``--member-mib`` (512 MiB), fed in 1 MiB pieces. Its source is
  a 32 MiB text block repeated: deflate only sees 32 KiB back, so the repetition changes no size,
  and the process stays small enough to measure its peak RSS (source block included);
* ``mixed-text``: the text members of the ``mixed`` dataset, the first ``--text-mib`` of them,
  each compressed as its own member.

For each level: MB/s of wall time (one core: no pool, every chunk in the calling thread; all
cores: a DeflatePool of os.cpu_count() threads), compressed size relative to zlib level 6 on the
same input, speed relative to zlib level 6 on one core. The machine may be shared: the load
average is printed with the results. Writes bench/results/deflate.json and deflate.md.

    python -m bench.deflate [--levels 1,2,4,5,6,7,8,9] [--member-mib 512] [--member-levels 1,6]
                            [--text-mib 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import zlib
from collections.abc import Callable, Iterator

from bench.run import RESULTS, dataset, text_bytes
from watcher.deflate import DEFAULT_LEVEL, LEVELS, ChunkedDeflater, DeflatePool

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
         "cpu_mb_s": raw / cpu / 1e6, "ratio": size / raw, "size_x": 1.0, "speed_x": 1.0}
    )  # fmt: skip
    print(f"[{name}] zlib-6: {base['mb_s']:.1f} MB/s, ratio {size / raw:.4f}", flush=True)
    with DeflatePool(workers) as pool:
        for level in levels:
            for cores, use in ((1, None), (workers, pool)):
                wall, cpu, size = timed(chunked(level, use), members)
                row = {
                    "workload": name,
                    "level": level,
                    "backend": "{} {}".format(*LEVELS[level]),
                    "cores": cores,
                    "mb_s": raw / wall / 1e6,
                    "cpu_mb_s": raw / cpu / 1e6,
                    "ratio": size / raw,
                    "size_x": size / base["size"],
                    "speed_x": raw / wall / 1e6 / base["mb_s"],
                }
                rows.append(row)
                print(
                    f"[{name}] level {level} ({row['backend']}), {cores} core(s): "
                    f"{row['mb_s']:.1f} MB/s ({row['speed_x']:.2f}x zlib-6), "
                    f"size {row['size_x']:.4f}x",
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | zip.level | library | cores | MB/s (wall) | MB/s per CPU second "
        "| × zlib-6 speed (wall) | size × zlib-6 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['level']} | {r.get('backend', 'zlib 6')} | {r['cores']} | "
            f"{r['mb_s']:.1f} | {r['cpu_mb_s']:.1f} | {r['speed_x']:.2f}× | {r['size_x']:.3f}× |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict], rss_mib: float) -> str:
    member = {(r["level"], r["cores"]): r for r in rows if r["workload"] == "member"}
    one = member.get((DEFAULT_LEVEL, 1))
    many = [r for (lvl, c), r in member.items() if lvl == DEFAULT_LEVEL and c > 1]
    if one is None or not many:
        return ""
    scale = many[0]["mb_s"] / one["mb_s"]
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
            f"default level {many[0]['cores']} cores ≥ 1.8× its one core (wall: needs idle cores)",
            f"{scale:.2f}×",
            scale >= 1.8,
        ),
        ("peak RSS ≤ 150 MiB (32 MiB source included)", f"{rss_mib:.0f} MiB", rss_mib <= 150),
    ]
    lines = ["| target (512 MiB member) | measured | result |", "| --- | --- | --- |"]
    lines += [f"| {what} | {got} | {'PASS' if ok else 'FAIL'} |" for what, got, ok in checks]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,2,4,5,6,7,8,9")
    parser.add_argument("--member-mib", type=int, default=512)
    parser.add_argument("--member-levels", default="1,6", help="levels run on the big member")
    parser.add_argument("--text-mib", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    started = time.perf_counter()

    size = args.member_mib * MiB
    block = text_bytes(4242, min(BLOCK, size))
    member_levels = [int(n) for n in args.member_levels.split(",")]
    reset_peak_rss()  # generating the text peaks far above what compressing it takes
    rows = workload("member", [member_pieces(size, block)], size, member_levels, args.workers)
    rss_mib = peak_rss_mib()
    del block

    texts, total = [], 0
    for obj in dataset("mixed", False):
        if obj.kind == "text" and total < args.text_mib * MiB:
            body = text_bytes(obj.seed, min(obj.size, args.text_mib * MiB - total))
            texts.append(member_pieces(len(body), body))
            total += len(body)
    rows += workload("mixed-text", texts, total, levels, args.workers)

    load = os.getloadavg()
    command = (
        f"python -m bench.deflate --levels {args.levels} --member-mib {args.member_mib} "
        f"--member-levels {args.member_levels} "
        f"--text-mib {args.text_mib} --workers {args.workers}"
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
        f"does alone.\n\n"
        f"{table(rows)}\n\n{verdict(rows, rss_mib)}\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deflate.json").write_text(json.dumps({"rows": rows, "rss_mib": rss_mib}, indent=2))
    (RESULTS / "deflate.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
