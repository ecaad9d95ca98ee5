"""Peak memory (maximum resident set size of the benchmark process) of ``accel`` at large N.

asv's ``peakmem_`` counts everything the process ever held, ``setup`` included (inputs,
imported libraries, compiled code). ``peakmem_reference`` runs the same ``setup`` and
nothing else: subtract it to get what the call itself needs. ``setup`` warms the backend up
at a small N only, so that the measured call, not the warm-up, sets the peak. Memory held in
worker processes (joblib, multiprocessing) is not counted: this is the caller's memory.
"""

from __future__ import annotations

from benchmarks import _common as c


class PeakMemory:
    """Peak RSS of one ``accel`` call at large N, and of its empty reference (bytes)."""

    params = (c.in_process(), [c.LARGE_N])
    param_names = ["backend", "n"]
    rounds = 1
    timeout = 300

    def setup(self, name, n):
        c.require(name, n)
        self.m, self.x = c.inputs(n)
        self.accel = c.get(name).accel
        c.warm(name, c.WARM_N)

    def peakmem_accel(self, name, n):
        self.accel(self.m, self.x)

    def peakmem_reference(self, name, n):
        pass
