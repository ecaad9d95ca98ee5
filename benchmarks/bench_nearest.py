"""asv benchmarks for backends.accel_nearest (the jitclass backend is in the backend suite).

The three methods at N = 1000 and 10 000 with k = 16, and the batched method's peak memory at
N = 10^6, k = 32 against an empty reference (asv's ``peakmem_`` includes what ``setup``
allocated). Compilation happens in ``setup`` by a small call; the dispatchers are module-level
in :mod:`backends.scipy_nearest`, so ``setup`` never creates a jitted function.
"""

from __future__ import annotations

import backends
from benchmarks import _common as c

K = 16
SIZES = [256, 1024] if c.TINY else [1000, 10_000]
BIG_N = 4096 if c.TINY else 1_000_000


def _require_nearest():
    # commits older than the nearest-neighbour kernel are skipped, not failed
    if not hasattr(backends, "accel_nearest"):
        raise NotImplementedError("backends.accel_nearest does not exist at this commit")


class NearestMethods:
    """Wall time of one accel_nearest call per method."""

    params = (["batched", "objmode", "forceobj"], SIZES)
    param_names = ["method", "n"]
    timeout = 300

    def setup(self, method, n):
        _require_nearest()
        self.m, self.x = c.inputs(n, 42)
        backends.accel_nearest(self.m[:64], self.x[:64], K, method=method)  # compile once

    def time_accel_nearest(self, method, n):
        backends.accel_nearest(self.m, self.x, K, method=method)


class NearestMillion:
    """Peak memory of the batched method at N = 10^6, k = 32, and its empty reference."""

    timeout = 600

    def setup(self):
        _require_nearest()
        self.m, self.x = c.inputs(BIG_N, 42)
        backends.accel_nearest(self.m[:64], self.x[:64], 32)

    def peakmem_batched_k32(self):
        backends.accel_nearest(self.m, self.x, 32)

    def peakmem_reference(self):
        pass
