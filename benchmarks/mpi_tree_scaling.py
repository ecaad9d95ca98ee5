"""Scaling of the distributed tree (``mpi``, ``--algorithm tree``): measured and modelled.

``python benchmarks/mpi_tree_scaling.py --scaling``: strong (``--n``) and weak (``--weak-n``
x P) scaling for P in ``--ranks`` (default 1 2 4 8), one thread per rank, each a real
``mpiexec -n P python -m backends.mpi_run --algorithm tree --json`` job (through
:mod:`backends._mpi_launch`); more ranks than usable cores are marked oversubscribed (then
the columns that mean something are the error, traffic, LET and balance, not the time).

``--goals``: the 2-core goals at ``--n`` (default 10^6): ``tree`` on 2 threads (a fresh
process, best of ``--repeat`` after a warm-up) against ``mpiexec -n 2 ... --threads-per-rank
1`` in ``--rounds`` interleaved rounds (best of each); per-rank peak RSS growth from N = 10^3
to ``--n`` on 4 ranks against 1 rank; bytes sent per rank at 4 ranks against an allgather of
the positions (24 N).

``--model``: a cost model for P = 64-4096 ranks and N = 10^7-10^10. Its inputs:

* per-rank costs measured here, one thread: the walk's seconds per interaction (pair units,
  as :data:`backends.mpi_tree.last_stats` counts them), the tree build and the
  decomposition/return per particle, the LET selection per node record sent (from
  in-process calls of :func:`backends.mpi_tree.accel_local` and
  :func:`backends.mpi_tree.virtual`);
* the interactions per particle against N (measured with ``virtual`` at P = 1 up to
  ``--model-max-n``, fitted ``a + b log2 N``);
* the LET a rank receives: the real decomposition and LET selection for P *virtual ranks* in
  one process (:func:`backends.mpi_tree.virtual`, no MPI) on the benchmark system (Gaussian)
  for P in 64-4096 and N up to ``--model-max-n``, for ``--receivers`` ranks spread over the
  curve (the largest LET among them is used); fitted ``bytes = A n**alpha P**beta`` over
  n = N/P and extrapolated to the table's N (10^7-10^10 do not fit in one process: the
  LET beyond the largest measured n grows by the surface law, n^(2/3), steeper than the
  fitted exponent and so conservative; the fit's exponents and residuals are printed);
* a stated network: one rank per core, 64 cores per node sharing an InfiniBand EDR/HDR100
  link (latency ``alpha`` = 1.5 us, 12.5 GB/s per node, so ``beta`` = 0.195 GB/s per rank
  when all ranks of a node send at once).

Per rank and step the model adds (no overlap of communication and computation): the walk,
the build and the local decomposition (``n`` particles), the LET selection, the LET
``Alltoallv`` (P - 1 messages, the fitted bytes), the allgathers of domain boxes (48 bytes
each, :func:`backends.mpi_tree.default_boxes` per rank), work buckets (16 bytes each,
:func:`backends.mpi_tree.buckets_for`) and samples (16 S), 4 rounds of splitter refinement
(``Allreduce`` of P - 1 numbers), and 1 % of the particles migrating (the fraction measured
between steps of ``mpi_run``). It prints the table, the parallel efficiency against P = 64 at
the same N, and the dominant cost where it stops scaling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from backends import _mpi_launch
from backends.mpi_tree import buckets_for, default_boxes

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 900
#: The stated network (see the module docstring).
ALPHA = 1.5e-6  # seconds per message
NODE_BANDWIDTH = 12.5e9  # bytes per second per node
CORES_PER_NODE = 64
BETA = NODE_BANDWIDTH / CORES_PER_NODE  # bytes per second per rank, all ranks sending
MOVED = 0.01  # fraction of particles migrating between steps


def machine() -> str:
    """CPU model, SIMD width, usable cores and the date: printed next to every figure."""
    model, flags = "unknown CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")),
                     model)  # fmt: skip
        flags = next((ln for ln in info if ln.startswith("flags")), "")
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{model}, {simd}, {cores()} usable cores, {when}"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_mpi(ranks: int, *args) -> dict:
    """``mpiexec -n ranks python -m backends.mpi_run --algorithm tree --json args``."""
    mpiexec = _mpi_launch.find_mpiexec()
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'nbody-backends[mpi]'")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "backends.mpi_run", "--json",
           "--algorithm", "tree", *map(str, args)]  # fmt: skip
    result = _mpi_launch.launch(cmd, timeout=TIMEOUT, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


# ---------------------------------------------------------------- measured


def scaling(n: int, weak_n: int, ranks: list[int], repeat: int, theta: float) -> list[dict]:
    """Strong and weak scaling, one thread per rank."""
    mib = 2.0**20
    print(f"Scaling of mpi --algorithm tree (theta {theta}), one thread per rank, best of "
          f"{repeat} after a warm-up; {machine()}")  # fmt: skip
    print(f"strong: N = {n}; weak: N = {weak_n} x P; * = more ranks than usable cores "
          "(oversubscribed: the time says nothing about speed)")  # fmt: skip
    print(f"{'kind':6s} {'P':>3s} {'N':>9s} {'seconds':>8s} {'speedup':>7s} {'rms err':>8s} "
          f"{'MiB sent':>8s} {'LET part':>8s} {'LET MiB':>7s} {'imbal':>6s} {'RSS MiB':>7s} "
          f"{'walk s':>7s}")  # fmt: skip
    reports = []
    for kind in ("strong", "weak"):
        base = None
        for p in ranks:
            size = n if kind == "strong" else weak_n * p
            r = run_mpi(p, "--n", size, "--theta", theta, "--repeat", repeat,
                        "--threads-per-rank", 1, "--check", "--check-rows", 300)  # fmt: skip
            r["kind"] = kind
            reports.append(r)
            base = base or r["seconds"]
            gain = base / r["seconds"] if kind == "strong" else base / r["seconds"]
            mark = "*" if p > cores() else " "
            print(f"{kind:6s} {p:>2d}{mark} {size:>9d} {r['seconds']:8.3f} {gain:7.2f} "
                  f"{r['error_rms']:8.2e} {r['bytes_per_rank'] / mib:8.2f} "
                  f"{r['let_particles']:>8d} {r['let_bytes'] / mib:7.2f} "
                  f"{r['load_imbalance']:6.3f} {r['peak_rss_bytes'] / mib:7.1f} "
                  f"{r['phase_seconds'].get('walk', 0.0):7.3f}", flush=True)  # fmt: skip
    print("speedup: strong, t(1)/t(P); weak, t(1)/t(P) (1.0 = perfect weak scaling)")
    return reports


def _tree_seconds(n: int, repeat: int, theta: float) -> float:
    code = (
        "import time, numba; from backends import benchmark_system, tree_barnes_hut as t;"
        f"numba.set_num_threads(2); m, x = benchmark_system({n}); t.accel(m, x, theta={theta});"
        f"s = []\nfor _ in range({repeat}):\n t0 = time.perf_counter(); "
        f"t.accel(m, x, theta={theta}); s.append(time.perf_counter() - t0)\nprint(min(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=TIMEOUT, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def goals(n: int, rounds: int, repeat: int, theta: float, memory: bool = True) -> list[dict]:
    """Measure the 2-core speed goal, the memory growth and the traffic at 4 ranks."""
    mib = 2.0**20
    print(f"Goals at N = {n}, theta {theta}; {machine()}")
    best_tree, best_mpi, reports = math.inf, math.inf, []
    for k in range(rounds):
        t = _tree_seconds(n, repeat, theta)
        r = run_mpi(2, "--n", n, "--theta", theta, "--repeat", repeat, "--threads-per-rank", 1)
        reports.append(r)
        best_tree, best_mpi = min(best_tree, t), min(best_mpi, r["seconds"])
        print(f"round {k + 1}: tree 2 threads {t:.3f} s; mpi tree 2 ranks x 1 thread "
              f"{r['seconds']:.3f} s (phases {r['phase_seconds']})", flush=True)  # fmt: skip
    print(f"best: tree {best_tree:.3f} s, mpi tree -n 2 {best_mpi:.3f} s: "
          f"{best_tree / best_mpi:.2f}x tree (goal >= 0.8x)")  # fmt: skip
    if not memory:
        return reports
    rss = {}
    for p in (1, 4):
        for size in (1000, n):
            r = run_mpi(p, "--n", size, "--theta", theta, "--repeat", 1, "--threads-per-rank", 1)
            reports.append(r)
            rss[p, size] = r["peak_rss_bytes"]
            print(
                f"P = {p}, N = {size}: peak RSS (max over ranks) {r['peak_rss_bytes'] / mib:.1f}"
                f" MiB, bytes per rank {r['bytes_per_rank']} (distribute "
                f"{r['distribute_bytes_per_rank']}), LET bytes {r['let_bytes']}",
                flush=True,
            )
            if p == 4 and size == n:
                print(f"bytes sent per rank at P = 4: {r['bytes_per_rank'] / n:.2f} N per "
                      f"evaluation, {r['distribute_bytes_per_rank'] / n:.2f} N in the initial "
                      "distribution (an allgather of the positions: 24 N)")  # fmt: skip
    g1, g4 = rss[1, n] - rss[1, 1000], rss[4, n] - rss[4, 1000]
    print(f"peak RSS growth 1e3 -> {n:.0e}: 1 rank {g1 / mib:.1f} MiB, 4 ranks {g4 / mib:.1f} "
          f"MiB per rank: {g4 / g1:.2f}x (goal <= 0.6x)")  # fmt: skip
    return reports


# ---------------------------------------------------------------- model


def _calibrate(theta: float, n: int = 200_000) -> dict:
    """Per-rank costs of one thread, measured in this process."""
    import numba
    from mpi4py import MPI

    from backends import benchmark_system, mpi_tree

    numba.set_num_threads(1)
    m, x = benchmark_system(n, 42)
    best = None
    for _ in range(3):
        mpi_tree.accel_local(m, x, theta=theta, comm=MPI.COMM_SELF, threads_per_rank=1)
        st = dict(mpi_tree.last_stats)
        if best is None or sum(st["seconds"].values()) < sum(best["seconds"].values()):
            best = st
    sec = best["seconds"]
    # LET selection and packing, as each rank does it (one pass over all receivers): two
    # decompositions with different records per message give the cost per record and the
    # cost per receiver
    mv, xv = benchmark_system(100_000, 7)
    runs = []
    for p in (64, 512):
        mpi_tree.virtual(mv, xv, p, theta=theta, evaluate=False)  # warm
        _, vs = mpi_tree.virtual(mv, xv, p, theta=theta, evaluate=False)
        records = sum(vs["let_nodes"]) + sum(vs["let_particles"])
        runs.append((records, vs["messages"], vs["select_seconds"]))
    (r1, m1, t1), (r2, m2, t2) = runs
    per_message = max((t2 - t1 * r2 / r1) / (m2 - m1 * r2 / r1), 0.0)
    per_record = (t1 - per_message * m1) / r1
    return {
        "walk_per_interaction": sec["walk"] / best["work"],
        "build_per_particle": sec["build"] / n,
        "local_per_particle": (sec["decompose"] + sec["return"]) / n,
        "select_per_record": per_record,
        "select_per_message": per_message,
        "calibration_n": n,
    }


def _work_per_particle(theta: float, sizes) -> tuple[float, float, list]:
    """Interactions per particle (pair units) against N at P = 1: fit ``a + b log2 N``."""
    from backends import benchmark_system, mpi_tree

    pts = []
    for n in sizes:
        m, x = benchmark_system(n, 42)
        _, st = mpi_tree.virtual(m, x, 1, theta=theta)
        pts.append((n, st["work"][0] / n))
    b, a = np.polyfit(np.log2([p[0] for p in pts]), [p[1] for p in pts], 1)
    return float(a), float(b), pts


def _let_volumes(theta: float, sizes, ranks, receivers: int) -> list[dict]:
    """LET bytes a rank receives, from virtual ranks (the largest of the sampled receivers)."""
    from backends import benchmark_system, mpi_tree

    out = []
    for n in sizes:
        m, x = benchmark_system(n, 42)
        for p in ranks:
            if n // p < 64:
                continue
            who = sorted({int(r) for r in np.linspace(0, p - 1, receivers)})
            t0 = time.perf_counter()
            _, st = mpi_tree.virtual(m, x, p, theta=theta, evaluate=False, receivers=who)
            lets = [st["let_bytes"][r] for r in who]
            row = {"n_total": n, "ranks": p, "n": n / p, "let_bytes_max": max(lets),
                   "let_bytes_mean": float(np.mean(lets)),
                   "let_particles_max": max(st["let_particles"][r] for r in who),
                   "let_nodes_max": max(st["let_nodes"][r] for r in who),
                   "seconds": time.perf_counter() - t0}  # fmt: skip
            out.append(row)
            print(f"  virtual: N = {n:>9d}, P = {p:>5d}, n = {n // p:>7d}: LET max "
                  f"{row['let_bytes_max'] / 1e6:8.3f} MB ({row['let_particles_max']} particles, "
                  f"{row['let_nodes_max']} nodes), mean {row['let_bytes_mean'] / 1e6:8.3f} MB "
                  f"[{row['seconds']:.1f} s]", flush=True)  # fmt: skip
    return out


def _fit_let(rows) -> tuple[float, float, float, float, float]:
    """``log bytes = log A + alpha log n + beta log P`` over the measured points.

    Returns ``A, alpha, beta``, the largest log residual and the largest measured n.
    """
    a = np.array([[1.0, math.log(r["n"]), math.log(r["ranks"])] for r in rows])
    y = np.log([r["let_bytes_max"] for r in rows])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    res = float(np.max(np.abs(a @ coef - y)))
    top = max(r["n"] for r in rows)
    return float(math.exp(coef[0])), float(coef[1]), float(coef[2]), res, top


def let_bytes(n: float, p: int, let) -> float:
    """Return the fitted LET up to the largest measured n, the surface law n^(2/3) beyond."""
    big_a, alpha, beta, _, top = let
    inside = min(n, top)
    return big_a * inside**alpha * p**beta * (n / inside) ** (2.0 / 3.0)


def model_step(n_total: float, p: int, cal: dict, work: tuple, let: tuple) -> dict:
    """Seconds per step of one rank (the busiest: largest LET), by term."""
    n = n_total / p
    a, b = work
    w = a + b * math.log2(n_total)
    let_b = let_bytes(n, p, let)
    records = let_b / 64.0  # about: 8 doubles per node record, 4 per particle
    logp = math.log2(p)
    samples = 16 * min(max(16, 4096 // p), 256)
    terms = {
        "walk": n * w * cal["walk_per_interaction"],
        "build+local": n * (cal["build_per_particle"] + cal["local_per_particle"]),
        "LET select": records * cal["select_per_record"] + (p - 1) * cal["select_per_message"],
        "LET alltoallv": (p - 1) * ALPHA + let_b / BETA,
        "allgathers": 3 * logp * ALPHA
        + (p - 1) * (48 * default_boxes(p) + 16 * buckets_for(p) + samples) / BETA,
        "refine+migrate": 4 * (2 * logp * ALPHA + 16 * (p - 1) / BETA) + MOVED * n * 56 / BETA,
    }
    terms["total"] = sum(terms.values())
    terms["let_bytes"] = let_b
    terms["memory_gb"] = n * 300 / 1e9 + let_b / 1e9 * 3
    return terms


def model(theta: float, max_n: int, receivers: int) -> dict:
    """Measure the inputs, fit, and print the table for P = 64-4096, N = 10^7-10^10."""
    print(f"Model of mpi --algorithm tree at theta {theta}; inputs measured on {machine()}")
    cal = _calibrate(theta)
    print("per-rank costs, one thread: walk {walk_per_interaction:.3e} s per interaction, "
          "build {build_per_particle:.3e} s and decomposition/return {local_per_particle:.3e} s "
          "per particle, LET selection {select_per_record:.3e} s per record sent and "
          "{select_per_message:.3e} s per message".format(**cal))  # fmt: skip
    sizes = [s for s in (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000) if s <= max_n]
    a, b, pts = _work_per_particle(theta, sizes)
    print("interactions per particle (pair units) at P = 1: "
          + ", ".join(f"N = {n:.0e}: {w:.0f}" for n, w in pts)
          + f"; fit {a:.0f} + {b:.1f} log2 N")  # fmt: skip
    let_sizes = [s for s in (250_000, 1_000_000, 4_000_000, 16_000_000) if s <= max_n]
    rows = _let_volumes(theta, let_sizes, [64, 256, 1024, 4096], receivers)
    let = _fit_let(rows)
    print(f"LET fit: bytes = {let[0]:.3g} n^{let[1]:.3f} P^{let[2]:.3f} (max |log residual| "
          f"{let[3]:.2f}, i.e. within x{math.exp(let[3]):.2f}); measured n = "
          f"{min(r['n'] for r in rows):.0f}-{let[4]:.0f}; beyond, the surface law n^(2/3) "
          "(steeper than the fit: conservative)")  # fmt: skip
    print(
        f"network: alpha {ALPHA * 1e6:.1f} us, {NODE_BANDWIDTH / 1e9:.1f} GB/s per node of "
        f"{CORES_PER_NODE} cores, one rank per core (beta {BETA / 1e9:.3f} GB/s per rank)"
    )
    ns = [1e7, 1e8, 1e9, 1e10]
    ps = [64, 128, 256, 512, 1024, 2048, 4096]
    table = {}
    print(
        "\nseconds per step (busiest rank) / parallel efficiency vs P = 64 / dominant term"
        " (memory per rank over 4 GB: 'mem')"
    )
    print(f"{'P':>5s} " + " ".join(f"{f'N = {n:.0e}':>30s}" for n in ns))
    for p in ps:
        cells = []
        for n in ns:
            t = model_step(n, p, cal, (a, b), let)
            t64 = model_step(n, 64, cal, (a, b), let)["total"]
            eff = t64 * 64 / (t["total"] * p)
            top = max((k for k in t if k not in ("total", "let_bytes", "memory_gb")),
                      key=lambda k: t[k])  # fmt: skip
            mem = " mem" if t["memory_gb"] > 4 else ""
            cells.append(f"{t['total']:9.3g} s {eff:5.0%} {t['let_bytes'] / 1e6:7.3g} MB "
                         f"{top:>13s}{mem}")  # fmt: skip
            table[(n, p)] = {**t, "efficiency": eff, "dominant": top}
        print(f"{p:>5d} " + " ".join(f"{c:>41s}" for c in cells))
    cells = {f"{n:.0e} {p}": v for (n, p), v in table.items()}
    return {"calibration": cal, "work_fit": (a, b), "work_points": pts, "let_rows": rows,
            "let_fit": let, "table": cells}  # fmt: skip


def main() -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--scaling", action="store_true", help="strong and weak scaling, measured")
    p.add_argument("--goals", action="store_true", help="the 2-core goals")
    p.add_argument("--model", action="store_true", help="the model for P = 64-4096")
    p.add_argument(
        "--n", type=int, default=None, help="N of strong scaling (400 000) and goals (10^6)"
    )
    p.add_argument("--weak-n", type=int, default=100_000, help="N per rank, weak scaling")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeat", type=int, default=3, help="timed evaluations per job")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --goals")
    p.add_argument("--speed-only", action="store_true", help="--goals without memory, traffic")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--model-max-n", type=int, default=4_000_000, help="largest virtual N")
    p.add_argument("--receivers", type=int, default=8, help="virtual ranks whose LET is built")
    p.add_argument("--json", metavar="FILE", help="write every report and the model as JSON")
    args = p.parse_args()
    out: dict = {}
    if not (args.scaling or args.goals or args.model):
        args.scaling = True
    if args.scaling:
        out["scaling"] = scaling(args.n or 400_000, args.weak_n, args.ranks, args.repeat,
                                 args.theta)  # fmt: skip
    if args.goals:
        out["goals"] = goals(args.n or 1_000_000, args.rounds, args.repeat, args.theta,
                             not args.speed_only)  # fmt: skip
    if args.model:
        out["model"] = model(args.theta, args.model_max_n, args.receivers)
    if args.json:
        Path(args.json).write_text(json.dumps(out, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
