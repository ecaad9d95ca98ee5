"""The approximate ``tree`` backend: time and rms error at N = 100 000, per setting.

``settings`` names a set of keyword options of :func:`backends.tree_barnes_hut.accel`:
``default`` (theta 0.5, monopoles) and ``quadrupole`` (theta 0.7 with quadrupoles, about the
same accuracy). The error is the rms over 256 sampled rows of the per-particle relative
error against exact direct-summation rows (``numba_parallel.accel_block``, exact to ~1e-14).
"""

from __future__ import annotations

import functools
import timeit

import numpy as np

from benchmarks import _common as c

#: Size of the tree benchmarks (shrinks with NBODY_BENCH_TINY=1).
TREE_N = 2_000 if c.TINY else 100_000
SETTINGS = {"default": {}, "quadrupole": {"theta": 0.7, "quadrupole": True}}


@functools.cache
def _exact_rows(n: int, count: int = 256):
    from backends.numba_parallel import accel_block

    m, x = c.inputs(n)
    rows = np.unique(np.linspace(0, n - 1, count).astype(np.intp))
    return rows, accel_block(np.ascontiguousarray(x[rows]), m, x, 1.0, 0.0)


class TreeAccel:
    """Wall time (seconds) and rms relative error of one warm ``tree`` call."""

    params = (list(SETTINGS), [TREE_N])
    param_names = ["settings", "n"]
    number = 1
    repeat = (2, 5, 2.0)
    warmup_time = 0.0
    timer = timeit.default_timer
    timeout = 300

    def setup(self, settings, n):
        c.require("tree", n)
        self.m, self.x = c.inputs(n)
        self.options = SETTINGS[settings]
        self.accel = c.get("tree").accel
        c.warm("tree", c.WARM_N)  # compiles; the tree's kernels do not depend on N

    def time_accel(self, settings, n):
        self.accel(self.m, self.x, **self.options)

    def track_rms_error(self, settings, n):
        rows, ref = _exact_rows(n)
        a = self.accel(self.m, self.x, **self.options)[rows]
        rel = np.linalg.norm(a - ref, axis=1) / np.linalg.norm(ref, axis=1)
        return float(np.sqrt(np.mean(rel**2)))

    track_rms_error.unit = "rms relative error"
