"""The process pools against Numba's threads on the same number of cores, in one run.

Run from the repository root::

    python benchmarks/pool_scaling.py                  # N = 10 000 and 20 000, 2 workers
    python benchmarks/pool_scaling.py --n 20000 --workers 2 --rounds 7 --json out.json

Every contender computes each pair once with the same symmetric pair kernel; they differ in
the parallel mechanism only. For each N (``--n``, several allowed) it times, interleaved
round by round so that a load change on a shared machine hits every contender alike:

* ``numba_parallel`` on ``--workers`` Numba threads (``numba.set_num_threads``): the
  reference;
* ``multiprocessing``, ``joblib`` with processes and ``joblib`` with threads, each with
  ``--workers`` workers;

and prints each pool's time and its throughput ratio to ``numba_parallel`` (``t_numba /
t_pool``; best against best, and the median of the per-round ratios; the goal is at least
0.9). Every timed call of the rounds comes after ``--settle`` seconds of sleep (default
0.05): Numba's OpenMP threads keep spinning for some milliseconds after a parallel region,
so back to back (``--settle 0``) the contender timed right after ``numba_parallel`` finds
one core still taken. Measured on the 2-core VM (2026-12-01, N = 10 000, four 2-process
pools differing only in how they wake their workers, timed back to back after
``numba_parallel``): 0.86x for the pool timed first, 0.95-0.97x for the three after it.
Then the per-call floor: the median call time at N = 1 000 (``--small-n``) and at N = 2
(what joblib's 10 ms result polling costs), and the pool start-up time (from no pool until
every worker holds the loaded kernels, Numba's cache on disk), best of ``--starts``.

The header names the CPU model, SIMD width, usable cores, load and date: quote figures with
it. Not an asv benchmark: asv collects only ``time_*``/``track_*``/... names, none here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

POOLS = [  # (label, backend, options)
    ("multiprocessing", "multiprocessing", {}),
    ("joblib processes", "joblib", {"prefer": "processes"}),
    ("joblib threads", "joblib", {"prefer": "threads"}),
]
REFERENCE = "numba_parallel"
SETTLE = 0.05  #: seconds of sleep before every timed call of the interleaved rounds


def _clock(fn, settle: float = 0.0) -> float:
    if settle > 0.0:
        time.sleep(settle)  # let the previous contender's threads go idle first
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def machine() -> str:
    """CPU model, widest SIMD unit and usable cores (from /proc/cpuinfo where it exists)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SIMD unknown"
    from backends._pools import usable_cores

    return f"{model}, {simd}, {usable_cores()} usable cores"


def _pools_here():
    import backends

    out = []
    for label, name, opts in POOLS:
        reason = backends.unavailable_reason(name)
        if reason is None:
            out.append((label, backends.get(name), opts))
        else:
            print(f"skipping {label}: {reason}", file=sys.stderr)
    return out


def measure(sizes, workers, rounds, small_n, starts, chunks=None, settle=SETTLE) -> dict:
    """Run every measurement; return a JSON-able dict of seconds and ratios."""
    import numba

    import backends
    from backends import benchmark_system, numba_parallel

    numba.set_num_threads(workers)
    pools = _pools_here()
    knobs = {"n_workers": workers, "chunks": chunks}
    result = {"workers": workers, "rounds": rounds, "settle": settle, "sizes": {}, "pools": {}}
    for label, b, opts in pools:
        b.module.start(n_workers=workers, **opts)
        result["pools"][label] = {"workers": b.module.workers(workers)}

    for n in sizes:
        m, x = benchmark_system(n)
        ref_out = numba_parallel.accel(m, x)  # compiled, or loaded from the cache
        entry = {"reference": [], "pools": {}}
        for label, b, opts in pools:
            err = backends.relative_error(b.accel(m, x, **knobs, **opts), ref_out)
            entry["pools"][label] = {"error_vs_reference": err, "times": []}
        for _ in range(rounds):  # interleaved rounds
            t = _clock(lambda m=m, x=x: numba_parallel.accel(m, x), settle)
            entry["reference"].append(t)
            for label, b, opts in pools:
                t = _clock(lambda b=b, opts=opts, m=m, x=x: b.accel(m, x, **knobs, **opts), settle)
                entry["pools"][label]["times"].append(t)
        best_ref = min(entry["reference"])
        entry["reference_rate"] = backends.interactions(n) / best_ref
        for r in entry["pools"].values():
            r["best"] = min(r["times"])
            r["ratio"] = best_ref / r["best"]
            r["median_ratio"] = statistics.median(
                a / b for a, b in zip(entry["reference"], r["times"], strict=True)
            )
        result["sizes"][str(n)] = entry

    # the per-call floor at small N
    ms, xs = benchmark_system(small_n, seed=1)
    m2, x2 = benchmark_system(2, seed=2)
    result["reference_small"] = statistics.median(
        _clock(lambda: numba_parallel.accel(ms, xs)) for _ in range(21)
    )
    for label, b, opts in pools:
        small = [_clock(lambda b=b, opts=opts: b.accel(ms, xs, **knobs, **opts)) for _ in range(21)]
        tiny = [_clock(lambda b=b, opts=opts: b.accel(m2, x2, **knobs, **opts)) for _ in range(21)]
        result["pools"][label]["small_call"] = statistics.median(small[1:])
        result["pools"][label]["tiny_call"] = statistics.median(tiny[1:])

    # pool start-up: close, then start() until every worker has loaded the kernels
    for label, b, opts in pools:
        ts = []
        for _ in range(starts):
            b.close()
            ts.append(_clock(lambda b=b, opts=opts: b.module.start(n_workers=workers, **opts)))
        result["pools"][label]["startup"] = ts
        b.close()
    return result


def report(res: dict, small_n: int) -> str:
    """Format the measurements as markdown tables."""
    w = res["workers"]
    lines = [
        f"{REFERENCE} on {w} threads against each pool with {w} workers; best of "
        f"{res['rounds']} interleaved rounds, {res['settle'] * 1e3:.0f} ms of sleep before each "
        f"timed call; ratio = {REFERENCE} time / pool time (>= 0.9: the goal)",
        "",
        "| N | "
        + REFERENCE
        + " | pool | time | ratio best (median) | error vs "
        + REFERENCE
        + " |",
        "|---|---|---|---|---|---|",
    ]
    for n, entry in res["sizes"].items():
        ref = min(entry["reference"])
        rate = entry["reference_rate"] / 1e9
        for label, r in entry["pools"].items():
            lines.append(
                f"| {int(n):,} | {ref * 1e3:.1f} ms ({rate:.2f} G/s) | {label} | "
                f"{r['best'] * 1e3:.1f} ms | {r['ratio']:.2f} ({r['median_ratio']:.2f}) | "
                f"{r['error_vs_reference']:.1e} |"
            )
    lines += [
        "",
        f"| pool | call at N = {small_n:,} ({REFERENCE}: {res['reference_small'] * 1e3:.2f} ms) "
        "| call at N = 2 | start-up best / median |",
        "|---|---|---|---|",
    ]
    for label, r in res["pools"].items():
        lines.append(
            f"| {label} | {r['small_call'] * 1e3:.2f} ms | {r['tiny_call'] * 1e3:.2f} ms | "
            f"{min(r['startup']):.2f} s / {statistics.median(r['startup']):.2f} s |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 20_000], help="sizes N")
    p.add_argument("--workers", type=int, default=2, help="workers and Numba threads")
    p.add_argument("--chunks", type=int, default=None, help="lanes per call (None: one per worker)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per N")
    p.add_argument("--small-n", type=int, default=1000, help="N of the per-call floor")
    p.add_argument("--starts", type=int, default=3, help="pool start-ups timed")
    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE,
        help="seconds of sleep before every timed call of the rounds (0: back to back)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{machine()}, load average {os.getloadavg()[0]:.1f}, "
        f"Python {platform.python_version()}, {now}"
    )
    res = measure(
        args.n, args.workers, args.rounds, args.small_n, args.starts, args.chunks, args.settle
    )
    res["machine"] = machine()
    res["date"] = now
    print(report(res, args.small_n))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's backends
    sys.exit(main())
