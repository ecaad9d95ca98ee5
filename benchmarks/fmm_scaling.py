"""``fmm`` against its speed goals, timed interleaved in one run (the figures of docs/fmm.md).

Five comparisons, each on the benchmark system (``backends.benchmark_system``) and a Plummer
sphere, every timing the best of ``--repeat`` calls alternated with its rival's (A, B, A,
B, ...), the error the rms per-particle relative error on ``--rows`` sampled rows against
exact direct summation (``numba_parallel.accel_block``, exact to ~1e-14):

* ``direct``: ``fmm`` at N = ``--big`` (default 10**6), eps 1e-6, against ``numba_parallel`` at
  N = ``--small`` (10**5) scaled by ``(big / small)**2``: the speed-up over direct summation.
* ``fmm3d``: at N = ``--peer-n`` (2 x 10**5), fmm3dpy at its own precisions 1e-3, 1e-6,
  1e-9 (the wrapper's ``eps`` 20 times that: it asks fmm3dpy for
  ``peer_fmm3d.library_eps(eps)``) against the fastest ``fmm`` setting (eps from 1e-2 down)
  whose rms is no worse.
* ``linear``: seconds per particle at N = ``--huge`` (10**7) over that at ``--big``.
* ``widen``: at N = ``--small``, ``fmm`` at eps 1e-4 and at its order with wider angles
  (0.5, 0.55, 0.6, 0.65), interleaved with ``tree`` at theta 0.3 and 0.25 with quadrupoles,
  with the bound each ``fmm`` setting would declare: what beating ``tree`` there would take.
* ``tree``: for eps 1e-4, 1e-5, 1e-6 at N = ``--small``, ``fmm`` at that eps against the
  fastest ``tree`` setting (theta from 0.8 down, quadrupoles on and off) whose measured rms
  is within the same eps (the frontier's question: the fastest way to rms <= eps), or with
  ``--tree-target measured`` within the rms ``fmm`` measured.

Usage (minutes; one timing run at a time on a shared machine)::

    python -m benchmarks.fmm_scaling --threads 2 --goals direct fmm3d linear tree

Not part of the asv suite (N = 10**7 takes minutes and gigabytes; fmm3dpy is optional).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np

import backends
from benchmarks.fmm_systems import plummer
from benchmarks.tree_vs_pytreegrav import Rows  # exact sampled rows and their rms error

SYSTEMS = {"benchmark": backends.benchmark_system, "plummer": plummer}
FMM_EPS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
PEER_EPS = (1e-3, 1e-6, 1e-9)
TREE_EPS = (1e-4, 1e-5, 1e-6)
WIDE = (0.5, 0.55, 0.6, 0.65)  # the angles of the widen goal, at eps 1e-4's order
TREE_THETAS = (0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05)


def header() -> str:
    """CPU, SIMD, threads and the date: printed above every figure."""
    import numba

    from backends.compare.report import metadata

    md = metadata()
    simd = md["machine"]["simd"]
    return (
        f"{md['machine']['cpu']} ({simd['isa']}, {simd['bits']}-bit), "
        f"{numba.get_num_threads()} Numba threads, numba {numba.__version__}, {md['date']}"
    )


def best_of(calls, repeat):
    """Time each callable ``repeat`` times, interleaved; best times and last results."""
    best = [np.inf] * len(calls)
    out = [None] * len(calls)
    for _ in range(repeat):
        for k, fn in enumerate(calls):
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def goal_direct(args):
    fmm = backends.get("fmm").accel
    exact = backends.get("numba_parallel").accel
    for name, gen in SYSTEMS.items():
        m, x = gen(args.big)
        ms, xs = gen(args.small)
        rows = Rows(m, x, args.rows)
        progress(f"direct: {name}")
        (tf, td), (a, _) = best_of(
            [lambda m=m, x=x: fmm(m, x, eps=1e-6), lambda m=ms, x=xs: exact(m, x)], args.repeat
        )
        scaled = td * (args.big / args.small) ** 2
        print(
            f"direct  {name:9s} fmm eps 1e-6 N={args.big:.0e}: {tf:7.2f} s rms {rows.rms(a):.2e}"
            f" | numba_parallel N={args.small:.0e}: {td:6.2f} s -> {scaled:8.1f} s at "
            f"N={args.big:.0e} | speed-up {scaled / tf:6.1f}x",
            flush=True,
        )


def goal_fmm3d(args):
    if backends.unavailable_reason("fmm3d") is not None:
        print(f"fmm3d   skipped: {backends.unavailable_reason('fmm3d')}")
        return
    from backends import peer_fmm3d

    fmm = backends.get("fmm").accel
    peer = backends.get("fmm3d").accel
    for name, gen in SYSTEMS.items():
        m, x = gen(args.peer_n)
        rows = Rows(m, x, args.rows)
        for pe in PEER_EPS:
            progress(f"fmm3d: {name} eps {pe:g}")
            we = pe / peer_fmm3d.ASKED  # the wrapper's eps that asks fmm3dpy for pe
            assert math.isclose(peer_fmm3d.library_eps(we), pe, rel_tol=1e-12)
            (tp,), (ap,) = best_of([lambda m=m, x=x, we=we: peer(m, x, eps=we)], 1)
            target = rows.rms(ap)
            choice = None
            for fe in FMM_EPS:  # the fastest end first: the first that matches is taken
                a = fmm(m, x, eps=fe)
                if rows.rms(a) <= target:
                    choice = fe
                    break
            if choice is None:
                print(
                    f"fmm3d   {name:9s} fmm3dpy eps {pe:g}: rms {target:.1e}, no fmm eps >= 1e-10 "
                    "matches"
                )
                continue
            (tf, tp), (a, ap) = best_of(
                [
                    lambda m=m, x=x, fe=choice: fmm(m, x, eps=fe),
                    lambda m=m, x=x, we=we: peer(m, x, eps=we),
                ],
                args.repeat,
            )
            print(
                f"fmm3d   {name:9s} N={args.peer_n:.0e} fmm3dpy eps {pe:g}: {tp:6.2f} s rms "
                f"{rows.rms(ap):.1e} | fmm eps {choice:g}: {tf:6.2f} s rms {rows.rms(a):.1e} | "
                f"fmm {tp / tf:5.1f}x faster",
                flush=True,
            )


def goal_linear(args):
    fmm = backends.get("fmm").accel
    for name, gen in SYSTEMS.items():
        m, x = gen(args.big)
        mh, xh = gen(args.huge)
        progress(f"linear: {name}")
        calls = [lambda m=m, x=x: fmm(m, x), lambda m=mh, x=xh: fmm(m, x)]
        (tb, th), _ = best_of(calls, max(1, args.repeat - 1))
        ratio = (th / args.huge) / (tb / args.big)
        print(
            f"linear  {name:9s} eps 1e-6 N={args.big:.0e}: {tb:7.2f} s ({tb / args.big * 1e6:.2f}"
            f" us/particle) | N={args.huge:.0e}: {th:7.2f} s ({th / args.huge * 1e6:.2f} "
            f"us/particle) | ratio {ratio:.2f}",
            flush=True,
        )


def goal_tree(args):
    fmm = backends.get("fmm").accel
    tree = backends.get("tree").accel
    for name, gen in SYSTEMS.items():
        m, x = gen(args.small)
        rows = Rows(m, x, args.rows)
        for fe in TREE_EPS:
            progress(f"tree: {name} eps {fe:g}")
            target = fe if args.tree_target == "eps" else rows.rms(fmm(m, x, eps=fe))
            found = []
            for quad in (True, False):
                for th in TREE_THETAS:
                    t0 = time.perf_counter()
                    a = tree(m, x, theta=th, quadrupole=quad)
                    dt = time.perf_counter() - t0
                    if rows.rms(a) <= target:
                        found.append((dt, th, quad))
                        break
            if not found:
                print(
                    f"tree    {name:9s} eps {fe:g}: no tree theta >= 0.05 reaches rms {target:.1e}"
                )
                continue
            _, th, quad = min(found)
            (tf, tt), (a, at) = best_of(
                [
                    lambda m=m, x=x, fe=fe: fmm(m, x, eps=fe),
                    lambda m=m, x=x, th=th, q=quad: tree(m, x, theta=th, quadrupole=q),
                ],
                args.repeat,
            )
            print(
                f"tree    {name:9s} N={args.small:.0e} fmm eps {fe:g}: {tf:6.2f} s rms "
                f"{rows.rms(a):.1e} | tree theta {th} quadrupole {quad}: {tt:6.2f} s rms "
                f"{rows.rms(at):.1e} | fmm {tt / tf:5.1f}x faster",
                flush=True,
            )


def goal_widen(args):
    from backends import fmm_dual_tree

    fmm = backends.get("fmm").accel
    tree = backends.get("tree").accel
    order = fmm_dual_tree.settings(eps=1e-4)["order"]
    calls = [("fmm eps 1e-4", {"eps": 1e-4}, fmm)]
    calls += [(f"fmm order {order} theta {t:g}", {"order": order, "theta": t}, fmm) for t in WIDE]
    calls += [(f"tree theta {t:g} quadrupoles", {"theta": t, "quadrupole": True}, tree)
              for t in (0.3, 0.25)]  # fmt: skip
    for name, gen in SYSTEMS.items():
        m, x = gen(args.small)
        rows = Rows(m, x, args.rows)
        progress(f"widen: {name}")
        times, outs = best_of(
            [lambda m=m, x=x, f=f, o=o: f(m, x, **o) for _, o, f in calls], args.repeat
        )
        for (label, o, f), t, a in zip(calls, times, outs, strict=True):
            kind = "fmm" if f is fmm else "tree"
            bound = backends.tolerance(kind, **o)
            print(
                f"widen   {name:9s} N={args.small:.0e} {label:28s}: {t:6.3f} s rms "
                f"{rows.rms(a):.1e} (declared bound {bound:.1e})",
                flush=True,
            )


GOALS = {
    "direct": goal_direct,
    "fmm3d": goal_fmm3d,
    "linear": goal_linear,
    "tree": goal_tree,
    "widen": goal_widen,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goals", nargs="+", default=list(GOALS), choices=GOALS)
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--huge", type=int, default=10_000_000)
    ap.add_argument("--peer-n", type=int, default=200_000)
    ap.add_argument("--rows", type=int, default=1000, help="sampled rows for the error")
    ap.add_argument(
        "--tree-target",
        choices=("eps", "measured"),
        default="eps",
        help="tree must reach rms <= the requested eps, or <= fmm's measured rms",
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    import numba

    numba.set_num_threads(args.threads)
    for name in set(SYSTEMS) - set(args.systems):
        del SYSTEMS[name]
    m, x = backends.benchmark_system(2000)
    for b in ("fmm", "numba_parallel", "tree"):  # compile outside the timings
        backends.get(b).accel(m, x)
    print(f"# {header()}")
    print(f"# python -m benchmarks.fmm_scaling {' '.join(argv or sys.argv[1:])}")
    for goal in args.goals:
        GOALS[goal](args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"# peak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
