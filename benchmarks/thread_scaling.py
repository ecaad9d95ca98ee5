"""Thread scaling of numba_parallel, tree and fmm: ``python -m benchmarks.thread_scaling``.

For each backend (``--which``), one process: a first call on the most threads (compilation),
then for each thread count T of ``--threads`` (``numba.set_num_threads``) the best of
``--repeat`` calls. Printed per T: seconds, interactions per second (``numba_parallel``),
the speed-up over the first T of the list and the efficiency (speed-up per thread, relative
to that first T), and the largest difference from the first call's result relative to its
largest acceleration (results differ across thread counts by summation order only).

Defaults: T in 1 2 4 8 16 (at most ``NUMBA_NUM_THREADS``: beyond the machine's cores the
times say nothing about speed), ``numba_parallel`` at N = 10^5, ``tree`` at 10^6 and ``fmm``
(eps 1e-6) at 10^5, benchmark system. Not an asv benchmark (no ``time_`` names).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np

import backends
from backends import benchmark_system

CASES = {  # name -> (backend, default N argument, options)
    "numba_parallel": ("numba_parallel", "direct_n", {}),
    "numba_parallel_float32": ("numba_parallel", "direct_n", {"precision": "float32"}),
    "tree": ("tree", "tree_n", {}),
    "fmm": ("fmm", "fmm_n", {"eps": 1e-6}),
}


def _best(fn, repeat: int):
    seconds, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - t0)
    return seconds, out


def main(argv=None) -> int:
    """Measure and print one line per backend and thread count."""
    import numba

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--direct-n", type=int, default=100_000, help="N of numba_parallel")
    p.add_argument("--tree-n", type=int, default=1_000_000, help="N of tree")
    p.add_argument("--fmm-n", type=int, default=100_000, help="N of fmm")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per thread count")
    p.add_argument(
        "--which", nargs="+", choices=sorted(CASES), default=list(CASES)[:1] + ["tree", "fmm"]
    )
    a = p.parse_args(argv)
    limit = numba.config.NUMBA_NUM_THREADS
    threads = [t for t in a.threads if 1 <= t <= limit]
    if not threads:
        p.error(f"--threads: none within 1..{limit} (NUMBA_NUM_THREADS)")
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    print(f"{os.cpu_count()} CPUs, numba {numba.__version__}, at most {limit} threads")
    for name in a.which:
        backend, n_arg, opts = CASES[name]
        n = getattr(a, n_arg)
        m, x = benchmark_system(n)
        numba.set_num_threads(max(threads))
        t0 = time.perf_counter()
        first = backends.accel(m, x, backend=backend, **opts)
        print(f"{name}: N = {n}, first call (compilation) {time.perf_counter() - t0:.1f} s")
        base = None
        for t in threads:
            numba.set_num_threads(t)
            call = functools.partial(backends.accel, m, x, backend=backend, **opts)
            seconds, out = _best(call, a.repeat)
            base = base if base is not None else seconds * threads[0]
            rate = f" {n * (n - 1) / seconds / 1e9:7.2f} G/s" if backend == "numba_parallel" else ""
            diff = float(np.max(np.abs(out - first)) / np.max(np.abs(first)))
            print(
                f"{name:24s} N={n:>8d} T={t:3d} {seconds:8.3f} s{rate}  "
                f"speed-up {base / seconds / threads[0]:5.2f}x of T={threads[0]}  "
                f"efficiency {base / seconds / t:4.2f}  differs by {diff:.1e}",
                flush=True,
            )
    numba.set_num_threads(limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
