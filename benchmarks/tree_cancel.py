"""``tree`` where forces cancel: its error on lattices and the cost of step 7's recomputation.

``tree`` computes again the particles whose acceleration is below ``1 / CANCEL`` of their
far field's scale (``backends/tree_barnes_hut.py``, step 7; ``docs/tree.md``, "Forces that
cancel"). This script measures, in one process:

* ``--accuracy``: the rms per-particle relative error over the declared bound, with the
  particles of step 7 computed again and without (``CANCEL`` set to infinity), on the
  jittered cubic lattice of
  ``benchmarks/fmm_systems.py``, the same lattice with masses of alternating signs, a square
  grid in a plane and the benchmark system, at several settings (errors against
  ``numba_parallel``'s exact sums of every row);
* ``--cost``: the time of ``tree`` with those particles computed again against without,
  interleaved, best of ``--repeat``, on the benchmark system and a Plummer sphere, with
  their number. Both sides sum the far field's scale in the walk, so this is the cost of
  the recomputation alone; the scale's sum itself is measured against the code before
  step 7 in ``docs/tree.md``.

    python -m benchmarks.tree_cancel --accuracy --n 3000 20000
    python -m benchmarks.tree_cancel --cost --n 100000 1000000

Prints the CPU, SIMD width, thread count and date first.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import backends
from backends import tree_barnes_hut as tbh
from benchmarks.fmm_scaling import header
from benchmarks.fmm_systems import SYSTEMS, alternating_lattice, planar_grid, plummer

SETTINGS = (
    {},
    {"theta": 0.7, "quadrupole": True},
    {"theta": 0.3, "quadrupole": True},
    {"theta": 0.2},
    {"theta": 0.5, "leaf_size": 1, "group_size": 1},
)


def systems(n: int):
    return {
        "lattice": SYSTEMS["lattice"](n, 4),
        "alternating signs": alternating_lattice(n, 1),
        "planar grid": planar_grid(n, 5),
        "benchmark": backends.benchmark_system(n),
    }


def rms_over_bound(m, x, ref, options) -> float:
    d = np.linalg.norm(ref, axis=1)
    ok = d > 0
    e = np.linalg.norm(tbh.accel(m, x, **options) - ref, axis=1)[ok] / d[ok]
    return float(np.sqrt(np.mean(e**2))) / tbh.tolerance(**options)


def accuracy(sizes) -> None:
    print("| system | N | setting | rms / bound, not computed again | computed again |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for name, (m, x) in systems(n).items():
            ref = backends.get("numba_parallel").accel(m, x)
            for options in SETTINGS:
                kept = tbh.CANCEL
                try:
                    tbh.CANCEL = math.inf
                    off = rms_over_bound(m, x, ref, options)
                finally:
                    tbh.CANCEL = kept
                on = rms_over_bound(m, x, ref, options)
                label = ", ".join(f"{k} {v}" for k, v in options.items()) or "defaults"
                print(f"| {name} | {n} | {label} | {off:.3g} | {on:.3g} |", flush=True)


def cost(sizes, repeat: int) -> None:
    print("| system | N | setting | s, not again | s, computed again | ratio | particles |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        for name, (m, x) in (("benchmark", backends.benchmark_system(n)), ("plummer", plummer(n))):
            for options in SETTINGS[:3]:
                best = {"off": math.inf, "on": math.inf}
                tbh.accel(m, x, **options)  # compiled and warm
                for _ in range(repeat):
                    for key in ("off", "on"):
                        kept = tbh.CANCEL
                        try:
                            if key == "off":
                                tbh.CANCEL = math.inf
                            t0 = time.perf_counter()
                            tbh.accel(m, x, **options)
                            best[key] = min(best[key], time.perf_counter() - t0)
                        finally:
                            tbh.CANCEL = kept
                again = flagged(m, x, options)
                label = ", ".join(f"{k} {v}" for k, v in options.items()) or "defaults"
                print(f"| {name} | {n} | {label} | {best['off']:.3f} | {best['on']:.3f} | "
                      f"{best['on'] / best['off']:.3f} | {again} |", flush=True)  # fmt: skip


def flagged(m, x, options) -> int:
    """How many particles step 7 computes again at these settings."""
    import numba

    theta = options.get("theta", tbh.DEFAULT_THETA)
    quad = options.get("quadrupole", False)
    leaf = options.get("leaf_size", tbh.DEFAULT_LEAF_SIZE)
    group = options.get("group_size", tbh.DEFAULT_GROUP_SIZE)
    p, f, nodes, groups, order, s, ms, fast = tbh._tree(m, x, 0.0, theta, quad, leaf, group)
    acc, sc = tbh._evaluate(p, f, nodes, groups, theta, 0.0, quad, fast, numba.get_num_threads())
    return int(tbh.cancelling(acc, sc, tbh.CANCEL).shape[0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accuracy", action="store_true", help="error over bound, with and without")
    ap.add_argument("--cost", action="store_true", help="time with and without the step")
    ap.add_argument("--n", type=float, nargs="+", default=[3000.0], help="particle counts")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved timings (--cost)")
    args = ap.parse_args(argv)
    if not (args.accuracy or args.cost):
        ap.error("give --accuracy, --cost or both")
    if args.repeat < 1 or any(n < 2 for n in args.n):
        ap.error("--repeat must be >= 1 and every --n >= 2")
    sizes = [int(n) for n in args.n]
    print(f"# {header()}", flush=True)
    if args.accuracy:
        accuracy(sizes)
    if args.cost:
        cost(sizes, args.repeat)


if __name__ == "__main__":
    main()
