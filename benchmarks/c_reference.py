"""``numba_parallel`` against hand-written C (AVX2/FMA and AVX-512), timed interleaved.

Usage::

    python benchmarks/c_reference.py [--n 1000 10000 100000] [--threads 1 2] [--rounds 5]
                                     [--min-time 1] [--no-avx512] [--float32]

Compiles ``benchmarks/c_reference.c`` with ``gcc -O3 -march=native -fopenmp`` into a
temporary directory and calls it through :mod:`ctypes`. The C kernels compute each pair once
(OpenMP dynamic schedule over rows, one ``(3, N)`` accumulator per thread), with ``r**-3``
from the float32 ``rsqrt`` estimate, one float32 Newton step and a float64 third-order
correction: the same arithmetic as ``numba_parallel``. For each N (benchmark system) and each
thread count, the kernels are called in ``--rounds`` interleaved rounds (each round calls each
kernel for ``--min-time / --rounds`` seconds); the best call is kept and printed as
N(N-1)/t in 10^9 interactions per second, with the ratio ``numba_parallel / C`` of the same
run. The inputs' SoA copy for C is made once, outside the timer (``numba_parallel`` copies
inside its call). Prints the CPU model, Numba's SIMD width and the date first.

This is a script, not part of the asv suite.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

from backends import benchmark_system, numba_parallel, relative_error

HERE = pathlib.Path(__file__).resolve().parent
_DP = ctypes.POINTER(ctypes.c_double)


def build(tmp):
    """Compile the C kernels; returns the loaded library."""
    lib = pathlib.Path(tmp) / "libcref.so"
    cmd = ["gcc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run([*cmd, str(HERE / "c_reference.c"), "-o", str(lib)], check=True)
    dll = ctypes.CDLL(str(lib))
    for name in ("nbody_avx2", "nbody_avx512"):
        fn = getattr(dll, name)
        fn.argtypes = [ctypes.c_int, _DP, _DP, _DP, _DP, ctypes.c_double, _DP, _DP, ctypes.c_int]
        fn.restype = None
    return dll


class CKernel:
    """One C kernel bound to one system and thread count: ``call()`` returns (N, 3)."""

    def __init__(self, fn, m, x, threads):
        self.fn, self.n, self.threads = fn, m.shape[0], threads
        self.soa = np.ascontiguousarray(np.vstack([x.T, m[None, :]]))
        self.acc = np.zeros(3 * self.n * threads)
        self.out = np.zeros((3, self.n))

    def call(self):
        p = [self.soa[k].ctypes.data_as(_DP) for k in range(4)]
        self.fn(
            self.n,
            *p,
            0.0,
            self.acc.ctypes.data_as(_DP),
            self.out.ctypes.data_as(_DP),
            self.threads,
        )
        return self.out.T.copy()


def simd_width():
    """Widest vector register in ``numba_parallel``'s compiled symmetric kernel."""
    try:
        return numba_parallel.simd_report()
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        return f"unknown ({exc})"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per kernel per N")
    ap.add_argument("--no-avx512", action="store_true", help="skip the AVX-512 C kernel")
    ap.add_argument("--float32", action="store_true", help="also time precision='float32'")
    args = ap.parse_args(argv)
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, "
        f"{os.cpu_count()} CPUs, numba {numba.__version__} "
        f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}), gcc -O3 -march=native -fopenmp"
    )
    print(f"# numba_parallel SIMD: {simd_width()}")
    if hasattr(os, "getloadavg"):
        print(f"# load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        dll = build(tmp)
        for n in args.n:
            m, x = benchmark_system(n)
            pairs = n * (n - 1)
            for t in args.threads:
                if t > numba.config.NUMBA_NUM_THREADS:
                    print(f"  skipped {t} threads (NUMBA_NUM_THREADS is smaller)")
                    continue
                kernels = {"C AVX2/FMA": CKernel(dll.nbody_avx2, m, x, t).call}
                if not args.no_avx512:
                    kernels["C AVX-512"] = CKernel(dll.nbody_avx512, m, x, t).call
                kernels["numba_parallel"] = lambda m=m, x=x: numba_parallel.accel(m, x)
                if args.float32:
                    kernels["numba_parallel f32"] = lambda m=m, x=x: numba_parallel.accel(
                        m, x, precision="float32"
                    )
                numba.set_num_threads(t)
                outs = {k: fn() for k, fn in kernels.items()}  # warm-up, compilation
                best = dict.fromkeys(kernels, float("inf"))
                per = args.min_time / args.rounds
                for _ in range(args.rounds):
                    for k, fn in kernels.items():
                        start = time.perf_counter()
                        calls = 0
                        while calls < 1 or time.perf_counter() - start < per:
                            t0 = time.perf_counter()
                            fn()
                            best[k] = min(best[k], time.perf_counter() - t0)
                            calls += 1
                ref = outs["numba_parallel"]
                for k in kernels:
                    err = relative_error(outs[k], ref)
                    print(
                        f"  N={n:>6d} T={t} {k:20s} {best[k] * 1e3:9.3f} ms "
                        f"{pairs / best[k] / 1e9:6.3f} G/s  (vs numba_parallel {err:.1e})"
                    )
                for k in kernels:
                    if k.startswith("C "):
                        print(
                            f"  N={n:>6d} T={t} numba_parallel / {k}: "
                            f"{best[k] / best['numba_parallel']:.3f}x the C throughput"
                        )
                if args.float32:
                    r = best["numba_parallel"] / best["numba_parallel f32"]
                    print(f"  N={n:>6d} T={t} float32 / float64 throughput: {r:.2f}x")
                sys.stdout.flush()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


if __name__ == "__main__":
    main()
