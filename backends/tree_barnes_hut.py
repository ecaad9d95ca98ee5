r"""Backend ``tree``: a Barnes-Hut octree with a group walk, in Numba (approximate).

Strategy
--------
0. **Lines and centring.** A system of at least ``LINE_MIN_N`` particles lying along a line
   (:func:`backends._geometry.is_linear`: the median distance from the principal axis at
   most 4 median spacings along it) or a curve (most neighbourhoods straight segments) is
   summed directly by ``numba_parallel``'s kernel: on a line the forces from both sides
   cancel, the truncation error is not a fraction of the net force and the rms relative
   error grows with N (0.25 at N = 20 000 with the defaults, 1.15 with one target per walk;
   on a ring of 20 000, 0.40 at theta 0.7), so no opening angle bounds it. Otherwise positions are
   centred on their bounding box (:func:`backends._geometry.centred`, exact far from the
   origin), so centres of mass and the float32 terms keep their digits.

Steps 1-3 are the octree shared with ``fmm`` and the distributed tree
(:mod:`backends._octree`).

1. **Keys and order.** Positions are rescaled by a power of two ``s`` (exact) so the extent
   of the system lies in ``[1, 2)``; each particle gets a 63-bit Morton key (21 bits per
   axis, computed in parallel) and the particles are sorted by key (NumPy ``argsort``)
   into a ``(4, N)`` structure-of-arrays copy ``x, y, z, m``.
2. **Octree from the sorted keys** (serial, ``O(nodes log N)``). A node is a contiguous
   range of sorted particles. A node with more than ``leaf_size`` particles is split at
   the highest Morton level where its first and last keys differ, so chains of one-child
   cells are skipped and every internal node has at least two children (fewer than
   ``2 N`` nodes; about ``2.5 N / leaf_size`` measured). Particles with identical keys
   (coincident points, or closer than ``2**-21`` of the extent) stay in one leaf of any
   size: the depth is capped at 21 levels and the recursion cannot run away.
3. **Moments**: leaves from their particles in parallel (``prange``), internal nodes from
   their children (serial, children before parents): mass, centre of mass ``c``, the
   tight bounding box, a radius ``b`` about ``c`` holding every particle of the node
   (exact for leaves, ``max(|c_child - c| + b_child)`` above) and, with
   ``quadrupole=True``, the second moments ``M_ab = sum_j m_j (x_j - c)_a (x_j - c)_b``
   (shifted to the parent by the parallel-axis theorem).
4. **Group walk, in parallel over groups** (blocks of 4 groups dealt round-robin to the
   threads, :data:`BLOCK`). A group is the largest node with at most ``group_size``
   particles (or a leaf): its targets share one walk of the tree and one interaction
   list. The **opening criterion** accepts a node as a multipole for the whole group when

       ``d_min(c, box) * min(theta, 1) > b``   (and ``d_min`` > 1e-4 of the extent)

   where ``d_min`` is the distance from the node's centre of mass to the group's tight
   bounding box (0 if inside) and ``b`` the node's radius about ``c`` above; otherwise the
   node is opened (a leaf goes on the direct list). Because ``d_min`` is a lower bound
   on every target's distance, this is a per-particle ``b / r < theta`` criterion
   applied to the worst target of the group: stricter than a per-particle walk at the
   same ``theta``, it never accepts a node that contains or overlaps a target, and with
   ``theta = 0`` it accepts nothing (direct summation, exact to rounding). Nodes of zero
   mass are dropped; nodes whose masses of both signs cancel are always opened.
5. **Vectorised evaluation.** The direct list is kept as ranges of the sorted particle
   arrays (adjacent leaves merged) and summed in float64, ``r**-3`` from the float32
   hardware estimate corrected in float64 (as in ``numba_parallel``, ~2 ulp); a pair too
   close for float32 yields a NaN in its two rows, and those rows (only those) are summed
   again exactly over all particles, with ``sqrt`` and division. The accepted nodes'
   moments are gathered into contiguous float32 arrays relative to the group's centre
   (masses pre-scaled by a power of two to ``[0.5, 1)``) and summed in float32 (8 lanes per
   AVX2 register): their ~1e-7 rounding is far below the multipole truncation error the
   settings allow (``tolerance`` is never below 1e-6).
6. **Softening.** Plummer softening enters both the direct pairs and the multipole terms:
   the expansion is the Taylor expansion of the softened potential
   ``-m / sqrt(r**2 + eps**2)`` about ``c``, so its monopole is
   ``-m d / u**1.5`` and its quadrupole term is
   ``-7.5 (d.M.d) d / u**3.5 + (1.5 tr(M) d + 3 M.d) / u**2.5`` with
   ``u = r**2 + eps**2`` and ``d = x - c`` (the trace matters once ``eps > 0``).
7. **Forces that cancel.** Each target also sums the scale of its far field, the sum of
   ``|m| / d**2`` over its accepted nodes (``|m|``: a node's sum of absolute masses;
   float32, one multiply-add per node). A particle whose acceleration is below
   ``1 / CANCEL`` of it (the centre of a lattice, where the pulls cancel by symmetry and
   the truncation error, a fraction of the pulls, would be amplified as much in its
   relative error) is computed again: from ``REFINE_WALK_N`` particles on by a walk of its
   own, narrower, with float64 multipole terms, summed directly if that does not settle
   it; below that, or where more than a sixteenth of the particles qualify, by a direct
   row (:func:`refine`, :func:`point_sums`, :func:`walks_pay`). About 4e-4 of a Gaussian
   blob's particles (its centre); 1.03x-1.10x the time at N = 1e5-1e6 (``docs/tree.md``).

Accuracy: rms per-particle relative error about 2e-3 at the defaults (theta 0.5,
monopoles) on the benchmark system at N = 1e5, 2e-3 with ``theta=0.7, quadrupole=True``;
:func:`tolerance` states the bound promised for each setting, calibrated on the hard
systems of :mod:`backends.systems` (thin disc and shell, far clumps, tight binary, crowded
corner, 8-decade masses; ``docs/tree.md``).

Memory: ``O(N)``, about 150 bytes per particle at the defaults: the sorted ``(4, N)``
copy, the sorted ``(3, N)`` result and the result (80 bytes), keys, sorted keys and order
(24 bytes), ~2.5 N / leaf_size nodes of 26 doubles (node fields and the walk's packed
copy, ~30 bytes per particle at ``leaf_size=16``), the far field's scale per particle
(8 bytes), plus per thread the interaction lists of one group. Measured peak increase at
N = 1e6: ~130 MB (``docs/tree.md``).

Honours ``numba.set_num_threads`` and ``NUMBA_NUM_THREADS``. No global side effects.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import get_num_threads, njit, prange

from backends._contract import column_range, evaluate, validate
from backends._geometry import centred, is_linear
from backends._octree import FM as _FM
from backends._octree import LEVELS as _LEVELS
from backends._octree import MAX_SIZE as _MAX_SIZE
from backends._octree import prepare
from backends.numba_parallel import _inv_r3, _scale, accel_rows, resum_non_finite
from backends.numba_parallel import _kernel as _direct_sum

__all__ = ["DEFAULT_LEAF_SIZE", "DEFAULT_THETA", "EXACT_OPTIONS", "accel", "tolerance"]

DEFAULT_THETA = 0.5  #: default opening angle (criterion in the module docstring)
DEFAULT_LEAF_SIZE = 16  #: default maximum particles per leaf
DEFAULT_GROUP_SIZE = 64  #: default maximum targets per group (one shared walk)
#: Options under which the result is direct summation (exact to rounding).
EXACT_OPTIONS = {"theta": 0.0}
#: Systems of at least this many particles are checked for lying along a line or a curve
#: (step 0).
LINE_MIN_N = 32
#: Groups of fewer targets than this get a 6x looser bound (:func:`tolerance`).
SMALL_GROUP = 32
#: A particle whose acceleration is below ``1 / CANCEL`` of its far field's scale (the sum
#: of ``|m| / d**2`` over its accepted nodes) is computed again: a narrower walk or a
#: direct row (step 7, :func:`refine`).
CANCEL = 30.0
#: How much larger the error of a walk for one point is than the group walk's at the same
#: angle, as a fraction of the scale (measured: median 1.4 to 3.9, :func:`refine`).
POINT = 2.0
#: Narrower walks of a point before it is summed directly (:func:`refine`).
REFINE_TRIES = 3
#: From this many particles on, a narrower walk costs less than a direct row
#: (:func:`walks_pay`).
REFINE_WALK_N = 200_000

#: Consecutive groups per block of the group walk's deal. Numba gives each thread one
#: contiguous share of a ``prange`` whatever ``parallel_chunksize`` says (measured, numba
#: 0.68; docs/fmm.md, method step 3), and groups in Morton order are of similar cost only on
#: average: a clustered system's dense groups sit together, in one thread's share. So the
#: blocks are dealt round-robin, block ``b`` to thread ``b % threads`` (:func:`group_blocks`):
#: every thread gets blocks from all over the tree, and each group is still walked alone,
#: so the result does not depend on the number of threads.
BLOCK = 4
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F15 = np.float32(1.5)
_F3 = np.float32(3.0)
_F75 = np.float32(7.5)
#: Nodes closer than 1e-4 of the extent (scaled units) are never multipoles: it keeps the
#: float32 powers ``u**-3.5`` of the quadrupole term far from overflow.
_NEAR2 = 1e-8


@njit(cache=True, parallel=True, nogil=True)
def _walk_nodes(f, start, end, child, nchild):
    """Pack what the walk reads of each node into one 64-byte row.

    Centre of mass, radius**2, start, end, first child, number of children.
    """
    nn = start.shape[0]
    w = np.empty((nn, 8))
    for q in prange(nn):
        w[q, 0] = f[q, 1]
        w[q, 1] = f[q, 2]
        w[q, 2] = f[q, 3]
        w[q, 3] = f[q, 4]
        w[q, 4] = start[q]
        w[q, 5] = end[q]
        w[q, 6] = child[q]
        w[q, 7] = nchild[q]
    return w


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _w(r2, fast):
    """``r2 ** -1.5``: the float32-seeded estimate, or ``sqrt`` and division."""
    if fast:
        return _inv_r3(r2)
    return 1.0 / (r2 * np.sqrt(r2))


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _walk_into(gs, ge, box, nodes, theta2, stack, mlist, dlist):
    """Walk the tree for the targets in ``box``, sorted positions ``gs:ge``.

    Fills ``mlist`` (accepted nodes) and ``dlist`` (merged direct ranges as ``start, end``
    pairs) while they have room, and returns the full counts. A node holding the whole range
    ``gs:ge`` (the group or an ancestor) is never accepted; ``gs = ge = -1`` for a point.
    """
    x0 = box[0]
    y0 = box[1]
    z0 = box[2]
    x1 = box[3]
    y1 = box[4]
    z1 = box[5]
    cm = mlist.shape[0]
    cd = dlist.shape[0] // 2
    nm = 0
    nd = 0
    last = -1.0  # end of the last direct range, to merge adjacent leaves
    top = 1
    stack[0] = 0
    while top > 0:
        top -= 1
        q = stack[top]
        b2 = nodes[q, 3]
        if b2 < 0.0:  # massless
            continue
        s = nodes[q, 4]
        e = nodes[q, 5]
        if s <= gs and ge <= e and gs >= 0:  # the group itself or an ancestor
            b2 = np.inf
        cx = nodes[q, 0]
        cy = nodes[q, 1]
        cz = nodes[q, 2]
        dx = max(x0 - cx, 0.0, cx - x1)
        dy = max(y0 - cy, 0.0, cy - y1)
        dz = max(z0 - cz, 0.0, cz - z1)
        nc = int(nodes[q, 7])
        d2 = dx * dx + dy * dy + dz * dz
        if d2 * theta2 > b2 and d2 > _NEAR2:
            if nm < cm:
                mlist[nm] = q
            nm += 1
        elif nc == 0:
            if last == s:
                if nd <= cd:
                    dlist[2 * nd - 1] = int(e)
            else:
                if nd < cd:
                    dlist[2 * nd] = int(s)
                    dlist[2 * nd + 1] = int(e)
                nd += 1
            last = e
        else:
            c0 = int(nodes[q, 6])
            for c in range(c0 + nc - 1, c0 - 1, -1):  # pushed so the first pops first
                stack[top] = c
                top += 1
    return nm, nd


@njit(nogil=True, fastmath=_FM, error_model="numpy")
def _walk(gs, ge, box, nodes, theta2):
    """Return the interaction lists of the targets ``gs:ge`` in ``box`` (step 4).

    Accepted node indices and direct ranges of sorted particles (adjacent leaves merged).
    """
    stack = np.empty(8 * (_LEVELS + 2) * 2, dtype=np.int64)
    mlist = np.empty(1024, dtype=np.int64)
    dlist = np.empty(512, dtype=np.int64)
    nm, nd = _walk_into(gs, ge, box, nodes, theta2, stack, mlist, dlist)
    if nm > mlist.shape[0] or 2 * nd > dlist.shape[0]:  # too long: walk again into room
        mlist = np.empty(nm, dtype=np.int64)
        dlist = np.empty(2 * nd, dtype=np.int64)
        _walk_into(gs, ge, box, nodes, theta2, stack, mlist, dlist)
    return mlist, nm, dlist, nd


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _direct(px, py, pz, pm, xi, yi, zi, dlist, nd, eps2, fast):
    """float64 sum over the direct ranges for one target."""
    ax = 0.0
    ay = 0.0
    az = 0.0
    for r in range(nd):
        # views from the range start: no wraparound test, the loop vectorizes
        xs = px[dlist[2 * r] : dlist[2 * r + 1]]
        ys = py[dlist[2 * r] : dlist[2 * r + 1]]
        zs = pz[dlist[2 * r] : dlist[2 * r + 1]]
        ms = pm[dlist[2 * r] : dlist[2 * r + 1]]
        for j in range(xs.shape[0]):
            dx = xs[j] - xi
            dy = ys[j] - yi
            dz = zs[j] - zi
            r2 = dx * dx + dy * dy + dz * dz + eps2
            ok = r2 > 0.0
            w = _w(r2 if ok else 1.0, fast)
            w = ms[j] * w if ok else 0.0
            ax += dx * w
            ay += dy * w
            az += dz * w
    return ax, ay, az


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _monopoles(mp, nm, xi, yi, zi, eps2):
    """float32 sum over accepted nodes (monopoles) for one target (group-relative)."""
    cxs = mp[0, :nm]
    cys = mp[1, :nm]
    czs = mp[2, :nm]
    cms = mp[3, :nm]
    cas = mp[4, :nm]
    ax = _F0
    ay = _F0
    az = _F0
    sc = _F0
    for k in range(cxs.shape[0]):
        dx = cxs[k] - xi
        dy = cys[k] - yi
        dz = czs[k] - zi
        y = _F1 / np.sqrt(dx * dx + dy * dy + dz * dz + eps2)
        y2 = y * y
        w = cms[k] * (y * y2)
        ax += dx * w
        ay += dy * w
        az += dz * w
        sc += cas[k] * y2
    return ax, ay, az, sc


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _quadrupoles(mp, nm, xi, yi, zi, eps2):
    """float32 sum over accepted nodes (monopole + quadrupole) for one target."""
    cxs = mp[0, :nm]
    cys = mp[1, :nm]
    czs = mp[2, :nm]
    cms = mp[3, :nm]
    qxx = mp[4, :nm]
    qyy = mp[5, :nm]
    qzz = mp[6, :nm]
    qxy = mp[7, :nm]
    qxz = mp[8, :nm]
    qyz = mp[9, :nm]
    cas = mp[10, :nm]
    ax = _F0
    ay = _F0
    az = _F0
    sc = _F0
    for k in range(cxs.shape[0]):
        dx = cxs[k] - xi
        dy = cys[k] - yi
        dz = czs[k] - zi
        y = _F1 / np.sqrt(dx * dx + dy * dy + dz * dz + eps2)
        sc += cas[k] * (y * y)
        tx, ty, tz = _quadrupole_term(
            cms[k], qxx[k], qyy[k], qzz[k], qxy[k], qxz[k], qyz[k], dx, dy, dz, y, _F15, _F3, _F75
        )
        ax += tx
        ay += ty
        az += tz
    return ax, ay, az, sc


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _quadrupole_term(m, mxx, myy, mzz, mxy, mxz, myz, dx, dy, dz, y, c15, c3, c75):
    """One node's monopole + quadrupole pull, ``d = c - x``, ``y = 1 / |d|`` (softened).

    In the arguments' type: the constants ``1.5, 3, 7.5`` come in as ``c15, c3, c75``.
    """
    y2 = y * y
    w3 = y * y2
    w5 = w3 * y2
    w7 = w5 * y2
    qx = mxx * dx + mxy * dy + mxz * dz
    qy = mxy * dx + myy * dy + myz * dz
    qz = mxz * dx + myz * dy + mzz * dz
    dqd = dx * qx + dy * qy + dz * qz
    tr = mxx + myy + mzz
    # d = c - x here (source minus target): the signs of the docstring's formula flip
    a = m * w3 + c75 * dqd * w7 - c15 * tr * w5
    b = c3 * w5
    return dx * a - b * qx, dy * a - b * qy, dz * a - b * qz


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _group_accel(p, f, nodes, g, theta2, eps2, quadrupole, fast, out, sc):
    """Walk for group ``g`` and write its targets' accelerations into ``out`` (3, N).

    One iteration of :func:`_evaluate` (steps 4-5 of the module docstring), shared with the
    distributed tree (``backends.mpi_tree``), which walks a combined tree for its own groups
    only. Returns ``(accepted nodes, direct source particles)`` of the group's shared lists.
    """
    px = p[0]
    py = p[1]
    pz = p[2]
    pm = p[3]
    e32 = np.float32(eps2)
    mlist, nm, dlist, nd = _walk(nodes[g, 4], nodes[g, 5], f[g, 11:17], nodes, theta2)
    # the accepted nodes' moments, relative to the group's centre, as float32 rows
    gx = 0.5 * (f[g, 11] + f[g, 14])
    gy = 0.5 * (f[g, 12] + f[g, 15])
    gz = 0.5 * (f[g, 13] + f[g, 16])
    mp = np.empty((11 if quadrupole else 5, nm), dtype=np.float32)
    for k in range(nm):
        q = mlist[k]
        mp[0, k] = f[q, 1] - gx
        mp[1, k] = f[q, 2] - gy
        mp[2, k] = f[q, 3] - gz
        mp[3, k] = f[q, 0]
        mp[10 if quadrupole else 4, k] = f[q, 17]  # sum |m|: the scale of its pulls
        if quadrupole:
            for c in range(6):
                mp[4 + c, k] = f[q, 5 + c]
    for i in range(int(nodes[g, 4]), int(nodes[g, 5])):
        xi = px[i]
        yi = py[i]
        zi = pz[i]
        ax, ay, az = _direct(px, py, pz, pm, xi, yi, zi, dlist, nd, eps2, fast)
        sc[i] = 0.0
        if nm > 0:
            x32 = np.float32(xi - gx)
            y32 = np.float32(yi - gy)
            z32 = np.float32(zi - gz)
            if quadrupole:
                bx, by, bz, bs = _quadrupoles(mp, nm, x32, y32, z32, e32)
            else:
                bx, by, bz, bs = _monopoles(mp, nm, x32, y32, z32, e32)
            sc[i] = np.float64(bs)
            ax += np.float64(bx)
            ay += np.float64(by)
            az += np.float64(bz)
        out[0, i] = ax
        out[1, i] = ay
        out[2, i] = az
    sources = 0
    for r in range(nd):
        sources += dlist[2 * r + 1] - dlist[2 * r]
    return nm, sources


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def point_sums(p, f, nodes, pts, thetas, eps2, quadrupole, fast):
    """Accelerations ``(3, K)`` and far-field scales ``(K,)`` at the points ``pts`` (3, K).

    One walk of the tree per point, each with its own opening angle ``thetas[k]`` (``0``:
    direct summation over the tree, exact to rounding); the multipole terms in float64,
    as a point whose pulls nearly cancel needs their last digits. The scale is the sum of
    ``|m| / d**2`` over the accepted nodes. Scaled units, G = 1; parallel over the points.
    """
    k = pts.shape[1]
    acc = np.zeros((3, k))
    sc = np.zeros(k)
    for t in prange(k):
        xi = pts[0, t]
        yi = pts[1, t]
        zi = pts[2, t]
        th = min(thetas[t], 1.0)
        box = np.array([xi, yi, zi, xi, yi, zi])
        mlist, nm, dlist, nd = _walk(-1, -1, box, nodes, th * th)
        ax, ay, az = _direct(p[0], p[1], p[2], p[3], xi, yi, zi, dlist, nd, eps2, fast)
        st = 0.0
        for j in range(nm):
            q = mlist[j]
            dx = f[q, 1] - xi
            dy = f[q, 2] - yi
            dz = f[q, 3] - zi
            y = 1.0 / np.sqrt(dx * dx + dy * dy + dz * dz + eps2)
            st += f[q, 17] * (y * y)
            if quadrupole:
                tx, ty, tz = _quadrupole_term(
                    f[q, 0], f[q, 5], f[q, 6], f[q, 7], f[q, 8], f[q, 9], f[q, 10],
                    dx, dy, dz, y, 1.5, 3.0, 7.5,
                )  # fmt: skip
            else:
                w = f[q, 0] * (y * y * y)
                tx = dx * w
                ty = dy * w
                tz = dz * w
            ax += tx
            ay += ty
            az += tz
        acc[0, t] = ax
        acc[1, t] = ay
        acc[2, t] = az
        sc[t] = st
    return acc, sc


def refine(sums, pts, acc, sc, theta, quadrupole, walk=True):
    """Walk again, narrower, the points whose far field nearly cancels (step 7).

    ``acc`` (3, K) and ``sc`` (K,): the group walk's accelerations and far-field scales at
    ``pts`` (3, K), each with ``|a| < sc / CANCEL``. ``sums(pts, thetas)`` returns the same
    from one walk per point, a direct sum where the angle is 0 (:func:`point_sums_over`).
    Returns the refined accelerations. With ``walk`` False (:func:`walks_pay`) every point
    is summed directly at once.

    The truncation error of the accepted nodes is a fraction of the scale that shrinks
    like ``theta**ORDER`` (``ORDER`` 2 for monopoles, 3 with quadrupoles), and about
    ``POINT`` times larger for a walk for one point than for a group at the same angle. A
    point is walked again at the angle ``theta'`` that brings
    ``POINT (theta' / theta)**ORDER scale`` to half of ``CANCEL |a|`` (the most the group
    walk allows the particles it keeps); checked with the new ``a'`` and ``scale'``, and
    narrowed again, up to ``REFINE_TRIES`` walks; then, or where the angle would fall
    below ``theta / 8``, the point is summed directly (angle 0).
    """
    t = min(theta, 1.0)
    order = 3.0 if quadrupole else 2.0
    k = pts.shape[1]
    done = np.zeros(k, dtype=bool)
    ratio = np.full(k, 1.0 / POINT)  # the group walk's error, as a fraction of POINT's
    acc = acc.copy()
    sc = sc.copy()
    for tries in range(REFINE_TRIES + 1):
        a = np.sqrt((acc * acc).sum(axis=0))
        done |= POINT * ratio * sc <= CANCEL * a
        todo = np.flatnonzero(~done)
        if todo.shape[0] == 0:
            break
        # the angle that would meet the test if the error scaled alone
        want = 0.5 * CANCEL * a[todo] / (POINT * ratio[todo] * sc[todo])
        th = t * (ratio[todo] * np.minimum(want, 1.0)) ** (1.0 / order)
        th[(th < t / 8.0) | (tries == REFINE_TRIES) | (not walk)] = 0.0
        acc[:, todo], sc[todo] = sums(np.ascontiguousarray(pts[:, todo]), th)
        ratio[todo] = (th / t) ** order
        done[todo[th == 0.0]] = True
    return acc


def walks_pay(n: int, k: int) -> bool:
    """Whether :func:`refine` should walk ``k`` points of ``n`` rather than sum them directly.

    A walk for one point at the angles it needs (a third to a half of theta) visits
    thousands of nodes in float64; a direct row is ``n`` pairs on 512-bit vectors
    (:func:`backends.numba_parallel.accel_rows`). Measured (``docs/tree.md``): the walk is
    the cheaper from about ``REFINE_WALK_N`` particles on; and when more than a sixteenth
    of the particles qualify (masses of both signs on a lattice), their walks cost about a
    direct summation anyway.
    """
    return n >= REFINE_WALK_N and 16 * k <= n


def point_sums_over(p, f, nodes, eps2, quadrupole, fast):
    """``sums(pts, thetas)`` for :func:`refine` over one tree (scaled units, G = 1).

    :func:`point_sums` for the points with an angle, direct rows
    (:func:`backends.numba_parallel.accel_rows` over the tree's particles) for angle 0.
    """
    src = []

    def sums(pts, thetas):
        acc = np.zeros((3, pts.shape[1]))
        sc = np.zeros(pts.shape[1])
        w = thetas > 0.0
        if w.any():
            acc[:, w], sc[w] = point_sums(p, f, nodes, np.ascontiguousarray(pts[:, w]),
                                          thetas[w], eps2, quadrupole, fast)  # fmt: skip
        if not w.all():
            if not src:
                src.append(np.ascontiguousarray(p[:3].T))
            rows = np.ascontiguousarray(pts[:, ~w].T)
            acc[:, ~w] = accel_rows(rows, p[3], src[0], 1.0, math.sqrt(eps2)).T
        return acc, sc

    return sums


@njit(cache=True, nogil=True)
def group_blocks(thread, threads, ngroups):
    """Return the groups thread ``thread`` of ``threads`` walks.

    Blocks of :data:`BLOCK` consecutive groups, dealt round-robin: block ``b`` to thread
    ``b % threads``.
    """
    nb = (ngroups + BLOCK - 1) // BLOCK
    mine = (nb - thread + threads - 1) // threads
    out = np.empty(mine * BLOCK, dtype=np.int64)
    k = 0
    for b in range(thread, nb, threads):
        for li in range(b * BLOCK, min(ngroups, (b + 1) * BLOCK)):
            out[k] = li
            k += 1
    return out[:k]


@njit(cache=True, parallel=True, nogil=True, fastmath=_FM, error_model="numpy")
def _evaluate(p, f, nodes, groups, theta, eps2, quadrupole, fast, threads):
    """Sorted accelerations (scaled units, G = 1) of every particle, by the group walk.

    ``threads`` is Numba's thread count (:func:`numba.get_num_threads`, read outside: inside
    a compiled function it would stop the function from being cached).
    """
    out = np.zeros((3, p.shape[1]))
    sc = np.zeros(p.shape[1])
    t = min(theta, 1.0)
    theta2 = t * t
    for th in prange(threads):
        for li in group_blocks(th, threads, groups.shape[0]):
            _group_accel(p, f, nodes, groups[li], theta2, eps2, quadrupole, fast, out, sc)
    return out, sc


@njit(cache=True, nogil=True)
def _groups(start, end, child, nchild, group_size):
    """Return the groups of targets, in the order of the sorted particles.

    The largest nodes holding at most ``group_size`` particles, or leaves.
    """
    out = np.empty(start.shape[0], dtype=np.int64)
    stack = np.empty(8 * (_LEVELS + 2) * 2, dtype=np.int64)
    ng = 0
    top = 1
    stack[0] = 0
    while top > 0:
        top -= 1
        q = stack[top]
        if nchild[q] == 0 or end[q] - start[q] <= group_size:
            out[ng] = q
            ng += 1
        else:
            c0 = child[q]
            for c in range(c0 + nchild[q] - 1, c0 - 1, -1):
                stack[top] = c
                top += 1
    return out[:ng].copy()


@njit(cache=True, parallel=True, nogil=True)
def cancelling(acc, sc, cancel):
    """Positions (of ``acc``'s columns) of the particles with ``|a|`` below ``sc / cancel``."""
    n = sc.shape[0]
    flag = np.zeros(n, dtype=np.bool_)
    for i in prange(n):
        small = sc[i] / cancel
        flag[i] = acc[0, i] ** 2 + acc[1, i] ** 2 + acc[2, i] ** 2 < small * small
    return np.flatnonzero(flag)


@njit(cache=True, parallel=True, nogil=True)
def _unsort(acc, order, scale):
    """Return the result in the caller's order, times ``G * s**2``; False if not finite."""
    n = order.shape[0]
    out = np.empty((n, 3))
    bad = 0
    for i in prange(n):
        j = order[i]
        for k in range(3):
            v = acc[k, i] * scale
            out[j, k] = v
            if not np.isfinite(v):
                bad += 1
    return out, bad == 0


def _tree(m, x, softening, theta, quadrupole, leaf_size, group_size):
    """Build the tree; returns what :func:`_evaluate` needs, plus the order and scale."""
    x = centred(x)
    s = float(_scale(*column_range(x), softening))
    fast = s > 0.0  # else: extent beyond 2**179, no scaling, the exact kernel
    s = s if fast else 1.0
    t = prepare(m, x, s, leaf_size, quadrupole)
    nodes = _walk_nodes(t.f, t.start, t.end, t.child, t.nchild)
    groups = _groups(t.start, t.end, t.child, t.nchild, group_size)
    return t.p, t.f, nodes, groups, t.order, s, t.ms, fast


def _kernel(m, x, G, softening, theta, quadrupole, leaf_size, group_size):
    if m.shape[0] >= LINE_MIN_N and is_linear(x):
        return _direct_sum(m, x, G, softening)  # direct summation (module docstring, step 0)
    p, f, nodes, groups, order, s, ms, fast = _tree(
        m, x, softening, theta, quadrupole, leaf_size, group_size
    )
    eps2 = (softening * s) ** 2
    acc, sc = _evaluate(p, f, nodes, groups, theta, eps2, quadrupole, fast, get_num_threads())
    out, ok = _unsort(acc, order, G * s * s / ms)
    flagged = cancelling(acc, sc, CANCEL)  # never a row that is not finite (NaN compares false)
    if flagged.shape[0] > 0:  # far fields that nearly cancel: walked again (step 7)
        sums = point_sums_over(p, f, nodes, eps2, quadrupole, fast)
        pts = np.ascontiguousarray(p[:3, flagged])
        walk = walks_pay(m.shape[0], flagged.shape[0])
        better = refine(sums, pts, acc[:, flagged], sc[flagged], theta, quadrupole, walk)
        out[order[flagged]] = better.T * (G * s * s / ms)
    if not ok and fast:  # a pair below the float32 estimate's range: its two rows, exactly
        resum_non_finite(out, m, x, G, softening)
    return out


def _check_options(theta, quadrupole, leaf_size):
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real):
        raise TypeError(f"theta must be a real number >= 0; got {theta!r}")
    theta = float(theta)
    if not math.isfinite(theta) or theta < 0.0:
        raise ValueError(f"theta must be finite and >= 0; got {theta!r}")
    if not isinstance(quadrupole, (bool, np.bool_)):
        raise TypeError(f"quadrupole must be True or False; got {quadrupole!r}")
    if isinstance(leaf_size, bool) or not isinstance(leaf_size, numbers.Integral):
        raise TypeError(f"leaf_size must be an integer >= 1; got {leaf_size!r}")
    leaf_size = int(leaf_size)
    if leaf_size < 1:
        raise ValueError(f"leaf_size must be >= 1; got {leaf_size!r}")
    # any value >= N means the same (one leaf); capped so compiled code can hold it
    return theta, bool(quadrupole), min(leaf_size, _MAX_SIZE)


def tolerance(
    *,
    theta=DEFAULT_THETA,
    quadrupole=False,
    group_size=DEFAULT_GROUP_SIZE,
    leaf_size=DEFAULT_LEAF_SIZE,
    **_,
) -> float:
    """Bound on the rms per-particle relative error promised by these settings.

    ``max(0.75 theta**2.3, theta**4)`` with monopoles, ``0.8 theta**3.85`` with quadrupoles
    (theta above 1 acts as 1), six times that with groups of fewer than ``SMALL_GROUP``
    targets (a walk per target or per small group accepts nodes closer to most targets), at
    least 1e-6 (the float32 arithmetic of the multipole terms); ``theta = 0`` is direct
    summation, exact to rounding (1e-12). Calibrated on the systems of
    :mod:`backends.systems` (thin disc, uniform sheet, thin shell, far clumps, tight binary,
    crowded corner, 8-decade masses, clustered, dominant point, Gaussian, Plummer; N = 2 000
    and 20 000, two seeds, also shifted by 1e8; the sheet also at N = 100 000 with 8 tilts
    and at N = 2 000 with 30), theta 0.1 to 1. The sheet sets it: in a plane some
    particles' forces nearly cancel, and the rms over such a system varies from tilt to
    tilt by up to 3x (its largest terms come from a few particles). At the defaults 0.15:
    1.4x the worst rms of 46 sheets (0.106) and 7.6x that of the thin exponential disc
    (2.0e-2; ``docs/tree.md``). Systems along a line or a curve are summed directly, exact
    to rounding (module docstring, step 0). Particles whose pulls nearly cancel (the
    centre of a lattice) are walked again (step 7): lattices keep the bound, regular planar
    grids too up to theta 0.7, not beyond with quadrupoles (``docs/tree.md``).
    ``leaf_size`` does not loosen it (it is validated as :func:`accel` does, so that a bound
    is never declared for a call that would raise).

    Parameters
    ----------
    theta : float, optional
        Opening angle (>= 0).
    quadrupole : bool, optional
        Whether quadrupole moments are used.
    group_size : int, optional
        Maximum targets per group (>= 1).
    leaf_size : int, optional
        Maximum particles per leaf (>= 1).

    Returns
    -------
    float
    """
    theta, quadrupole, _ = _check_options(theta, quadrupole, leaf_size)
    group_size = _check_group_size(group_size)
    if theta == 0.0:
        return 1e-12
    t = min(theta, 1.0)
    bound = 0.8 * t**3.85 if quadrupole else max(0.75 * t**2.3, t**4)
    if group_size < SMALL_GROUP:
        bound *= 6.0
    return max(1e-6, bound)


def _check_group_size(group_size) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral):
        raise TypeError(f"group_size must be an integer >= 1; got {group_size!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1; got {group_size!r}")
    return min(int(group_size), _MAX_SIZE)  # any value >= N means the same


def accel(
    masses,
    positions,
    G=1.0,
    *,
    softening=0.0,
    theta=DEFAULT_THETA,
    quadrupole=False,
    leaf_size=DEFAULT_LEAF_SIZE,
    group_size=DEFAULT_GROUP_SIZE,
) -> np.ndarray:
    """Gravitational accelerations by a Barnes-Hut octree with a group walk (approximate).

    Parameters
    ----------
    masses : (N,) array_like of real
    positions : (N, 3) array_like of real
    G : float, optional
        Gravitational constant.
    softening : float, optional
        Plummer softening length (>= 0), applied to direct and multipole terms alike.
    theta : float, optional
        Opening angle (finite, >= 0): a node of radius ``b`` about its centre of mass is
        used as a multipole for a group of targets when ``b < theta * d_min``, ``d_min``
        the distance from the centre of mass to the group's bounding box (values above 1
        act as 1). ``0`` gives direct summation.
    quadrupole : bool, optional
        Add the quadrupole moments (more accurate at a given ``theta``, ~2x the cost per
        accepted node).
    leaf_size : int, optional
        Maximum particles per leaf (>= 1); a leaf is also the group of targets that share
        one interaction list. Coincident points share one leaf whatever its size.

    Returns
    -------
    (N, 3) ndarray of float64
        The rms per-particle relative error is bounded by :func:`tolerance` of the same
        settings.
    """
    theta, quadrupole, leaf_size = _check_options(theta, quadrupole, leaf_size)
    group_size = _check_group_size(group_size)
    inp = validate(masses, positions, G, softening)
    return evaluate("tree", inp, _kernel, theta, quadrupole, leaf_size, group_size)
