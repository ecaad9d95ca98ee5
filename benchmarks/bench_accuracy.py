"""Accuracy: error of each backend against the pure-Python oracle at large N.

The oracle (:func:`backends.reference.accel_rows`, correctly rounded sums) computes a sample
of rows exactly; the error is the project's metric :func:`backends.relative_error`,
``max_i |a_i - ref_i| / |ref_i|`` over the sampled rows. Lower is better.
"""

from __future__ import annotations

import backends
from benchmarks import _common as c


class Accuracy:
    """Relative error against the oracle on sampled rows, N = 20 000."""

    # The oracle itself is excluded: its error is zero by definition.
    params = ([name for name in c.in_process() if name != "python"], [c.LARGE_N])
    param_names = ["backend", "n"]
    rounds = 1
    timeout = 300

    def setup(self, name, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel
        self.rows, self.ref = c.oracle_rows(n)

    def track_error(self, name, n):
        a = self.accel(self.m, self.x)
        return backends.relative_error(a[self.rows], self.ref)

    track_error.unit = "relative error"
