"""Float32 against float64: throughput and error of the backends with ``precision=``.

For every in-process backend whose registry entry lists ``"float32"`` (``numba_parallel``,
``jax``; ``cuda`` where a GPU is present), in both precisions: seconds per 10^9 interactions
(N(N-1) per call, best of several warm calls; lower is better), and the max per-particle
relative error of the float32 result against the float64 one of the same backend.
"""

from __future__ import annotations

import timeit

import backends
from benchmarks import _common as c


def _float32_backends() -> list[str]:
    return [n for n in c.in_process() if "float32" in backends.precisions(n)]


class PrecisionThroughput:
    """Seconds per 10^9 interactions in each precision (best of up to 10 calls, 2 s)."""

    params = (_float32_backends(), ["float64", "float32"], c.SIZES)
    param_names = ["backend", "precision", "n"]
    rounds = 1
    timeout = 300
    calls = 10
    budget = 2.0

    def setup(self, name, precision, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel
        c.warm(name, n)
        self.accel(self.m, self.x, precision=precision)  # compile this precision

    def track_seconds_per_1e9_interactions(self, name, precision, n):
        best = float("inf")
        start = timeit.default_timer()
        for _ in range(self.calls):
            t0 = timeit.default_timer()
            self.accel(self.m, self.x, precision=precision)
            t1 = timeit.default_timer()
            best = min(best, t1 - t0)
            if t1 - start > self.budget:
                break
        return best / backends.interactions(n) * 1e9

    track_seconds_per_1e9_interactions.unit = "s / 1e9 interactions"


class Float32Error:
    """Max per-particle relative error of float32 against the same backend's float64."""

    params = (_float32_backends(), c.SIZES)
    param_names = ["backend", "n"]
    rounds = 1
    timeout = 300

    def setup(self, name, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel

    def track_float32_error(self, name, n):
        ref = self.accel(self.m, self.x)
        return backends.relative_error(self.accel(self.m, self.x, precision="float32"), ref)

    track_float32_error.unit = "relative error"
