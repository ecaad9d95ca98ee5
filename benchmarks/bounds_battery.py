"""Measure every approximate backend's rms error on the hard systems against its declared bound.

    python -m benchmarks.bounds_battery --n 2000 20000 --seeds 1 2
    python -m benchmarks.bounds_battery --backends tree --quick

For each approximate backend available here, each setting of its grid (below) and each
system of :mod:`backends.systems` (shifted far from the origin too), the rms and max
per-particle relative error against ``numba_parallel`` (float64 direct summation, within
~1e-13 of the pure-Python oracle on these systems). Prints, per backend and setting, the
worst rms over the systems (and which), the declared bound (:func:`backends.tolerance`) and
their ratio; then, at each backend's defaults, the worst rms per system. A bound that fails
is marked ``FAIL``. This is how the bounds in ``docs/tree.md`` and ``docs/peers.md`` were
calibrated; ``tests/test_bounds.py`` checks a small part of it on every run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import backends
from backends import systems

#: Settings swept per backend (the defaults are ``{}``).
GRID = {
    "tree": [
        {},
        *({"theta": t} for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)),
        *({"theta": t, "quadrupole": True} for t in (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)),
        *({"theta": t, "leaf_size": 1, "group_size": 1} for t in (0.2, 0.5, 1.0)),
        *(
            {"theta": t, "quadrupole": True, "leaf_size": 1, "group_size": 1}
            for t in (0.2, 0.5, 1.0)
        ),
        {"theta": 0.5, "leaf_size": 4, "group_size": 8},
    ],
    "pytreegrav_tree": [
        {},
        *({"theta": t} for t in (0.3, 0.5, 0.7, 0.9, 1.0)),
        *({"theta": t, "quadrupole": True} for t in (0.3, 0.5, 0.7, 0.9, 1.0)),
    ],
    "fmm3d": [{}, *({"eps": e} for e in (1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-9, 1e-10, 1e-12))],
    "fmm": [{}, *({"eps": e} for e in (1e-2, 1e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12))],
}
QUICK = {
    "tree": [{}, {"theta": 0.7, "quadrupole": True}, {"theta": 1.0, "leaf_size": 1}],
    "pytreegrav_tree": [{}, {"theta": 0.5, "quadrupole": True}],
    "fmm3d": [{}, {"eps": 1e-3}, {"eps": 1e-6}, {"eps": 1e-9}],
    "fmm": [{}, {"eps": 1e-3}, {"eps": 1e-6}, {"eps": 1e-9}],
}
SHIFTS = (0.0, 1e8)


def errors(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-particle relative errors (the project's metric)."""
    diff = np.linalg.norm(out - ref, axis=1)
    norm = np.linalg.norm(ref, axis=1)
    return diff / np.where(norm > 0.0, norm, norm.max())


def label(options: dict) -> str:
    """``theta=0.5, quadrupole=True`` (or ``defaults``)."""
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


def run(names, ns, seeds, grid, shifts, which=systems.SYSTEMS, progress=sys.stderr):
    """Measure; return ``{(backend, label): [(system, n, seed, shift, rms, max), ...]}``."""
    exact = backends.get("numba_parallel")
    results: dict[tuple[str, str], list] = {}
    for n in ns:
        for seed in seeds:
            for name in which:
                for shift in shifts:
                    m, x = systems.make(name, n, seed=seed, shift=shift)
                    ref = exact.accel(m, x)
                    for b in names:
                        for options in grid[b]:
                            t0 = time.perf_counter()
                            try:
                                e = errors(backends.accel(m, x, backend=b, **options), ref)
                                rec = (name, n, seed, shift, float(np.sqrt(np.mean(e**2))),
                                       float(e.max()))  # fmt: skip
                            except ValueError as exc:  # a refusal (fmm3d's separation check)
                                rec = (name, n, seed, shift, None, str(exc).split(";")[0])
                            results.setdefault((b, label(options)), []).append(rec)
                            progress.write(
                                f"\r{b} {label(options)} {name} N={n} seed={seed} "
                                f"shift={shift:g}: {time.perf_counter() - t0:.2f} s\x1b[K"
                            )
                            progress.flush()
    progress.write("\n")
    return results


def report(results, grid, out=sys.stdout) -> int:
    """Print the tables; return the number of failed bounds."""
    failed = 0
    out.write("| backend | setting | bound | worst rms | on | ratio | worst max |\n")
    out.write("|---|---|---|---|---|---|---|\n")
    for (b, lab), recs in results.items():
        options = next(o for o in grid[b] if label(o) == lab)
        bound = backends.tolerance(b, **options)
        ok = [r for r in recs if r[4] is not None]
        worst = max(ok, key=lambda r: r[4])
        line_free = [r for r in ok if r[0] != "line"]
        refused = sorted({r[0] for r in recs if r[4] is None})
        mark = "" if worst[4] <= bound else " FAIL"
        failed += worst[4] > bound
        where = f"{worst[0]} N={worst[1]}" + (f" +{worst[3]:g}" if worst[3] else "")
        extra = f"; off the line {max(r[4] for r in line_free):.2e}" if line_free else ""
        extra += f"; refused: {', '.join(refused)}" if refused else ""
        out.write(
            f"| {b} | {lab} | {bound:.2e} | {worst[4]:.2e}{mark} | {where}{extra} | "
            f"{bound / max(worst[4], 1e-300):.1f} | {max(r[5] for r in ok):.2e} |\n"
        )
    out.write("\nAt the defaults, worst rms per system:\n\n")
    names = sorted({b for b, _ in results})
    out.write("| system | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n")
    for s in systems.SYSTEMS:
        cells = []
        for b in names:
            recs = [r for r in results.get((b, "defaults"), []) if r[0] == s]
            vals = [r[4] for r in recs if r[4] is not None]
            cells.append(f"{max(vals):.1e}" if vals else "refused")
        out.write(f"| {s} | " + " | ".join(cells) + " |\n")
    out.write("| declared | " + " | ".join(f"{backends.tolerance(b):.1e}" for b in names) + " |\n")
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--quick", action="store_true", help="a few settings per backend")
    parser.add_argument("--no-shift", action="store_true", help="skip the shifted copies")
    parser.add_argument("--systems", nargs="+", default=None, choices=systems.SYSTEMS)
    args = parser.parse_args(argv)
    grid = QUICK if args.quick else GRID
    names = args.backends or [
        b for b in backends.available() if not backends.is_exact(b) and b in grid
    ]
    for b in names:
        if b not in grid:
            parser.error(f"no settings grid for backend {b!r}; known: {', '.join(grid)}")
    shifts = (0.0,) if args.no_shift else SHIFTS
    import numba

    from backends.compare.report import metadata

    meta = metadata()
    print(
        f"# {meta['machine']['cpu']}, {numba.get_num_threads()} threads, {meta['date']}; "
        f"N = {args.n}, seeds {args.seeds}, shifts {list(shifts)}"
    )
    results = run(names, args.n, args.seeds, grid, shifts, args.systems or systems.SYSTEMS)
    return 1 if report(results, grid) else 0


if __name__ == "__main__":
    sys.exit(main())
