"""The Numba ladder, measured: interactions per second of every step, 1 and all threads.

Usage::

    python benchmarks/numba_ladder.py [--n 1000 10000 30000 100000] [--repeat 5] [--budget 60]
                                      [--min-time 2] [--only numba_parallel ...]

For each N (random masses on [0, 1), Gaussian positions, seed 42, float64, no softening) it
prints N(N-1)/t in 1e9 interactions per second, t the best call after a warm-up call, for
``numba``, ``numba_fastmath``, ``tutorial_parallel`` (the tutorial-style ``prange`` triple
loop, the yardstick) and ``numba_parallel`` at 1, 2, 4, ... threads up to all of Numba's
threads (``numba.set_num_threads``), in float64 and with ``precision="float32"``. The
header names the CPU and the vector width the pair loop compiled to
(``numba_parallel.simd_report()``, read from the kernel's assembly). The
kernels are timed in ``--repeat`` interleaved rounds (fast ones called repeatedly for
``--min-time`` seconds in all), so their ratios see the same machine load. Then it prints the
ratio ``numba_parallel`` / ``tutorial_parallel``, the softened / unsoftened time ratio of
``numba_parallel`` (timed alternately), and the errors by ``backends.relative_error``
(against the ``python`` oracle at N = 1000, against ``numba`` at N = 10 000, between 1 and
all threads).
A combination whose estimated cost (repeat + 1 calls, extrapolated from the previous N)
exceeds ``--budget`` seconds is skipped and reported as such: pure-serial ``numba`` at
N = 1e5 takes about a minute per call.

This is a script, not part of the asv suite (no asv-prefixed names here).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import time

import numba

from backends import benchmark_system, numba_parallel, reference, relative_error
from backends.numba_loops import accel_fastmath, accel_plain, accel_tutorial_parallel

MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def cpu_name():
    """Return the processor's model name where Linux tells it, else the platform's word."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_of(call, repeat, min_time=0.0, warm=True):
    """Best wall time after one warm-up call, and the last result.

    At least ``repeat`` timed calls, more (up to 1000 x ``repeat``) until ``min_time``
    seconds have passed: on a loaded machine the minimum of many short calls is the figure
    least disturbed by other processes.
    """
    out = call() if warm else None
    best = float("inf")
    calls = 0
    start = time.perf_counter()
    while calls < repeat or (time.perf_counter() - start < min_time and calls < 1000 * repeat):
        t0 = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best, out


def best_of_pair(call_a, call_b, repeat, min_time=0.0):
    """Best times of two calls timed alternately (a, b, a, b, ...): a fair ratio under load."""
    call_a()
    call_b()
    best_a = best_b = float("inf")
    calls = 0
    start = time.perf_counter()
    while calls < repeat or (time.perf_counter() - start < min_time and calls < 1000 * repeat):
        t0 = time.perf_counter()
        call_a()
        t1 = time.perf_counter()
        call_b()
        t2 = time.perf_counter()
        best_a, best_b = min(best_a, t1 - t0), min(best_b, t2 - t1)
        calls += 1
    return best_a, best_b


def thread_counts():
    """1, 2, 4, ... below Numba's thread count, and that count."""
    counts = [1]
    while counts[-1] * 2 < MAX_THREADS:
        counts.append(counts[-1] * 2)
    return counts + ([MAX_THREADS] if MAX_THREADS > 1 else [])


def _float32(m, x, G=1.0, softening=0.0):
    return numba_parallel.accel(m, x, G, softening=softening, precision="float32")


def kernels():
    """(label, accel function, thread count) of every step of the ladder."""
    rows = [
        ("numba", accel_plain, 1),
        ("numba_fastmath", accel_fastmath, 1),
        (f"tutorial_parallel ({MAX_THREADS} thr)", accel_tutorial_parallel, MAX_THREADS),
    ]
    for t in thread_counts():
        rows.append((f"numba_parallel ({t} thr)", numba_parallel.accel, t))
    for t in thread_counts():
        rows.append((f"numba_parallel f32 ({t} thr)", _float32, t))
    return rows


def run(sizes, repeat, budget, min_time, only=None):
    """Measure every step at every size; returns {(label, n): (seconds or None, result)}.

    At each N the kernels are timed in ``repeat`` interleaved rounds (each round times every
    kernel once, or for ``min_time / repeat`` seconds if it is fast), so that the ratios
    between kernels see the same machine load; each keeps its best call.
    """
    rows = [k for k in kernels() if not only or any(word in k[0] for word in only)]
    results = {(label, n): (None, None) for label, _, _ in kernels() for n in sizes}
    rate = {}  # interactions per second at the previous size, for the budget estimate
    for n in sizes:
        pairs = n * (n - 1)
        m, x = benchmark_system(n)
        active = []
        for label, fn, threads in rows:
            if label in rate and (repeat + 1) * pairs / rate[label] > budget:
                est = (repeat + 1) * pairs / rate[label]
                print(f"  skipped {label} at N={n}: estimated {est:.0f} s > --budget {budget:g} s")
                continue
            numba.set_num_threads(threads)
            out = fn(m, x)  # warm-up (and compilation)
            active.append((label, fn, threads, [float("inf"), out]))
        for _ in range(repeat):
            for _label, fn, threads, best in active:
                numba.set_num_threads(threads)
                call = functools.partial(fn, m, x)
                t, best[1] = best_of(call, 1, min_time / repeat, warm=False)
                best[0] = min(best[0], t)
        numba.set_num_threads(MAX_THREADS)
        for label, _, _, (t, out) in active:
            rate[label] = pairs / t
            results[label, n] = (t, out)
            print(
                f"  {label:28s} N={n:>7d} {t * 1e3:10.3f} ms {pairs / t / 1e9:7.3f} G/s", flush=True
            )
    return results


def table(results, sizes):
    labels = [label for label, _, _ in kernels()]
    head = "| kernel | " + " | ".join(f"N = {n}" for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    for label in labels:
        cells = []
        for n in sizes:
            t, _ = results.get((label, n), (None, None))
            if t is None:
                cells.append("-")
            else:
                cells.append(f"{n * (n - 1) / t / 1e9:.2f} G/s ({t * 1e3:.3g} ms)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 30_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per case (best kept)")
    parser.add_argument(
        "--budget", type=float, default=60.0, help="skip a case estimated above this many seconds"
    )
    parser.add_argument(
        "--min-time",
        type=float,
        default=2.0,
        help="time a fast case repeatedly for at least this many seconds (best kept)",
    )
    parser.add_argument(
        "--only", nargs="+", help="measure only the kernels whose label contains one of these"
    )
    args = parser.parse_args(argv)
    sizes = sorted(set(args.n))

    print(
        f"# numba ladder, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{cpu_name()}, {os.cpu_count()} CPUs, "
        f"numba {numba.__version__} ({MAX_THREADS} threads), best call of {args.repeat} "
        f"interleaved rounds, fast kernels repeated for {args.min_time:g} s"
    )
    print(f"# numba_parallel pair loop: {numba_parallel.simd_report()}")
    if hasattr(os, "getloadavg"):
        print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    results = run(sizes, args.repeat, args.budget, args.min_time, args.only)
    print()
    print(table(results, sizes))
    print()

    par = f"numba_parallel ({MAX_THREADS} thr)" if MAX_THREADS > 1 else "numba_parallel (1 thr)"
    tut = f"tutorial_parallel ({MAX_THREADS} thr)"
    for n in sizes:
        tp, _ = results[par, n]
        tt, _ = results[tut, n]
        if tp is not None and tt is not None:
            print(f"numba_parallel / tutorial_parallel at N={n}: {tt / tp:.2f}x faster")
        for t in thread_counts():
            t64, out64 = results[f"numba_parallel ({t} thr)", n]
            t32, out32 = results[f"numba_parallel f32 ({t} thr)", n]
            if t64 is not None and t32 is not None:
                err = relative_error(out32, out64)
                print(
                    f"float32 / float64 throughput at N={n}, {t} thr: {t64 / t32:.2f}x "
                    f"(float32 error vs float64 {err:.1e}, bound 1e-4)"
                )

    for n in (1000, 10_000):
        m, x = benchmark_system(n)
        out = numba_parallel.accel(m, x)
        t_plain, t_soft = best_of_pair(
            lambda m=m, x=x: numba_parallel.accel(m, x),
            lambda m=m, x=x: numba_parallel.accel(m, x, softening=0.01),
            args.repeat,
            3 * args.min_time,
        )
        print(f"softened / unsoftened time at N={n} (softening 0.01): {t_soft / t_plain:.3f}")
        if n == 1000:
            err = relative_error(out, reference.accel(m, x))
            print(f"error vs python oracle at N=1000: {err:.2e} (bound 1e-13)")
        else:
            ref = results.get(("numba", n), (None, None))[1]
            ref = accel_plain(m, x) if ref is None else ref
            print(f"error vs numba at N={n}: {relative_error(out, ref):.2e} (bound 1e-13)")
        if MAX_THREADS > 1:
            numba.set_num_threads(1)
            one = numba_parallel.accel(m, x)
            numba.set_num_threads(MAX_THREADS)
            print(f"1 vs {MAX_THREADS} threads at N={n}: {relative_error(one, out):.2e}")
    if hasattr(os, "getloadavg"):
        print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
