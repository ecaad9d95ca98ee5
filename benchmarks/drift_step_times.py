"""Force-evaluation times of the rows of docs/drift.md, interleaved: the speed behind a drift.

``python -m backends drift`` times its rows one after another, each over its own run; on a
shared machine that mixes the speed of each backend with the load of the moment. This
script calls every setting on the same Plummer sphere (:func:`backends.drift.plummer.sphere`)
in turn, round after round (A, B, C, A, B, C, ...), and reports each one's best and median
time per call and its ratio to ``numba_parallel``'s best, with the CPU, SIMD width and
threads.

Usage::

    python -m benchmarks.drift_step_times --n 10000 --threads 2 --rounds 5

Not part of the asv suite (``bench_drift`` tracks the conservation figures there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import backends

SETTINGS = (
    ("numba_parallel", {}),
    ("numba_parallel", {"precision": "float32"}),
    ("multiprocessing", {}),
    ("joblib", {}),
    ("tree", {}),
    ("tree", {"theta": 0.8}),
    ("tree", {"theta": 0.7, "quadrupole": True}),
)


def main(argv: list[str] | None = None) -> int:
    """Time every setting, interleaved; print one line each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--softening", type=float, default=0.01)
    args = p.parse_args(argv)
    import numba

    from backends.compare.args import Job
    from backends.compare.report import metadata
    from backends.drift.plummer import sphere

    if args.threads:
        numba.set_num_threads(args.threads)
    (m, x, _), _ = sphere(args.n, 42)
    calls = []
    for name, options in SETTINGS:
        if backends.unavailable_reason(name) is None:
            b = backends.get(name)
            b.accel(m, x, softening=args.softening, **options)  # compile, start pools
            calls.append((Job(name, options).label, b, options))
    times: dict[str, list[float]] = {label: [] for label, _, _ in calls}
    for _ in range(args.rounds):
        for label, b, options in calls:
            t0 = time.perf_counter()
            b.accel(m, x, softening=args.softening, **options)
            times[label].append(time.perf_counter() - t0)
    for _, b, _ in calls:
        b.close()
    meta = metadata()
    machine = meta["machine"]
    print(
        f"N={args.n:,} Plummer sphere, eps={args.softening:g}; {machine['cpu']}, "
        f"{machine['simd']['isa']}, {numba.get_num_threads()} Numba threads, {meta['date']}; "
        f"best and median of {args.rounds} interleaved calls"
    )
    base = min(times["numba_parallel"]) if "numba_parallel" in times else None
    for label, ts in times.items():
        ratio = f"{min(ts) / base:6.2f}x numba_parallel" if base else ""
        print(f"{label:36s} {min(ts):8.4f} s  {statistics.median(ts):8.4f} s  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
