"""Steady state: time of one ``accel`` call, and throughput, over (backend, N).

Every registered in-process backend is a parameter; unavailable backends and too-slow
combinations (``python`` above N = 1 000) are skipped. ``setup`` warms up once per process
(compilation, pool start, JAX tracing), so only steady-state calls are timed.
"""

from __future__ import annotations

import timeit

import backends
from benchmarks import _common as c


class TimeAccel:
    """Wall time of one warm ``accel`` call (seconds)."""

    params = (c.in_process(), c.SIZES)
    param_names = ["backend", "n"]
    number = 1
    repeat = (2, 5, 2.0)
    warmup_time = 0.0
    timer = timeit.default_timer  # wall clock: pool backends work in child processes
    timeout = 300

    def setup(self, name, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel
        c.warm(name, n)

    def time_accel(self, name, n):
        self.accel(self.m, self.x)


class Throughput:
    """Seconds per 10^9 interactions (N(N-1) per call), best of several warm calls.

    Lower is better, as asv assumes for every number. A track has no samples for asv to
    judge noise by, so the best of up to ten calls is taken to keep the figure stable.
    """

    params = (c.in_process(), c.SIZES)
    param_names = ["backend", "n"]
    rounds = 1
    timeout = 300
    calls = 10  # best of at most this many calls ...
    budget = 2.0  # ... stopping early once this many seconds have been spent

    def setup(self, name, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel
        c.warm(name, n)

    def track_seconds_per_1e9_interactions(self, name, n):
        best = float("inf")
        start = timeit.default_timer()
        for _ in range(self.calls):
            t0 = timeit.default_timer()
            self.accel(self.m, self.x)
            t1 = timeit.default_timer()
            best = min(best, t1 - t0)
            if t1 - start > self.budget:
                break
        return best / backends.interactions(n) * 1e9

    track_seconds_per_1e9_interactions.unit = "s / 1e9 interactions"
