"""Compiled helpers of the process-pool backends: the parent's copy-in and sum of the lanes.

The pools keep the scaled particles and the lane accumulators in a *blocked layout*
(:func:`backends._pools.lane_plan`): row block ``b`` (particles ``edges[b]:edges[b + 1]``)
occupies the columns ``starts[b]:starts[b] + (edges[b + 1] - edges[b])`` of every row, and
every ``starts[b]`` is a multiple of :data:`backends._pools.ALIGN`, so that each block the
pair kernel sweeps begins on a cache-line boundary. The columns between blocks are never
read or written by the pair kernel.

Both kernels are serial (the parent must not start threads of its own that would compete
with its workers for the cores) and release the GIL. Inputs are trusted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["scatter", "sum_blocks"]


@njit(cache=True, nogil=True)
def scatter(p, dst, edges, starts):
    """Copy the ``(4, N)`` array ``p`` into the blocked ``(4, W)`` array ``dst``.

    The gap after each block gets copies of the block's last particle with mass 0: never
    read by today's kernel, and harmless to one that would sweep a block's columns up to a
    multiple of 16 (a zero mass adds exactly 0; its distances are those of a real pair).
    """
    width = dst.shape[1]
    nb = edges.shape[0] - 1
    for b in range(nb):
        lo = edges[b]
        hi = edges[b + 1]
        d = starts[b] - lo
        for k in range(4):
            for i in range(lo, hi):
                dst[k, i + d] = p[k, i]
        end = starts[b + 1] if b + 1 < nb else width
        for c in range(hi + d, end):
            for k in range(3):
                dst[k, c] = p[k, hi - 1]
            dst[3, c] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def sum_blocks(acc, touched, edges, starts, gs, s, out):
    """``out[i, k] = (sum of the lanes' acc[l, k, column of i]) * gs * s``; False if not finite.

    ``acc`` is ``(L, 3, W)`` in the blocked layout; lane ``l`` is added only to the blocks
    ``b`` with ``touched[l, b]`` (it wrote nothing elsewhere, and left those columns
    unzeroed), in lane order: the same order, hence the same bits, as summing every lane.
    """
    bad = 0
    for b in range(edges.shape[0] - 1):
        lo = edges[b]
        d = starts[b] - lo
        first = -1
        for lane in range(acc.shape[0]):
            if touched[lane, b]:
                first = lane
                break
        for i in range(lo, edges[b + 1]):
            for k in range(3):
                t = 0.0
                if first >= 0:
                    t = acc[first, k, i + d]
                    for lane in range(first + 1, acc.shape[0]):
                        if touched[lane, b]:
                            t += acc[lane, k, i + d]
                bad += 0 if np.isfinite(t) else 1
                out[i, k] = (t * gs) * s
    return bad == 0
