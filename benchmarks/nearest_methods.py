"""Measure accel_nearest's three methods and the numba_jitclass backend (a script, not asv).

Usage, from the repository root::

    python benchmarks/nearest_methods.py            # every section below
    python benchmarks/nearest_methods.py methods    # N = 10 000, k = 16: the three methods
    python benchmarks/nearest_methods.py big        # N = 10^6, k = 32, batched: time, peak memory
    python benchmarks/nearest_methods.py jitclass   # numba_jitclass vs numba, N = 1000, 10 000

Times are the best of ``--repeat`` calls after a warm-up call (compilation excluded), except
the cold starts, which time a fresh interpreter's first call. The big case runs in a fresh
child process so that its ``ru_maxrss`` (peak resident memory of that process) describes it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import backends
from backends import benchmark_system

METHODS = ("batched", "objmode", "forceobj")


def _best(repeat, call, *args, **kwargs):
    call(*args, **kwargs)  # warm-up: compilation, cache load, thread pool start
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times)


def run_methods(n=10_000, k=16, repeat=3):
    """Print the three methods' times at (n, k), their ratios and their agreement."""
    import numba

    print(f"accel_nearest, N = {n}, k = {k}, numba threads = {numba.get_num_threads()}")
    m, x = benchmark_system(n)
    results, times = {}, {}
    for method in METHODS:
        times[method] = _best(repeat, backends.accel_nearest, m, x, k, method=method)
        results[method] = backends.accel_nearest(m, x, k, method=method)
    for method in METHODS:
        err = backends.relative_error(results[method], results["batched"])
        ratio = times[method] / times["batched"]
        print(
            f"  {method:9s} {times[method] * 1e3:9.2f} ms  {ratio:6.1f} x batched's time"
            f"  error vs batched {err:.1e}"
        )
    print(f"  goal: objmode / batched >= 15; measured {times['objmode'] / times['batched']:.1f}")
    floor = _best(repeat, _tree_and_query, x, k, numba.get_num_threads())
    print(f"  floor of batched: KDTree build + one query of all N points: {floor * 1e3:.2f} ms")


def _tree_and_query(x, k, workers):
    from scipy.spatial import KDTree

    KDTree(x).query(x, k + 1, workers=workers)


def _big_child(n, k):
    """In a fresh process: one batched call at (n, k); print a JSON line of measurements."""
    m, x = benchmark_system(n)
    backends.accel_nearest(m[:1000], x[:1000], k)  # compile / load the kernels
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    backends.accel_nearest(m, x, k)
    seconds = time.perf_counter() - t0
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    backends.accel_nearest(m, x, k)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    from scipy.spatial import KDTree

    t0 = time.perf_counter()
    KDTree(x)
    build = time.perf_counter() - t0
    print(
        json.dumps(
            dict(
                seconds=seconds,
                tree_build_seconds=build,
                rss_before_kib=rss_before,
                rss_after_kib=rss_after,
                traced_peak_bytes=traced_peak,
            )
        )
    )


def run_big(n=1_000_000, k=32):
    """Run the (n, k) batched case in a child process and print its time and peak memory."""
    cmd = [sys.executable, __file__, "_big_child", "--n", str(n), "--k", str(k)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    mib = 2.0**20
    nk = n * (k + 1) * 8 / mib
    print(f"accel_nearest batched, N = {n}, k = {k} (default block), fresh process")
    print(f"  time {r['seconds']:.2f} s (a KDTree build alone: {r['tree_build_seconds']:.2f} s)")
    print(
        f"  peak RSS (ru_maxrss) {r['rss_after_kib'] / 1024:.0f} MiB; before the call (inputs, "
        f"imports, compiled kernels) {r['rss_before_kib'] / 1024:.0f} MiB; "
        f"growth {(r['rss_after_kib'] - r['rss_before_kib']) / 1024:.0f} MiB"
    )
    print(
        f"  tracemalloc peak during a call (NumPy arrays: output, tree indices, one block's "
        f"lists) {r['traced_peak_bytes'] / mib:.0f} MiB"
    )
    print(f"  for scale: one N x (k + 1) int64 index array is {nk:.0f} MiB (distances: as much)")


def _cold_start(name, n):
    code = (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, backends\n"
        f"rng = np.random.default_rng(0); m, x = rng.random({n}), rng.standard_normal(({n}, 3))\n"
        f"backends.get({name!r}).accel(m, x)\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_jitclass(sizes=(1000, 10_000), repeat=3):
    """Print numba_jitclass against numba (plain arrays): steady state and cold start."""
    print("numba_jitclass vs numba (same serial double loop; jitclass fields vs plain arrays)")
    for n in sizes:
        m, x = benchmark_system(n)
        t = {}
        for name in ("numba", "numba_jitclass"):
            b = backends.get(name)
            t[name] = _best(repeat, b.accel, m, x)
        print(
            f"  N = {n:6d}: numba {t['numba'] * 1e3:9.2f} ms, numba_jitclass "
            f"{t['numba_jitclass'] * 1e3:9.2f} ms, ratio {t['numba_jitclass'] / t['numba']:.2f}"
        )
    cold = {name: _cold_start(name, 1000) for name in ("numba", "numba_jitclass")}
    print(
        f"  cold start (fresh interpreter: import + first call, N = 1000): numba "
        f"{cold['numba']:.2f} s (on-disk cache), numba_jitclass {cold['numba_jitclass']:.2f} s "
        "(compiled every process)"
    )


def main(argv=None):
    """Entry point; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", nargs="?", default="all")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=32)
    a = p.parse_args(argv)
    sections = {
        "methods": lambda: run_methods(repeat=a.repeat),
        "big": lambda: run_big(a.n, a.k),
        "jitclass": lambda: run_jitclass(repeat=a.repeat),
        "_big_child": lambda: _big_child(a.n, a.k),
    }
    if a.section == "all":
        for name in ("methods", "big", "jitclass"):
            sections[name]()
    elif a.section in sections:
        sections[a.section]()
    else:
        p.error(f"unknown section {a.section!r}; choose all, methods, big or jitclass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
