"""Peak memory and time per particle of one ``fmm`` call, one fresh process per N.

For each N: the benchmark system (``backends.benchmark_system(N, 42)``), the kernels
compiled on a small system, then one ``fmm`` call at ``--eps``; prints its seconds, the
microseconds per particle, and the peak resident memory above the process's footprint
before the call (``resource.getrusage``'s ``ru_maxrss``), per particle. The figures of the
memory and cost-against-N tables of docs/fmm.md.

Usage (N = 10**7 takes about 10 minutes and 4 GiB on 2 threads)::

    python -m benchmarks.fmm_memory --n 1e6 1e7 1e6
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def one(n: int, eps: float) -> None:
    """Measure one call at this N in this process (the child's side)."""
    import resource
    import time

    import backends

    m, x = backends.benchmark_system(n, 42)
    fmm = backends.get("fmm").accel
    fmm(m[:5000], x[:5000], eps=eps)  # compiles (or loads the cache)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    fmm(m, x, eps=eps)
    t = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"N={n:.0e} eps={eps:g}: {t:.2f} s, {t / n * 1e6:.2f} us/particle; peak RSS "
        f"{peak / 2**20:.0f} MiB, {(peak - base) / 2**20:.0f} MiB above the inputs "
        f"({(peak - base) / n:.0f} B/particle)",
        flush=True,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, nargs="+", default=[1e6, 1e7, 1e6])
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        one(int(args.n[0]), args.eps)
        return
    from benchmarks.fmm_scaling import header

    print(f"# {header()}")
    for n in args.n:
        print(f"fmm_memory: N = {n:.0e}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "benchmarks.fmm_memory", "--child", "--n", str(n)]
        subprocess.run([*cmd, "--eps", str(args.eps)], check=True)


if __name__ == "__main__":
    main()
