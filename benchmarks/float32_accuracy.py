"""Max and rms per-particle relative error of ``precision="float32"``, against float64.

Usage::

    python benchmarks/float32_accuracy.py [--n 2000 10000 100000] [--backends numba_parallel jax]

Systems: the benchmark system (``backends.benchmark_system``) and a Plummer sphere (scale
radius 1) with masses log-uniform over five decades, seed 0. The reference is the float64
``numba_parallel`` result (itself within 1e-13 of the ``python`` oracle, which is also
used where N <= 2 000). The metric is the project's: ``max_i |a_i - ref_i| / |ref_i|``, and
the root mean square of the same per-particle ratio. A script, not part of the asv suite.
"""

from __future__ import annotations

import argparse
import datetime

import numpy as np

import backends
from backends import numba_parallel, reference, relative_error
from backends._contract import FLOAT32_TOLERANCE


def plummer(n, seed=0, decades=5.0):
    """Plummer sphere with log-uniform masses spanning ``decades`` (total mass 1)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(1e-10, 1.0, n)
    r = 1.0 / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    m = 10.0 ** rng.uniform(0.0, decades, n)
    return m / m.sum(), r[:, None] * v


def rms_error(a, ref):
    d = np.linalg.norm(a - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return float(np.sqrt(np.mean(d**2)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10_000, 100_000])
    ap.add_argument("--backends", nargs="+", default=["numba_parallel", "jax"])
    args = ap.parse_args(argv)
    names = [b for b in args.backends if b in backends.available()]
    print(f"# float32 accuracy, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} UTC")
    for n in args.n:
        for label, (m, x) in (("benchmark", backends.benchmark_system(n)), ("plummer", plummer(n))):
            ref = numba_parallel.accel(m, x)
            if n <= 2000:
                ref_err = relative_error(ref, reference.accel(m, x))
                print(f"  N={n:>6d} {label:9s} float64 numba_parallel vs oracle {ref_err:.1e}")
            for name in names:
                out = backends.accel(m, x, backend=name, precision="float32")
                print(
                    f"  N={n:>6d} {label:9s} {name:15s} float32: max {relative_error(out, ref):.1e}"
                    f"  rms {rms_error(out, ref):.1e}  (bound {FLOAT32_TOLERANCE:g})"
                )


if __name__ == "__main__":
    main()
