"""MPI scaling, traffic and memory of the ``mpi`` backend: ``python benchmarks/mpi_scaling.py``.

Not an asv benchmark (asv collects nothing from this module; its functions avoid asv's
prefixes); a script around ``mpiexec -n P python -m backends.mpi_run --json`` (through
:mod:`backends._mpi_launch`, which cleans up after every job). Wrap it in
``flock /tmp/nbody-bench.lock`` on a shared machine.

Default (``--scaling``): strong scaling (fixed ``--n``) and weak scaling (N = ``--weak-n`` x
sqrt(P), the same N^2/P pairs per rank) for P in ``--ranks`` (default 1 2 4 8; more ranks than
cores are oversubscribed: then the check is correctness, traffic and memory, not speed), both
algorithms, one thread per rank. Printed per run: seconds per evaluation (best of
``--repeat``, ``MPI.Wtime`` of the slowest rank), throughput N(N-1)/t, the error against
``numba_parallel``, messages and bytes sent per rank and evaluation (max over ranks), the
particle arrays a rank holds and its peak RSS.

``--goals``: at ``--n`` (default 20 000), in interleaved rounds, ``numba_parallel`` on 2
threads (a fresh process, best of ``--repeat`` after a warm-up call) against
``mpiexec -n 2 ... --threads-per-rank 1`` and ``mpiexec -n 1 ... --threads-per-rank 2``
for both algorithms; prints each layout's best time over the rounds and its throughput
relative to ``numba_parallel``.

``--json`` also prints every raw report as one JSON list.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from backends import _mpi_launch

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("allgather", "ring")
TIMEOUT = 600


def find_mpiexec() -> str:
    """Return the ``mpiexec`` of this Python's environment (the mpich wheel), else PATH's."""
    found = _mpi_launch.find_mpiexec()
    if found is None:
        sys.exit("mpiexec not found: pip install 'nbody-backends[mpi]'")
    return found


def run_mpi(ranks: int, *args) -> dict:
    """Run ``mpiexec -n ranks python -m backends.mpi_run --json args``; rank 0's report."""
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "backends.mpi_run", "--json"]
    result = _mpi_launch.launch([*cmd, *map(str, args)], timeout=TIMEOUT, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} {' '.join(map(str, args))} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def machine() -> str:
    """CPU model, SIMD width, usable cores and the date: printed next to every figure."""
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        model = next(
            (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), model
        )
        flags = next((ln for ln in info if ln.startswith("flags")), "")
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{model}, {simd}, {cores} usable cores, {when}"


def _row(label: str, p: int, n: int, r: dict) -> str:
    mib = 2.0**20
    return (
        f"{label:6s} {r['algorithm']:10s} {p:5d} {n:8d} {r['seconds']:9.4f} "
        f"{r['interactions_per_second'] / 1e9:8.3f} {r['error']:9.1e} {r['messages_per_rank']:5d} "
        f"{r['bytes_per_rank'] / mib:10.3f} {r['particle_bytes'] / mib:10.3f} "
        f"{r['peak_rss_bytes'] / mib:8.1f}"
    )


def scaling(n: int, weak_n: int, repeat: int, ranks: list[int]) -> list[dict]:
    """Strong and weak scaling of both algorithms, one thread per rank."""
    reports = []
    print(f"Scaling, best of {repeat} after a warm-up; one thread per rank; {machine()}")
    print(f"strong: N = {n}; weak: N = {weak_n} x sqrt(P) (the same pairs per rank)")
    header = ("kind", "algorithm", "ranks", "N", "seconds", "G int/s", "error", "msgs",
              "MiB sent", "particles", "RSS MiB")  # fmt: skip
    print("{:6s} {:10s} {:>5s} {:>8s} {:>9s} {:>8s} {:>9s} {:>5s} {:>10s} {:>10s} {:>8s}".format(
        *header))  # fmt: skip
    for kind in ("strong", "weak"):
        for algorithm in ALGORITHMS:
            for p in ranks:
                size = n if kind == "strong" else int(round(weak_n * math.sqrt(p)))
                r = run_mpi(p, "--n", size, "--algorithm", algorithm, "--repeat", repeat,
                            "--threads-per-rank", 1, "--check")  # fmt: skip
                r["kind"] = kind
                print(_row(kind, p, size, r), flush=True)
                reports.append(r)
    return reports


def _numba_parallel_seconds(n: int, repeat: int) -> float:
    code = (
        "import sys, time, numba; from backends import benchmark_system, numba_parallel as b;"
        f"numba.set_num_threads(2); m, x = benchmark_system({n}); b.accel(m, x); t = [];"
        f"exec('for _ in range({repeat}):\\n t0 = time.perf_counter(); b.accel(m, x);"
        " t.append(time.perf_counter() - t0)'); print(min(t))"
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def goals(n: int, repeat: int, rounds: int) -> list[dict]:
    """Interleaved rounds: numba_parallel on 2 threads against the two MPI layouts."""
    layouts = [(a, p, t) for a in ALGORITHMS for p, t in ((2, 1), (1, 2))]
    best: dict = {"numba_parallel": math.inf}
    reports = []
    for _ in range(rounds):
        best["numba_parallel"] = min(best["numba_parallel"], _numba_parallel_seconds(n, repeat))
        for a, p, t in layouts:
            r = run_mpi(p, "--n", n, "--algorithm", a, "--repeat", repeat,
                        "--threads-per-rank", t)  # fmt: skip
            reports.append(r)
            best[(a, p, t)] = min(best.get((a, p, t), math.inf), r["seconds"])
    ref = best["numba_parallel"]
    pairs = n * (n - 1)
    print(f"Goals at N = {n}: best of {rounds} interleaved rounds x {repeat} calls; {machine()}")
    print(f"numba_parallel, 2 threads: {ref:.4f} s, {pairs / ref / 1e9:.3f} G int/s")
    for a, p, t in layouts:
        s = best[(a, p, t)]
        print(f"mpi {a:10s} -n {p} --threads-per-rank {t}: {s:.4f} s, "
              f"{pairs / s / 1e9:.3f} G int/s, {ref / s:.2f}x numba_parallel")  # fmt: skip
    return reports


def memory(n: int, ranks: int) -> list[dict]:
    """Per-rank memory (max over ranks) of both algorithms at ``ranks`` ranks."""
    mib = 2.0**20
    reports = [
        run_mpi(ranks, "--n", n, "--algorithm", a, "--repeat", 1, "--threads-per-rank", 1)
        for a in ALGORITHMS
    ]
    print(f"\nMemory per rank (max over ranks), N = {n}, {ranks} ranks")
    print(f"{'algorithm':10s} {'particles MiB':>14s} {'traced peak MiB':>16s} {'RSS MiB':>9s}")
    for r in reports:
        print(
            f"{r['algorithm']:10s} {r['particle_bytes'] / mib:14.3f} "
            f"{r['array_peak_bytes'] / mib:16.3f} {r['peak_rss_bytes'] / mib:9.1f}"
        )
    gather, ring = reports
    for key, label in (("particle_bytes", "particle arrays"), ("array_peak_bytes", "traced peak")):
        print(f"ring / allgather, {label}: {ring[key] / gather[key]:.3f}")
    return reports


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--n", type=int, default=20_000, help="N of strong scaling and of --goals")
    p.add_argument("--weak-n", type=int, default=10_000, help="N at one rank, weak scaling")
    p.add_argument("--repeat", type=int, default=3, help="timed evaluations per job")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--goals", action="store_true", help="the 2-core goals instead of scaling")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --goals")
    p.add_argument("--memory-ranks", type=int, default=4, help="ranks of the memory table")
    p.add_argument("--json", action="store_true", help="also print every report as JSON")
    args = p.parse_args()
    if args.goals:
        reports = goals(args.n, args.repeat, args.rounds)
    else:
        reports = scaling(args.n, args.weak_n, args.repeat, args.ranks)
        reports += memory(args.n, args.memory_ranks)
    if args.json:
        print(json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
