"""The approximate ``fmm`` backend: time and rms error at N = 100 000, per requested ``eps``.

``eps`` is the requested rms per-particle relative error (the backend picks its expansion
order and opening angle from it). The error is the rms over 256 sampled rows of the
per-particle relative error against exact direct-summation rows
(``numba_parallel.accel_block``, exact to ~1e-14).
"""

from __future__ import annotations

import functools
import timeit

import numpy as np

from benchmarks import _common as c

#: Size of the fmm benchmarks (shrinks with NBODY_BENCH_TINY=1).
FMM_N = 2_000 if c.TINY else 100_000
EPS = ["1e-3", "1e-6", "1e-9"]


@functools.cache
def _exact_rows(n: int, count: int = 256):
    from backends.numba_parallel import accel_block

    m, x = c.inputs(n)
    rows = np.unique(np.linspace(0, n - 1, count).astype(np.intp))
    return rows, accel_block(np.ascontiguousarray(x[rows]), m, x, 1.0, 0.0)


class FmmAccel:
    """Wall time (seconds) and rms relative error of one warm ``fmm`` call."""

    params = (EPS, [FMM_N])
    param_names = ["eps", "n"]
    number = 1
    repeat = (2, 5, 2.0)
    warmup_time = 0.0
    timer = timeit.default_timer
    timeout = 300

    def setup(self, eps, n):
        c.require("fmm", n)
        self.m, self.x = c.inputs(n)
        self.eps = float(eps)
        self.accel = c.get("fmm").accel
        c.warm("fmm", c.WARM_N)  # compiles; the kernels do not depend on N or eps

    def time_accel(self, eps, n):
        self.accel(self.m, self.x, eps=self.eps)

    def track_rms_error(self, eps, n):
        rows, ref = _exact_rows(n)
        a = self.accel(self.m, self.x, eps=self.eps)[rows]
        rel = np.linalg.norm(a - ref, axis=1) / np.linalg.norm(ref, axis=1)
        return float(np.sqrt(np.mean(rel**2)))

    track_rms_error.unit = "rms relative error"
