"""The symmetric pair kernel shared by every backend that computes each pair once.

One building block, :func:`pair_block`, computes the interactions of a block of rows ``A``
with a block of rows ``B`` exactly once each (Newton's third law): every pair adds to the
accumulator of ``A``'s particle and subtracts from that of ``B``'s. A *diagonal* block
(``A`` and ``B`` the same range of the same array) computes each unordered pair ``i < j`` of
the range once. Threads (:mod:`backends.numba_parallel`), process pools and MPI ranks differ
only in how they hand out block pairs and add up the accumulators, so they do the same
arithmetic.

Inputs are *prepared*: a ``(4, N)`` structure-of-arrays copy ``p`` (rows x, y, z, m) whose
coordinates are scaled by a power of two ``s`` so that the system's extent lies in
``[1, 2)`` (see :func:`backends.numba_parallel.prepare`); accumulators are ``(3, N)``
float64 arrays of the sum ``sum_j m_j (x_j - x_i) / r_ij**3`` in scaled units. The caller
multiplies by ``G * s**2`` and checks that the sum is finite: a pair closer than about
``2**-60`` of the extent makes it NaN, and the caller must then redo the evaluation on the
exact path.

Inputs are trusted: validated by the public door of the calling backend.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FM", "TILE", "TINY", "inv_r3", "pair_block", "pair_blocks"]

FM = {"reassoc", "contract", "afn", "arcp", "nsz"}  #: fast-math flags, chosen one by one
TILE = 4096  #: sources per cache tile (7 * TILE doubles touched per tile)
TINY = 2.0**-120  #: smallest scaled r2 given to the float32 estimate (float32 min is 2**-126)


@njit(inline="always", fastmath=FM, error_model="numpy")
def inv_r3(r2):
    """``r2 ** -1.5`` for ``r2 > 0`` from the float32 estimate, corrected in float64.

    Below :data:`TINY` the estimate gets 0 and the result is NaN (the caller's signal to
    take the exact path).
    """
    q = r2 if r2 >= TINY else 0.0
    y = np.float64(np.float32(1.0) / np.sqrt(np.float32(q)))
    y2 = y * y
    e = 1.0 - r2 * y2
    y3 = y * y2
    return y3 + (y3 * e) * (1.5 + 1.875 * e)


@njit(inline="always", fastmath=FM, error_model="numpy")
def pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, diagonal):
    """Pairs (i, j), i in ``[a0, a1)`` of ``pa``, j in ``[b0, b1)`` of ``pb``, each once.

    ``a_i += m_j w d``, ``a_j -= m_i w d`` with ``d = x_j - x_i`` and ``w = r**-3``. With
    ``diagonal`` true, ``pa is pb`` and the two ranges are the same: only ``j > i`` is
    computed. A pair with ``r2 == 0`` contributes nothing.
    """
    for jt in range(b0, b1, TILE):
        je = min(jt + TILE, b1)
        for i in range(a0, min(a1, je) if diagonal else a1):
            js = max(jt, i + 1) if diagonal else jt
            xs = pb[0, js:je]  # views from index js: no wraparound test, the loop vectorizes
            ys = pb[1, js:je]
            zs = pb[2, js:je]
            ms = pb[3, js:je]
            bx = acc_b[0, js:je]
            by = acc_b[1, js:je]
            bz = acc_b[2, js:je]
            xi = pa[0, i]
            yi = pa[1, i]
            zi = pa[2, i]
            mi = pa[3, i]
            ax = 0.0
            ay = 0.0
            az = 0.0
            for k in range(xs.shape[0]):
                dx = xs[k] - xi
                dy = ys[k] - yi
                dz = zs[k] - zi
                r2 = dx * dx + dy * dy + dz * dz + eps2
                ok = r2 > 0.0
                w = inv_r3(r2 if ok else 1.0)
                w = w if ok else 0.0
                sj = ms[k] * w
                si = mi * w
                ax += dx * sj
                ay += dy * sj
                az += dz * sj
                bx[k] -= dx * si
                by[k] -= dy * si
                bz[k] -= dz * si
            acc_a[0, i] += ax
            acc_a[1, i] += ay
            acc_a[2, i] += az


@njit(cache=True, nogil=True, fastmath=FM, error_model="numpy")
def pair_blocks(pa, acc_a, pb, acc_b, tasks, eps2):
    """Run the block pairs ``tasks`` one after the other (serial, GIL-free).

    ``tasks`` is a ``(K, 4)`` int64 array of ``(a0, a1, b0, b1)``; a task with
    ``a0 == b0 and a1 == b1`` is a diagonal block (then ``pa``/``acc_a`` must be
    ``pb``/``acc_b``). Use it from worker processes and MPI ranks.
    """
    for t in range(tasks.shape[0]):
        a0, a1, b0, b1 = tasks[t, 0], tasks[t, 1], tasks[t, 2], tasks[t, 3]
        pair_block(pa, acc_a, a0, a1, pb, acc_b, b0, b1, eps2, a0 == b0 and a1 == b1)
