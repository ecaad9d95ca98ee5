"""MPI scaling and memory of the ``mpi`` backend: ``python benchmarks/mpi_scaling.py``.

Not an asv benchmark (asv collects nothing from this module; its functions avoid asv's
prefixes); a script around ``mpiexec -n P python -m backends.mpi_run --json``:

1. throughput at N = 20 000 with 1 and 2 ranks, both algorithms (goal: 2 ranks >= 1.7 x one);
2. memory per rank at 4 ranks, ring against allgather: the particle arrays a rank holds, the
   traced allocation peak (tracemalloc: data loading plus one evaluation) and the peak RSS
   (goal: the ring's particle data about a quarter of allgather's).

Options: ``--n``, ``--repeat`` (timed evaluations per run, best kept), ``--ranks`` (for the
scaling part), ``--memory-ranks``, ``--json`` (all raw reports as one JSON list).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from backends import _mpi_launch

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("allgather", "ring")


def find_mpiexec() -> str:
    """Return the ``mpiexec`` of this Python's environment (the mpich wheel), else PATH's."""
    found = _mpi_launch.find_mpiexec()
    if found is None:
        sys.exit("mpiexec not found: pip install 'nbody-backends[mpi]'")
    return found


def run_mpi(ranks: int, *args) -> dict:
    """Run ``mpiexec -n ranks python -m backends.mpi_run --json args``; rank 0's report."""
    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "backends.mpi_run", "--json"]
    proc = subprocess.run(
        [*cmd, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def scaling(n: int, repeat: int, ranks: list[int]) -> list[dict]:
    """Best seconds per evaluation for each algorithm and rank count."""
    reports = []
    print(f"Scaling, N = {n}, best of {repeat} after a warm-up (MPI.Wtime, slowest rank)")
    print("(cpu: the busiest rank's CPU seconds per evaluation; its speed-up is insensitive")
    print(" to other load on the machine, the wall-clock speed-up is the goal's measure)")
    header = ("algorithm", "ranks", "seconds", "G int/s", "speed-up", "cpu s", "cpu speed-up")
    print("{:10s} {:>5s} {:>9s} {:>8s} {:>9s} {:>8s} {:>13s}".format(*header))
    for algorithm in ALGORITHMS:
        base = None
        for p in ranks:
            r = run_mpi(p, "--n", n, "--algorithm", algorithm, "--repeat", repeat)
            base = base or r
            rate = r["interactions_per_second"] / 1e9
            print(
                f"{algorithm:10s} {p:5d} {r['seconds']:9.4f} {rate:8.3f} "
                f"{base['seconds'] / r['seconds']:8.2f}x {r['cpu_seconds']:8.4f} "
                f"{base['cpu_seconds'] / r['cpu_seconds']:12.2f}x"
            )
            reports.append(r)
    return reports


def memory(n: int, ranks: int) -> list[dict]:
    """Per-rank memory (max over ranks) of both algorithms at ``ranks`` ranks."""
    mib = 2.0**20
    reports = [run_mpi(ranks, "--n", n, "--algorithm", a, "--repeat", 1) for a in ALGORITHMS]
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--memory-ranks", type=int, default=4)
    p.add_argument("--json", action="store_true", help="also print every report as JSON")
    args = p.parse_args()
    reports = scaling(args.n, args.repeat, args.ranks) + memory(args.n, args.memory_ranks)
    if args.json:
        print(json.dumps(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
