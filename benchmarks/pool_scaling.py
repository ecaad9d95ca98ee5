"""Scaling of the process-pool backends against the serial row kernel, in one run.

Run from the repository root::

    python benchmarks/pool_scaling.py                 # N = 20 000, 2 workers, 5 rounds
    python benchmarks/pool_scaling.py --n 20000 --workers 2 --rounds 7 --json out.json

For each pool (``multiprocessing``; ``joblib`` with processes; ``joblib`` with threads) it
reports:

* throughput at N (``--n``) against ``accel_block`` on all rows in this process on one
  thread (the same compiled kernel every worker runs), timed interleaved round by round so
  that a load change on a shared machine hits every contender alike; speed-up = serial
  time / pool time (best of the rounds), parallel efficiency = speed-up / workers;
* the per-call overhead at ``--overhead-n`` (default 1 000): median call time minus the
  ideal ``serial / workers`` compute time, and the median call time at N = 2;
* the CPU work ratio: serial CPU time / CPU time of the pool's workers and this process
  during the calls (1.0: the pool adds no work; unlike the speed-up, it does not depend on
  how much of the machine other programs leave us);
* the pool start-up time: ``start()`` from no pool to every worker holding the loaded
  kernel (Numba's cache already on disk), best and median of ``--starts`` starts.

Not an asv benchmark: asv collects only ``time_*``/``track_*``/... names, none here.
"""

from __future__ import annotations

import argparse
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


def _clock(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_seconds(pids) -> float:
    """User + system CPU time of this process (all threads) and of ``pids``, from /proc."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


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


def measure(n, workers, rounds, overhead_n, starts, chunks=None) -> dict:
    """Run every measurement; return a JSON-able dict of seconds and ratios."""
    import backends
    from backends import benchmark_system
    from backends.numba_parallel import accel_block

    pools = _pools_here()
    knobs = {"n_workers": workers, "chunks": chunks}
    m, x = benchmark_system(n)
    accel_block(x[:2], m[:2], x[:2], 1.0, 0.0)  # compile or load the kernel here too
    serial_out = accel_block(x, m, x, 1.0, 0.0)

    result = {"n": n, "workers": workers, "rounds": rounds, "pools": {}}
    # warm every pool (start + one call at N), check agreement with the serial kernel
    pids = {}
    for label, b, opts in pools:
        started = b.module.start(n_workers=workers, **opts)
        pids[label] = [p for p in started if p != os.getpid()]
        err = backends.relative_error(b.accel(m, x, **knobs, **opts), serial_out)
        result["pools"][label] = {"error_vs_serial": err, "times": [], "cpu": []}

    serial, serial_cpu = [], []
    for _ in range(rounds):  # interleaved rounds
        c0 = time.thread_time()
        serial.append(_clock(lambda: accel_block(x, m, x, 1.0, 0.0)))
        serial_cpu.append(time.thread_time() - c0)
        for label, b, opts in pools:
            c0 = _cpu_seconds(pids[label])
            t = _clock(lambda b=b, opts=opts: b.accel(m, x, **knobs, **opts))
            result["pools"][label]["cpu"].append(_cpu_seconds(pids[label]) - c0)
            result["pools"][label]["times"].append(t)
    result["serial_times"] = serial
    result["serial_cpu"] = serial_cpu
    best_serial = min(serial)
    result["serial_rate"] = backends.interactions(n) / best_serial

    # per-call overhead at a small N
    ms, xs = benchmark_system(overhead_n, seed=1)
    m2, x2 = benchmark_system(2, seed=2)
    serial_small = [_clock(lambda: accel_block(xs, ms, xs, 1.0, 0.0)) for _ in range(20)]
    result["serial_small"] = statistics.median(serial_small)
    for label, b, opts in pools:
        small = [_clock(lambda b=b, opts=opts: b.accel(ms, xs, **knobs, **opts)) for _ in range(21)]
        tiny = [_clock(lambda b=b, opts=opts: b.accel(m2, x2, **knobs, **opts)) for _ in range(21)]
        r = result["pools"][label]
        r["small_call"] = statistics.median(small[1:])
        r["overhead"] = r["small_call"] - result["serial_small"] / workers
        r["tiny_call"] = statistics.median(tiny[1:])

    # pool start-up: close, then start() until every worker has loaded the kernel
    for label, b, opts in pools:
        ts = []
        for _ in range(starts):
            b.close()
            ts.append(_clock(lambda b=b, opts=opts: b.module.start(n_workers=workers, **opts)))
        result["pools"][label]["startup"] = ts
        b.close()

    for r in result["pools"].values():
        r["best"] = min(r["times"])
        r["speedup"] = best_serial / r["best"]
        r["efficiency"] = r["speedup"] / workers
        r["median_speedup"] = statistics.median(serial) / statistics.median(r["times"])
        r["cpu_ratio"] = sum(serial_cpu) / sum(r["cpu"])
    return result


def report(res: dict) -> str:
    """Format the measurements as the README's markdown tables."""
    n, w = res["n"], res["workers"]
    lines = [
        f"N = {n}, {w} workers, best of {res['rounds']} interleaved rounds; serial "
        f"accel_block on all rows, one thread: {min(res['serial_times']) * 1e3:.1f} ms "
        f"({res['serial_rate'] / 1e9:.2f} G interactions/s)",
        "",
        f"| pool | time at N = {n} | speed-up vs serial (median) | efficiency | "
        "CPU work ratio | call at N = 1000 | overhead at N = 1000 | call at N = 2 | "
        "start-up (best / median) | error vs serial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in res["pools"].items():
        lines.append(
            f"| {label} | {r['best'] * 1e3:.1f} ms | {r['speedup']:.2f} x "
            f"({r['median_speedup']:.2f} x) | {r['efficiency']:.0%} | {r['cpu_ratio']:.2f} | "
            f"{r['small_call'] * 1e3:.2f} ms | {r['overhead'] * 1e3:.2f} ms | "
            f"{r['tiny_call'] * 1e3:.2f} ms | {min(r['startup']):.2f} s / "
            f"{statistics.median(r['startup']):.2f} s | {r['error_vs_serial']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line entry point."""
    from backends import _pools

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunks", type=int, default=None, help="default 4 x workers")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--overhead-n", type=int, default=1000)
    p.add_argument("--starts", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    cores = _pools.usable_cores()
    print(
        f"{platform.processor() or platform.machine()}, {cores} usable cores, "
        f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}"
    )
    res = measure(args.n, args.workers, args.rounds, args.overhead_n, args.starts, args.chunks)
    res["usable_cores"] = cores
    print(report(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's backends
    sys.exit(main())
