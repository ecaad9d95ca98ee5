"""Calibrate ``fmm``: the rms error of each expansion order and opening angle on a battery.

For every system of :mod:`benchmarks.fmm_systems` (and the softened ones), every order ``p``
and every ``theta``, runs ``fmm`` with ``order=p, theta=theta`` and measures the rms
per-particle relative error against exact direct summation (``numba_parallel``, all rows).
It prints, per order, the largest ``rms / theta**(p + 1)`` over the battery and the system
where it was found: the constant ``c_p`` of the error model ``rms <= c_p theta**(p + 1)``
that ``backends.fmm_dual_tree`` declares (with a safety factor; see its ``_C``).

Usage (minutes; one run at a time on a shared machine)::

    python -m benchmarks.fmm_calibration --n 20000 --orders 2 4 6 8 10 12 14 16
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import backends
from benchmarks.fmm_systems import SOFTENED, SYSTEMS


def rms_error(a, ref) -> float:
    """Return the rms of ``|a_i - ref_i| / |ref_i|`` (``ref_i == 0``: over max ``|ref|``)."""
    diff = np.linalg.norm(a - ref, axis=1)
    norm = np.linalg.norm(ref, axis=1)
    norm = np.where(norm > 0.0, norm, norm.max())
    return float(np.sqrt(np.mean((diff / norm) ** 2)))


def battery(n: int, seed: int = 1):
    """``(label, masses, positions, softening)`` of every calibration system.

    All but the line: ``fmm`` sums collinear systems directly (their forces cancel, so no
    expansion keeps a per-particle relative error).
    """
    out = [(name, *gen(n, seed), 0.0) for name, gen in SYSTEMS.items() if name != "line"]
    for name, soft in SOFTENED:
        out.append((f"{name}+soft{soft:g}", *SYSTEMS[name](n, seed), soft))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--orders", type=int, nargs="+", default=[*range(1, 13), 14, 16, 18, 20])
    ap.add_argument("--thetas", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75])
    ap.add_argument("--leaf-size", type=int, default=16, help="small leaves: more M2L")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every (order, theta, system, rms) here")
    args = ap.parse_args(argv)

    from backends import fmm_dual_tree as fmm
    from benchmarks.fmm_scaling import header

    exact = backends.get("numba_parallel").accel
    print(f"# {header()}; calibration N = {args.n}, leaf_size {args.leaf_size}")
    print(f"# python -m benchmarks.fmm_calibration {' '.join(argv or sys.argv[1:])}")
    systems = battery(args.n, args.seed)
    refs = [exact(m, x, softening=soft) for _, m, x, soft in systems]
    print("order theta: the 3 largest rms / theta**(p + 1) (rms, system)")
    points = []
    for p in args.orders:
        for theta in args.thetas:
            worst = (0.0, 0.0, "")
            seen = []
            for (label, m, x, soft), ref in zip(systems, refs, strict=True):
                a = fmm.accel(m, x, softening=soft, order=p, theta=theta, leaf_size=args.leaf_size)
                err = rms_error(a, ref)
                points.append({"order": p, "theta": theta, "system": label, "rms": err})
                ratio = err / theta ** (p + 1)
                seen.append((ratio, err, label))
            seen.sort(reverse=True)
            worst = ", ".join(f"{r:.2e} ({e:.1e} {lab})" for r, e, lab in seen[:3])
            print(f"{p:2d} {theta:.2f} {worst}", flush=True)
        print(f"# done order {p}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header(), "n": args.n, "points": points}, fh, indent=1)


if __name__ == "__main__":
    main()
