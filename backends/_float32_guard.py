"""Where ``precision="float32"`` cannot hold a system, and the float64 repair.

The float32 kernels (``numba_parallel``, ``jax``) centre the coordinates on the bounding box,
scale them by a power of two so that the larger of the half-extent and the softening is near
1 (the *float32 unit*), and split each into a float32 pair ``hi + lo``. Two kinds of input
defeat that, and both are found here before the kernel runs, in float64, so that the result
is either within :data:`backends._contract.FLOAT32_TOLERANCE` of the float64 one or is the
float64 one, never a silently wrong or non-finite number:

* **Softening far above the system's size** (more than :data:`SOFTENING_RATIO` half-extents):
  the scaled coordinates, and with them the separations, fall below float32's normal range
  (softening 1e38 or 1e60 on a system of size 1 gave zeros, wrong values or NaN).
  :func:`needs_float64` says so and the whole call is computed in float64.
* **Pairs closer than** :data:`CLOSE` **of the float32 unit** (a system spanning 1e-8 to 1e8,
  a tight binary in a large cluster): the ``hi + lo`` coordinates resolve about ``2**-48`` of
  the unit, the kernels' least ``r**2`` keeps ``r**-3`` finite only above about ``2**-40``,
  and ``r**-3`` itself overflows float32 for separations below ``2**-42``; such a pair's
  force is lost, capped or infinite. :func:`close_rows` finds every particle with a partner
  that close (a sort along the widest axis, then a walk over neighbours in that order:
  O(N log N) plus the pairs within ``CLOSE`` along that axis), and :func:`repair`
  recomputes those rows in float64 against all sources (:func:`backends.numba_parallel.
  accel_block`). With a softening of at least ``CLOSE`` units no pair is that close in
  effect (``r**2 >= eps**2``) and nothing is searched.

Cost: on the benchmark system (no row found) the search took 0.5 %, 1.3 % and 2.5 % of the
``numba_parallel`` float32 call at N = 1e3, 1e4 and 1e5 (2026-12-03, AMD EPYC Zen 5 2-core
VM shared with other jobs, load about 6, AVX-512, 2 Numba threads, best of 5 and 2 calls);
a row found costs one float64 row of N interactions.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backends._contract import column_range

__all__ = ["CLOSE", "SOFTENING_RATIO", "close_rows", "needs_float64", "repair"]

#: Softening above this many half-extents of the system: float32 cannot hold the separations
#: next to it (they would be below ``2**-60`` of the float32 unit); computed in float64.
SOFTENING_RATIO = 2.0**60
#: Pairs closer than this fraction of the float32 unit are out of float32's reach (their
#: ``r**2`` would be within ``2**-28`` of the kernels' floor, their separation known to
#: ``2**-22`` of itself); their rows are recomputed in float64.
CLOSE = 2.0**-26


def _half_extent(x: np.ndarray) -> float:
    if x.shape[0] == 0:
        return 0.0
    lo, hi = column_range(x)
    return float((0.5 * hi - 0.5 * lo).max())


def needs_float64(x: np.ndarray, softening: float) -> bool:
    """Return True when the softening exceeds :data:`SOFTENING_RATIO` half-extents.

    Parameters
    ----------
    x : (N, 3) ndarray of float64
        Positions (validated, possibly rescaled by powers of two).
    softening : float
    """
    return softening > SOFTENING_RATIO * _half_extent(x)


@njit(cache=True, nogil=True)
def _close(x, axis, delta):
    """Flag the particles with a partner within ``delta`` (Euclidean), by a sort on ``axis``."""
    n = x.shape[0]
    order = np.argsort(x[:, axis], kind="mergesort")
    flag = np.zeros(n, dtype=np.bool_)
    d2 = delta * delta
    for a in range(n):
        i = order[a]
        xi = x[i, axis]
        for b in range(a + 1, n):
            j = order[b]
            if x[j, axis] - xi >= delta:
                break
            dx = x[j, 0] - x[i, 0]
            dy = x[j, 1] - x[i, 1]
            dz = x[j, 2] - x[i, 2]
            if dx * dx + dy * dy + dz * dz < d2:
                flag[i] = True
                flag[j] = True
    return flag


def close_rows(x: np.ndarray, softening: float) -> np.ndarray:
    """Return the indices of particles with a partner closer than ``CLOSE`` float32 units.

    The float32 unit is the larger of the half-extent and the softening; with a softening of
    at least ``CLOSE`` units (every ``r**2`` at least ``eps**2``) nothing is searched. A
    coincident pair is found too (its rows are then float64, the same zero contribution).

    Parameters
    ----------
    x : (N, 3) ndarray of float64
    softening : float

    Returns
    -------
    (K,) ndarray of intp
    """
    if x.shape[0] < 2:
        return np.zeros(0, dtype=np.intp)
    lo, hi = column_range(x)
    extent = 0.5 * hi - 0.5 * lo
    unit = max(float(extent.max()), softening)
    delta = CLOSE * unit
    if softening >= delta or unit == 0.0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(_close(x, int(np.argmax(extent)), delta))


def repair(out: np.ndarray, rows: np.ndarray, m, x, G: float, softening: float) -> np.ndarray:
    """Overwrite ``out[rows]`` with the float64 rows (all sources) and return ``out``."""
    if rows.size:
        from backends.numba_parallel import accel_block

        out[rows] = accel_block(np.ascontiguousarray(x[rows]), m, x, G, softening)
    return out
